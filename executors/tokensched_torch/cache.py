"""The paged latent KV cache, laid out exactly as the scheduler's block pool says.

Per layer there are two tensors: ``ckv[layer]`` of shape ``[num_blocks,
block_size, kv_lora_rank]`` (the RMS-normed latent) and ``kpe[layer]`` of shape
``[num_blocks, block_size, qk_rope_head_dim]`` (the rotated rope key). Block ``b``
of the scheduler is row ``b`` of both; token slot ``s = b * block_size + offset``
is row ``s`` of their flattened views. These are the ``ckv_cache`` / ``kpe_cache``
arguments FlashInfer's MLA kernels take, so the FlashInfer executor shares it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokensched_torch.model import MLAConfig


class PagedLatentCache:
    """Latent and rope-key pages for every layer; written by slot, read by block table."""

    def __init__(
        self,
        cfg: MLAConfig,
        num_blocks: int,
        block_size: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks={num_blocks} and block_size={block_size} must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv_lora_rank = cfg.kv_lora_rank
        self.rope_dim = cfg.qk_rope_head_dim
        self.ckv: list[Tensor]
        self.kpe: list[Tensor]
        self._allocate(cfg, torch.device(device), dtype)

    def _allocate(self, cfg: MLAConfig, device: torch.device, dtype: torch.dtype) -> None:
        """Make ``ckv`` and ``kpe``, one tensor per layer each (a subclass may lay them out otherwise)."""
        shape = (self.num_blocks, self.block_size)
        self.ckv = [torch.zeros(*shape, cfg.kv_lora_rank, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.kpe = [torch.zeros(*shape, self.rope_dim, device=device, dtype=dtype) for _ in range(cfg.num_layers)]

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    @staticmethod
    def bytes_per_token(cfg: MLAConfig, dtype: torch.dtype) -> int:
        """Cache bytes one token costs across all layers (for sizing a pool to memory)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return cfg.num_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * itemsize

    def write(self, layer_idx: int, slot_mapping: Tensor, ckv: Tensor, kpe: Tensor) -> None:
        """Store one step's ``ckv [T, kv_lora_rank]`` and ``kpe [T, rope]`` at ``slot_mapping [T]``."""
        self.ckv[layer_idx].view(-1, self.kv_lora_rank).index_copy_(0, slot_mapping, ckv.to(self.ckv[layer_idx].dtype))
        self.kpe[layer_idx].view(-1, self.rope_dim).index_copy_(0, slot_mapping, kpe.to(self.kpe[layer_idx].dtype))
