"""Attention over the paged latent cache: per-step metadata and a pluggable backend.

The interface (shared with the FlashInfer executor)
---------------------------------------------------
Once per step the executor builds one :class:`MLAStepMetadata` from the
:class:`~tokensched.plan.StepPlan` and the requests' block tables, and calls
``backend.plan(meta)``. Then, for every layer, the model writes that layer's
new latents into the cache (through ``meta.slot_mapping``) and calls::

    backend.forward(layer_idx, q_latent, q_pe, ckv_cache, kpe_cache) -> o_latent

with

- ``q_latent [T, H, kv_lora_rank]``: ``q_nope`` absorbed into latent space (``q_nope @ W_kb``);
- ``q_pe [T, H, rope_dim]``: the rotated rope part of the queries;
- ``ckv_cache [num_blocks, block_size, kv_lora_rank]`` and ``kpe_cache [num_blocks, block_size, rope_dim]``:
  this layer's pages of :class:`~tokensched_torch.cache.PagedLatentCache`;
- ``o_latent [T, H, kv_lora_rank]``: softmax(sm_scale · (q_latent·ckv + q_pe·kpe)) · ckv per head,
  which the model maps back to values with ``W_vb``.

Token rows are the plan's tokens in batch order: request ``i`` owns rows
``qo_indptr[i]:qo_indptr[i+1]`` and attends over its first ``kv_lens[i]`` cache
positions, read through pages ``kv_indices[kv_indptr[i]:kv_indptr[i+1]]``. The
mask is causal and bottom-right aligned: query row ``j`` of request ``i`` sits
at position ``kv_lens[i] - qo_len_i + j`` and sees positions up to it. So one
step mixes prefill chunks over a cached prefix, plain decodes and speculative
verification (k+1 query rows) without any special case.

These are exactly the arguments of FlashInfer's ``BatchMLAPagedAttentionWrapper``
(``plan(qo_indptr, kv_indptr, kv_indices, kv_len_arr, num_heads, head_dim_ckv,
head_dim_kpe, page_size, causal=True, sm_scale, ...)`` then ``run(q_nope, q_pe,
ckv_cache, kpe_cache)``), so a FlashInfer backend is a thin adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from tokensched.errors import InvalidRequest
from tokensched.plan import StepPlan


@attrs.frozen(slots=True)
class MLAStepMetadata:
    """Everything about one step's batch layout that attention needs, built once per step.

    Device tensors are what kernels consume; the ``*_host`` lists are the same
    numbers on the host for planning loops (no device sync needed to read them).
    """

    block_size: int
    positions: Tensor  # [T] int64, absolute position of each token (rope and causal masking)
    slot_mapping: Tensor  # [T] int64, cache slot each token's latent is written to
    qo_indptr: Tensor  # [B + 1] int32, token rows of each request
    kv_indptr: Tensor  # [B + 1] int32, pages of each request within kv_indices
    kv_indices: Tensor  # [num used pages] int32, the block ids, in block-table order
    kv_lens: Tensor  # [B] int32, cache positions each request attends over (computed + this step's)
    qo_lens_host: list[int]
    kv_lens_host: list[int]
    block_tables_host: list[Sequence[int]]  # each request's pages covering kv_lens (a prefix of its table)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_requests(self) -> int:
        return len(self.qo_lens_host)

    @classmethod
    def build(
        cls, plan: StepPlan, block_tables: Sequence[Sequence[int]], device: torch.device, *, check: bool = True
    ) -> MLAStepMetadata:
        """Metadata for ``plan``; ``block_tables[i]`` is request i's full table after this plan's deltas.

        With ``check``, a plan whose slot mapping disagrees with the block tables
        (a scheduler bug that would silently corrupt another request's cache) is
        refused with :class:`~tokensched.errors.InvalidRequest`.
        """
        bs = plan.block_size
        qo_lens = [plan.token_offsets[i + 1] - plan.token_offsets[i] for i in range(plan.num_requests)]
        kv_lens = [c + n for c, n in zip(plan.num_computed_tokens, qo_lens, strict=True)]
        tables: list[Sequence[int]] = []
        for i, (table, kv_len) in enumerate(zip(block_tables, kv_lens, strict=True)):
            pages = -(-kv_len // bs)
            if len(table) < pages:
                raise InvalidRequest(
                    f"step {plan.step_id}: request {plan.request_ids[i]!r} needs {pages} blocks for "
                    f"{kv_len} tokens but its block table has {len(table)}"
                )
            tables.append(table[:pages])
        qo_lens_t = torch.tensor(qo_lens, dtype=torch.int64)
        qo_indptr = torch.zeros(len(qo_lens) + 1, dtype=torch.int64)
        torch.cumsum(qo_lens_t, 0, out=qo_indptr[1:])
        starts = torch.tensor(plan.num_computed_tokens, dtype=torch.int64) - qo_indptr[:-1]
        positions = torch.arange(plan.num_tokens, dtype=torch.int64) + starts.repeat_interleave(qo_lens_t)
        slot_mapping = torch.from_numpy(plan.arrays().slot_mapping)  # no per-token list for a long chunk
        page_counts = torch.tensor([len(t) for t in tables], dtype=torch.int64)
        kv_indptr = torch.zeros(len(tables) + 1, dtype=torch.int64)
        torch.cumsum(page_counts, 0, out=kv_indptr[1:])
        kv_indices = torch.tensor([b for t in tables for b in t], dtype=torch.int64)
        if check and plan.num_tokens:
            owner = torch.arange(len(qo_lens)).repeat_interleave(qo_lens_t)
            pages_of_tokens = kv_indices[kv_indptr[owner] + positions // bs]
            expected = pages_of_tokens * bs + positions % bs
            bad = torch.nonzero(expected != slot_mapping)
            if bad.numel():
                t = int(bad[0, 0])
                raise InvalidRequest(
                    f"step {plan.step_id}: request {plan.request_ids[int(owner[t])]!r} position "
                    f"{int(positions[t])} maps to slot {plan.slot_mapping[t]} but its block table says "
                    f"{int(expected[t])}"
                )
        return cls(
            block_size=bs,
            positions=positions.to(device),
            slot_mapping=slot_mapping.to(device),
            qo_indptr=qo_indptr.to(device, torch.int32),
            kv_indptr=kv_indptr.to(device, torch.int32),
            kv_indices=kv_indices.to(device, torch.int32),
            kv_lens=torch.tensor(kv_lens, dtype=torch.int32).to(device),
            qo_lens_host=qo_lens,
            kv_lens_host=kv_lens,
            block_tables_host=tables,
        )


class MLAAttentionBackend(Protocol):
    """Attention over the paged latent cache in weight-absorbed form (see the module docstring)."""

    def plan(self, meta: MLAStepMetadata) -> None:
        """Prepare for one step's layout; called once per step before any ``forward``."""

    def forward(self, layer_idx: int, q_latent: Tensor, q_pe: Tensor, ckv_cache: Tensor, kpe_cache: Tensor) -> Tensor:
        """``o_latent [T, H, kv_lora_rank]`` for this layer."""


@attrs.frozen(slots=True)
class _Group:
    """Requests (or one long request's slice of query rows) padded into one attention call."""

    token_index: Tensor  # [B, Q] rows of q_latent/q_pe (pads point at row 0)
    kv_slots: Tensor  # [B, L] cache slots of positions 0..L-1 (pads point at slot 0, masked)
    mask: Tensor  # [B, Q, L] True where the query may attend
    valid: Tensor  # [B, Q] real query rows
    dest: Tensor  # token rows of the valid entries, in valid order
    short: bool  # decodes and verification: few query rows per request


class TorchMLAAttention:
    """The reference backend: gathers each request's latents through its block table and attends.

    Heads share one latent key/value (MQA). Short queries (decodes,
    verification: at most ``batch_query_len`` rows) are padded into one batch
    and attend with two batched matmuls, every head's rows against the one
    shared latent (no per-head copies of the cache). Longer queries run alone
    through SDPA with the latent expanded across heads (a view), their rows cut
    into slices of at most ``max_query_rows`` so the mask stays small.
    """

    def __init__(self, sm_scale: float, *, batch_query_len: int = 16, max_query_rows: int = 1024) -> None:
        self.sm_scale = sm_scale
        self.batch_query_len = batch_query_len
        self.max_query_rows = max_query_rows
        self._groups: list[_Group] = []
        self._num_tokens = 0

    def plan(self, meta: MLAStepMetadata) -> None:
        device = meta.positions.device
        indptr = [0]
        for n in meta.qo_lens_host:
            indptr.append(indptr[-1] + n)
        batched = [i for i, n in enumerate(meta.qo_lens_host) if 0 < n <= self.batch_query_len]
        groups: list[_Group] = []
        if batched:
            groups.append(
                self._build_group(meta, indptr, [(i, 0, meta.qo_lens_host[i]) for i in batched], device, True)
            )
        for i, n in enumerate(meta.qo_lens_host):
            if n > self.batch_query_len:
                for lo in range(0, n, self.max_query_rows):
                    hi = min(n, lo + self.max_query_rows)
                    groups.append(self._build_group(meta, indptr, [(i, lo, hi)], device, False))
        self._groups = groups
        self._num_tokens = meta.num_tokens

    def _build_group(
        self,
        meta: MLAStepMetadata,
        indptr: list[int],
        members: list[tuple[int, int, int]],
        device: torch.device,
        short: bool,
    ) -> _Group:
        """``members`` are (request, first query row, end query row) within that request."""
        bs = meta.block_size
        q_max = max(hi - lo for _, lo, hi in members)
        l_max = max(meta.kv_lens_host[i] for i, _, _ in members)
        rows = torch.arange(q_max)
        cols = torch.arange(l_max)
        token_index = torch.zeros(len(members), q_max, dtype=torch.int64)
        kv_slots = torch.zeros(len(members), l_max, dtype=torch.int64)
        query_pos = torch.zeros(len(members), q_max, dtype=torch.int64)
        valid = torch.zeros(len(members), q_max, dtype=torch.bool)
        for b, (i, lo, hi) in enumerate(members):
            n, kv_len = hi - lo, meta.kv_lens_host[i]
            token_index[b, :n] = rows[:n] + indptr[i] + lo
            # Bottom-right causal alignment: the request's last query row is its last cache position.
            query_pos[b, :n] = rows[:n] + kv_len - meta.qo_lens_host[i] + lo
            valid[b, :n] = True
            table = torch.tensor(meta.block_tables_host[i], dtype=torch.int64)
            kv_slots[b, :kv_len] = table[cols[:kv_len] // bs] * bs + cols[:kv_len] % bs
        # Padded query rows attend to position 0 only (never an empty softmax); they are dropped anyway.
        mask = cols[None, None, :] <= query_pos[:, :, None]
        return _Group(
            token_index=token_index.to(device),
            kv_slots=kv_slots.to(device),
            mask=mask.to(device),
            valid=valid.to(device),
            dest=token_index[valid].to(device),
            short=short,
        )

    def forward(self, layer_idx: int, q_latent: Tensor, q_pe: Tensor, ckv_cache: Tensor, kpe_cache: Tensor) -> Tensor:
        num_tokens, num_heads, rank = q_latent.shape
        ckv_flat = ckv_cache.reshape(-1, rank)
        kpe_flat = kpe_cache.reshape(-1, kpe_cache.shape[-1])
        q = torch.cat((q_latent, q_pe.to(q_latent.dtype)), dim=-1)
        out = q_latent.new_empty(num_tokens, num_heads, rank)
        for g in self._groups:
            ckv = ckv_flat[g.kv_slots].to(q.dtype)  # [B, L, R]
            k = torch.cat((ckv, kpe_flat[g.kv_slots].to(q.dtype)), dim=-1)  # [B, L, R + rope]
            qg = q[g.token_index]  # [B, Q, H, D]
            o = self._short(qg, k, ckv, g.mask) if g.short else self._long(qg, k, ckv, g.mask)
            out[g.dest] = o[g.valid]
        return out

    def _short(self, q: Tensor, k: Tensor, ckv: Tensor, mask: Tensor) -> Tensor:
        """Every head's rows against the shared latent: [B, Q*H, D] @ [B, D, L], then [B, Q*H, L] @ [B, L, R]."""
        batch, q_len, num_heads, dim = q.shape
        scores = torch.bmm(q.reshape(batch, q_len * num_heads, dim), k.transpose(1, 2))
        scores = scores.view(batch, q_len, num_heads, -1)
        if scores.element_size() < 4:  # softmax of half-precision scores in float32
            scores = scores.float()
        scores = (scores * self.sm_scale).masked_fill(~mask[:, :, None, :], float("-inf"))
        probs = scores.softmax(dim=-1).to(ckv.dtype).view(batch, q_len * num_heads, -1)
        return torch.bmm(probs, ckv).view(batch, q_len, num_heads, -1)

    def _long(self, q: Tensor, k: Tensor, ckv: Tensor, mask: Tensor) -> Tensor:
        """SDPA with the latent expanded across heads (a view): [B, H, Q, D] against [B, H, L, D]."""
        batch, _, num_heads, _ = q.shape
        keys = k[:, None].expand(batch, num_heads, *k.shape[1:])
        values = ckv[:, None].expand(batch, num_heads, *ckv.shape[1:])
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys, values, attn_mask=mask[:, None], scale=self.sm_scale
        )
        return o.transpose(1, 2)
