"""Backend choice per GPU compute capability, and the errors that say what is missing (CPU only)."""

from __future__ import annotations

import builtins
from typing import Any

import attrs
import pytest
import torch

from tokensched import TokenschedError
from tokensched_flashinfer import arch
from tokensched_flashinfer.arch import FlashInferUnavailable, MLAShape, backend_rejection, choose_backends

HOPPER, BLACKWELL, B300, RTX5090, ADA, AMPERE, VOLTA = (9, 0), (10, 0), (10, 3), (12, 0), (8, 9), (8, 0), (7, 0)
DEEPSEEK = MLAShape(num_heads=16, head_dim_ckv=512, head_dim_kpe=64, page_size=64, dtype=torch.bfloat16, packed=True)


def _shape(**changes: Any) -> MLAShape:
    return attrs.evolve(DEEPSEEK, **changes)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        (BLACKWELL, ("trtllm-gen", "fa2")),
        (B300, ("trtllm-gen", "fa2")),
        ((10, 7), ("trtllm-gen", "fa2")),
        (HOPPER, ("fa3", "fa2")),
        (RTX5090, ("fa2",)),
        (ADA, ("fa2",)),
        (AMPERE, ("fa2",)),
    ],
)
def test_deepseek_shapes_get_the_native_kernel_first_and_fa2_as_fallback(
    capability: tuple[int, int], expected: tuple[str, ...]
) -> None:
    assert choose_backends(capability, DEEPSEEK) == expected


def test_blackwell_falls_back_to_fa2_when_trtllm_gen_cannot_take_the_shape() -> None:
    assert choose_backends(BLACKWELL, _shape(page_size=16)) == ("fa2",)
    assert choose_backends(BLACKWELL, _shape(packed=False)) == ("fa2",)
    assert choose_backends(BLACKWELL, _shape(num_heads=96)) == ("fa2",)
    assert choose_backends(BLACKWELL, _shape(dtype=torch.float16)) == ("fa2",)
    assert choose_backends(BLACKWELL, _shape(head_dim_ckv=256)) == ("trtllm-gen", "fa2")
    assert choose_backends(BLACKWELL, _shape(head_dim_ckv=384)) == ("fa2",)


def test_hopper_fa3_takes_split_caches_and_any_block_size() -> None:
    assert choose_backends(HOPPER, _shape(packed=False, page_size=16)) == ("fa3", "fa2")
    assert choose_backends(HOPPER, _shape(head_dim_ckv=384)) == ("fa2",)  # fa3 PV tile widths are 128/256/512


@pytest.mark.parametrize(
    ("backend", "capability", "shape", "fragment"),
    [
        ("trtllm-gen", HOPPER, DEEPSEEK, "needs SM100/SM103/SM107 (Blackwell), this GPU is SM90"),
        ("trtllm-gen", BLACKWELL, _shape(page_size=16), "block_size 32 or 64, got 16"),
        ("trtllm-gen", BLACKWELL, _shape(head_dim_kpe=32), "got (512, 32)"),
        ("fa3", ADA, DEEPSEEK, "needs SM90 (Hopper), this GPU is SM89"),
        ("fa3", HOPPER, _shape(dtype=torch.float32), "float16 or bfloat16"),
        ("fa2", VOLTA, DEEPSEEK, "needs SM80 or newer, this GPU is SM70"),
        ("fa2", AMPERE, _shape(head_dim_ckv=32, head_dim_kpe=16), "got (32, 16)"),
    ],
)
def test_each_rejection_names_its_reason(
    backend: str, capability: tuple[int, int], shape: MLAShape, fragment: str
) -> None:
    reason = backend_rejection(backend, capability, shape)
    assert reason is not None and fragment in reason


def test_supported_pairs_have_no_rejection() -> None:
    assert backend_rejection("trtllm-gen", B300, _shape(page_size=32, num_heads=128)) is None
    assert backend_rejection("fa3", HOPPER, _shape(head_dim_ckv=128, head_dim_kpe=0, dtype=torch.float16)) is None
    assert backend_rejection("fa2", RTX5090, _shape(head_dim_ckv=256, page_size=1)) is None


def test_an_explicit_backend_is_used_alone_or_refused() -> None:
    assert choose_backends(HOPPER, DEEPSEEK, requested="fa2") == ("fa2",)
    with pytest.raises(FlashInferUnavailable, match="fa3 needs SM90"):
        choose_backends(ADA, DEEPSEEK, requested="fa3")
    with pytest.raises(ValueError, match="unknown FlashInfer MLA backend 'cutlass'"):
        choose_backends(BLACKWELL, DEEPSEEK, requested="cutlass")


def test_old_gpu_is_reported_as_the_missing_architecture() -> None:
    with pytest.raises(FlashInferUnavailable) as info:
        choose_backends(VOLTA, DEEPSEEK)
    assert info.value.missing == "GPU architecture"
    assert "SM70" in str(info.value) and "needs SM80 or newer" in str(info.value)
    assert isinstance(info.value, TokenschedError)


def test_tiny_model_dims_are_reported_as_an_unsupported_shape_not_a_gpu() -> None:
    tiny = _shape(head_dim_ckv=32, head_dim_kpe=16, num_heads=4, page_size=16, packed=False)
    with pytest.raises(FlashInferUnavailable) as info:
        choose_backends(HOPPER, tiny)
    assert info.value.missing == "a supported MLA shape"
    assert "fa3 needs kv_lora_rank in (128, 256, 512)" in str(info.value)
    assert "fa2 needs kv_lora_rank a multiple of 128" in str(info.value)


def test_cpu_device_is_refused_as_missing_cuda() -> None:
    with pytest.raises(FlashInferUnavailable, match="needs CUDA: it runs on a CUDA device, got device 'cpu'") as info:
        arch.require_cuda(torch.device("cpu"))
    assert info.value.missing == "CUDA"


def test_no_visible_gpu_is_refused_as_missing_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FlashInferUnavailable, match="needs CUDA") as info:
        arch.require_cuda(torch.device("cuda"))
    assert "torch.version.cuda is None" in str(info.value) or "finds no usable GPU" in str(info.value)


def test_visible_gpu_reports_its_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert arch.require_cuda(torch.device("cuda", 0)) == (9, 0)


def test_missing_flashinfer_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "flashinfer" or name.startswith("flashinfer."):
            raise ImportError("No module named 'flashinfer'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(FlashInferUnavailable, match=r"needs flashinfer: .*install tokensched\[flashinfer\]") as info:
        arch.import_flashinfer()
    assert info.value.missing == "flashinfer"
