"""Scheduling policies: plug-ins that order admission and choose preemption victims."""

from tokensched.policies.base import Policy, PolicyContext, SortKey
from tokensched.policies.fcfs import FCFSPolicy
from tokensched.policies.prefix_aware import PrefixAwarePolicy
from tokensched.policies.priority import PriorityPolicy
from tokensched.policies.slo import SLOPolicy

POLICIES: dict[str, type[Policy]] = {
    "fcfs": FCFSPolicy,
    "priority": PriorityPolicy,
    "prefix-aware": PrefixAwarePolicy,
    "slo": SLOPolicy,
}

__all__ = [
    "POLICIES",
    "FCFSPolicy",
    "Policy",
    "PolicyContext",
    "PrefixAwarePolicy",
    "PriorityPolicy",
    "SLOPolicy",
    "SortKey",
]
