"""KV copies between device and host memory on the simulated host link, overlapped with the step.

A plan's :attr:`~tokensched.plan.StepPlan.kv_transfers` (from the scheduler's
host tier) move whole KV blocks: ``block_size`` tokens of every layer's KV as
this rank holds it (``CostModel.memory.kv_bytes_per_token``; MLA's latent is
whole on every rank, and each rank copies over its own link, in parallel).

Timing (one step):

- loads (host→device) and stores (device→host) use the two directions of the
  link at once (PCIe and NVLink-C2C are full duplex), each at the link's
  effective bandwidth, plus one copy-launch latency per direction in use;
- the step's compute reads loaded KV layer by layer, as layer-wise
  offloading engines do (SGLang HiCache, LMCache): it waits for the first
  layer's share of the loads, and cannot end before the loads end plus the
  last layer's share of the compute;
- stores read blocks the scheduler holds until the step completes, so they
  overlap the whole step and only lengthen it when they take longer.

So ``step = max(compute + load / L, load + compute / L, store)`` with ``L``
layers, plus the latencies; with no transfers the compute time is unchanged.

Link figures (:data:`HOST_LINKS`, cited in ``docs/sim.md``): bandwidth per
direction, an efficiency for large pinned-memory copies by the copy engines,
and a launch latency.
"""

from __future__ import annotations

import attrs

from tokensched.plan import StepPlan, TransferKind
from tokensched_sim.cost import CostModel
from tokensched_sim.shape import BatchShape

_GB = 1e9


@attrs.frozen(slots=True)
class HostLink:
    """A GPU's link to host memory: per-direction bandwidth, achieved fraction, copy latency, where from."""

    name: str
    bytes_per_s: float  # per direction, theoretical
    efficiency: float  # achieved fraction for large pinned copies
    latency_s: float  # per batch of copies in one direction (launch + first bytes)
    source: str

    def __attrs_post_init__(self) -> None:
        if self.bytes_per_s <= 0 or not 0 < self.efficiency <= 1 or self.latency_s < 0:
            raise ValueError(f"host link {self.name!r}: bandwidth > 0, efficiency in (0, 1], latency >= 0")

    @property
    def effective_bytes_per_s(self) -> float:
        return self.bytes_per_s * self.efficiency


HOST_LINKS: dict[str, HostLink] = {
    "pcie5-x16": HostLink(
        name="PCIe Gen5 x16 (HGX B200)",
        bytes_per_s=63.0 * _GB,  # 32 GT/s x 16 lanes, 128b/130b encoding
        efficiency=0.85,  # ~53.6 GB/s: pinned-memory copy-engine copies reach 50-56 GB/s on Gen5 x16
        latency_s=10e-6,
        source="PCI-SIG PCIe 5.0 (32 GT/s per lane, 128b/130b); NVIDIA nvbandwidth host_to_device_memcpy_ce "
        "reports ~55.6 GB/s on a Gen5 x16 GPU",
    ),
    "nvlink-c2c": HostLink(
        name="NVLink-C2C (Grace-Blackwell)",
        bytes_per_s=450.0 * _GB,  # 900 GB/s total, both directions together
        efficiency=0.85,  # assumed like PCIe's; no measurement cited
        latency_s=10e-6,
        source="NVIDIA Grace Hopper / GB200 datasheets: NVLink-C2C 900 GB/s total, 450 GB/s per direction",
    ),
}


class TransferModel:
    """Prices a plan's KV copies on ``link`` for the deployment of ``cost_model`` and overlaps them with compute."""

    __slots__ = ("block_bytes", "block_size", "cost_model", "link", "num_layers")

    def __init__(self, cost_model: CostModel, link: HostLink, block_size: int) -> None:
        self.cost_model = cost_model
        self.link = link
        self.block_size = block_size
        self.block_bytes = cost_model.memory.kv_bytes_per_token * block_size  # per rank
        self.num_layers = max(1, cost_model.num_layers)

    def copy_time(self, num_blocks: int) -> float:
        """Seconds to copy ``num_blocks`` blocks one way (0 for none)."""
        if num_blocks <= 0:
            return 0.0
        return self.link.latency_s + num_blocks * self.block_bytes / self.link.effective_bytes_per_s

    def step_time(self, compute_s: float, plan: StepPlan) -> float:
        """The step's duration with its transfers overlapped (``compute_s`` when it has none)."""
        if not plan.kv_transfers:
            return compute_s
        loads = sum(1 for t in plan.kv_transfers if t.kind is TransferKind.LOAD)
        load_s = self.copy_time(loads)
        store_s = self.copy_time(len(plan.kv_transfers) - loads)
        layers = self.num_layers
        return max(compute_s + load_s / layers, load_s + compute_s / layers, store_s)

    def load_is_cheaper(self, num_blocks: int, block_size: int, context_tokens: int) -> bool:
        """Loading ``num_blocks`` beats recomputing them after ``context_tokens`` (the scheduler's LoadCost hook)."""
        tokens = num_blocks * block_size
        shape = BatchShape.from_counts(
            num_prefill_tokens=tokens, num_prefill_requests=1, prefill_context_tokens=context_tokens
        )
        return self.copy_time(num_blocks) < self.cost_model.step_time(shape)
