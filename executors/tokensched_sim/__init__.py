"""tokensched_sim: a simulated GPU executor with a roofline cost model of real models on real GPUs.

Judge scheduling policies at production scale on a laptop: steps run on a
virtual clock, each taking what a roofline model of the deployment (model,
GPU, tensor-parallel degree, calibrated efficiencies) says it would.

>>> from tokensched_sim import Deployment, SimExecutor
>>> executor = SimExecutor(Deployment(model="kimi-k2.5", gpu="b200", tp=4), block_size=64)

Registered as the ``sim`` executor (``tokensched.load_executor("sim")``). Calibration lives in
:mod:`tokensched_sim.calibrate` (not imported here, so ``python -m tokensched_sim.calibrate`` runs cleanly).
"""

from tokensched_sim.cost import CostModel, Deployment, Efficiency
from tokensched_sim.executor import SimExecutor
from tokensched_sim.presets import GPUS, MODELS, Dtype, GPUSpec, ModelSpec, gpu_preset, model_preset
from tokensched_sim.shape import BatchShape
from tokensched_sim.tokens import OutputLengths, SimStats

__all__ = [
    "GPUS",
    "MODELS",
    "BatchShape",
    "CostModel",
    "Deployment",
    "Dtype",
    "Efficiency",
    "GPUSpec",
    "ModelSpec",
    "OutputLengths",
    "SimExecutor",
    "SimStats",
    "gpu_preset",
    "model_preset",
]
