"""The sums over one step's requests that the cost model needs, taken from a plan or from totals.

For a request computing ``q`` new tokens after ``c`` cached ones, causal
attention covers ``q*c + q*(q+1)/2`` query-key pairs and reads ``c + q``
tokens of KV. Requests computing at most ``1 + drafts`` tokens are decodes
(memory-bound attention kernels); the rest are prefill chunks.
"""

from __future__ import annotations

from itertools import compress, islice, repeat
from operator import add, gt, mul, sub

import attrs

from tokensched.plan import StepPlan


@attrs.frozen(slots=True)
class BatchShape:
    """The sums over one step's requests that the cost model needs (see the module docstring)."""

    num_tokens: int  # query tokens in the step (prefill + decode + draft)
    num_logits: int  # positions whose logits are computed (sampled tokens and verified drafts)
    prefill_pairs: int = 0
    prefill_kv_tokens: int = 0
    prefill_context_tokens: int = 0  # cached prefix ahead of the prefill chunks (MLA up-projects it)
    decode_pairs: int = 0
    decode_kv_tokens: int = 0
    num_requests: int = 0  # requests in the step (0: unknown; DP attention then assumes perfect balance)
    num_prefill_tokens: int = 0  # query tokens of the prefill chunks (the rest are decodes and drafts)
    num_prefill_requests: int = 0
    num_prefill_logits: int = 0  # prefill chunks that sample (each a request's last chunk)

    def split(self) -> tuple[BatchShape, BatchShape]:
        """``(prefill, decode)``: the step as two forward passes, one over its prefill chunks, one over the rest.

        What an engine that does not mix prefill and decode in one batch runs
        (SGLang unless ``--enable-mixed-chunk``, which EAGLE turns off): see
        ``EngineSpec.mixed_batches``. Either part may be empty (``num_tokens == 0``).
        """
        prefill = BatchShape(
            num_tokens=self.num_prefill_tokens,
            num_logits=self.num_prefill_logits,
            prefill_pairs=self.prefill_pairs,
            prefill_kv_tokens=self.prefill_kv_tokens,
            prefill_context_tokens=self.prefill_context_tokens,
            num_requests=self.num_prefill_requests,
            num_prefill_tokens=self.num_prefill_tokens,
            num_prefill_requests=self.num_prefill_requests,
            num_prefill_logits=self.num_prefill_logits,
        )
        decode = BatchShape(
            num_tokens=self.num_tokens - self.num_prefill_tokens,
            num_logits=self.num_logits - self.num_prefill_logits,
            decode_pairs=self.decode_pairs,
            decode_kv_tokens=self.decode_kv_tokens,
            num_requests=max(self.num_requests - self.num_prefill_requests, 0),
        )
        return prefill, decode

    @classmethod
    def from_counts(
        cls,
        *,
        num_prefill_tokens: int = 0,
        num_prefill_requests: int = 0,
        prefill_context_tokens: int = 0,
        num_decode_requests: int = 0,
        decode_context_tokens: int = 0,
        num_speculative_tokens: int = 0,
    ) -> BatchShape:
        """A shape from totals (as in a CSV of measurements), splitting them evenly between requests.

        ``decode_context_tokens`` is the sum of decode requests' cached tokens
        before this step; each decode computes ``1 + num_speculative_tokens``.
        """
        if num_prefill_tokens and not num_prefill_requests:
            num_prefill_requests = 1
        pre_pairs = 0
        if num_prefill_requests:
            n = num_prefill_tokens / num_prefill_requests
            c = prefill_context_tokens / num_prefill_requests
            pre_pairs = round(num_prefill_requests * (n * c + n * (n + 1) / 2))
        q = 1 + num_speculative_tokens
        return cls(
            num_tokens=num_prefill_tokens + num_decode_requests * q,
            num_logits=num_prefill_requests + num_decode_requests * q,
            prefill_pairs=pre_pairs,
            prefill_kv_tokens=prefill_context_tokens + num_prefill_tokens,
            prefill_context_tokens=prefill_context_tokens,
            decode_pairs=q * decode_context_tokens + num_decode_requests * q * (q + 1) // 2,
            decode_kv_tokens=decode_context_tokens + num_decode_requests * q,
            num_requests=num_prefill_requests + num_decode_requests,
            num_prefill_tokens=num_prefill_tokens,
            num_prefill_requests=num_prefill_requests,
            num_prefill_logits=num_prefill_requests,
        )

    @classmethod
    def decodes(cls, computed: list[int], qs: list[int]) -> BatchShape:
        """A step of decodes only: row ``i`` has ``computed[i]`` tokens of context and ``qs[i]`` query tokens.

        The same shape :meth:`from_plan` gives the equivalent plan (each row
        one token plus its drafts, all sampled and verified).
        """
        n, t = len(computed), sum(qs)
        sum_c = sum(computed)
        if t == n:
            return cls(t, t, 0, 0, 0, sum_c + t, sum_c + t, n)
        pairs = sum(map(mul, qs, computed)) + (sum(map(mul, qs, qs)) + t) // 2
        return cls(t, t, 0, 0, 0, pairs, sum_c + t, n, 0, 0, 0)

    @classmethod
    def from_plan(cls, plan: StepPlan) -> BatchShape:
        """The sums over a plan's columns, with C-level builtins; only prefill chunks are visited in Python.

        Totals over all requests are ``sum(q*c) + (sum(q*q) + sum(q)) / 2``
        pairs and ``sum(c) + sum(q)`` KV tokens; the prefill chunks' share is
        taken out, and the rest is decode.
        """
        computed = plan.num_computed_tokens
        drafts = plan.draft_token_ids
        n, t = len(computed), plan.num_tokens
        sum_c = sum(computed)
        has_drafts = any(drafts)
        logits = sum(plan.sample) + (sum(map(len, compress(drafts, plan.sample))) if has_drafts else 0)
        if t == n:  # one token each: every request is a decode
            return cls(t, logits, 0, 0, 0, sum_c + t, sum_c + t, n)
        offsets = plan.token_offsets
        qs = list(map(sub, islice(offsets, 1, None), offsets))
        pairs = sum(map(mul, qs, computed)) + (sum(map(mul, qs, qs)) + t) // 2
        limits = map(add, map(len, drafts), repeat(1)) if has_drafts else repeat(1)
        pre_pairs = pre_kv = pre_ctx = pre_q = pre_n = pre_logits = 0
        sample = plan.sample
        for i in compress(range(n), map(gt, qs, limits)):
            q, c = qs[i], computed[i]
            pre_pairs += q * c + q * (q + 1) // 2
            pre_kv += c + q
            pre_ctx += c
            pre_q += q
            pre_n += 1
            if sample[i]:
                pre_logits += 1 + len(drafts[i])
        return cls(
            t, logits, pre_pairs, pre_kv, pre_ctx, pairs - pre_pairs, sum_c + t - pre_kv, n, pre_q, pre_n, pre_logits
        )
