from __future__ import annotations

from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from tokensched_torch import MLAConfig, MLAModel, ModelRunner, TorchMLAAttention  # noqa: E402

RunnerFactory = Callable[..., ModelRunner]

# The tiny model's ops take microseconds; intra-op threads only add contention on a shared CI
# box (a 20x64 float64 matmul goes from ~50 µs to ~800 µs with 2 busy threads).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model() -> MLAModel:
    """The tiny default model in float64, so paged and dense agree to ~1e-13."""
    return MLAModel(MLAConfig()).double()


@pytest.fixture(params=["batched", "sliced"])
def make_runner(request: pytest.FixtureRequest, model: MLAModel) -> RunnerFactory:
    """Runners over the tiny model; "sliced" forces every grouping path of the torch backend
    (short queries padded together, long ones cut into slices of a few rows)."""

    def factory(num_blocks: int = 64, block_size: int = 4, m: MLAModel | None = None) -> ModelRunner:
        m = m or model
        backend = TorchMLAAttention(m.cfg.softmax_scale)
        if request.param == "sliced":
            backend = TorchMLAAttention(m.cfg.softmax_scale, batch_query_len=2, max_query_rows=3)
        return ModelRunner(m, num_blocks, block_size, backend=backend)

    return factory
