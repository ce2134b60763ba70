"""Draft proposers for speculative decoding.

A drafter looks at a request's tokens so far (prompt and outputs) and proposes
up to ``k`` tokens that might follow; the executor verifies them in the
request's next step. Drafters here are stateless, so preemption, recompute and
aborted steps need no bookkeeping.

- :class:`NgramDrafter` (prompt lookup): find the most recent earlier
  occurrence of the last ``n`` tokens and propose what followed it. Free, and
  very effective when outputs copy from the context (code edits, agents).
- :class:`ModelDrafter`: greedy decoding with a (smaller) draft model, dense and
  uncached; meant for tiny models in tests and demos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from tokensched_torch.model import MLAModel
from tokensched_torch.reference import dense_reference_logits


class Drafter(Protocol):
    def propose(self, token_ids: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` tokens that may follow ``token_ids`` (fewer, or none, when unsure)."""
        ...


class NgramDrafter:
    """Prompt-lookup drafting with n-grams from ``max_n`` down to ``min_n`` tokens.

    Only the last ``max_lookback`` tokens are searched, so the cost per step is
    bounded for very long contexts.
    """

    def __init__(self, *, min_n: int = 1, max_n: int = 3, max_lookback: int = 8192) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n} max_n={max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self.max_lookback = max_lookback

    def propose(self, token_ids: Sequence[int], k: int) -> list[int]:
        if k <= 0 or len(token_ids) < self.min_n + 1:
            return []
        window = np.asarray(token_ids[-self.max_lookback :], dtype=np.int64)
        size = len(window)
        for n in range(min(self.max_n, size - 1), self.min_n - 1, -1):
            suffix = window[size - n :]
            # Candidate starts i with i + n < size: the match must be followed by at least one token.
            grams = np.lib.stride_tricks.sliding_window_view(window[: size - 1], n)
            hits = np.flatnonzero((grams == suffix).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                return [int(t) for t in window[start : start + k]]
        return []


class ModelDrafter:
    """Greedy drafts from a draft model (dense forward over the whole context each token)."""

    def __init__(self, model: MLAModel) -> None:
        self.model = model

    @torch.inference_mode()
    def propose(self, token_ids: Sequence[int], k: int) -> list[int]:
        tokens = list(token_ids)
        drafts: list[int] = []
        for _ in range(k):
            nxt = int(dense_reference_logits(self.model, tokens)[-1].argmax())
            tokens.append(nxt)
            drafts.append(nxt)
        return drafts
