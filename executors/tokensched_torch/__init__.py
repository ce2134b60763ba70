"""tokensched_torch: a PyTorch executor running a DeepSeek-style MLA model over a paged latent cache.

Registered as the ``torch`` executor (``tokensched.load_executor("torch")``).
The attention over the cache is a pluggable backend (:mod:`tokensched_torch.attention`
documents the interface), which the FlashInfer executor reuses with its kernels.
"""

from tokensched_torch.attention import MLAAttentionBackend, MLAStepMetadata, TorchMLAAttention
from tokensched_torch.cache import PagedLatentCache
from tokensched_torch.drafter import Drafter, ModelDrafter, NgramDrafter
from tokensched_torch.executor import TorchExecutor
from tokensched_torch.model import MLAConfig, MLAModel
from tokensched_torch.reference import dense_reference_logits, greedy_reference
from tokensched_torch.runner import ModelRunner, StepForward

__all__ = [
    "Drafter",
    "MLAAttentionBackend",
    "MLAConfig",
    "MLAModel",
    "MLAStepMetadata",
    "ModelDrafter",
    "ModelRunner",
    "NgramDrafter",
    "PagedLatentCache",
    "StepForward",
    "TorchExecutor",
    "TorchMLAAttention",
    "dense_reference_logits",
    "greedy_reference",
]
