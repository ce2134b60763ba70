"""The Executor protocol side of TorchExecutor: FIFO results, typed failures, devices."""

from __future__ import annotations

import random

import attrs
import pytest

torch = pytest.importorskip("torch")

from tests.torch.engine_helpers import random_prompt, run_engine  # noqa: E402
from tests.torch.plans import HandPlanner  # noqa: E402
from tokensched import Executor, ExecutorError, RequestSpec, TokenschedError  # noqa: E402
from tokensched_torch import MLAConfig, MLAModel, TorchExecutor, greedy_reference  # noqa: E402


def test_satisfies_the_executor_protocol_and_reports_its_pool() -> None:
    ex = TorchExecutor(MLAConfig(), num_blocks=32, block_size=8, dtype="float64")
    assert isinstance(ex, Executor)
    assert (ex.block_size, ex.num_kv_blocks) == (8, 32)
    assert ex.runner.cache.ckv[0].shape == (32, 8, 32) and ex.runner.cache.kpe[1].shape == (32, 8, 16)
    assert ex.model.dtype == torch.float64


@pytest.mark.parametrize("background", [False, True], ids=["sync", "background"])
def test_results_come_back_in_launch_order_and_a_failed_step_names_itself(model: MLAModel, background: bool) -> None:
    planner = HandPlanner(32, 4, seed=1)
    planner.add("a", [1, 2, 3, 4, 5])
    planner.add("b", [7, 8])
    with TorchExecutor(model=model, num_blocks=32, block_size=4, dtype=torch.float64, background=background) as ex:
        good = planner.plan({"a": 5})
        bad = attrs.evolve(planner.plan({"b": 2}), token_ids=[7, 999])  # outside the vocabulary
        ex.launch(good)
        ex.launch(bad)
        assert ex.num_in_flight == 2
        assert ex.collect().sampled_token_ids == [greedy_reference(model, [1, 2, 3, 4, 5], 1)]
        with pytest.raises(ExecutorError, match="outside the vocabulary") as failure:
            ex.collect()
        assert failure.value.step_id == bad.step_id
        with pytest.raises(TokenschedError, match="no step in flight"):
            ex.collect()


def test_background_worker_overlaps_and_matches_synchronous_runs(model: MLAModel) -> None:
    rng = random.Random(3)
    specs = [
        RequestSpec(request_id=f"r{i}", prompt_token_ids=random_prompt(rng, 5 + i), max_tokens=6) for i in range(3)
    ]
    with TorchExecutor(model=model, num_blocks=64, block_size=4, dtype=torch.float64, background=True) as ex:
        background = run_engine(ex, specs, max_steps_in_flight=3)
    sync = run_engine(TorchExecutor(model=model, num_blocks=64, block_size=4, dtype=torch.float64), specs)
    assert background.tokens == sync.tokens


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        TorchExecutor(dtype="float8")
    with pytest.raises(ValueError, match="not two different configs"):
        TorchExecutor(MLAConfig(num_layers=1), model=MLAModel(MLAConfig()))
    with pytest.raises(ValueError, match="must be even"):
        MLAConfig(qk_rope_head_dim=7)


def test_weights_depend_only_on_the_seed() -> None:
    a, b, c = MLAModel(MLAConfig()), MLAModel(MLAConfig()), MLAModel(MLAConfig(init_seed=1))
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_greedy_matches_the_cpu_reference() -> None:
    cpu_model = MLAModel(MLAConfig())
    rng = random.Random(4)
    specs = [
        RequestSpec(request_id=f"r{i}", prompt_token_ids=random_prompt(rng, 9 + i), max_tokens=6) for i in range(3)
    ]
    ex = TorchExecutor(MLAConfig(), num_blocks=64, block_size=16, device="cuda", dtype=torch.float64)
    run = run_engine(ex, specs, max_steps_in_flight=2)
    cpu_model = cpu_model.double()
    for spec in specs:
        assert run.tokens[spec.request_id] == greedy_reference(cpu_model, spec.prompt_token_ids, spec.max_tokens)
