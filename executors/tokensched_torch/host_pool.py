"""The host side of the KV tier: host-memory copies of paged latent cache blocks.

The scheduler's host tier (:mod:`tokensched.machines.host_tier`) decides which
block goes to which host slot; a plan's ``kv_transfers`` say what to copy, in
order, before the step's compute reads KV. This pool holds, per layer, a
``[num_slots, block_size, kv_lora_rank]`` latent and a ``[num_slots,
block_size, rope]`` rope-key tensor in host memory: slot ``s`` is row ``s``,
as block ``b`` is row ``b`` of the device cache.

On CUDA the host tensors are pinned and the copies run on their own stream:
it first waits for the compute stream (a stored block's last writes are
done), and the compute stream then waits for it (a loaded block is complete
before attention reads it). On CPU the copies are plain tensor copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tokensched.errors import InvalidRequest
from tokensched.plan import KVTransfer, TransferKind
from tokensched_torch.cache import PagedLatentCache


class HostKVPool:
    """``num_slots`` host blocks beside a :class:`PagedLatentCache`; copies whole blocks, every layer."""

    def __init__(self, cache: PagedLatentCache, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be at least 1, got {num_slots}")
        self.cache = cache
        self.num_slots = num_slots
        device = cache.ckv[0].device
        pin = device.type == "cuda"
        self.ckv = [torch.zeros((num_slots, *t.shape[1:]), dtype=t.dtype, pin_memory=pin) for t in cache.ckv]
        self.kpe = [torch.zeros((num_slots, *t.shape[1:]), dtype=t.dtype, pin_memory=pin) for t in cache.kpe]
        self.stream = torch.cuda.Stream(device=device) if pin else None  # type: ignore[no-untyped-call]

    def apply(self, transfers: Sequence[KVTransfer], step_id: int) -> None:
        """Perform ``transfers`` in order; raises InvalidRequest (copying nothing) on an id out of range."""
        for t in transfers:
            if not 0 <= t.host_slot < self.num_slots or not 0 <= t.device_block < self.cache.num_blocks:
                raise InvalidRequest(
                    f"step {step_id}: transfer {t.kind} of host slot {t.host_slot} / block {t.device_block} "
                    f"outside {self.num_slots} slots / {self.cache.num_blocks} blocks"
                )
        if self.stream is None:
            self._copy(transfers)
            return
        compute = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            self._copy(transfers)
        compute.wait_stream(self.stream)

    def _copy(self, transfers: Sequence[KVTransfer]) -> None:
        non_blocking = self.stream is not None
        for t in transfers:
            slot, block = t.host_slot, t.device_block
            for host_ckv, host_kpe, dev_ckv, dev_kpe in zip(
                self.ckv, self.kpe, self.cache.ckv, self.cache.kpe, strict=True
            ):
                if t.kind is TransferKind.STORE:
                    host_ckv[slot].copy_(dev_ckv[block], non_blocking=non_blocking)
                    host_kpe[slot].copy_(dev_kpe[block], non_blocking=non_blocking)
                else:
                    dev_ckv[block].copy_(host_ckv[slot], non_blocking=non_blocking)
                    dev_kpe[block].copy_(host_kpe[slot], non_blocking=non_blocking)
