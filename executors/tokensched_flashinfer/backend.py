"""The torch executor's attention interface on FlashInfer's batch MLA paged-attention wrapper.

:class:`FlashInferMLAAttention` implements
:class:`tokensched_torch.attention.MLAAttentionBackend`: ``plan(meta)`` once per
step, ``forward(layer_idx, q_latent, q_pe, ckv_cache, kpe_cache)`` per layer.

- One float workspace (128 MiB by default) is allocated at construction and
  shared by one ``BatchMLAPagedAttentionWrapper`` per candidate backend (made on
  first use); all run in order on one stream, so sharing is safe.
- ``plan`` builds the CSR indices on the host (:mod:`tokensched_flashinfer.indices`,
  no device sync) and plans the first candidate that accepts the step: the
  native kernel for the GPU, FA2 for what it refuses at plan time (a shape,
  a work size). Every layer then reuses that plan.
- FA plans stage their scheduling tables through a pinned host buffer copied
  asynchronously; before the next plan overwrites host memory that copy may
  still be reading, ``plan`` waits for the previous plan's copy to finish (an
  event recorded right after it). That bounds the host to one step ahead of
  the GPU's plan uploads, which is what two steps in flight need anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from tokensched.errors import TokenschedError
from tokensched_flashinfer.arch import MLAShape, import_flashinfer
from tokensched_flashinfer.indices import MLAIndices, build_mla_indices
from tokensched_torch.attention import MLAStepMetadata

DEFAULT_WORKSPACE_BYTES = 128 * 1024 * 1024
PACKED_BACKENDS = frozenset({"trtllm-gen"})
"""Backends that need the query and KV cache as single ``[..., ckv + kpe]`` tensors."""
DENSE_BACKENDS = frozenset({"trtllm-gen"})
"""Backends that plan from a dense page table rather than CSR."""


class AttentionPlanError(TokenschedError):
    """No candidate FlashInfer backend accepted a step's batch; the message has each one's reason."""


def indices_from_metadata(meta: MLAStepMetadata) -> MLAIndices:
    """The CSR indices of a step, from the host-side lists the torch executor already built.

    Reading ``qo_lens_host``, ``kv_lens_host`` and ``block_tables_host`` (not the
    device tensors beside them) keeps planning free of device syncs.
    """
    offsets = [0]
    for n in meta.qo_lens_host:
        offsets.append(offsets[-1] + n)
    computed = [kv - q for kv, q in zip(meta.kv_lens_host, meta.qo_lens_host, strict=True)]
    return build_mla_indices(offsets, computed, meta.block_tables_host, meta.block_size)


def _unsupported_error_type(flashinfer: ModuleType) -> type[Exception]:
    """FlashInfer's typed "this backend cannot plan that" error (private, so fall back to ValueError)."""
    try:
        from flashinfer.mla._batch_mla._backends._capabilities import _BackendPlanUnsupportedError
    except ImportError:
        return ValueError
    error_type: type[Exception] = _BackendPlanUnsupportedError
    return error_type


class FlashInferMLAAttention:
    """Paged MLA attention through ``flashinfer.mla.BatchMLAPagedAttentionWrapper``.

    ``backends`` are tried in order at each plan (see
    :func:`tokensched_flashinfer.arch.choose_backends`). ``plans`` counts the
    steps each backend served, for benchmarks and tests.
    """

    def __init__(
        self,
        *,
        device: torch.device,
        shape: MLAShape,
        sm_scale: float,
        backends: Sequence[str],
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        flashinfer: ModuleType | None = None,
    ) -> None:
        if not backends:
            raise ValueError("at least one FlashInfer backend is needed")
        fi = flashinfer if flashinfer is not None else import_flashinfer()
        self._wrapper_type: Any = fi.mla.BatchMLAPagedAttentionWrapper
        self._metadata_type: Any = fi.mla.MLAPlanMetadata
        self._unsupported = _unsupported_error_type(fi)
        self.device = device
        self.shape = shape
        self.sm_scale = float(sm_scale)
        self.backends = tuple(backends)
        self.workspace = torch.zeros(workspace_bytes, dtype=torch.uint8, device=device)
        self.plans: Counter[str] = Counter()
        self.active: str | None = None
        self._wrappers: dict[str, Any] = {}
        self._plan_uploaded: torch.cuda.Event | None = None

    def _wrapper(self, backend: str) -> Any:
        wrapper = self._wrappers.get(backend)
        if wrapper is None:
            wrapper = self._wrapper_type(self.workspace, backend=backend)
            self._wrappers[backend] = wrapper
        return wrapper

    def _metadata(self, backend: str, idx: MLAIndices) -> Any:
        if backend in DENSE_BACKENDS:
            return self._metadata_type.dense(
                cum_seq_lens_q=idx.qo_indptr,
                block_tables=idx.dense_block_tables(),
                seq_lens=idx.kv_len,
                max_q_len=idx.max_q_len,
            )
        return self._metadata_type.csr(
            qo_indptr=idx.qo_indptr, kv_indptr=idx.kv_indptr, kv_indices=idx.kv_indices, kv_len_arr=idx.kv_len
        )

    def plan(self, meta: MLAStepMetadata) -> None:
        """Plan one step (the torch executor's interface)."""
        self.plan_indices(indices_from_metadata(meta))

    def plan_indices(self, idx: MLAIndices) -> None:
        """Plan the first candidate backend that accepts ``idx``; raises :class:`AttentionPlanError` if none does."""
        if idx.batch_size == 0:
            self.active = None
            return
        if self._plan_uploaded is not None:
            self._plan_uploaded.synchronize()
        shape = self.shape
        reasons: list[str] = []
        for backend in self.backends:
            layout = "packed" if backend in PACKED_BACKENDS else "split"
            try:
                self._wrapper(backend).plan(
                    metadata=self._metadata(backend, idx),
                    num_heads=shape.num_heads,
                    head_dim_ckv=shape.head_dim_ckv,
                    head_dim_kpe=shape.head_dim_kpe,
                    page_size=shape.page_size,
                    causal=True,
                    sm_scale=self.sm_scale,
                    q_data_type=shape.dtype,
                    kv_data_type=shape.dtype,
                    query_layout=layout,
                    kv_cache_layout=layout,
                )
            except self._unsupported as error:
                reasons.append(f"{backend}: {error}")
                continue
            self.active = backend
            self.plans[backend] += 1
            if self.device.type == "cuda":
                self._plan_uploaded = torch.cuda.current_stream(self.device).record_event()
            return
        self.active = None
        raise AttentionPlanError(
            f"no FlashInfer MLA backend accepted a batch of {idx.batch_size} requests "
            f"({idx.num_tokens} query tokens, longest KV {idx.max_kv_len}): " + "; ".join(reasons)
        )

    def forward(self, layer_idx: int, q_latent: Tensor, q_pe: Tensor, ckv_cache: Tensor, kpe_cache: Tensor) -> Tensor:
        """``o_latent [T, H, kv_lora_rank]`` for one layer, with the step's plan."""
        if self.active is None:
            raise AttentionPlanError(f"layer {layer_idx}: forward() without a planned step")
        wrapper = self._wrappers[self.active]
        dtype = self.shape.dtype
        q_latent = q_latent.to(dtype).contiguous()
        q_pe = q_pe.to(dtype).contiguous()
        query: Tensor | tuple[Tensor, Tensor]
        query = torch.cat((q_latent, q_pe), dim=-1) if self.active in PACKED_BACKENDS else (q_latent, q_pe)
        out: Tensor = wrapper.run(query=query, kv_cache=(ckv_cache, kpe_cache))
        return out
