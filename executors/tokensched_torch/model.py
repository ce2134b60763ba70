"""A DeepSeek-style MLA transformer with seeded random weights (never downloaded).

Multi-head latent attention (DeepSeek-V2/V3) compresses keys and values into one
shared latent per token, which is all the KV cache has to hold:

- queries go through a low-rank bottleneck: ``h -> q_a (q_lora_rank) -> RMSNorm
  -> q_b -> per head [qk_nope_head_dim | qk_rope_head_dim]``;
- keys and values: ``h -> kv_a -> [c_kv (kv_lora_rank) | k_pe (qk_rope_head_dim)]``;
  ``c_kv`` is RMS-normed and ``k_pe`` (one rope key shared by all heads) is rotated.
  The cache keeps exactly these two tensors per token;
- ``kv_b`` expands ``c_kv`` into per-head ``k_nope`` and ``v``. In the
  *weight-absorbed* form used by the paged path it is never applied to the
  cache: ``q_nope`` is folded into latent space (``q_nope @ W_kb``), attention
  runs over the latents directly (an MQA with one shared key/value head), and
  ``W_vb`` maps the latent output back to per-head values. The dense reference
  in :mod:`tokensched_torch.reference` uses the *naive* form instead, so the
  comparisons in the tests check one against the other.

The feed-forward is SwiGLU, or a DeepSeek-style MoE (softmax top-k routing plus
optional shared experts) when ``num_experts > 0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

if TYPE_CHECKING:
    from tokensched_torch.attention import MLAStepMetadata
    from tokensched_torch.cache import PagedLatentCache


class MLAConfig(BaseModel):
    """Dimensions of the model; the defaults give a tiny model that runs tests in milliseconds.

    ``q_lora_rank=None`` means a full-rank query projection (as in DeepSeek-V2-Lite).
    ``num_experts=0`` means a dense SwiGLU feed-forward in every layer; otherwise
    layers from ``first_dense_layers`` on use MoE.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(default=256, ge=2)
    hidden_size: int = Field(default=64, ge=1)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    q_lora_rank: int | None = Field(default=48, ge=1)
    kv_lora_rank: int = Field(default=32, ge=1)
    qk_nope_head_dim: int = Field(default=16, ge=1)
    qk_rope_head_dim: int = Field(default=16, ge=2)
    v_head_dim: int = Field(default=16, ge=1)
    intermediate_size: int = Field(default=128, ge=1)
    num_experts: int = Field(default=0, ge=0)
    num_experts_per_tok: int = Field(default=2, ge=1)
    num_shared_experts: int = Field(default=0, ge=0)
    moe_intermediate_size: int = Field(default=32, ge=1)
    first_dense_layers: int = Field(default=0, ge=0)
    rms_norm_eps: float = Field(default=1e-6, gt=0.0)
    rope_theta: float = Field(default=10000.0, gt=0.0)
    init_seed: int = Field(default=0, description="seed of the random weights")

    @model_validator(mode="after")
    def _check(self) -> MLAConfig:
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim={self.qk_rope_head_dim} must be even (rotary pairs)")
        if self.num_experts and self.num_experts_per_tok > self.num_experts:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} exceeds num_experts={self.num_experts}")
        return self

    @property
    def rope_dim(self) -> int:
        return self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """Scale of q·k; the absorbed form keeps the naive form's head dim."""
        return float((self.qk_nope_head_dim + self.qk_rope_head_dim) ** -0.5)

    @classmethod
    def tiny(cls, **overrides: object) -> MLAConfig:
        """The default tiny model (2 layers, hidden 64)."""
        return cls.model_validate(overrides)

    @classmethod
    def small(cls, **overrides: object) -> MLAConfig:
        """A few-million-parameter model for CPU benchmarks."""
        base: dict[str, object] = dict(
            vocab_size=4096, hidden_size=256, num_layers=4, num_heads=8, q_lora_rank=192, kv_lora_rank=128,
            qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, intermediate_size=768,
        )  # fmt: skip
        return cls.model_validate(base | overrides)

    @classmethod
    def deepseek_attention(cls, **overrides: object) -> MLAConfig:
        """DeepSeek-V3's attention shapes (latent 512, rope 64, 16 heads) in a shallow model.

        FlashInfer's MLA kernels are specialised for these head dims.
        """
        base: dict[str, object] = dict(
            vocab_size=8192, hidden_size=1024, num_layers=2, num_heads=16, q_lora_rank=768, kv_lora_rank=512,
            qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, intermediate_size=2048,
        )  # fmt: skip
        return cls.model_validate(base | overrides)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # Half-precision inputs are normalised in float32; float64 stays float64 for tight tests.
        xf = x.float() if x.element_size() < 4 else x
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.to(out.dtype)).to(x.dtype)


