"""The benchmark is a subsystem of its own: the control plane does not import it, nor what it needs."""

import subprocess
import sys


def test_import_tokensched_pulls_in_neither_the_benchmark_nor_matplotlib_nor_torch() -> None:
    code = (
        "import sys, tokensched; "
        "print(sorted(m for m in sys.modules if m.startswith(('tokensched.benchmark', 'matplotlib', 'torch'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_the_benchmark_package_imports_without_matplotlib_or_an_executor() -> None:
    code = (
        "import sys, tokensched.benchmark, tokensched.benchmark.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'tokensched_sim', 'torch'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
