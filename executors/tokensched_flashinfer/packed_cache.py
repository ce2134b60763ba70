"""A paged latent cache whose latent and rope key share one tensor per layer.

FlashInfer's Blackwell kernel (``trtllm-gen``) reads the KV cache as one
``[num_blocks, block_size, kv_lora_rank + rope_dim]`` tensor. This cache
allocates exactly that and exposes ``ckv[layer]`` and ``kpe[layer]`` as the two
adjacent slices of it, so everything written through
:meth:`~tokensched_torch.cache.PagedLatentCache.write` lands in the packed
tensor and FlashInfer recognises the pair as one packed view (no copy).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokensched_torch.cache import PagedLatentCache
from tokensched_torch.model import MLAConfig


class PackedLatentCache(PagedLatentCache):
    """:class:`PagedLatentCache` with ``ckv``/``kpe`` as views of one packed tensor per layer.

    Only the allocation differs from the parent; the attribute set is the
    parent's (a test checks it stays so) plus ``packed``.
    """

    packed: list[Tensor]

    def _allocate(self, cfg: MLAConfig, device: torch.device, dtype: torch.dtype) -> None:
        width = cfg.kv_lora_rank + cfg.qk_rope_head_dim
        self.packed = [
            torch.zeros(self.num_blocks, self.block_size, width, device=device, dtype=dtype)
            for _ in range(cfg.num_layers)
        ]
        self.ckv = [layer[..., : cfg.kv_lora_rank] for layer in self.packed]
        self.kpe = [layer[..., cfg.kv_lora_rank :] for layer in self.packed]
