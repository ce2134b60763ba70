"""tokensched against TokenSpeed's C++ scheduler, side by side in one run, with the ratio.

Runs the two harnesses of ``../shared/bench/`` (same shape: N requests of 512
prompt tokens decoding, plan + complete per step, result rows built per
request, one step in flight, garbage collector on, median per step; and a
200k-token prompt cached under another id, request built inside the timing),
alternating them ``--rounds`` times so that both see the same machine load,
and prints each figure per round and the ratio of the medians.

tokenspeed-scheduler is a measuring stick, never a dependency: it lives in its
own virtualenv::

    python3 -m venv .venv-tokenspeed && .venv-tokenspeed/bin/pip install tokenspeed-scheduler==0.1.42
    .venv/bin/python bench/compare_tokenspeed.py 64 1024 --rounds 2

``--harness-dir`` points at the two harness scripts (default ``../shared/bench``
relative to the repository, else ``/work/shared/bench``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DECODE = re.compile(r"(\w+) decode step: running=(\d+) (\d+) us/step ([\d.]+) us/request")
PREFIX = re.compile(r"(\w+) 200k-token prompt: submit \+ prefix match \+ plan ([\d.]+) ms")


def harness_dir(given: str | None) -> Path:
    candidates = [Path(given)] if given else [ROOT.parent / "shared" / "bench", Path("/work/shared/bench")]
    for path in candidates:
        if (path / "tokensched_sched_overhead.py").exists() and (path / "tokenspeed_sched_overhead.py").exists():
            return path
    raise SystemExit(f"no harnesses in {', '.join(map(str, candidates))}: pass --harness-dir")


def run(python: Path, script: Path, sizes: list[int], timeout: float) -> tuple[dict[int, float], float]:
    """One harness run: µs per request per decode step by N, and the 200k-prompt ms."""
    out = subprocess.run(
        [str(python), str(script), *map(str, sizes)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"{script.name} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    decode = {int(m[2]): float(m[4]) for m in DECODE.finditer(out.stdout)}
    prefix = PREFIX.search(out.stdout)
    if prefix is None or set(decode) != set(sizes):
        raise SystemExit(f"{script.name} printed something unexpected:\n{out.stdout}")
    return decode, float(prefix[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[64, 1024], help="running requests per decode figure")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each harness")
    parser.add_argument("--harness-dir", default=None)
    parser.add_argument("--tokenspeed-python", default=str(ROOT / ".venv-tokenspeed" / "bin" / "python"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per harness run")
    args = parser.parse_args()
    bench = harness_dir(args.harness_dir)
    ts_python = Path(args.tokenspeed_python)
    if not ts_python.exists():
        raise SystemExit(f"{ts_python} not found: create .venv-tokenspeed (see this script's docstring)")
    ours: list[tuple[dict[int, float], float]] = []
    theirs: list[tuple[dict[int, float], float]] = []
    sessions: list[tuple[float, float]] = []
    for r in range(args.rounds):
        theirs.append(run(ts_python, bench / "tokenspeed_sched_overhead.py", args.sizes, args.timeout))
        ours.append(run(Path(sys.executable), bench / "tokensched_sched_overhead.py", args.sizes, args.timeout))
        sessions.append(session_turn_ms(args.timeout))
        cells = "  ".join(f"N={n}: {theirs[-1][0][n]:.2f} vs {ours[-1][0][n]:.2f}" for n in args.sizes)
        print(
            f"round {r + 1}: us/request/step tokenspeed vs tokensched  {cells}  "
            f"200k: {theirs[-1][1]:.1f} vs {ours[-1][1]:.1f} ms",
            flush=True,
        )
    print()
    print(f"{'figure (median of rounds)':<42} {'tokenspeed':>11} {'tokensched':>11} {'ratio':>7}")
    for n in args.sizes:
        a = statistics.median(t[0][n] for t in theirs)
        b = statistics.median(o[0][n] for o in ours)
        print(f"{f'us per request per decode step, N={n}':<42} {a:>11.2f} {b:>11.2f} {a / b:>6.2f}x")
    a = statistics.median(t[1] for t in theirs)
    b = statistics.median(o[1] for o in ours)
    print(f"{'200k prompt cached under another id, ms':<42} {a:>11.1f} {b:>11.1f} {a / b:>6.2f}x")
    print("ratio > 1: tokensched is faster")
    print()
    print("tokensched only (no TokenSpeed figure to set beside it), median of rounds:")
    print(f"  200k prompt, a session's next turn, list of ints, ms: {statistics.median(t[0] for t in sessions):.2f}")
    print(f"  200k prompt, a session's next turn, numpy int32, ms:  {statistics.median(t[1] for t in sessions):.2f}")


def session_turn_ms(timeout: float) -> tuple[float, float]:
    """A session's next turn on a 200k-token history (bench_scheduler.prefix_admission), list and buffer input."""
    code = (
        "from bench_scheduler import prefix_admission\n"
        "a = prefix_admission(200_000, 3)\n"
        "print(a.session_list, a.session_buffer)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT / "bench",
    )
    if out.returncode != 0:
        raise SystemExit(f"bench_scheduler.prefix_admission failed ({out.returncode}):\n{out.stderr[-2000:]}")
    session_list, session_buffer = map(float, out.stdout.split())
    return session_list, session_buffer


if __name__ == "__main__":
    main()
