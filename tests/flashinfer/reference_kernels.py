"""FlashInfer's real MLA wrapper on the CPU, with its kernels replaced by a torch computation.

``BatchMLAPagedAttentionWrapper`` dispatches to backend classes registered in
``flashinfer.mla._batch_mla._wrapper._BACKEND_TYPES``. :func:`install` swaps the
``fa2``, ``fa3`` and ``trtllm-gen`` entries for classes that keep the real ones'
declared capabilities (packed or split inputs) but compute attention in torch
from the metadata FlashInfer hands them. Everything up to the kernel is
FlashInfer 0.7.2's own code: ``plan()`` and ``run()`` argument checking, CSR and
dense metadata validation (page counts must equal ``ceil(kv_len / page_size)``),
the run contract and the zero-copy packing of query and KV views. So a CPU test
exercises our adapter against the real API, and the computed output checks the
indices and layouts it passed.

The torch computation restates FlashInfer's documented semantics: request
``i``'s query rows ``qo_indptr[i]:qo_indptr[i+1]`` attend over its first
``kv_len[i]`` cached tokens, read page by page, causal and bottom-right
aligned; scores are ``sm_scale * (q_nope . ckv + q_pe . kpe)`` and the output
is the softmax-weighted sum of ``ckv``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

flashinfer = pytest.importorskip("flashinfer")
from flashinfer.mla._batch_mla import _wrapper  # noqa: E402
from flashinfer.mla._batch_mla._backends._capabilities import (  # noqa: E402
    MLAPlanCapabilities,
    _BackendPlanUnsupportedError,
    plan_capability_rejection_reason,
)


class _TorchKernel:
    """Plans like a FlashInfer backend (CSR or dense metadata) and runs attention in float64."""

    _backend: ClassVar[str]
    _plan_capabilities: ClassVar[MLAPlanCapabilities]
    uses_dense: ClassVar[bool]
    refuse: ClassVar[set[str]] = set()  # backends that decline every plan, to exercise fallback
    log: ClassVar[list[tuple[str, str]]] = []  # (backend, "plan" | "run") in call order

    def __init__(self, q_lens: list[int], kv_lens: list[int], pages: list[list[int]], args: Any) -> None:
        self.q_lens, self.kv_lens, self.pages = q_lens, kv_lens, pages
        self.sm_scale = float(args.sm_scale)
        self.causal = bool(args.causal)
        self.page_size = int(args.page_size)
        self.widths = (int(args.head_dim_ckv), int(args.head_dim_kpe))
        self.num_heads = int(args.num_heads)

    @classmethod
    def plan_from_wrapper(cls, args: Any) -> _TorchKernel:
        if reason := plan_capability_rejection_reason(args, cls._plan_capabilities):
            raise _BackendPlanUnsupportedError(reason)
        if cls._backend in cls.refuse:
            raise _BackendPlanUnsupportedError(f"{cls._backend} declines this plan (test)")
        # Read every public argument the real planners must acknowledge.
        for name in ("lse_mode", "output_dtype", "output_scale", "scale_mode", "skip_softmax", "enable_pdl"):
            getattr(args, name)
        for name in ("use_sinks", "use_profiler", "q_data_type", "kv_data_type", "query_kind", "kv_kind"):
            getattr(args, name)
        for name in ("query_layout", "kv_cache_layout", "kv_layout", "legacy_flat_csr"):
            getattr(args, name)
        if cls.uses_dense:
            dense = args.native_dense()
            q_indptr = dense.cum_seq_lens_q.tolist()
            kv_lens = dense.seq_lens.tolist()
            pages = [dense.block_tables[i, : -(-n // args.page_size)].tolist() for i, n in enumerate(kv_lens)]
        else:
            csr = args.csr()
            q_indptr = csr.qo_indptr.tolist()
            kv_lens = csr.kv_len_arr.tolist()
            kv_indptr = csr.kv_indptr.tolist()
            pages = [csr.kv_indices[kv_indptr[i] : kv_indptr[i + 1]].tolist() for i in range(len(kv_lens))]
        q_lens = [q_indptr[i + 1] - q_indptr[i] for i in range(len(kv_lens))]
        cls.log.append((cls._backend, "plan"))
        return cls(q_lens, kv_lens, pages, args)

    def run_from_wrapper(self, *, query: object, kv_cache: object, out: Tensor | None, **options: Any) -> Tensor:
        assert out is None and not options["return_lse"]
        self.log.append((self._backend, "run"))
        ckv_width, _ = self.widths
        if isinstance(query, Tensor):  # a packed-input backend got one [T, H, ckv + kpe] tensor
            assert self._plan_capabilities.requires_packed_query
            q_nope, q_pe = query[..., :ckv_width], query[..., ckv_width:]
        else:
            q_nope, q_pe = query  # type: ignore[misc]
        if isinstance(kv_cache, Tensor):
            assert self._plan_capabilities.requires_packed_kv_cache
            ckv_cache, kpe_cache = kv_cache[..., :ckv_width], kv_cache[..., ckv_width:]
        else:
            ckv_cache, kpe_cache = kv_cache  # type: ignore[misc]
        assert q_nope.shape[1] == self.num_heads
        return reference_attention(
            self.q_lens, self.kv_lens, self.pages, self.page_size, self.sm_scale, q_nope, q_pe, ckv_cache, kpe_cache,
            causal=self.causal,
        )  # fmt: skip


def reference_attention(
    q_lens: list[int],
    kv_lens: list[int],
    pages: list[list[int]],
    page_size: int,
    sm_scale: float,
    q_nope: Tensor,
    q_pe: Tensor,
    ckv_cache: Tensor,
    kpe_cache: Tensor,
    *,
    causal: bool = True,
) -> Tensor:
    """Paged MLA attention in float64, one request at a time; output in ``q_nope``'s dtype and device."""
    result = torch.empty(q_nope.shape, dtype=q_nope.dtype, device=q_nope.device)
    row = 0
    for q_len, kv_len, request_pages in zip(q_lens, kv_lens, pages, strict=True):
        positions = torch.arange(kv_len, device=q_nope.device)
        blocks = torch.tensor(request_pages, dtype=torch.int64, device=q_nope.device)[positions // page_size]
        ckv = ckv_cache[blocks, positions % page_size].double()  # [L, ckv]
        kpe = kpe_cache[blocks, positions % page_size].double()  # [L, kpe]
        qn, qp = q_nope[row : row + q_len].double(), q_pe[row : row + q_len].double()  # [Q, H, *]
        scores = (torch.einsum("qhc,lc->hql", qn, ckv) + torch.einsum("qhp,lp->hql", qp, kpe)) * sm_scale
        if causal:
            last_visible = kv_len - q_len + torch.arange(q_len, device=q_nope.device)
            scores = scores.masked_fill(positions[None, None, :] > last_visible[None, :, None], float("-inf"))
        result[row : row + q_len] = torch.einsum("hql,lc->qhc", scores.softmax(dim=-1), ckv).to(result.dtype)
        row += q_len
    return result


def _kernel_type(name: str, uses_dense: bool) -> type[_TorchKernel]:
    real: Any = _wrapper._BACKEND_TYPES[name]
    attrs = {"_backend": name, "_plan_capabilities": real._plan_capabilities, "uses_dense": uses_dense}
    return type(f"TorchKernel[{name}]", (_TorchKernel,), attrs)


@contextmanager
def torch_kernels(monkeypatch: pytest.MonkeyPatch, refuse: set[str] | frozenset[str] = frozenset()) -> Iterator[Any]:
    """Swap FlashInfer's MLA kernels for torch ones; yields the real ``flashinfer`` module.

    ``refuse`` names backends that decline every plan (as a kernel refuses a
    shape or work size), to exercise the adapter's fallback.
    """
    _TorchKernel.refuse = set(refuse)
    _TorchKernel.log = []
    for name, dense in (("fa2", False), ("fa3", False), ("trtllm-gen", True)):
        monkeypatch.setitem(_wrapper._BACKEND_TYPES, name, _kernel_type(name, dense))
    yield flashinfer
