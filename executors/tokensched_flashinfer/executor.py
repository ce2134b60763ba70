"""FlashInferExecutor: the torch executor with attention on FlashInfer's MLA kernels.

Everything but attention is :class:`tokensched_torch.TorchExecutor`: the same
model, request mirror, sampling, drafting and launch/collect. Attention goes
through :class:`~tokensched_flashinfer.backend.FlashInferMLAAttention`, whose
kernel is chosen for the GPU at construction
(:func:`~tokensched_flashinfer.arch.choose_backends`). When the chosen kernels
include one that reads a packed KV cache (Blackwell's ``trtllm-gen``), the
split cache is swapped for a :class:`~tokensched_flashinfer.packed_cache.PackedLatentCache`.

Example::

    executor = FlashInferExecutor(MLAConfig.deepseek_attention(), num_blocks=4096, block_size=64)
    executor.backends        # e.g. ("fa3", "fa2") on an H100, ("trtllm-gen", "fa2") on a B200

Constructing it without CUDA, without the ``flashinfer`` package or on a GPU
(or with a model shape) no FlashInfer MLA kernel serves raises
:class:`~tokensched_flashinfer.arch.FlashInferUnavailable`, whose ``missing``
names which.
"""

from __future__ import annotations

import attrs
import torch

from tokensched_flashinfer.arch import AUTO, MLAShape, choose_backends, import_flashinfer, require_cuda
from tokensched_flashinfer.backend import DEFAULT_WORKSPACE_BYTES, PACKED_BACKENDS, FlashInferMLAAttention
from tokensched_flashinfer.packed_cache import PackedLatentCache
from tokensched_torch.drafter import Drafter
from tokensched_torch.executor import TorchExecutor, resolve_dtype
from tokensched_torch.model import MLAConfig, MLAModel


class FlashInferExecutor(TorchExecutor):
    """A :class:`TorchExecutor` whose attention runs on FlashInfer's batch MLA paged-attention wrapper.

    Arguments are the torch executor's, with CUDA and bfloat16 as defaults,
    plus ``attention_backend`` (``"auto"`` picks per GPU, or name one of
    ``"trtllm-gen"``, ``"fa3"``, ``"fa2"``) and ``workspace_bytes`` (FlashInfer's
    float workspace). FlashInfer's MLA kernels need ``kv_lora_rank`` a multiple
    of 128 and ``qk_rope_head_dim`` a multiple of 64 (DeepSeek's are 512 and 64),
    and float16 or bfloat16.
    """

    def __init__(
        self,
        model_config: MLAConfig | None = None,
        *,
        num_blocks: int = 512,
        block_size: int = 16,
        device: torch.device | str = "cuda",
        dtype: torch.dtype | str = torch.bfloat16,
        seed: int = 0,
        num_speculative_tokens: int = 0,
        drafter: Drafter | None = None,
        model: MLAModel | None = None,
        background: bool = False,
        check_plans: bool = True,
        attention_backend: str = AUTO,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    ) -> None:
        target = torch.device(device)
        capability = require_cuda(target)
        flashinfer = import_flashinfer()
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        torch_dtype = resolve_dtype(dtype)
        cfg = model.cfg if model is not None else (model_config or MLAConfig())
        shape = MLAShape(
            num_heads=cfg.num_heads,
            head_dim_ckv=cfg.kv_lora_rank,
            head_dim_kpe=cfg.qk_rope_head_dim,
            page_size=block_size,
            dtype=torch_dtype,
            packed=True,
        )
        backends = choose_backends(capability, shape, attention_backend)
        packed = any(backend in PACKED_BACKENDS for backend in backends)
        if not packed:
            shape = attrs.evolve(shape, packed=False)
        self.capability = capability
        self.backends = backends
        self.attention = FlashInferMLAAttention(
            device=target,
            shape=shape,
            sm_scale=cfg.softmax_scale,
            backends=backends,
            workspace_bytes=workspace_bytes,
            flashinfer=flashinfer,
        )
        super().__init__(
            model_config,
            num_blocks=num_blocks,
            block_size=block_size,
            device=target,
            dtype=torch_dtype,
            seed=seed,
            num_speculative_tokens=num_speculative_tokens,
            drafter=drafter,
            model=model,
            attention=self.attention,
            background=background,
            check_plans=check_plans,
        )
        if packed:
            self._use_packed_cache()

    def _use_packed_cache(self) -> None:
        """Replace the runner's split cache with a packed one, freeing the old one first."""
        old = self.runner.cache
        cfg = self.runner.model.cfg
        num_blocks, block_size = old.num_blocks, old.block_size
        old.ckv.clear()  # the only references: dropping them frees the memory before the new cache is made
        old.kpe.clear()
        torch.cuda.empty_cache()
        self.runner.cache = PackedLatentCache(
            cfg, num_blocks, block_size, device=self.runner.device, dtype=self.runner.model.dtype
        )
