"""Host KV copies on the simulated link: priced per block, overlapped with the step, and the load-or-recompute hook."""

from __future__ import annotations

import attrs
import pytest

from tokensched import Engine, RequestSpec
from tokensched.plan import KVTransfer, TransferKind
from tokensched_sim import CostModel, Deployment, SimExecutor
from tokensched_sim.transfer import HOST_LINKS, HostLink, TransferModel

from .helpers import Entry, make_plan, new_request

KIMI = Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8")


@pytest.fixture(scope="module")
def model() -> TransferModel:
    return TransferModel(CostModel(KIMI), HOST_LINKS["pcie5-x16"], block_size=64)


def with_transfers(loads: int, stores: int) -> object:
    plan = make_plan(0, [Entry("a", 0, 8)], new=[new_request("a", 8)])
    transfers = [KVTransfer(TransferKind.LOAD, i, i) for i in range(loads)]
    transfers += [KVTransfer(TransferKind.STORE, 100 + i, 100 + i) for i in range(stores)]
    return attrs.evolve(plan, kv_transfers=tuple(transfers))


def test_a_block_costs_its_bytes_over_the_effective_bandwidth(model: TransferModel) -> None:
    per_rank = CostModel(KIMI).memory.kv_bytes_per_token * 64
    assert model.block_bytes == per_rank
    link = HOST_LINKS["pcie5-x16"]
    assert model.copy_time(100) == pytest.approx(link.latency_s + 100 * per_rank / (63e9 * 0.85))
    assert model.copy_time(0) == 0.0


def test_no_transfers_leave_the_step_time_alone(model: TransferModel) -> None:
    plan = make_plan(0, [Entry("a", 0, 8)], new=[new_request("a", 8)])
    assert model.step_time(0.02, plan) == 0.02


def test_short_stores_hide_under_compute_and_long_ones_set_the_pace(model: TransferModel) -> None:
    assert model.step_time(0.5, with_transfers(0, 10)) == 0.5  # type: ignore[arg-type]
    assert model.step_time(1e-4, with_transfers(0, 1000)) == model.copy_time(1000)  # type: ignore[arg-type]


def test_loads_delay_compute_by_one_layer_share_or_set_the_pace(model: TransferModel) -> None:
    load = model.copy_time(10)
    assert model.step_time(0.5, with_transfers(10, 0)) == pytest.approx(0.5 + load / 61)  # type: ignore[arg-type]
    big = model.copy_time(5000)
    assert model.step_time(0.01, with_transfers(5000, 0)) == pytest.approx(big + 0.01 / 61)  # type: ignore[arg-type]


def test_nvlink_c2c_is_faster_than_pcie() -> None:
    cost = CostModel(KIMI)
    pcie = TransferModel(cost, HOST_LINKS["pcie5-x16"], 64)
    c2c = TransferModel(cost, HOST_LINKS["nvlink-c2c"], 64)
    assert c2c.copy_time(1000) < pcie.copy_time(1000) / 7


def test_loading_a_long_prefix_beats_recomputing_it(model: TransferModel) -> None:
    assert model.load_is_cheaper(1000, 64, 0)  # 64k tokens: ~2 GB over PCIe against a long prefill
    slow = TransferModel(CostModel(KIMI), HostLink("slow", 1e6, 1.0, 0.0, "a test link"), 64)
    assert not slow.load_is_cheaper(10, 64, 0)


def test_bad_links_are_refused() -> None:
    with pytest.raises(ValueError, match="efficiency in"):
        HostLink("x", 1e9, 1.5, 0.0, "")
    with pytest.raises(ValueError, match="unknown host_link 'usb'"):
        SimExecutor(KIMI, host_link="usb")


def test_the_sim_runs_a_session_through_the_host_tier() -> None:
    """End to end: a small pool, a prefix written back, evicted and loaded; the engine's load hook is the sim's."""
    lengths = {"a": 1, "b": 1, "c": 1, "a2": 1}
    ex = SimExecutor(KIMI, block_size=4, output_lengths=lengths, num_kv_blocks=8, seed=0)
    engine = Engine.create(ex, host_kv_blocks=8, admission_reserve=0.0, max_model_len=64)
    assert engine.scheduler.host is not None and engine.scheduler.host.load_cost is ex
    for rid, prompt in [("a", list(range(1, 17))), ("b", [90, 91]), ("c", list(range(40, 68)))]:
        engine.scheduler.submit(RequestSpec(request_id=rid, prompt_token_ids=prompt, max_tokens=1, eos_token_id=0))
        while engine.scheduler.has_work:
            engine.step()
    engine.scheduler.submit(
        RequestSpec(request_id="a2", prompt_token_ids=[*range(1, 17), 20, 21], max_tokens=1, eos_token_id=0)
    )
    while engine.scheduler.has_work:
        engine.step()
    assert engine.scheduler.host.loaded_blocks == 4
