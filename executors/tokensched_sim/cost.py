"""A roofline cost model of one inference step: how long a batch takes on a deployment.

A step runs every layer once over all its tokens. Each layer is a few phases
(attention projections, prefill attention, decode attention, the MLP or MoE,
and the lm_head once per step); a phase takes ``max(compute, memory traffic)``
seconds, where compute is FLOPs over the achieved tensor-core rate and memory
is bytes over the achieved HBM bandwidth. Tensor parallelism adds two
all-reduces of the activations per layer, and every step pays a fixed
overhead (kernel launches, sampling). See docs/sim.md for the derivation.

Everything is per GPU rank: TP divides weights, heads and FLOPs by ``tp``,
except MLA's latent KV cache, which every rank reads (and holds) whole.

The model is evaluated from a :class:`BatchShape`: a handful of sums over the
step's requests, so its cost is O(1) once the sums are taken (O(requests) in
the executor, with tiny constants).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokensched_sim.presets import Dtype, GPUSpec, ModelSpec, gpu_preset, model_preset
from tokensched_sim.shape import BatchShape

_GIB = 1 << 30
ACTIVATION_BYTES = 2  # BF16 hidden states, all-reduced between TP ranks


class Efficiency(BaseModel):
    """Achieved fractions of datasheet peaks, plus fixed costs: the knobs that calibration fits.

    The defaults are engineering assumptions, not measurements; fit them to a
    real GPU with ``python -m tokensched_sim.calibrate measured.csv``.
    ``matmul``: large GEMMs reach 60-80% of dense peak, grouped MoE GEMMs less.
    ``attention``: FlashAttention-class prefill kernels reach about half of peak.
    ``memory``: streaming kernels reach ~80% of HBM bandwidth.
    ``network``: NCCL all-reduce bus bandwidth vs NVLink per-direction peak.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    matmul: float = Field(default=0.6, gt=0, le=1)
    attention: float = Field(default=0.5, gt=0, le=1)
    memory: float = Field(default=0.8, gt=0, le=1)
    network: float = Field(default=0.7, gt=0, le=1)
    step_overhead_s: float = Field(default=5e-4, ge=0, description="launches, sampling, host sync per step")
    allreduce_latency_s: float = Field(default=8e-6, ge=0, description="fixed latency of one all-reduce")


class Deployment(BaseModel):
    """A model served on ``tp`` GPUs with tensor parallelism; names of presets are accepted.

    ``kv_dtype`` overrides the model's KV cache type (e.g. ``"fp8"``).
    KV capacity is what is left of ``memory_utilization`` of each GPU's memory
    after the rank's weights and ``reserved_bytes`` (activations, CUDA graphs).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelSpec = Field(default_factory=lambda: model_preset("kimi-k2.5"))
    gpu: GPUSpec = Field(default_factory=lambda: gpu_preset("b200"))
    tp: int = Field(default=4, ge=1, le=72)
    kv_dtype: Dtype | None = None
    efficiency: Efficiency = Efficiency()
    memory_utilization: float = Field(default=0.9, gt=0, le=1, description="vLLM's gpu_memory_utilization default")
    reserved_bytes: float = Field(default=2 * _GIB, ge=0)
    draft_layers: int = Field(default=1, ge=1, description="layers of the draft head (MTP/EAGLE-style)")

    if TYPE_CHECKING:  # the validators below accept preset names; tell the type checker so

        def __init__(
            self,
            *,
            model: ModelSpec | str = ...,
            gpu: GPUSpec | str = ...,
            tp: int = ...,
            kv_dtype: Dtype | str | None = ...,
            efficiency: Efficiency = ...,
            memory_utilization: float = ...,
            reserved_bytes: float = ...,
            draft_layers: int = ...,
        ) -> None: ...

    @field_validator("model", mode="before")
    @classmethod
    def _model_by_name(cls, value: Any) -> Any:
        return model_preset(value) if isinstance(value, str) else value

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu_by_name(cls, value: Any) -> Any:
        return gpu_preset(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tp_divides_heads(self) -> Deployment:
        if self.model.num_heads % self.tp:
            raise ValueError(f"tp={self.tp} does not divide {self.model.name}'s {self.model.num_heads} heads")
        return self


PHASES = ("attn_proj", "prefill_attn", "decode_attn", "dense_mlp", "moe", "lm_head")
"""Phase names, in the order of :meth:`CostModel.terms`. ``prefill_attn`` and ``decode_attn`` use the
attention efficiency, the others the matmul efficiency."""
ATTENTION_PHASES = frozenset({"prefill_attn", "decode_attn"})


@attrs.frozen(slots=True)
class Terms:
    """A step's cost before efficiencies: per phase, seconds at peak compute and at peak bandwidth."""

    compute_s: tuple[float, ...]  # one per PHASES entry
    memory_s: tuple[float, ...]
    network_s: float  # all-reduce bytes at peak NVLink bandwidth
    num_allreduces: int


