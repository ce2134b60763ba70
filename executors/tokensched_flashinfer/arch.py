"""Which FlashInfer MLA backend runs on which GPU, and what is missing when none can.

FlashInfer 0.7.2's ``BatchMLAPagedAttentionWrapper`` hosts several kernels
behind one ``backend=`` argument. Each runs only on some architectures and
shapes; the rules below restate the limits its planners enforce (read from
``flashinfer/mla/_batch_mla/_backends/``) so that the choice is made once, at
construction, with an error that names the reason instead of a refusal deep in
the first ``plan()``:

==============  ==================  =================================================
backend         GPUs                shapes
==============  ==================  =================================================
``trtllm-gen``  SM100, SM103, SM107 bf16; (ckv, kpe) in {(512, 64), (256, 64)};
                (Blackwell)         page size 32 or 64; heads not in 65..127;
                                    query and KV cache packed ([..., ckv + kpe])
``fa3``         SM90 (Hopper)       fp16/bf16; ckv in {128, 256, 512}; kpe % 64 == 0
``fa2``         SM80 and newer      fp16/bf16; ckv % 128 == 0; kpe % 64 == 0
==============  ==================  =================================================

The preference per GPU is the fastest native kernel first, FA2 last as the
portable fallback (it also takes what a faster one refuses at plan time).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import attrs
import torch

from tokensched.errors import TokenschedError

BACKENDS = ("trtllm-gen", "fa3", "fa2")
"""Backends this package knows how to drive, in no particular order."""

AUTO = "auto"
"""Pick by compute capability (this module's rule, not FlashInfer's own ``"auto"``)."""


class FlashInferUnavailable(TokenschedError, RuntimeError):
    """The FlashInfer executor cannot run here; ``missing`` says what is absent.

    ``missing`` is one of ``"CUDA"``, ``"flashinfer"``, ``"GPU architecture"`` (no
    backend runs on this GPU) or ``"a supported MLA shape"`` (backends run here,
    but none takes the model's head dims, dtype or block size).
    """

    def __init__(self, missing: str, detail: str) -> None:
        self.missing = missing
        super().__init__(f"FlashInferExecutor needs {missing}: {detail}")


@attrs.frozen(slots=True)
class MLAShape:
    """The attention facts that decide which kernels can serve a model."""

    num_heads: int
    head_dim_ckv: int  # kv_lora_rank: the latent each token caches
    head_dim_kpe: int  # qk_rope_head_dim: the decoupled RoPE key
    page_size: int  # the scheduler's block_size
    dtype: torch.dtype
    packed: bool  # query and KV cache are single [..., ckv + kpe] tensors (or adjacent views of one)


def backend_rejection(backend: str, capability: tuple[int, int], shape: MLAShape) -> str | None:
    """Why ``backend`` cannot serve ``shape`` on a GPU of ``capability``; None when it can."""
    major, minor = capability
    sm = f"SM{major}{minor}"
    half = shape.dtype in (torch.float16, torch.bfloat16)
    ckv, kpe = shape.head_dim_ckv, shape.head_dim_kpe
    if backend == "trtllm-gen":
        if capability not in ((10, 0), (10, 3), (10, 7)):
            return f"trtllm-gen needs SM100/SM103/SM107 (Blackwell), this GPU is {sm}"
        if shape.dtype != torch.bfloat16:
            return f"trtllm-gen needs bfloat16, the model runs in {shape.dtype}"
        if (ckv, kpe) not in ((512, 64), (256, 64)):
            return f"trtllm-gen needs (kv_lora_rank, rope_dim) of (512, 64) or (256, 64), got ({ckv}, {kpe})"
        if shape.page_size not in (32, 64):
            return f"trtllm-gen needs block_size 32 or 64, got {shape.page_size}"
        if 64 < shape.num_heads < 128:
            return f"trtllm-gen does not support 64 < num_heads < 128, got {shape.num_heads}"
        if not shape.packed:
            return "trtllm-gen needs the query and KV cache packed as [..., kv_lora_rank + rope_dim]"
        return None
    if backend == "fa3":
        if major != 9:
            return f"fa3 needs SM90 (Hopper), this GPU is {sm}"
        if not half:
            return f"fa3 needs float16 or bfloat16, the model runs in {shape.dtype}"
        if ckv not in (128, 256, 512) or kpe % 64:
            return f"fa3 needs kv_lora_rank in (128, 256, 512) and rope_dim a multiple of 64, got ({ckv}, {kpe})"
        return None
    if backend == "fa2":
        if major < 8:
            return f"fa2 needs SM80 or newer, this GPU is {sm}"
        if not half:
            return f"fa2 needs float16 or bfloat16, the model runs in {shape.dtype}"
        if ckv % 128 or kpe % 64:
            return f"fa2 needs kv_lora_rank a multiple of 128 and rope_dim a multiple of 64, got ({ckv}, {kpe})"
        return None
    raise ValueError(f"unknown FlashInfer MLA backend {backend!r}; known: {', '.join(BACKENDS)}")


def preferred_order(capability: tuple[int, int]) -> tuple[str, ...]:
    """Backends to try on a GPU of ``capability``, fastest first."""
    if capability in ((10, 0), (10, 3), (10, 7)):
        return ("trtllm-gen", "fa2")
    if capability[0] == 9:
        return ("fa3", "fa2")
    return ("fa2",)


def choose_backends(capability: tuple[int, int], shape: MLAShape, requested: str = AUTO) -> tuple[str, ...]:
    """The backends to use, in order: the first plans each step, the next ones take what it refuses.

    With ``requested == "auto"`` the list follows :func:`preferred_order`,
    keeping those that can serve ``shape``; a named backend is used alone.
    Raises :class:`FlashInferUnavailable` (``missing="GPU architecture"``)
    naming every backend's reason when nothing fits.
    """
    candidates: Sequence[str] = preferred_order(capability) if requested == AUTO else (requested,)
    if requested != AUTO and requested not in BACKENDS:
        raise ValueError(f"unknown FlashInfer MLA backend {requested!r}; use {AUTO!r} or one of {', '.join(BACKENDS)}")
    chosen: list[str] = []
    reasons: list[str] = []
    for backend in candidates:
        reason = backend_rejection(backend, capability, shape)
        if reason is None:
            chosen.append(backend)
        else:
            reasons.append(reason)
    if not chosen:
        # Name the GPU as what is missing only when no backend runs on it at all; otherwise it is the model's shape.
        arch_only = MLAShape(64, 512, 64, 64, torch.bfloat16, packed=True)
        arch_ok = any(backend_rejection(backend, capability, arch_only) is None for backend in candidates)
        raise FlashInferUnavailable(
            "a supported MLA shape" if arch_ok else "GPU architecture",
            f"no FlashInfer MLA backend serves this model on SM{capability[0]}{capability[1]}: " + "; ".join(reasons),
        )
    return tuple(chosen)


def require_cuda(device: torch.device) -> tuple[int, int]:
    """The compute capability of ``device``; raises :class:`FlashInferUnavailable` without CUDA."""
    if device.type != "cuda":
        raise FlashInferUnavailable("CUDA", f"it runs on a CUDA device, got device {str(device)!r}")
    if not torch.cuda.is_available():
        build = torch.version.cuda
        detail = (
            "this torch build has no CUDA support (torch.version.cuda is None); install a CUDA build of torch"
            if build is None
            else f"torch (CUDA {build}) finds no usable GPU (torch.cuda.is_available() is False)"
        )
        raise FlashInferUnavailable("CUDA", detail)
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def import_flashinfer() -> ModuleType:
    """Import flashinfer only when an executor is built (it is slow to import and may be absent)."""
    try:
        import flashinfer
    except ImportError as error:
        raise FlashInferUnavailable(
            "flashinfer",
            f"the flashinfer package could not be imported ({error}); install tokensched[flashinfer]",
        ) from error
    return flashinfer
