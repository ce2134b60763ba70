"""KV events: vLLM's wire layout byte for byte, both layouts decoded, bad payloads refused, a real ZMQ hop."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensched.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    CachedBlockIndex,
    KVEventBatch,
    KVEventError,
    KVEventSubscriber,
    ZmqKVEventPublisher,
    decode_batch,
    encode_batch,
)

hashes = st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=1, max_size=4)
events = st.one_of(
    st.builds(
        BlockStored,
        block_hashes=hashes.map(tuple),
        parent_block_hash=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
        token_ids=st.lists(st.integers(0, 2**31 - 1), max_size=8).map(tuple),
        block_size=st.integers(1, 64),
    ),
    st.builds(BlockRemoved, block_hashes=hashes.map(tuple)),
    st.just(AllBlocksCleared()),
)
batches = st.builds(
    KVEventBatch,
    ts=st.floats(0, 2e9, allow_nan=False),
    events=st.lists(events, max_size=5).map(tuple),
    data_parallel_rank=st.none() | st.integers(0, 7),
)


def test_the_array_layout_is_vllms_tagged_arrays_in_field_order() -> None:
    batch = KVEventBatch(1.5, (BlockStored((11, 12), None, (1, 2, 3, 4), 2), BlockRemoved((9,)), AllBlocksCleared()))
    expected = [
        1.5,
        [
            ["BlockStored", [11, 12], None, [1, 2, 3, 4], 2, None, "GPU"],
            ["BlockRemoved", [9], "GPU"],
            ["AllBlocksCleared"],
        ],
    ]
    assert encode_batch(batch) == msgpack.packb(expected, use_bin_type=True)


def test_the_map_layout_names_each_field_and_the_type() -> None:
    wire = msgpack.unpackb(encode_batch(KVEventBatch(2.0, (BlockRemoved((5,)),), 3), layout="map"))
    assert wire == {
        "ts": 2.0,
        "events": [{"type": "BlockRemoved", "block_hashes": [5], "medium": "GPU"}],
        "data_parallel_rank": 3,
    }


@given(batches, st.sampled_from(["array", "map"]))
def test_a_batch_survives_encoding_in_either_layout(batch: KVEventBatch, layout: str) -> None:
    assert decode_batch(encode_batch(batch, layout=layout)) == batch  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # never used in msgpack
        msgpack.packb("hello"),
        msgpack.packb([1.0, [["BlockEvicted", [1]]]]),
        msgpack.packb([1.0, [["BlockStored", [1]]]]),  # fields missing
        msgpack.packb([1.0, [42]]),
        msgpack.packb(["yesterday", []]),
    ],
)
def test_a_payload_that_is_not_a_batch_is_a_clear_error(payload: bytes) -> None:
    with pytest.raises(KVEventError):
        decode_batch(payload)


def test_the_index_follows_stored_removed_and_cleared() -> None:
    index = CachedBlockIndex()
    index.apply([BlockStored((1, 2, 3), None, (), 16), BlockRemoved((2,))])
    assert index.hashes == {1, 3}
    index.apply([AllBlocksCleared(), BlockStored((4,), 3, (), 16)])
    assert index.hashes == {4}


def test_batches_cross_a_real_zmq_socket_in_order_with_their_sequence_numbers() -> None:
    publisher = ZmqKVEventPublisher("tcp://127.0.0.1:*", topic="replica-0")
    subscriber = KVEventSubscriber(publisher.endpoint, topic="replica-0")
    try:
        # a PUB socket drops what it sends before the subscription arrives: probe until one gets through
        for _ in range(100):
            publisher.all_cleared()
            got = subscriber.receive(timeout_s=0.1)
            if got is not None:
                break
        else:
            pytest.fail("the subscriber never received a probe batch")
        while subscriber.receive(timeout_s=0.2) is not None:  # late probes
            pass
        first = publisher.sequence
        publisher.blocks_stored([7, 8], None, list(range(8)), 4)
        batch_a = subscriber.receive(timeout_s=5)
        publisher.blocks_removed([7])
        batch_b = subscriber.receive(timeout_s=5)
        assert batch_a is not None and batch_b is not None
        assert (batch_a[0], batch_b[0]) == (first, first + 1)
        assert batch_a[1].events == (BlockStored((7, 8), None, tuple(range(8)), 4),)
        assert batch_b[1].events == (BlockRemoved((7,)),)
    finally:
        publisher.close()
        subscriber.close()


def test_a_subscriber_refuses_a_gap_in_the_sequence() -> None:
    publisher = ZmqKVEventPublisher("tcp://127.0.0.1:*")
    subscriber = KVEventSubscriber(publisher.endpoint)
    try:
        for _ in range(100):
            publisher.all_cleared()
            if subscriber.receive(timeout_s=0.1) is not None:
                break
        while subscriber.receive(timeout_s=0.2) is not None:
            pass
        publisher.sequence += 5  # as if five batches were dropped at the high-water mark
        publisher.all_cleared()
        with pytest.raises(KVEventError, match="missed KV-event batches"):
            subscriber.receive(timeout_s=5)
    finally:
        publisher.close()
        subscriber.close()


def test_binding_to_a_bad_endpoint_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot bind the KV-event socket"):
        ZmqKVEventPublisher("tcp://256.0.0.1:1")
