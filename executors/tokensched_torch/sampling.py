"""Token choice: greedy, temperature/top-k/top-p, and speculative verification.

Randomness never comes from a shared generator. The uniform number behind
the token at position ``p`` of a request is a hash of (request seed, ``p``,
stream), so a request samples the same tokens however it is batched, chunked,
preempted or recomputed: the draws depend on where a token sits, not on
when it was computed. The request seed is ``SamplingParams.seed`` when given,
else a stable hash of the executor seed and the request id.

Speculative verification uses the standard rejection rule for a deterministic
drafter (its proposal distribution is one-hot): draft ``d`` is accepted with
probability ``p(d)``; at the first rejection a token is drawn from ``p`` with
``d`` removed, and after ``k`` acceptances a bonus token is drawn from the last
row. The output is distributed exactly as plain sampling from ``p``; for greedy
requests ``p`` is one-hot at the argmax, so the accepted prefix plus the bonus
token are exactly the tokens plain greedy decoding gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import attrs
import torch
from torch import Tensor

from tokensched.config import SamplingParams

_MASK64 = (1 << 64) - 1
_ACCEPT, _DRAW = 0, 1  # the two independent streams of uniforms per position


def request_seed(base_seed: int, request_id: str, params: SamplingParams) -> int:
    """The seed behind a request's draws: its own, or one derived stably from its id."""
    if params.seed is not None:
        return params.seed & _MASK64
    digest = hashlib.blake2b(f"{base_seed}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def uniform(seed: int, position: int, stream: int = _DRAW) -> float:
    """A uniform in [0, 1) fixed by (seed, position, stream): splitmix64 of their mix."""
    z = (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) * 2.0**-53


def filtered_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """Probabilities ``[rows, vocab]`` (float64) after temperature, top-k and top-p.

    Top-p keeps the smallest set of most likely tokens whose mass reaches
    ``top_p`` (the most likely token always survives).
    """
    # shift by the row max first: a subnormal temperature then maps the best logit to 0, not inf (inf - inf is NaN)
    shifted = logits.double() - logits.double().amax(dim=-1, keepdim=True)
    probs = (shifted / params.temperature).softmax(dim=-1)
    if params.top_k and params.top_k < probs.shape[-1]:
        kth = probs.topk(params.top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        total = sorted_probs.sum(dim=-1, keepdim=True)
        keep_sorted = mass_before < params.top_p * total
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs / probs.sum(dim=-1, keepdim=True)


def draw(probs: Tensor, u: float) -> int:
    """Inverse-CDF draw from one row of (possibly unnormalised) probabilities."""
    cdf = probs.cumsum(dim=0)
    idx = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=cdf.dtype, device=cdf.device)))
    idx = min(idx, probs.shape[0] - 1)
    while probs[idx] <= 0 and idx > 0:  # u landed on the edge of a run of removed tokens
        idx -= 1
    return idx


@attrs.frozen(slots=True)
class SampleRequest:
    """One request's rows of a step's logits and what is needed to turn them into tokens.

    ``rows`` are ``len(drafts) + 1`` consecutive rows; the token chosen from the
    first row goes to position ``first_position``.
    """

    row_start: int
    drafts: Sequence[int]
    params: SamplingParams
    seed: int
    first_position: int


def choose_tokens(
    logits: Tensor, requests: Sequence[SampleRequest]
) -> tuple[list[list[int]], list[list[float]] | None]:
    """Tokens for each request (accepted drafts then one more), and their logprobs if any asked.

    ``logits`` holds every request's rows; greedy rows share one argmax and one
    device-to-host copy. Logprobs are under the model's own distribution
    (before temperature, top-k and top-p).
    """
    argmax = logits.argmax(dim=-1).tolist() if any(r.params.greedy for r in requests) else []
    out: list[list[int]] = []
    for r in requests:
        if r.params.greedy:
            out.append(_verify_greedy(argmax, r))
        else:
            rows = logits[r.row_start : r.row_start + len(r.drafts) + 1]
            out.append(_verify_random(filtered_probs(rows, r.params).cpu(), r))
    if not any(r.params.logprobs for r in requests):
        return out, None
    logprobs: list[list[float]] = []
    for r, tokens in zip(requests, out, strict=True):
        if not r.params.logprobs:
            logprobs.append([])
            continue
        rows = logits[r.row_start : r.row_start + len(tokens)].double().log_softmax(dim=-1)
        picked = rows.gather(1, torch.tensor(tokens, device=rows.device)[:, None])[:, 0]
        logprobs.append(picked.tolist())
    return out, logprobs


def _verify_greedy(argmax: list[int], r: SampleRequest) -> list[int]:
    tokens: list[int] = []
    for j, draft in enumerate(r.drafts):
        target = argmax[r.row_start + j]
        tokens.append(target)
        if target != draft:
            return tokens
    tokens.append(argmax[r.row_start + len(r.drafts)])
    return tokens


def _verify_random(probs: Tensor, r: SampleRequest) -> list[int]:
    tokens: list[int] = []
    for j, draft in enumerate(r.drafts):
        position = r.first_position + j
        if uniform(r.seed, position, _ACCEPT) < float(probs[j, draft]):
            tokens.append(draft)
            continue
        residual = probs[j].clone()
        residual[draft] = 0.0
        if float(residual.sum()) <= 0.0:  # p(draft) rounded to 1: nothing else can be drawn
            tokens.append(draft)
            continue
        tokens.append(draw(residual, uniform(r.seed, position, _DRAW)))
        return tokens
    tokens.append(draw(probs[len(r.drafts)], uniform(r.seed, r.first_position + len(r.drafts), _DRAW)))
    return tokens
