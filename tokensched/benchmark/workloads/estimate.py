"""The session statistics' 4,096 sessions drawn in vectorised passes: the same draws, the same figures, bit for bit.

:func:`~tokensched.benchmark.workloads.coding_agent.session_statistics` draws
4,096 sessions (~120k turns, ~370k lognormal draws, each a rejection loop
over two ``random()`` calls) before every run: ~0.3 s of CPU in pure Python.
Changing the generator would move every published figure, so the same draws
are made in numpy instead.

``random.Random`` is a Mersenne Twister, and numpy's ``MT19937`` continues
the very same 32-bit words from the same state. What a session draws is a
function of those words (CPython's algorithms, unchanged since 3.2):

- ``random()`` is ``((w0 >> 5) * 2**26 + (w1 >> 6)) / 2**53``, exactly;
- ``randint(a, b)`` repeats ``getrandbits(k) = w >> (32 - k)``, with
  ``k = (b - a + 1).bit_length()``, until below the width; the token seed,
  ``getrandbits(62)``, takes two words;
- ``normalvariate`` (Kinderman and Monahan) tries ``u1 = random()``,
  ``u2 = 1 - random()``, four words an attempt, until ``z * z / 4 <= -log(u2)``.

An attempt takes four words, so the normals of one session are the accepted
attempts of one word *phase* (position mod 4), consecutive from the first at
or after its start. For every position the attempt starting there is
evaluated at once; per phase, the accepted ones give each draw's value
(answers and new tokens as integers; think times later, exactly). A session's
last turn is where its context would pass the cap: a search in the cumulative
sums of (new tokens + answer) along its phase. What is left per session is a
few lookups.

Exactness: every step is one IEEE operation in the same order as the
library's, except ``log`` and ``exp``, where numpy's may differ from the C
library's in the last bit. So an attempt within 1e-12 (relative) of the
acceptance boundary is decided again with ``math.log``, an integer draw
within 1e-9 of a rounding or clipping edge is computed again with
``math.exp``, and think times (floats that reach the figures) are always
computed with ``math.exp``. As the algorithms are CPython's and not a
contract, the caller checks the first session and the stream position after
it against the pure generator and falls back on any difference.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import numpy.typing as npt

from tokensched.benchmark.workloads.distributions import NV_MAGICCONST, LogNormal
from tokensched.benchmark.workloads.trace import TurnShape, reference_answer_s

if TYPE_CHECKING:
    from tokensched.benchmark.workloads.coding_agent import CodingAgentConfig

_Ints = npt.NDArray[np.int64]
_Floats = npt.NDArray[np.float64]
_WORDS_PER_SESSION = 500  # about what a default session takes; more are drawn when the sessions need them
_LOG_EDGE = 1e-12  # relative distance to the acceptance boundary within which math.log decides
_EXP_EDGE = 1e-9  # relative distance to a rounding or clipping edge within which math.exp decides
_MT_WORDS = 624
_CHUNK = 1 << 16  # words evaluated at a time


@attrs.frozen(slots=True)
class BulkEstimate:
    """The statistics' raw material, and what the caller checks against the pure generator."""

    input_tokens: int  # every turn's prompt, summed over all sessions
    spans: list[float]  # per session, first turn to last answer at the reference speed
    prompts: _Ints  # every turn's prompt length
    first_session: list[TurnShape]
    state_after_first: tuple[object, ...]  # the stream after the first session (random.Random.getstate())


def estimate_in_bulk(config: CodingAgentConfig, state: tuple[object, ...], samples: int) -> BulkEstimate | None:
    """The draws of ``samples`` sessions from a stream in ``state``, or None where this cannot emulate them."""
    widths = (
        config.max_turns - config.min_turns + 1,
        config.first_turn_max_tokens - config.first_turn_min_tokens + 1,
    )
    if samples < 1 or max(widths).bit_length() > 32:
        return None
    return _Estimate(config, state, samples * _WORDS_PER_SESSION).run(samples)


