"""Hardware and model specifications, with presets whose every figure names its source.

A :class:`GPUSpec` is what the vendor datasheet promises (peaks; the cost
model's efficiency factors say how much of it is achieved). A
:class:`ModelSpec` is the shape published in the model's ``config.json``; the
parameter counts the cost model needs are derived from it, so a new model is a
few numbers, not a table of sizes.

Sources, by name (figures are per GPU; "dense" is the datasheet's sparse figure
halved, as the datasheets footnote their headline numbers "with sparsity").
Memory is what the device reports (``nvidia-smi`` ``memory.total``, MiB), since
that is what engines take fractions of: H100 SXM5 81,559 MiB, H200 143,771 MiB,
B200 183,359 MiB (as printed by nvidia-smi on those GPUs in many public logs).

- NVIDIA H100 Tensor Core GPU datasheet (H100 SXM5): 80 GB HBM3 at 3.35 TB/s;
  BF16 1,979 / FP8 3,958 TFLOP/s with sparsity; NVLink 900 GB/s.
- NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): 141 GB HBM3e at 4.8 TB/s;
  BF16 1,979 / FP8 3,958 TFLOP/s with sparsity; NVLink 900 GB/s.
- NVIDIA HGX B200 datasheet (8 GPUs, 1,000 W each): FP4 144 / FP8 72 / BF16 36
  PFLOP/s with sparsity for the board; NVLink 5 at 1.8 TB/s per GPU; B200 HBM3e
  at 8 TB/s; NVIDIA DGX B200 datasheet: 1,440 GB GPU memory for 8 GPUs.
- moonshotai/Kimi-K2.5 model card and config.json (``text_config``): 61 layers,
  hidden 7168, 64 heads, MLA with q_lora_rank 1536, kv_lora_rank 512,
  qk_rope_head_dim 64, qk_nope_head_dim 128, v_head_dim 128; 384 routed experts,
  8 per token, 1 shared, moe_intermediate_size 2048, first_k_dense_replace 1,
  intermediate_size 18432, vocab 163840; routed experts in INT4
  (compressed-tensors, group size 32), attention, shared experts and lm_head in
  BF16. Card: 1T total, 32B activated parameters.
- deepseek-ai/DeepSeek-V3 model card and config.json: as above but 128 heads,
  256 routed experts, first_k_dense_replace 3, vocab 129280; FP8 weights (block
  scales 128x128). Card: 671B total, 37B activated.
- meta-llama/Llama-3.1-8B config.json: 32 layers, hidden 4096, 32 heads, 8 KV
  heads, head_dim 128, intermediate 14336, vocab 128256, BF16.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Dtype(StrEnum):
    """Storage and compute types. ``int4`` and ``fp4`` carry their group scales in ``bytes``."""

    BF16 = "bf16"
    FP8 = "fp8"
    FP4 = "fp4"  # NVFP4: 4-bit values + one FP8 scale per 16 -> 4.5 bits
    INT4 = "int4"  # compressed-tensors pack-quantized: 4-bit values + one BF16 scale per 32 -> 4.5 bits

    @property
    def bytes(self) -> float:
        return _DTYPE_BYTES[self]


_DTYPE_BYTES = {Dtype.BF16: 2.0, Dtype.FP8: 1.0, Dtype.FP4: 4.5 / 8, Dtype.INT4: 4.5 / 8}


class GPUSpec(BaseModel):
    """Datasheet peaks of one GPU. ``None`` for a compute type the GPU has no tensor cores for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    memory_bytes: float = Field(gt=0, description="memory the device reports (nvidia-smi memory.total)")
    hbm_bytes_per_s: float = Field(gt=0, description="HBM bandwidth")
    bf16_flops: float = Field(gt=0, description="dense BF16 tensor-core FLOP/s")
    fp8_flops: float | None = Field(default=None, gt=0, description="dense FP8 tensor-core FLOP/s")
    fp4_flops: float | None = Field(default=None, gt=0, description="dense FP4 tensor-core FLOP/s")
    nvlink_bytes_per_s: float = Field(gt=0, description="NVLink bandwidth per GPU, both directions together")
    source: str = ""

    def peak_flops(self, dtype: Dtype) -> float:
        """Peak FLOP/s for matmuls in ``dtype`` (INT4 weights run as W4A16, at the BF16 peak)."""
        match dtype:
            case Dtype.BF16 | Dtype.INT4:
                return self.bf16_flops
            case Dtype.FP8:
                peak = self.fp8_flops
            case Dtype.FP4:
                peak = self.fp4_flops
        if peak is None:
            raise ValueError(f"GPU {self.name} has no {dtype} tensor cores")
        return peak


