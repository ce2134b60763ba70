"""The speculative draft model (an EAGLE-3 head): its weights, its KV cache, and how often it is right.

An EAGLE-3 head is one Llama-style decoder layer fed with the target's hidden
states: an ``fc`` that folds three captured hidden states (``3 h -> h``), a
layer whose attention takes ``[embedding, hidden]`` (``2 h`` in), a SwiGLU MLP,
and an ``lm_head`` over a reduced draft vocabulary; the token embedding is the
target's (shared). It keeps its own KV cache (one layer, GQA), allocated for
as many tokens as the target's, so speculation costs KV capacity as well as
weights. Engines shard it over the same TP ranks as the target.

Acceptance: the simulator accepts each draft with probability ``alpha`` until
the first rejection (drawn per request per step), so a verification of ``k``
drafts yields ``1 + alpha + ... + alpha^k`` tokens on average (the *mean accepted
length*, bonus token included, as SGLang reports it). Published figures for
this model family:

- lightseekorg/kimi-k2.7-coder-eagle3.1-mla model card (SGLang, TP8, topk 1,
  3 draft steps): accept length 2.05 (CEval) to 2.95 (GSM8K), 2.54 on HumanEval;
- DeepSeek-V3 technical report (arXiv:2412.19437, section 5.4.3): MTP's second
  token is accepted 85-90% of the time (one draft).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tokensched_sim.presets import Dtype

# HumanEval accept length of the Kimi-K2.7-Code EAGLE-3.1 head with 3 drafts (model card above): the
# coding-agent workload's closest published figure.
KIMI_EAGLE3_ACCEPT_LENGTH = 2.54
KIMI_EAGLE3_NUM_DRAFTS = 3


class DraftSpec(BaseModel):
    """The shape of an EAGLE-3 draft head, as its config.json publishes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(default=1, ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    draft_vocab_size: int = Field(ge=2)
    weight_dtype: Dtype = Dtype.BF16
    source: str = ""

    @property
    def layer_params(self) -> int:
        """One layer: q/k/v over ``2 h`` inputs (EAGLE-3 concatenates embedding and hidden), o, SwiGLU MLP."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return 2 * h * (q + 2 * kv) + q * h + 3 * h * self.intermediate_size

    @property
    def fc_params(self) -> int:
        return 3 * self.hidden_size * self.hidden_size

    @property
    def head_params(self) -> int:
        return self.draft_vocab_size * self.hidden_size

    def params(self) -> int:
        """Every weight the head adds (the embedding is shared with the target)."""
        return self.num_layers * self.layer_params + self.fc_params + self.head_params

    def kv_values_per_token(self, tp: int) -> float:
        """Cached K and V values per token on one rank (KV heads split over ranks, replicated past their count)."""
        return self.num_layers * 2 * max(self.num_kv_heads / tp, 1.0) * self.head_dim


DRAFTS: dict[str, DraftSpec] = {
    "kimi-k2.5-eagle3": DraftSpec(
        name="Kimi-K2.5 EAGLE-3 head (1 layer, 64 heads, MHA, draft vocab 32k)",
        hidden_size=7168,
        num_heads=64,
        num_kv_heads=64,
        head_dim=128,
        intermediate_size=18432,
        draft_vocab_size=32000,
        source="AQ-MedAI/Kimi-K25-eagle3 config.json (LlamaForCausalLMEagle3, BF16)",
    ),
    "deepseek-v3-eagle3": DraftSpec(
        name="DeepSeek-V3 EAGLE-3 head (1 layer, 56 heads, 8 KV heads, draft vocab 32k)",
        hidden_size=7168,
        num_heads=56,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=40960,
        draft_vocab_size=32000,
        source="SpecForge configs/deepseek-v3-671b-eagle3.json (LlamaForCausalLMEagle3)",
    ),
}

DEFAULT_DRAFT = {"kimi-k2.5": "kimi-k2.5-eagle3", "deepseek-v3": "deepseek-v3-eagle3"}
"""The draft each model preset speculates with when none is named."""


def draft_preset(name: str) -> DraftSpec:
    """A draft-head preset by name (``kimi-k2.5-eagle3``, ``deepseek-v3-eagle3``)."""
    try:
        return DRAFTS[name.lower()]
    except KeyError:
        raise ValueError(f"no draft preset {name!r}; known: {', '.join(DRAFTS)}") from None


def generic_draft(hidden_size: int, num_heads: int, intermediate_size: int) -> DraftSpec:
    """An EAGLE-3-shaped head for a model with no published one: the target's width, MHA, 32k draft vocab."""
    return DraftSpec(
        name=f"generic EAGLE-3 head (hidden {hidden_size})",
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_heads,
        head_dim=max(hidden_size // num_heads, 1),
        intermediate_size=intermediate_size,
        draft_vocab_size=32000,
        source="EAGLE-3 layout (arXiv:2503.01840) at the target's width; no published config",
    )


def mean_accepted_length(acceptance_rate: float, num_drafts: int) -> float:
    """Tokens per verification, bonus included: ``1 + a + ... + a^k``."""
    return sum(acceptance_rate**i for i in range(num_drafts + 1))


def acceptance_rate_for_length(accept_length: float, num_drafts: int) -> float:
    """The per-draft acceptance ``a`` whose mean accepted length with ``num_drafts`` drafts is ``accept_length``.

    >>> round(acceptance_rate_for_length(2.54, 3), 3)
    0.673
    """
    if num_drafts < 1:
        raise ValueError(f"num_drafts must be >= 1, got {num_drafts}")
    if not 1.0 <= accept_length <= num_drafts + 1:
        raise ValueError(f"accept length {accept_length} is outside [1, {num_drafts + 1}] for {num_drafts} drafts")
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection: the length is increasing in a
        mid = (lo + hi) / 2
        if mean_accepted_length(mid, num_drafts) < accept_length:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
