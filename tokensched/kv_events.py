"""KV-cache events in vLLM's wire format, for KV-aware routers: what each replica's prefix cache holds.

The block machine's commit of a block's first copy is "block stored" (its
hash becomes findable by prefix) and an eviction is "block removed"; the pool
tells a :class:`~tokensched.machines.blocks.BlockPoolListener` about both.
This module turns those calls into the events vLLM publishes
(``vllm/distributed/kv_events.py``) so that a router which already reads vLLM's
stream reads ours unchanged:

- ``BlockStored(block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium)``,
  ``BlockRemoved(block_hashes, medium)`` and ``AllBlocksCleared()``, each a
  msgpack array led by its type name (msgspec's ``tag=True, array_like=True``);
- batched as ``[ts, [event, ...]]`` (``data_parallel_rank`` appended when set);
- sent on a ZMQ PUB socket as three frames: topic, an 8-byte big-endian
  sequence number counting batches from 0, and the msgpack payload.

vLLM's newest source encodes the same structs as msgpack maps (field names as
keys, the type name under ``"type"``); ``layout="map"`` writes that form and
:func:`decode_batch` reads both.

Embedding: ``ZmqKVEventPublisher("tcp://127.0.0.1:5557").attach(scheduler)``
publishes from a background thread (the socket is used on that thread only);
:class:`KVEventRecorder` collects the same events in memory for a caller that
sends them itself. :class:`CachedBlockIndex` is the subscriber's side: the set
of hashes a replica holds, rebuilt from the events alone.

Needs the ``kv-events`` extra (``msgpack``, and ``pyzmq`` for the socket).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from tokensched.errors import TokenschedError

if TYPE_CHECKING:
    import zmq

    from tokensched.scheduler import Scheduler

MEDIUM_GPU = "GPU"  # vLLM's name for the device KV cache
Layout = Literal["array", "map"]


class KVEventError(TokenschedError):
    """A KV-event payload could not be decoded, or a subscriber missed batches."""


@attrs.frozen(slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = MEDIUM_GPU


@attrs.frozen(slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]
    medium: str | None = MEDIUM_GPU


@attrs.frozen(slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@attrs.frozen(slots=True)
class KVEventBatch:
    ts: float
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None = None


# --- the wire -------------------------------------------------------------------------------------

_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}


def _event_wire(event: KVEvent, layout: Layout) -> list[Any] | dict[str, Any]:
    name = type(event).__name__
    values = [getattr(event, f) for f in _FIELDS[name]]
    values = [list(v) if isinstance(v, tuple) else v for v in values]
    if layout == "array":
        return [name, *values]
    return {"type": name, **dict(zip(_FIELDS[name], values, strict=True))}


def encode_batch(batch: KVEventBatch, *, layout: Layout = "array") -> bytes:
    """The msgpack payload of one batch, as vLLM's publisher sends it."""
    import msgpack

    events = [_event_wire(e, layout) for e in batch.events]
    wire: list[Any] | dict[str, Any]
    if layout == "array":
        wire = [batch.ts, events] + ([batch.data_parallel_rank] if batch.data_parallel_rank is not None else [])
    else:
        wire = {"ts": batch.ts, "events": events}
        if batch.data_parallel_rank is not None:
            wire["data_parallel_rank"] = batch.data_parallel_rank
    payload: bytes = msgpack.packb(wire, use_bin_type=True)
    return payload


def _event_from_wire(raw: object) -> KVEvent:
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        name, values = raw[0], raw[1:]
        fields = dict(zip(_FIELDS.get(name, ()), values, strict=False))
    elif isinstance(raw, dict) and isinstance(raw.get("type"), str):
        name, fields = raw["type"], {k: v for k, v in raw.items() if k != "type"}
    else:
        raise KVEventError(f"a KV event must be a tagged array or map, got {raw!r:.80}")
    try:
        match name:
            case "BlockStored":
                return BlockStored(
                    block_hashes=tuple(fields["block_hashes"]),
                    parent_block_hash=fields["parent_block_hash"],
                    token_ids=tuple(fields["token_ids"]),
                    block_size=int(fields["block_size"]),
                    lora_id=fields.get("lora_id"),
                    medium=fields.get("medium"),
                )
            case "BlockRemoved":
                return BlockRemoved(block_hashes=tuple(fields["block_hashes"]), medium=fields.get("medium"))
            case "AllBlocksCleared":
                return AllBlocksCleared()
    except (KeyError, TypeError, ValueError) as exc:
        raise KVEventError(f"malformed {name} event: {exc!r}") from exc
    raise KVEventError(f"unknown KV event type {name!r}")


def decode_batch(payload: bytes) -> KVEventBatch:
    """A batch from its msgpack payload, in either layout; :class:`KVEventError` if it is not one."""
    import msgpack

    try:
        wire = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise KVEventError(f"not a msgpack KV-event batch: {exc}") from exc
    if isinstance(wire, list) and len(wire) in (2, 3) and isinstance(wire[1], list):
        ts, events, rank = wire[0], wire[1], wire[2] if len(wire) == 3 else None
    elif isinstance(wire, dict) and isinstance(wire.get("events"), list):
        ts, events, rank = wire.get("ts"), wire["events"], wire.get("data_parallel_rank")
    else:
        raise KVEventError(f"a KV-event batch is [ts, events] or {{ts, events}}, got {wire!r:.80}")
    if not isinstance(ts, int | float):
        raise KVEventError(f"batch timestamp must be a number, got {ts!r}")
    return KVEventBatch(float(ts), tuple(_event_from_wire(e) for e in events), rank)