class CostModel:
    """Per-rank constants of a :class:`Deployment`, precomputed once; ``step_time`` is then O(1).

    >>> cm = CostModel(Deployment(model="dense-8b", gpu="h100", tp=1))
    >>> round(cm.step_time(BatchShape.from_counts(num_decode_requests=1, decode_context_tokens=1000)) * 1e3, 2)
    6.15
    """

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        m, g, tp = deployment.model, deployment.gpu, deployment.tp
        self.efficiency = deployment.efficiency
        kv_dtype = deployment.kv_dtype or m.kv_dtype
        bw = g.hbm_bytes_per_s
        peak_w = g.peak_flops(m.weight_dtype)
        peak_e = g.peak_flops(m.expert_dtype)
        peak_attn = g.bf16_flops  # attention math in BF16 whatever the KV storage type
        wb, eb = m.weight_dtype.bytes, m.expert_dtype.bytes
        heads = m.num_heads // tp
        self.num_layers = m.num_layers
        self.num_dense_layers = m.num_layers - m.num_moe_layers
        self.num_moe_layers = m.num_moe_layers

        # Weights each rank reads per layer, and seconds per token of their matmuls at peak.
        attn_params = m.attn_params_sharded / tp + m.attn_params_replicated
        self._proj_c = 2 * attn_params / peak_w
        self._proj_m = attn_params * wb / bw
        mlp_params = m.dense_mlp_params / tp
        self._mlp_c = 2 * mlp_params / peak_w
        self._mlp_m = mlp_params * wb / bw
        always = m.num_shared_experts * m.expert_params / tp + m.router_params  # router replicated
        expert = m.expert_params / tp
        self._moe_c = 2 * always / peak_w + 2 * m.num_experts_per_token * expert / peak_e
        self._moe_always_m = always * wb / bw
        self._expert_m = expert * eb / bw
        self._num_experts = m.num_experts
        # (1 - k/E)^T is the chance one expert is missed by all T tokens (each picks k of E uniformly).
        self._log_miss = math.log1p(-m.num_experts_per_token / m.num_experts) if m.num_experts else 0.0
        head_params = m.embedding_params / tp
        self._head_c = 2 * head_params / peak_w
        self._head_m = head_params * wb / bw

        # Attention: FLOPs per query-key pair and KV bytes per cached token, per layer per rank.
        if m.attention == "mla":
            # Prefill decompresses the latent (kv_b_proj) and runs MHA over qk=nope+rope, v=v_head_dim;
            # decode absorbs kv_b into the query and attends in latent space: qk=kv_lora+rope, v=kv_lora.
            self._pre_pair_c = 2 * heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim) / peak_attn
            self._pre_ctx_c = 2 * m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim) / peak_attn
            self._dec_pair_c = 2 * heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim) / peak_attn
            kv_values_rank = m.kv_values_per_token_layer  # the latent is shared by all heads: whole on every rank
        else:
            self._pre_pair_c = self._dec_pair_c = 2 * heads * 2 * m.head_dim / peak_attn
            self._pre_ctx_c = 0.0
            kv_heads_rank = max(m.num_kv_heads / tp, 1.0)  # KV heads are replicated when tp > num_kv_heads
            kv_values_rank = round(2 * kv_heads_rank * m.head_dim)
        self.kv_bytes_per_token_layer = kv_values_rank * kv_dtype.bytes
        self._kv_m = self.kv_bytes_per_token_layer / bw

        # Two all-reduces per layer (after attention, after the MLP), ring algorithm.
        link = g.nvlink_bytes_per_s / 2  # one direction
        self._ar_s = (2 * (tp - 1) / tp) * m.hidden_size * ACTIVATION_BYTES / link if tp > 1 else 0.0
        self._ar_per_layer = 2 if tp > 1 else 0

        # Memory: what the weights leave for the KV cache.
        self.weight_bytes_per_rank = (
            attn_params * wb * m.num_layers
            + mlp_params * wb * self.num_dense_layers
            + (m.num_experts * expert * eb + always * wb) * self.num_moe_layers
            + 2 * head_params * wb
        )
        self.kv_bytes_per_token = self.kv_bytes_per_token_layer * m.num_layers
        budget = g.memory_bytes * deployment.memory_utilization - self.weight_bytes_per_rank - deployment.reserved_bytes
        if budget < self.kv_bytes_per_token:
            raise ValueError(
                f"{m.name} on {tp}x {g.name}: weights take {self.weight_bytes_per_rank / 1e9:.1f} GB per rank of "
                f"{g.memory_bytes * deployment.memory_utilization / 1e9:.1f} GB usable; no room for a KV cache"
            )
        self.kv_budget_bytes = budget
        self.num_kv_tokens = int(budget // self.kv_bytes_per_token)
        self._fold_efficiency()

    def num_kv_blocks(self, block_size: int) -> int:
        """KV blocks of ``block_size`` tokens that fit one rank's memory (every rank holds the same tokens)."""
        return self.num_kv_tokens // block_size

    def experts_touched(self, num_tokens: int) -> float:
        """Expected distinct routed experts per MoE layer when ``num_tokens`` tokens each pick k of E."""
        if not self._num_experts or num_tokens <= 0:
            return 0.0
        return self._num_experts * -math.expm1(num_tokens * self._log_miss)

    def terms(self, shape: BatchShape, layers: tuple[int, int, int] | None = None) -> Terms:
        """Seconds at peak per phase; ``layers`` = (attention, dense-MLP, MoE) layer counts (default: all)."""
        n_attn, n_dense, n_moe = layers or (self.num_layers, self.num_dense_layers, self.num_moe_layers)
        t = shape.num_tokens
        kv_m = self._kv_m
        compute = (
            n_attn * t * self._proj_c,
            n_attn * (shape.prefill_pairs * self._pre_pair_c + shape.prefill_context_tokens * self._pre_ctx_c),
            n_attn * shape.decode_pairs * self._dec_pair_c,
            n_dense * t * self._mlp_c,
            n_moe * t * self._moe_c,
            shape.num_logits * self._head_c,
        )
        memory = (
            n_attn * self._proj_m,
            n_attn * shape.prefill_kv_tokens * kv_m,
            n_attn * shape.decode_kv_tokens * kv_m,
            n_dense * self._mlp_m,
            n_moe * (self._moe_always_m + self.experts_touched(t) * self._expert_m) if t else 0.0,
            self._head_m if shape.num_logits else 0.0,
        )
        return Terms(compute, memory, n_attn * self._ar_per_layer * t * self._ar_s, n_attn * self._ar_per_layer)

    def time_from_terms(self, terms: Terms, efficiency: Efficiency | None = None) -> float:
        """Seconds of a step from its :class:`Terms` and a set of efficiencies."""
        e = efficiency or self.efficiency
        x_mm, x_attn, x_mem = 1 / e.matmul, 1 / e.attention, 1 / e.memory
        c, m = terms.compute_s, terms.memory_s
        total = (
            max(c[0] * x_mm, m[0] * x_mem)
            + max(c[1] * x_attn, m[1] * x_mem)
            + max(c[2] * x_attn, m[2] * x_mem)
            + max(c[3] * x_mm, m[3] * x_mem)
            + max(c[4] * x_mm, m[4] * x_mem)
            + max(c[5] * x_mm, m[5] * x_mem)
        )
        return total + terms.network_s / e.network + terms.num_allreduces * e.allreduce_latency_s

    def _fold_efficiency(self) -> None:
        """Whole-model constants with the efficiencies applied, so ``step_time`` is a dozen multiply-adds."""
        e = self.efficiency
        x_mm, x_attn, x_mem = 1 / e.matmul, 1 / e.attention, 1 / e.memory
        n, nd, nm = self.num_layers, self.num_dense_layers, self.num_moe_layers
        self._f_proj = (n * self._proj_c * x_mm, n * self._proj_m * x_mem)
        self._f_attn = (n * self._pre_pair_c * x_attn, n * self._pre_ctx_c * x_attn, n * self._dec_pair_c * x_attn)
        self._f_kv = n * self._kv_m * x_mem
        self._f_mlp = (nd * self._mlp_c * x_mm, nd * self._mlp_m * x_mem)
        self._f_moe = (nm * self._moe_c * x_mm, nm * self._moe_always_m * x_mem, nm * self._expert_m * x_mem)
        self._f_head = (self._head_c * x_mm, self._head_m * x_mem)
        self._f_net = n * self._ar_per_layer * self._ar_s / e.network
        self._f_allreduce_latency = n * self._ar_per_layer * e.allreduce_latency_s
        self._f_const = self._f_allreduce_latency + e.step_overhead_s

    def step_time(self, shape: BatchShape) -> float:
        """Modelled seconds of one step of the target model, fixed overhead included.

        Equal to ``time_from_terms(terms(shape)) + step_overhead_s``, evaluated
        from precomputed whole-model constants: this runs once per simulated step.
        """
        t = shape.num_tokens
        if not t:
            return 0.0
        proj_c, proj_m = self._f_proj
        total = self._f_const + t * self._f_net + (t * proj_c if t * proj_c > proj_m else proj_m)
        pre_c, ctx_c, dec_c = self._f_attn
        if shape.prefill_pairs:
            c = shape.prefill_pairs * pre_c + shape.prefill_context_tokens * ctx_c
            m = shape.prefill_kv_tokens * self._f_kv
            total += c if c > m else m
        if shape.decode_pairs:
            c, m = shape.decode_pairs * dec_c, shape.decode_kv_tokens * self._f_kv
            total += c if c > m else m
        if self.num_dense_layers:
            c, m = self._f_mlp
            total += t * c if t * c > m else m
        if self.num_moe_layers:
            c, always, per_expert = self._f_moe
            c, m = t * c, always + self.experts_touched(t) * per_expert
            total += c if c > m else m
        if shape.num_logits:
            c, m = self._f_head
            total += shape.num_logits * c if shape.num_logits * c > m else m
        return total

    def draft_layer_counts(self) -> tuple[int, int, int]:
        """(attention, dense-MLP, MoE) layers of the draft head: ``draft_layers`` layers of the target's kind."""
        n = self.deployment.draft_layers
        return (n, 0, n) if self.num_moe_layers else (n, n, 0)

    def draft_time(self, num_requests: int, kv_tokens: int, num_drafts: int) -> float:
        """Seconds to propose ``num_drafts`` tokens each for ``num_requests`` requests with a small draft head.

        The draft head (:meth:`draft_layer_counts`, an MTP/EAGLE-style module)
        plus the lm_head runs once per draft token, sequentially; the j-th pass
        attends over ``kv_tokens + j * num_requests`` tokens. Equal to summing
        ``time_from_terms(terms(shape_j, draft_layer_counts()))`` over the passes.
        """
        r = num_requests
        if not r or not num_drafts:
            return 0.0
        n_attn, n_dense, n_moe = self.draft_layer_counts()
        a = n_attn / self.num_layers
        proj_c, proj_m = self._f_proj
        once = (r * proj_c if r * proj_c > proj_m else proj_m) * a
        if n_moe:
            c, always, per_expert = self._f_moe
            c, m = r * c, always + self.experts_touched(r) * per_expert
            once += (c if c > m else m) * n_moe / self.num_moe_layers
        else:
            c, m = self._f_mlp
            once += (r * c if r * c > m else m) * n_dense / self.num_dense_layers
        c, m = self._f_head
        once += r * c if r * c > m else m
        once += (r * self._f_net + self._f_allreduce_latency) * a
        # One query per request: pairs == KV tokens, so compute and traffic grow together over the passes.
        _, _, dec_c = self._f_attn
        kv_total = num_drafts * kv_tokens + r * num_drafts * (num_drafts - 1) // 2
        return num_drafts * once + (dec_c if dec_c > self._f_kv else self._f_kv) * a * kv_total

    def breakdown(self, shape: BatchShape) -> dict[str, float]:
        """Seconds per phase with efficiencies applied (for reports and tests), plus network and overhead."""
        terms = self.terms(shape)
        e = self.efficiency
        out = {}
        for i, name in enumerate(PHASES):
            x = 1 / (e.attention if name in ATTENTION_PHASES else e.matmul)
            out[name] = max(terms.compute_s[i] * x, terms.memory_s[i] / e.memory)
        out["allreduce"] = terms.network_s / e.network + terms.num_allreduces * e.allreduce_latency_s
        out["overhead"] = e.step_overhead_s
        return out
