"""A decode step's price from four sums, without building a BatchShape: the multi-step run's cost model.

Why: a run of decode steps (:mod:`tokensched.decode_run`) prices one step of
one or two rows tens of thousands of times per simulated hour, and most of
:meth:`CostModel.step_time <tokensched_sim.cost.CostModel.step_time>`
depends only on the step's row and token counts (the projections, the MLP,
the MoE with its expected experts touched, the lm_head), which repeat from
step to step. Only the decode attention term moves with the context.

:class:`DecodeCost` caches, per ``(rows, tokens)``, the partial sum before
the attention term and each term after it (computed by the model's own
:meth:`CostModel.count_terms <tokensched_sim.cost.CostModel.count_terms>`,
which ``step_time`` uses too), and adds them in the order
``step_time`` does, so the result is the same float (not merely close):
``tests/sim/test_decode_cost.py`` checks equality with
``step_time(BatchShape.decodes(...))`` and ``draft_time`` on random shapes
and deployments.
"""

from __future__ import annotations

from tokensched_sim.cost import CostModel
from tokensched_sim.shape import BatchShape

_Parts = tuple[float, float, float, float, float, float, float]


class DecodeCost:
    """``step_time`` and ``draft_time`` of a :class:`CostModel` for steps of decodes only, from their sums.

    >>> from tokensched_sim import Deployment
    >>> from tokensched_sim.shape import BatchShape
    >>> model = CostModel(Deployment(model="dense-8b", gpu="h100", tp=1))
    >>> DecodeCost(model).step_time(2, 2, 1500 + 2, 1500 + 2) == model.step_time(BatchShape.decodes([700, 800], [1, 1]))
    True
    """

    __slots__ = ("_drafts", "_exact", "_parts", "model")

    def __init__(self, model: CostModel) -> None:
        self.model = model
        # A wrapper or subclass (the disaggregated bench's decode-only model) may price differently: ask it.
        self._exact = type(model) is CostModel
        self._parts: dict[tuple[int, int], _Parts] = {}
        self._drafts: dict[int, tuple[float, int]] = {}

    def step_time(self, num_requests: int, num_tokens: int, pairs: int, kv_tokens: int) -> float:
        """``model.step_time`` of a step of ``num_requests`` decodes computing ``num_tokens`` tokens in all.

        ``pairs`` and ``kv_tokens`` are the step's decode query-key pairs and
        KV tokens read, as :meth:`BatchShape.decodes
        <tokensched_sim.shape.BatchShape.decodes>` sums them.
        """
        if not self._exact:
            shape = BatchShape(
                num_tokens, num_tokens, decode_pairs=pairs, decode_kv_tokens=kv_tokens, num_requests=num_requests
            )
            return float(self.model.step_time(shape))
        if not num_tokens:
            return 0.0
        parts = self._parts.get((num_requests, num_tokens))
        if parts is None:
            parts = self._parts[num_requests, num_tokens] = self._parts_of(num_requests, num_tokens)
        base, dec_c, share, kv, mlp, moe, head = parts
        if pairs:
            c, m = pairs * dec_c * share, kv_tokens * kv
            base += c if c > m else m
        return base + mlp + moe + head

    def run_step_time(
        self, num_requests: int, num_tokens: int, pairs: int, kv_tokens: int, proposing: int, proposing_kv: int, k: int
    ) -> float:
        """:meth:`step_time` of the step, plus :meth:`draft_time` of its ``proposing`` rows if any: a run step's price.

        The same floats added in the same order as the two calls (the
        executor's single steps price a step and then its drafts so), in one
        call: a run prices a step of a row or two tens of thousands of times
        per simulated hour, and the second call and its lookups cost more
        than its arithmetic. ``tests/sim/test_decode_cost.py`` checks it
        against the two calls.
        """
        if not self._exact:
            duration = self.step_time(num_requests, num_tokens, pairs, kv_tokens)
            if proposing:
                duration += self.draft_time(proposing, proposing_kv, k)
            return duration
        if num_tokens:
            parts = self._parts.get((num_requests, num_tokens))
            if parts is None:
                parts = self._parts[num_requests, num_tokens] = self._parts_of(num_requests, num_tokens)
            base, dec_c, share, kv, mlp, moe, head = parts
            if pairs:
                c, m = pairs * dec_c * share, kv_tokens * kv
                base += c if c > m else m
            duration = base + mlp + moe + head
        else:
            duration = 0.0
        if not proposing:
            return duration
        model = self.model
        if not k or model.draft is None:
            return duration + 0.0
        cached = self._drafts.get(proposing)
        if cached is None:
            cached = self._draft_parts(proposing, k)
        passes, triangle = cached
        return duration + (passes + model._f_draft_attn * (k * proposing_kv + triangle))

    def draft_time(self, num_requests: int, kv_tokens: int, num_drafts: int) -> float:
        """``model.draft_time(num_requests, kv_tokens, num_drafts)``, its per-pass part cached by request count.

        Every call must pass the same ``num_drafts`` (the executor's speculative tokens).
        """
        model = self.model
        if not self._exact:
            return float(model.draft_time(num_requests, kv_tokens, num_drafts))
        if not num_requests or not num_drafts or model.draft is None:
            return 0.0
        cached = self._drafts.get(num_requests)
        if cached is None:
            cached = self._draft_parts(num_requests, num_drafts)
        passes, triangle = cached
        return passes + model._f_draft_attn * (num_drafts * kv_tokens + triangle)

    def _draft_parts(self, r: int, num_drafts: int) -> tuple[float, int]:
        """``draft_time``'s passes over ``r`` requests and its triangle of draft pairs, cached by ``r``."""
        model = self.model
        c, m = model._f_draft
        net, latency = model._f_draft_net
        once = (r * c if r * c > m else m) + r * net + latency
        cached = self._drafts[r] = (num_drafts * once, r * num_drafts * (num_drafts - 1) // 2)
        return cached

    def _parts_of(self, n: int, t: int) -> _Parts:
        """The terms of ``step_time`` that depend on the counts only; adding 0.0 for an absent term is exact."""
        model = self.model
        base, share, mlp, moe = model.count_terms(n, t)
        c, m = model._f_head  # a decode step samples every token it computes: num_logits == num_tokens
        head = t * c if t * c > m else m
        return base, model._f_attn[2], share, model._f_kv * share, mlp, moe, head
