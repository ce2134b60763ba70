"""The KV-event stream alone rebuilds the pool's prefix index after every step of a random scheduler run.

The whole-scheduler state machine (``tokensched.testing``) drives submissions,
overlapped steps, failures, preemptions, evictions and aborts; after every
rule the events recorded since the last check are encoded to vLLM's msgpack
bytes, decoded again, and applied to a subscriber's index, which must equal
the set of hashes the pool can find by prefix.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant

from tokensched.kv_events import (
    BlockStored,
    CachedBlockIndex,
    KVEventBatch,
    KVEventRecorder,
    decode_batch,
    encode_batch,
)
from tokensched.testing import SchedulerStateMachine


def indexed_hashes(machine: SchedulerStateMachine) -> set[int]:
    """What the pool can find by prefix: every hash in its index."""
    return set(machine.s.pool._index)


class KVEventsMachine(SchedulerStateMachine):
    @initialize(data=st.data(), seed=st.integers(0, 2**16))
    def setup(self, data: st.DataObject, seed: int) -> None:
        super().setup(data, seed)
        self.recorder = KVEventRecorder()
        self.recorder.attach(self.s)
        self.index = CachedBlockIndex()
        self.layout = data.draw(st.sampled_from(["array", "map"]), label="layout")
        self.batches = 0

    @invariant()
    def events_rebuild_the_index(self) -> None:
        if self.scheduler is None:
            return
        events = self.recorder.take()
        if events:
            payload = encode_batch(KVEventBatch(float(self.batches), tuple(events)), layout=self.layout)  # type: ignore[arg-type]
            batch = decode_batch(payload)
            assert batch.events == tuple(events)
            self.index.apply(batch.events)
            self.batches += 1
            for e in events:
                event(f"KV event {type(e).__name__}")
                if isinstance(e, BlockStored):
                    assert len(e.token_ids) == len(e.block_hashes) * e.block_size
        assert self.index.hashes == indexed_hashes(self)


KVEventsMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestKVEvents = KVEventsMachine.TestCase
