"""tokensched_flashinfer: the torch MLA executor with attention on FlashInfer's paged MLA kernels.

Importing this package needs torch but neither CUDA nor flashinfer: flashinfer is
imported when an executor is constructed, and construction says clearly what is
missing (:class:`FlashInferUnavailable`).
"""

from tokensched_flashinfer.arch import FlashInferUnavailable, MLAShape, choose_backends
from tokensched_flashinfer.backend import AttentionPlanError, FlashInferMLAAttention, indices_from_metadata
from tokensched_flashinfer.executor import FlashInferExecutor
from tokensched_flashinfer.indices import MLAIndices, build_mla_indices, indices_for_plan
from tokensched_flashinfer.packed_cache import PackedLatentCache

__all__ = [
    "AttentionPlanError",
    "FlashInferExecutor",
    "FlashInferMLAAttention",
    "FlashInferUnavailable",
    "MLAIndices",
    "MLAShape",
    "PackedLatentCache",
    "build_mla_indices",
    "choose_backends",
    "indices_for_plan",
    "indices_from_metadata",
]