# --- the publisher's side -------------------------------------------------------------------------


class KVEventRecorder:
    """A pool listener that keeps the events until :meth:`take`; attach it to a scheduler before it runs.

    It implements :class:`~tokensched.machines.blocks.BlockPoolListener`.
    """

    def __init__(self) -> None:
        self._events: list[KVEvent] = []

    def attach(self, scheduler: Scheduler) -> None:
        """Listen to ``scheduler``'s block pool, beside whoever listens already (its prefix-keyed queue, say)."""
        scheduler.pool.add_listener(self)

    def blocks_stored(
        self, block_hashes: list[int], parent_block_hash: int | None, token_ids: Sequence[int], block_size: int
    ) -> None:
        self._events.append(BlockStored(tuple(block_hashes), parent_block_hash, tuple(token_ids), block_size))

    def blocks_removed(self, block_hashes: list[int]) -> None:
        self._events.append(BlockRemoved(tuple(block_hashes)))

    def all_cleared(self) -> None:
        self._events.append(AllBlocksCleared())

    def take(self) -> list[KVEvent]:
        """The events since the last call, oldest first."""
        events, self._events = self._events, []
        return events


class ZmqKVEventPublisher(KVEventRecorder):
    """Publishes the pool's events on a ZMQ PUB socket from its own thread, a batch per ``flush_interval_s``.

    ``endpoint`` binds (``tcp://127.0.0.1:5557``, ``tcp://*:5557``, ``ipc://...``);
    subscribers connect. Events the engine thread produces within one
    interval go out as one batch. ``close`` sends what is left and stops.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        topic: str = "",
        flush_interval_s: float = 0.01,
        layout: Layout = "array",
        data_parallel_rank: int | None = None,
        hwm: int = 100_000,
    ) -> None:
        import zmq

        super().__init__()
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self._socket.set_hwm(hwm)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            raise ValueError(f"cannot bind the KV-event socket to {endpoint!r}: {exc}") from exc
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        """The bound address (with the port the kernel chose for ``tcp://host:*``)."""
        self._topic = topic.encode()
        self._interval = flush_interval_s
        self._layout: Layout = layout
        self._rank = data_parallel_rank
        self._queue: queue.SimpleQueue[KVEvent | None] = queue.SimpleQueue()
        self.sequence = 0
        """Sequence number the next batch will carry."""
        self._thread = threading.Thread(target=self._run, name="tokensched-kv-events", daemon=True)
        self._thread.start()

    # the listener calls run on the engine thread: hand the event over, never touch the socket
    def blocks_stored(
        self, block_hashes: list[int], parent_block_hash: int | None, token_ids: Sequence[int], block_size: int
    ) -> None:
        self._queue.put(BlockStored(tuple(block_hashes), parent_block_hash, tuple(token_ids), block_size))

    def blocks_removed(self, block_hashes: list[int]) -> None:
        self._queue.put(BlockRemoved(tuple(block_hashes)))

    def all_cleared(self) -> None:
        self._queue.put(AllBlocksCleared())

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued, then close the socket."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                first = self._queue.get()
                if first is None:
                    break
                time.sleep(self._interval)  # let the rest of this step's events arrive
                events = [first]
                while True:
                    try:
                        event = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if event is None:
                        stop = True
                        break
                    events.append(event)
                self._send(events)
        finally:
            self._socket.close(linger=1000)

    def _send(self, events: Sequence[KVEvent]) -> None:
        payload = encode_batch(KVEventBatch(time.time(), tuple(events), self._rank), layout=self._layout)
        self._socket.send_multipart((self._topic, self.sequence.to_bytes(8, "big"), payload))
        self.sequence += 1


# --- the subscriber's side ------------------------------------------------------------------------


class CachedBlockIndex:
    """The block hashes one replica can serve from its prefix cache, known from its events alone."""

    def __init__(self) -> None:
        self.hashes: set[int] = set()

    def apply(self, events: Iterable[KVEvent]) -> None:
        for event in events:
            match event:
                case BlockStored(block_hashes=stored):
                    self.hashes.update(stored)
                case BlockRemoved(block_hashes=removed):
                    self.hashes.difference_update(removed)
                case AllBlocksCleared():
                    self.hashes.clear()


class KVEventSubscriber:
    """A SUB socket on a publisher's ``endpoint``; :meth:`receive` returns one decoded batch and its sequence.

    A gap in sequence numbers (batches dropped at the high-water mark, or a
    publisher restart) is a :class:`KVEventError`: an index rebuilt from an
    incomplete stream would be wrong, so the caller must resynchronise.
    """

    def __init__(self, endpoint: str, *, topic: str = "") -> None:
        import zmq

        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._socket.connect(endpoint)
        self._next: int | None = None

    def receive(self, timeout_s: float) -> tuple[int, KVEventBatch] | None:
        """The next batch, or None if none arrives within ``timeout_s``."""
        if not self._socket.poll(int(timeout_s * 1000)):
            return None
        frames = self._socket.recv_multipart()
        if len(frames) != 3 or len(frames[1]) != 8:
            raise KVEventError(f"a KV-event message is 3 frames (topic, 8-byte sequence, payload), got {len(frames)}")
        sequence = int.from_bytes(frames[1], "big")
        if self._next is not None and sequence != self._next:
            raise KVEventError(f"missed KV-event batches {self._next}..{sequence - 1}")
        self._next = sequence + 1
        return sequence, decode_batch(frames[2])

    def close(self) -> None:
        self._socket.close(linger=0)
