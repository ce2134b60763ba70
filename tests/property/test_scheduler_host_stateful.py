"""The whole scheduler with the host KV tier on, under the same random traffic as the other policies.

``SchedulerStateMachine`` checks every invariant after every rule; with the
tier on those include the host tier's books (``HostTier.check_invariants``)
and device refcounts that count write-backs in flight as holders. Small host
tiers and transfer budgets make write-backs, host evictions and loads happen
within a few dozen steps; the machine also checks that every plan's transfers
are legal at the moment they are planned.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from tokensched.config import SchedulerConfig
from tokensched.machines.blocks import BlockState
from tokensched.machines.host_tier import SlotState
from tokensched.plan import StepPlan, TransferKind
from tokensched.testing import SchedulerStateMachine
from tokensched.testing.strategies import scheduler_configs

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
SEEN: Counter[str] = Counter()


@st.composite
def host_configs(draw: st.DrawFn) -> SchedulerConfig:
    base = draw(scheduler_configs())
    return SchedulerConfig.model_validate(
        {
            **base.model_dump(),
            "enable_prefix_caching": True,
            "host_kv_blocks": draw(st.integers(1, 8)),
            "host_transfer_blocks": draw(st.integers(1, 4)),
            "host_eviction": draw(st.sampled_from(["lru", "lru", "lfu", "cost"])),
        }
    )


class HostTierSchedulerMachine(SchedulerStateMachine):
    def configs(self) -> st.SearchStrategy[SchedulerConfig]:
        return host_configs()

    @rule()
    def plan(self) -> None:  # engine_steps calls it too
        before = len(self.launched)
        super().plan()
        if len(self.launched) > before:  # a new plan: its transfers are checked as they were planned
            self._check_transfers(self.launched[-1][0])

    def _check_transfers(self, plan: StepPlan) -> None:
        host = self.s.host
        assert host is not None
        tier = host.tier
        assert len(plan.kv_transfers) <= self.s.config.host_transfer_blocks, "transfer budget exceeded"
        kinds = [t.kind for t in plan.kv_transfers]
        assert kinds == sorted(kinds, key=lambda k: k is TransferKind.STORE), "loads come before stores"
        new_tables = {new.request_id: new for new in plan.new_requests}
        for t in plan.kv_transfers:
            if t.kind is TransferKind.LOAD:
                SEEN["load"] += 1
                event("host load")
                assert tier.state(t.host_slot) is SlotState.LOADING
                assert self.s.pool.state(t.device_block) is BlockState.OWNED, "a load target is matchable"
                owners = [rid for rid, new in new_tables.items() if t.device_block in new.block_ids]
                assert len(owners) == 1, f"load into block {t.device_block} of {owners}"
                new = new_tables[owners[0]]
                index = new.block_ids.index(t.device_block)
                assert index * plan.block_size < new.num_cached_tokens, "a loaded block the step computes instead"
            else:
                SEEN["store"] += 1
                event("host store")
                assert tier.state(t.host_slot) is SlotState.WRITING
                assert self.s.pool.state(t.device_block) is BlockState.COMMITTED, "a stored block is reusable"
        if any(tier.state(s) is SlotState.RESIDENT for s in range(tier.num_slots)):
            event("host holds a copy")


TestHostTierScheduler = HostTierSchedulerMachine.TestCase
TestHostTierScheduler.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_the_machine_above_loaded_and_stored_blocks() -> None:
    """Runs after the machine (pytest keeps file order): transfers happened, so the checks were not vacuous."""
    if not SEEN:
        return
    print(f"host transfers checked: {dict(SEEN)}")
    assert SEEN["load"] > 0 and SEEN["store"] > 0, dict(SEEN)