class Rotary:
    """cos/sin of the rotary angles for one batch of positions, shared by all layers."""

    def __init__(self, positions: Tensor, dim: int, theta: float, dtype: torch.dtype) -> None:
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim))
        angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
        self.cos = angles.cos().to(dtype)
        self.sin = angles.sin().to(dtype)

    def apply(self, x: Tensor) -> Tensor:
        """Rotate ``x[..., tokens?, dim]`` in (first half, second half) pairs; tokens lead."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (half,)
        cos, sin = self.cos.view(shape), self.sin.view(shape)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class LatentAttentionBackend(Protocol):
    """What :meth:`MLAAttention.forward_paged` needs; see :mod:`tokensched_torch.attention`."""

    def forward(
        self, layer_idx: int, q_latent: Tensor, q_pe: Tensor, ckv_cache: Tensor, kpe_cache: Tensor
    ) -> Tensor: ...


class MLAAttention(nn.Module):
    def __init__(self, cfg: MLAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, nh = cfg.hidden_size, cfg.num_heads
        q_head = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        self.q_a_proj: nn.Linear | None = None
        self.q_a_norm: RMSNorm | None = None
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(h, nh * q_head, bias=False)
        else:
            self.q_a_proj = nn.Linear(h, cfg.q_lora_rank, bias=False)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_proj = nn.Linear(cfg.q_lora_rank, nh * q_head, bias=False)
        self.kv_a_proj = nn.Linear(h, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_norm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, nh * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(nh * cfg.v_head_dim, h, bias=False)

    def project_q(self, x: Tensor, rope: Rotary) -> tuple[Tensor, Tensor]:
        """``q_nope [T, H, nope]`` and the rotated ``q_pe [T, H, rope]``."""
        cfg = self.cfg
        if self.q_a_proj is not None and self.q_a_norm is not None:
            x = self.q_a_norm(self.q_a_proj(x))
        q = self.q_proj(x).view(x.shape[0], cfg.num_heads, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
        q_nope, q_pe = q.split([cfg.qk_nope_head_dim, cfg.qk_rope_head_dim], dim=-1)
        return q_nope, rope.apply(q_pe)

    def project_kv(self, x: Tensor, rope: Rotary) -> tuple[Tensor, Tensor]:
        """What the cache stores: normed latent ``c_kv [T, kv_lora_rank]`` and rotated ``k_pe [T, rope]``."""
        c_kv, k_pe = self.kv_a_proj(x).split([self.cfg.kv_lora_rank, self.cfg.qk_rope_head_dim], dim=-1)
        return self.kv_a_norm(c_kv), rope.apply(k_pe)

    def kv_b_weights(self) -> tuple[Tensor, Tensor]:
        """``W_kb [H, nope, kv_lora_rank]`` and ``W_vb [H, v, kv_lora_rank]``, views of ``kv_b_proj``."""
        cfg = self.cfg
        w = self.kv_b_proj.weight.view(cfg.num_heads, cfg.qk_nope_head_dim + cfg.v_head_dim, cfg.kv_lora_rank)
        w_kb, w_vb = torch.split(w, [cfg.qk_nope_head_dim, cfg.v_head_dim], dim=1)
        return w_kb, w_vb

    def forward_paged(
        self,
        layer_idx: int,
        x: Tensor,
        rope: Rotary,
        cache: PagedLatentCache,
        meta: MLAStepMetadata,
        backend: LatentAttentionBackend,
    ) -> Tensor:
        """Write this step's latents through the slot mapping, then attend in absorbed form."""
        q_nope, q_pe = self.project_q(x, rope)
        c_kv, k_pe = self.project_kv(x, rope)
        cache.write(layer_idx, meta.slot_mapping, c_kv, k_pe)
        w_kb, w_vb = self.kv_b_weights()
        q_latent = torch.einsum("thn,hnr->thr", q_nope, w_kb)
        o_latent = backend.forward(layer_idx, q_latent, q_pe, cache.ckv[layer_idx], cache.kpe[layer_idx])
        o = torch.einsum("thr,hvr->thv", o_latent.to(x.dtype), w_vb)
        out: Tensor = self.o_proj(o.reshape(x.shape[0], -1))
        return out


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        out: Tensor = self.down(F.silu(gate) * up)
        return out


