"""A deployment: a model on ``tp`` GPUs of one kind, served by one engine, in one parallel shape.

Shapes (the ``tp`` GPUs of one engine instance):

- ``attention="tp"``: every rank runs every request's attention over its share
  of the heads; MLA's latent KV (shared by all heads) is held whole on every
  rank, so the deployment holds one rank's worth of KV.
- ``attention="dp"``: each rank runs attention for its own requests, with all
  heads and the attention weights replicated; each rank's cache holds only its
  requests' latents, so the deployment holds ``tp`` ranks' worth, but one
  request lives on one rank (``max_request_tokens``).
- ``moe="tp"``: every rank holds a ``1/tp`` slice of every expert; ``moe="ep"``:
  every rank holds ``E/tp`` whole experts, tokens go to the ranks that hold
  their experts, and the busiest rank sets the pace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokensched_sim.draft import DraftSpec, draft_preset
from tokensched_sim.efficiency import Efficiency
from tokensched_sim.engines import engine_preset
from tokensched_sim.presets import Dtype, GPUSpec, ModelSpec, gpu_preset, model_preset

if TYPE_CHECKING:
    from tokensched_sim.cost import KVCapacity


class Deployment(BaseModel):
    """A model served on ``tp`` GPUs by an engine profile; names of presets are accepted.

    ``kv_dtype`` overrides the model's KV cache type (e.g. ``"fp8"``).
    ``efficiency`` and ``attention_dtype`` default to the engine profile's;
    ``memory_utilization`` overrides the fraction in the engine's memory rule.
    With ``num_speculative_tokens > 0`` the deployment carries a ``draft`` head
    (default: the model's published EAGLE-3 head, see :mod:`tokensched_sim.draft`):
    its weights and KV cache take memory, its passes take time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelSpec = Field(default_factory=lambda: model_preset("kimi-k2.5"))
    gpu: GPUSpec = Field(default_factory=lambda: gpu_preset("b200"))
    tp: int = Field(default=4, ge=1, le=72)
    kv_dtype: Dtype | None = None
    engine: Literal["vllm", "sglang", "trtllm", "tokensched"] = "tokensched"
    attention: Literal["tp", "dp"] = "tp"
    moe: Literal["tp", "ep"] = "tp"
    attention_dtype: Literal["bf16", "fp8"] = "bf16"
    num_speculative_tokens: int = Field(default=0, ge=0, le=16)
    draft: DraftSpec | None = None
    efficiency: Efficiency = Efficiency()
    memory_utilization: float | None = Field(default=None, gt=0, le=1, description="override the engine's fraction")

    if TYPE_CHECKING:  # the validators below accept preset names; tell the type checker so

        def __init__(
            self,
            *,
            model: ModelSpec | str = ...,
            gpu: GPUSpec | str = ...,
            tp: int = ...,
            kv_dtype: Dtype | str | None = ...,
            engine: str = ...,
            attention: str = ...,
            moe: str = ...,
            attention_dtype: str = ...,
            num_speculative_tokens: int = ...,
            draft: DraftSpec | str | None = ...,
            efficiency: Efficiency = ...,
            memory_utilization: float | None = ...,
        ) -> None: ...

    @model_validator(mode="before")
    @classmethod
    def _engine_defaults(cls, data: Any) -> Any:
        """Efficiencies and attention type the caller left out come from the engine profile."""
        if not isinstance(data, dict):
            return data
        engine = data.get("engine", "tokensched")
        if not isinstance(engine, str):
            return data
        spec = engine_preset(engine)
        data = {**data, "engine": engine.lower()}
        data.setdefault("efficiency", spec.efficiency)
        data.setdefault("attention_dtype", spec.attention_dtype)
        return data

    @field_validator("model", mode="before")
    @classmethod
    def _model_by_name(cls, value: Any) -> Any:
        return model_preset(value) if isinstance(value, str) else value

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu_by_name(cls, value: Any) -> Any:
        return gpu_preset(value) if isinstance(value, str) else value

    @field_validator("draft", mode="before")
    @classmethod
    def _draft_by_name(cls, value: Any) -> Any:
        return draft_preset(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Deployment:
        if self.model.num_heads % self.tp:
            raise ValueError(f"tp={self.tp} does not divide {self.model.name}'s {self.model.num_heads} heads")
        if self.moe == "ep" and self.model.num_experts % self.tp:
            raise ValueError(f"EP over {self.tp} ranks does not divide {self.model.num_experts} experts")
        if self.attention_dtype == "fp8":
            self.gpu.peak_flops(Dtype.FP8)  # raises if the GPU has no FP8 tensor cores
        return self

    def kv_capacity(self, block_size: int) -> KVCapacity:
        """KV tokens, blocks and the longest request this deployment holds (raises :class:`DeploymentError`)."""
        from tokensched_sim.cost import CostModel

        return CostModel(self).kv_capacity(block_size)