class _Estimate:
    """The stream's words, the accepted normal attempts among them and what each draws, extended on demand."""

    def __init__(self, config: CodingAgentConfig, state: tuple[object, ...], size: int) -> None:
        self._config = config
        self._state = state
        self._bits = np.random.MT19937()
        self._bits.state = _numpy_state(state)
        self._raw: npt.NDArray[np.uint32] = np.zeros(0, np.uint32)
        self._found: list[list[_Ints]] = [[], [], [], []]  # per phase, per chunk: positions of accepted attempts
        self._values: list[list[_Floats]] = [[], [], [], []]  # and their z
        self._positions: list[_Ints] = []  # per phase: positions of the accepted attempts
        self._z: list[_Floats] = []
        self._new: list[_Ints] = []
        self._answer: list[_Ints] = []
        self._sums: list[list[_Ints]] = []  # per phase and turn alignment (index mod 3): cumulative new + answer
        self._extend(size)

    def _extend(self, words: int) -> None:
        """Draw ``words`` more words and evaluate the attempts they complete."""
        done = max(len(self._raw) - 3, 0)  # attempts evaluated so far (each reads four words)
        fresh = [self._bits.random_raw(min(_CHUNK, words - lo)).astype(np.uint32) for lo in range(0, words, _CHUNK)]
        self._raw = np.concatenate([self._raw, *fresh])
        # In chunks: whole-run temporaries (hundreds of MB) would cost more in page faults than the arithmetic.
        for lo in range(done, len(self._raw) - 3, _CHUNK):
            self._attempts(lo, min(lo + _CHUNK, len(self._raw) - 3))
        new_tokens, outputs = self._config.new_tokens(), self._config.output_lengths()
        self._positions, self._z, self._new, self._answer, self._sums = [], [], [], [], []
        for phase in range(4):
            positions, z = np.concatenate(self._found[phase]), np.concatenate(self._values[phase])
            new, answer = _integers(new_tokens, z), _integers(outputs, z)
            grows = new[:-1] + answer[1:]  # a turn drawn from index i: new tokens i, answer i + 1
            self._positions.append(positions)
            self._z.append(z)
            self._new.append(new)
            self._answer.append(answer)
            self._sums.append([np.cumsum(grows[r::3]) for r in range(3)])

    def _attempts(self, lo: int, hi: int) -> None:
        """The normal attempts starting at words ``lo`` to ``hi`` (each reads four): which are accepted, their z."""
        raw = self._raw[lo : hi + 3]
        high, low = (raw[:-1] >> 5).astype(np.float64), (raw[1:] >> 6).astype(np.float64)
        doubles = (high * 67108864.0 + low) * (1.0 / 9007199254740992.0)  # random() from words i, i + 1
        u1, u2 = doubles[:-2], 1.0 - doubles[2:]  # the attempt starting at word i
        z = NV_MAGICCONST * (u1 - 0.5) / u2
        zz = z * z / 4.0
        with np.errstate(divide="ignore"):
            bound = -np.log(u2)
        accepted = zz <= bound
        for i in np.flatnonzero(np.abs(bound - zz) <= _LOG_EDGE * (np.abs(bound) + zz) + 1e-300).tolist():
            accepted[i] = zz[i] <= -math.log(u2[i])  # near the boundary: the C library's log decides
        for phase in range(4):
            first = (phase - lo) % 4
            index = np.flatnonzero(accepted[first::4]) * 4 + first
            self._found[phase].append(index + lo)
            self._values[phase].append(z[index])

    def run(self, samples: int) -> BulkEstimate:
        starts: list[tuple[int, int, int, int, int]] = []  # (phase, first draw, turns kept, first prompt, answer)
        at = 0
        after_first = 0
        while len(starts) < samples:
            try:
                start, at = self._session(at)
            except IndexError:  # the session runs past the words drawn: draw what the rest seem to need, walk again
                per_session = at / len(starts) if starts else _WORDS_PER_SESSION
                needed = math.ceil(1.1 * per_session * (samples - len(starts))) - (len(self._raw) - at)
                self._extend(max(needed, _CHUNK))
                continue
            starts.append(start)
            after_first = after_first or at
        return self._figures(starts, after_first)

    def _session(self, at: int) -> tuple[tuple[int, int, int, int, int], int]:
        """One session's (phase, first draw, turns kept, first prompt, answer) from word ``at``, and where it ends."""
        config, raw = self._config, self._raw
        cap = config.max_context_tokens
        num_turns, at = _randint(raw, at, config.min_turns, config.max_turns)
        first, at = _randint(raw, at, config.first_turn_min_tokens, config.first_turn_max_tokens)
        phase = at % 4
        j = int(np.searchsorted(self._positions[phase], at))  # the first accepted attempt from here
        answer = min(int(self._answer[phase][j]), cap - first)
        last, kept = j, 0
        if num_turns > 1:
            kept, tried = self._turns(phase, j + 1, num_turns - 1, cap - first - answer)
            last = j + 3 * tried
        at = int(self._positions[phase][last]) + 4 + 2  # past the last normal, then the token seed
        if at > len(raw):
            raise IndexError("the token seed's words are not drawn yet")
        return (phase, j, kept, first, answer), at

    def _turns(self, phase: int, start: int, planned: int, room: int) -> tuple[int, int]:
        """(turns kept, turns drawn) of a session whose later turns draw from ``start``: up to the cap."""
        align, base = start % 3, start // 3
        sums = self._sums[phase][align]
        before = int(sums[base - 1]) if base else 0
        passes = int(np.searchsorted(sums, room + before, side="right")) - base  # the turn that passes the cap
        if passes >= planned:
            if base + planned > len(sums):
                raise IndexError("the drawn words end before this session's turns")
            return planned, planned
        if base + passes >= len(sums):
            raise IndexError("the drawn words end before this session's turns")
        return passes, passes + 1

    def _figures(self, starts: list[tuple[int, int, int, int, int]], after_first: int) -> BulkEstimate:
        """Every turn's prompt and every session's span, the draws gathered across phases."""
        offsets = np.cumsum([0, *(len(v) for v in self._z[:-1])])
        z, new, answer = np.concatenate(self._z), np.concatenate(self._new), np.concatenate(self._answer)
        phase, first_draw, kept, first, answer0 = (np.array(c, dtype=np.int64) for c in zip(*starts, strict=True))
        session_start = np.repeat(np.cumsum(kept) - kept, kept)  # per kept turn: its session's first kept turn
        turn = np.arange(len(session_start)) - session_start  # its index among them
        draw = np.repeat(offsets[phase] + first_draw + 1, kept) + 3 * turn  # where its new tokens were drawn
        new_tokens, answers = new[draw], answer[draw + 1]
        grown = np.cumsum(new_tokens + answers) - (new_tokens + answers)  # over all sessions before it
        grown -= grown[session_start]  # over its own session's earlier turns
        context = np.repeat(first + answer0, kept) + grown
        prompts = np.concatenate([first, context + new_tokens])
        pauses = _floats(self._config.think_times(), z[draw + 2].tolist())
        spans = _spans(answer0.tolist(), kept.tolist(), answers.tolist(), pauses)
        count = int(kept[0])
        later = zip(new_tokens[:count].tolist(), answers[:count].tolist(), pauses[:count], strict=True)
        first_session = [(int(first[0]), int(answer0[0]), 0.0), *later]
        return BulkEstimate(int(prompts.sum()), spans, prompts, first_session, _advanced(self._state, after_first))