class MoE(nn.Module):
    """Softmax top-k routing with renormalised weights, plus always-on shared experts.

    Each token's output depends on that token alone, so results do not change
    with how tokens are batched (which the paged-vs-dense tests rely on).
    """

    def __init__(self, cfg: MLAConfig) -> None:
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.num_experts))
        self.shared: SwiGLU | None = None
        if cfg.num_shared_experts:
            self.shared = SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.num_shared_experts)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.gate(x).float().softmax(dim=-1)
        weights, chosen = scores.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.nonzero(chosen == e, as_tuple=True)
            if token_idx.numel():
                out.index_add_(0, token_idx, expert(x[token_idx]) * weights[token_idx, slot, None])
        if self.shared is not None:
            out = out + self.shared(x)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MLAConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = MLAAttention(cfg)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        use_moe = cfg.num_experts > 0 and layer_idx >= cfg.first_dense_layers
        self.ffn: nn.Module = MoE(cfg) if use_moe else SwiGLU(cfg.hidden_size, cfg.intermediate_size)


class MLAModel(nn.Module):
    """The whole model. ``forward_paged`` runs one step over a paged cache.

    Example::

        model = MLAModel(MLAConfig())            # seeded random weights, float32 on CPU
        model = model.to(torch.float64)          # or .to("cuda", torch.bfloat16)
    """

    def __init__(self, cfg: MLAConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MLAConfig()
        self.cfg = cfg
        # Build on the meta device (no throwaway default init), then fill from one seeded generator
        # on the CPU so the weights are the same whatever device the model later moves to.
        with torch.device("meta"):
            self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.to_empty(device="cpu")
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        gen = torch.Generator().manual_seed(self.cfg.init_seed)
        for name, param in self.named_parameters():
            if param.dim() == 1:  # norm gains: near one, but not exactly, so a missing norm shows
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif name == "embed.weight":
                param.copy_(torch.randn(param.shape, generator=gen))
            else:  # fan-in scaling keeps activations and logits O(1): clear argmax margins
                param.copy_(torch.randn(param.shape, generator=gen) * param.shape[1] ** -0.5)

    def decoder_layers(self) -> list[DecoderLayer]:
        return cast(list[DecoderLayer], list(self.layers))

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def forward_paged(
        self,
        token_ids: Tensor,
        meta: MLAStepMetadata,
        cache: PagedLatentCache,
        backend: LatentAttentionBackend,
    ) -> Tensor:
        """Final hidden states ``[T, hidden]`` for a step's tokens (``backend`` already planned for ``meta``)."""
        x = self.embed(token_ids)
        rope = Rotary(meta.positions, self.cfg.qk_rope_head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.decoder_layers()):
            x = x + layer.attn.forward_paged(i, layer.input_norm(x), rope, cache, meta, backend)
            x = x + layer.ffn(layer.post_attn_norm(x))
        out: Tensor = self.norm(x)
        return out

    def compute_logits(self, hidden: Tensor) -> Tensor:
        logits: Tensor = self.lm_head(hidden)
        return logits
