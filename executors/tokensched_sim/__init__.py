"""tokensched_sim: a simulated GPU executor with a roofline cost model of real models on real GPUs.

Judge scheduling policies at production scale on a laptop: steps run on a
virtual clock, each taking what a roofline model of the deployment (model,
GPU, tensor-parallel degree, calibrated efficiencies) says it would.

>>> from tokensched_sim import Deployment, SimExecutor
>>> deployment = Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", engine="trtllm")
>>> executor = SimExecutor(deployment, block_size=64)
>>> print(CostModel(deployment).memory_breakdown().format())  # doctest: +ELLIPSIS
trtllm [free_fraction 0.900] per rank 192.3 GB = weights 150.2, ... KV 35.1, ... = 997,990 tokens

Registered as the ``sim`` executor (``tokensched.load_executor("sim")``). Calibration lives in
:mod:`tokensched_sim.calibrate` (not imported here, so ``python -m tokensched_sim.calibrate`` runs cleanly).
"""

from tokensched_sim.cost import CostModel, Deployment, Efficiency, KVCapacity
from tokensched_sim.draft import DRAFTS, DraftSpec, acceptance_rate_for_length, draft_preset, mean_accepted_length
from tokensched_sim.engines import ENGINES, EngineSpec, engine_preset
from tokensched_sim.executor import SimExecutor
from tokensched_sim.memory import DeploymentError, MemoryBreakdown
from tokensched_sim.presets import GPUS, MODELS, Dtype, GPUSpec, ModelSpec, gpu_preset, model_preset
from tokensched_sim.shape import BatchShape
from tokensched_sim.tokens import OutputLengths, SimStats

__all__ = [
    "DRAFTS",
    "ENGINES",
    "GPUS",
    "MODELS",
    "BatchShape",
    "CostModel",
    "Deployment",
    "DeploymentError",
    "DraftSpec",
    "Dtype",
    "Efficiency",
    "EngineSpec",
    "GPUSpec",
    "KVCapacity",
    "MemoryBreakdown",
    "ModelSpec",
    "OutputLengths",
    "SimExecutor",
    "SimStats",
    "acceptance_rate_for_length",
    "draft_preset",
    "engine_preset",
    "gpu_preset",
    "mean_accepted_length",
    "model_preset",
]
