"""Multi-turn chat sessions over HTTP, to measure how much of each prompt a cluster finds cached.

Each session is a coding-agent-like conversation: a long system prompt of its
own, then turns that each append a user message and the assistant's previous
answer, so turn k's prompt extends turn k-1's. A router that keeps a session
on one replica finds everything but the new turn cached; one that scatters
turns recomputes them. The hit rate is the one the replicas report in
``usage.prompt_tokens_details.cached_tokens``, summed over every turn.

Every call has a bounded timeout: a replica that dies mid-request is an
error in the result, never a hung client.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs
import httpx

SESSION_HEADER = "X-Session-ID"
"""Names the session: tokensched serve reads it, and smg keys sticky policies on it with
``--routing-key-headers X-Session-ID``."""


@attrs.frozen
class TurnResult:
    session: str
    turn: int
    status: int  # HTTP status; 0 when the request failed without an answer (connection refused, timeout)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@attrs.frozen
class SessionsReport:
    turns: tuple[TurnResult, ...]

    @property
    def ok(self) -> list[TurnResult]:
        return [t for t in self.turns if t.ok]

    @property
    def failed(self) -> list[TurnResult]:
        return [t for t in self.turns if not t.ok]

    @property
    def hit_rate(self) -> float:
        """Cached prompt tokens over prompt tokens, over every answered turn after each session's first."""
        later = [t for t in self.ok if t.turn > 0]
        prompt = sum(t.prompt_tokens for t in later)
        return sum(t.cached_tokens for t in later) / prompt if prompt else 0.0


@attrs.frozen
class SessionWorkload:
    """``sessions`` conversations of ``turns`` turns; sizes in characters (one token each for the byte tokenizer)."""

    name: str
    sessions: int = 6
    turns: int = 4
    system_chars: int = 2000
    user_chars: int = 300
    max_tokens: int = 16
    concurrency: int = 3
    model: str = "tokensched"
    timeout_s: float = 30.0
    seed: int = 0

    def session_ids(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.sessions)]


def _text(rng: random.Random, chars: int) -> str:
    words = ("def", "class", "return", "import", "self", "value", "result", "for", "in", "if", "else", "yield")
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


def run_session(client: httpx.Client, url: str, workload: SessionWorkload, session: str) -> list[TurnResult]:
    """One conversation, turn after turn; a failed turn ends it (its history is lost with it)."""
    rng = random.Random(f"{workload.seed}:{session}")
    messages: list[dict[str, str]] = [
        {"role": "system", "content": f"[{session}] " + _text(rng, workload.system_chars)}
    ]
    results: list[TurnResult] = []
    for turn in range(workload.turns):
        messages.append({"role": "user", "content": _text(rng, workload.user_chars)})
        body = {"model": workload.model, "messages": messages, "max_tokens": workload.max_tokens}
        try:
            response = client.post(
                url + "/v1/chat/completions", json=body, headers={SESSION_HEADER: session}, timeout=workload.timeout_s
            )
        except httpx.HTTPError as exc:
            results.append(TurnResult(session, turn, 0, error=f"{type(exc).__name__}: {exc}"))
            return results
        if response.status_code != 200:
            results.append(TurnResult(session, turn, response.status_code, error=response.text[:200]))
            return results
        payload = response.json()
        usage = payload.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        results.append(
            TurnResult(session, turn, 200, int(usage.get("prompt_tokens", 0)), int(details.get("cached_tokens", 0)))
        )
        messages.append({"role": "assistant", "content": payload["choices"][0]["message"]["content"]})
    return results


def run_sessions(url: str, workload: SessionWorkload, sessions: Sequence[str] | None = None) -> SessionsReport:
    """Run the workload's sessions (or the named ones) against ``url``, ``concurrency`` at a time."""
    names = list(sessions) if sessions is not None else workload.session_ids()
    lock = threading.Lock()
    turns: list[TurnResult] = []
    with httpx.Client() as client:

        def one(name: str) -> None:
            done = run_session(client, url, workload, name)
            with lock:
                turns.extend(done)

        with ThreadPoolExecutor(max_workers=workload.concurrency) as pool:
            list(pool.map(one, names))
    return SessionsReport(tuple(sorted(turns, key=lambda t: (t.session, t.turn))))