def _spans(answers0: list[int], kept: list[int], answers: list[int], pauses: list[float]) -> list[float]:
    """Each session's span, summed in the order session_statistics sums it (floats: the order matters)."""
    spans: list[float] = []
    turn = 0
    for previous, count in zip(answers0, kept, strict=True):
        offset = 0.0
        for k in range(turn, turn + count):
            offset = offset + reference_answer_s(previous) + pauses[k]
            previous = answers[k]
        spans.append(offset + reference_answer_s(previous))
        turn += count
    return spans


def _integers(dist: LogNormal, z: _Floats) -> _Ints:
    """``round(clip(exp(mu + z * sigma)))`` per draw, as LogNormal.sample_int computes it."""
    value = np.exp(dist.mu + z * dist.sigma)
    clipped = np.where(dist.low > value, dist.low, value)
    clipped = np.where(dist.high < clipped, dist.high, clipped)
    rounded = np.rint(clipped).astype(np.int64)
    edges = np.abs(clipped - np.floor(clipped) - 0.5) <= _EXP_EDGE * np.maximum(clipped, 1.0)
    for bound in (dist.low, dist.high):
        if math.isfinite(bound):
            edges |= np.abs(value - bound) <= _EXP_EDGE * max(abs(bound), 1.0)
    for i in np.flatnonzero(edges).tolist():
        rounded[i] = _exact(dist, float(z[i]), integer=True)
    return rounded


def _floats(dist: LogNormal, z: list[float]) -> list[float]:
    """``clip(exp(mu + z * sigma))`` per draw with the C library's exp, as LogNormal.sample computes it."""
    mu, sigma, low, high, exp = dist.mu, dist.sigma, dist.low, dist.high, math.exp
    values: list[float] = []
    for deviate in z:
        value = exp(mu + deviate * sigma)
        value = low if low > value else value
        values.append(high if high < value else value)
    return values


def _exact(dist: LogNormal, z: float, *, integer: bool) -> float:
    value = math.exp(dist.mu + z * dist.sigma)
    value = dist.low if dist.low > value else value
    value = dist.high if dist.high < value else value
    return round(value) if integer else value


def _randint(words: npt.NDArray[np.uint32], at: int, low: int, high: int) -> tuple[int, int]:
    """``randint(low, high)`` from the words at ``at``: ``getrandbits(k)`` until below the width."""
    width = high - low + 1
    shift = 32 - width.bit_length()
    value = int(words[at]) >> shift
    at += 1
    while value >= width:
        value = int(words[at]) >> shift
        at += 1
    return low + value, at


def _numpy_state(state: tuple[object, ...]) -> Any:  # numpy's stubs type it as a private TypedDict
    """numpy's MT19937 state for a ``random.Random.getstate()``: the same 624 words and position."""
    internal = state[1]
    if not (isinstance(internal, tuple) and len(internal) == _MT_WORDS + 1):
        raise ValueError("not a Mersenne Twister state")
    return {
        "bit_generator": "MT19937",
        "state": {"key": np.array(internal[:_MT_WORDS], dtype=np.uint32), "pos": internal[_MT_WORDS]},
    }


def _advanced(state: tuple[object, ...], words: int) -> tuple[object, ...]:
    """``state`` after ``words`` more 32-bit words (where the pure draws would leave ``random.Random``)."""
    bits = np.random.MT19937()
    bits.state = _numpy_state(state)
    bits.random_raw(words)
    key, pos = bits.state["state"]["key"], bits.state["state"]["pos"]
    return (state[0], (*key.tolist(), int(pos)), state[2])
