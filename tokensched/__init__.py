"""tokensched: a typed finite-state-machine scheduler for LLM inference.

The public API lives here; everything else is internal. Importing this package
imports neither torch nor any executor, and has no side effects.
"""

from tokensched.config import RequestSpec, SamplingParams, SchedulerConfig, StepFailurePolicy
from tokensched.engine import Engine
from tokensched.errors import (
    CapacityError,
    ExecutorError,
    IllegalTransition,
    InvalidRequest,
    InvariantViolation,
    QueueFull,
    TokenschedError,
    UnknownRequest,
)
from tokensched.executor import Executor, RequestMirror, available_executors, load_executor
from tokensched.plan import (
    PLACEHOLDER_TOKEN,
    FinishReason,
    NewRequestData,
    RequestEvent,
    RequestOutput,
    ScheduledRequest,
    StepPlan,
    StepResult,
)
from tokensched.scheduler import Scheduler
from tokensched.stats import SchedulerStats
from tokensched.views import PlanOutcome, RequestView

__version__ = "0.1.0"

__all__ = [
    "PLACEHOLDER_TOKEN",
    "CapacityError",
    "Engine",
    "Executor",
    "ExecutorError",
    "FinishReason",
    "IllegalTransition",
    "InvalidRequest",
    "InvariantViolation",
    "NewRequestData",
    "PlanOutcome",
    "QueueFull",
    "RequestEvent",
    "RequestMirror",
    "RequestOutput",
    "RequestSpec",
    "RequestView",
    "SamplingParams",
    "ScheduledRequest",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerStats",
    "StepFailurePolicy",
    "StepPlan",
    "StepResult",
    "TokenschedError",
    "UnknownRequest",
    "__version__",
    "available_executors",
    "load_executor",
]