class ModelSpec(BaseModel):
    """The shape of a decoder-only transformer, as its config.json publishes it.

    ``attention="mla"`` is DeepSeek's multi-head latent attention: the KV cache
    holds one latent of ``kv_lora_rank + qk_rope_head_dim`` values per token
    and layer, shared by all heads. ``attention="gqa"`` caches
    ``2 * num_kv_heads * head_dim`` values. Layers ``num_dense_layers`` and up
    are MoE layers when ``num_experts > 0``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=2)
    num_heads: int = Field(ge=1)
    attention: Literal["mla", "gqa"]
    # GQA
    num_kv_heads: int = Field(default=0, ge=0)
    head_dim: int = Field(default=0, ge=0)
    # MLA
    q_lora_rank: int = Field(default=0, ge=0, description="0: queries projected directly from the hidden state")
    kv_lora_rank: int = Field(default=0, ge=0)
    qk_rope_head_dim: int = Field(default=0, ge=0)
    qk_nope_head_dim: int = Field(default=0, ge=0)
    v_head_dim: int = Field(default=0, ge=0)
    # MLP / MoE
    intermediate_size: int = Field(ge=1, description="SwiGLU width of the dense MLP layers")
    num_dense_layers: int = Field(ge=0, description="leading layers with a dense MLP (first_k_dense_replace)")
    num_experts: int = Field(default=0, ge=0, description="routed experts per MoE layer; 0 for a dense model")
    num_experts_per_token: int = Field(default=0, ge=0)
    num_shared_experts: int = Field(default=0, ge=0)
    moe_intermediate_size: int = Field(default=0, ge=0)
    # Types
    weight_dtype: Dtype = Field(default=Dtype.BF16, description="attention, dense MLP, shared experts, embeddings")
    expert_dtype: Dtype = Field(default=Dtype.BF16, description="routed expert weights")
    kv_dtype: Dtype = Dtype.BF16
    # Vision tower of a multimodal checkpoint (0: text-only). Engines that size memory by the model's
    # class read it: SGLang lowers mem_fraction_static for a VLM by the ViT's layers x hidden^2.
    vision_num_layers: int = Field(default=0, ge=0, description="ViT layers (vision_config.num_hidden_layers)")
    vision_hidden_size: int = Field(default=0, ge=0, description="ViT width (vision_config.hidden_size)")
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.attention == "mla":
            if not (self.kv_lora_rank and self.qk_nope_head_dim and self.v_head_dim):
                raise ValueError(f"{self.name}: MLA needs kv_lora_rank, qk_nope_head_dim and v_head_dim")
        elif not (self.num_kv_heads and self.head_dim):
            raise ValueError(f"{self.name}: GQA needs num_kv_heads and head_dim")
        if self.num_experts and not (0 < self.num_experts_per_token <= self.num_experts and self.moe_intermediate_size):
            raise ValueError(f"{self.name}: an MoE needs 0 < num_experts_per_token <= num_experts and a width")
        if self.num_dense_layers > self.num_layers:
            raise ValueError(f"{self.name}: num_dense_layers {self.num_dense_layers} > num_layers {self.num_layers}")
        return self

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.num_experts else 0

    @property
    def kv_values_per_token_layer(self) -> int:
        """Cached values per token per layer (whole model, before any tensor-parallel split)."""
        if self.attention == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    # Parameter counts per layer, split into what tensor parallelism shards and what it replicates.
    @property
    def attn_params_replicated(self) -> int:
        """MLA's down-projections (q_a, kv_a) are small and replicated on every rank."""
        if self.attention != "mla":
            return 0
        q_a = self.hidden_size * self.q_lora_rank
        kv_a = self.hidden_size * (self.kv_lora_rank + self.qk_rope_head_dim)
        return q_a + kv_a

    @property
    def attn_params_sharded(self) -> int:
        h, n = self.hidden_size, self.num_heads
        if self.attention == "mla":
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q_b = (self.q_lora_rank or h) * n * qk
            kv_b = self.kv_lora_rank * n * (self.qk_nope_head_dim + self.v_head_dim)
            return q_b + kv_b + n * self.v_head_dim * h
        return h * n * self.head_dim * 2 + h * 2 * self.num_kv_heads * self.head_dim

    @property
    def dense_mlp_params(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def expert_params(self) -> int:
        """One routed (or shared) expert: gate, up and down projections."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def router_params(self) -> int:
        return self.hidden_size * self.num_experts

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def total_params(self) -> int:
        """Every weight (embedding and untied lm_head included); compare with the model card."""
        attn = (self.attn_params_replicated + self.attn_params_sharded) * self.num_layers
        dense = self.dense_mlp_params * (self.num_layers - self.num_moe_layers)
        moe = (self.num_experts + self.num_shared_experts) * self.expert_params + self.router_params
        return attn + dense + moe * self.num_moe_layers + 2 * self.embedding_params

    def active_params(self) -> int:
        """Weights one token multiplies (lm_head included, embedding lookup not)."""
        attn = (self.attn_params_replicated + self.attn_params_sharded) * self.num_layers
        dense = self.dense_mlp_params * (self.num_layers - self.num_moe_layers)
        moe = (self.num_experts_per_token + self.num_shared_experts) * self.expert_params + self.router_params
        return attn + dense + moe * self.num_moe_layers + self.embedding_params


_TERA = 1e12
_GB = 1e9
_MIB = 1 << 20

GPUS: dict[str, GPUSpec] = {
    "h100": GPUSpec(
        name="H100 SXM5 80GB",
        memory_bytes=81_559 * _MIB,
        hbm_bytes_per_s=3.35 * _TERA,
        bf16_flops=989.5 * _TERA,
        fp8_flops=1979 * _TERA,
        nvlink_bytes_per_s=900 * _GB,
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM5); nvidia-smi memory.total 81,559 MiB",
    ),
    "h200": GPUSpec(
        name="H200 SXM 141GB",
        memory_bytes=143_771 * _MIB,
        hbm_bytes_per_s=4.8 * _TERA,
        bf16_flops=989.5 * _TERA,
        fp8_flops=1979 * _TERA,
        nvlink_bytes_per_s=900 * _GB,
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM); nvidia-smi memory.total 143,771 MiB",
    ),
    "b200": GPUSpec(
        name="B200 (HGX, 1000 W)",
        memory_bytes=183_359 * _MIB,
        hbm_bytes_per_s=8.0 * _TERA,
        bf16_flops=2250 * _TERA,
        fp8_flops=4500 * _TERA,
        fp4_flops=9000 * _TERA,
        nvlink_bytes_per_s=1800 * _GB,
        source="NVIDIA HGX B200 datasheet (board figures / 8, sparse / 2); nvidia-smi memory.total 183,359 MiB",
    ),
}

_DEEPSEEK_MLA = {
    "num_layers": 61,
    "hidden_size": 7168,
    "attention": "mla",
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "intermediate_size": 18432,
    "num_experts_per_token": 8,
    "num_shared_experts": 1,
    "moe_intermediate_size": 2048,
}

MODELS: dict[str, ModelSpec] = {
    "kimi-k2.5": ModelSpec.model_validate(
        {
            **_DEEPSEEK_MLA,
            "name": "Kimi-K2.5-class (MLA + MoE, ~1T total / ~32B active)",
            "vocab_size": 163840,
            "num_heads": 64,
            "num_dense_layers": 1,
            "num_experts": 384,
            "weight_dtype": Dtype.BF16,
            "expert_dtype": Dtype.INT4,
            "kv_dtype": Dtype.BF16,
            # MoonViT: vision_config vt_num_hidden_layers 27, vt_hidden_size 1152 (moonshotai/Kimi-K2.5
            # config.json; SGLang's KimiK25VisionConfig defaults, sglang/srt/configs/kimi_k25.py).
            "vision_num_layers": 27,
            "vision_hidden_size": 1152,
            "source": "moonshotai/Kimi-K2.5 model card and config.json (text_config, vision_config, "
            "quantization_config)",
        }
    ),
    "deepseek-v3": ModelSpec.model_validate(
        {
            **_DEEPSEEK_MLA,
            "name": "DeepSeek-V3-class (MLA + MoE, 671B total / 37B active)",
            "vocab_size": 129280,
            "num_heads": 128,
            "num_dense_layers": 3,
            "num_experts": 256,
            "weight_dtype": Dtype.FP8,
            "expert_dtype": Dtype.FP8,
            "kv_dtype": Dtype.BF16,
            "source": "deepseek-ai/DeepSeek-V3 model card and config.json",
        }
    ),
    "dense-8b": ModelSpec(
        name="dense 8B-class (Llama-3.1-8B shape, GQA)",
        num_layers=32,
        hidden_size=4096,
        vocab_size=128256,
        num_heads=32,
        attention="gqa",
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        num_dense_layers=32,
        weight_dtype=Dtype.BF16,
        kv_dtype=Dtype.BF16,
        source="meta-llama/Llama-3.1-8B config.json",
    ),
}


def gpu_preset(name: str) -> GPUSpec:
    """A GPU preset by name (``b200``, ``h200``, ``h100``)."""
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise ValueError(f"no GPU preset {name!r}; known: {', '.join(GPUS)}") from None


def model_preset(name: str) -> ModelSpec:
    """A model preset by name (``kimi-k2.5``, ``deepseek-v3``, ``dense-8b``)."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"no model preset {name!r}; known: {', '.join(MODELS)}") from None
