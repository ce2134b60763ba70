"""A roofline cost model of one inference step: how long a batch takes on a deployment.

A step runs every layer once over all its tokens. Each layer is a few phases
(attention projections, prefill attention, decode attention, the MLP or MoE,
and the lm_head once per step); a phase takes ``max(compute, memory traffic)``
seconds, where compute is FLOPs over the achieved tensor-core rate and memory
is bytes over the achieved HBM bandwidth. Communication between ranks depends
on the shape (two all-reduces per layer under TP; all-gather + reduce-scatter
with DP attention; all-to-all dispatch/combine with DP attention + EP), and
every step pays a fixed overhead (kernel launches, sampling). See docs/sim.md.

Everything is per GPU rank, for the busiest rank: TP divides weights, heads and
FLOPs by ``tp`` except MLA's latent KV cache, which every rank reads whole; DP
attention gives each rank ``1/tp`` of the requests (balanced) with all heads;
EP gives each rank ``E/tp`` whole experts and the load of the busiest one.

The model is evaluated from a :class:`BatchShape`: a handful of sums over the
step's requests, so its cost is O(1) once the sums are taken (O(requests) in
the executor, with tiny constants).
"""

from __future__ import annotations

import copy
import math

import attrs

from tokensched_sim.deployment import Deployment
from tokensched_sim.draft import DEFAULT_DRAFT, DraftSpec, generic_draft
from tokensched_sim.efficiency import Efficiency
from tokensched_sim.engines import engine_preset, sglang_memory_settings, sglang_vlm_factor
from tokensched_sim.memory import (
    GRAPH_BYTES_PER_BATCH,
    DeploymentError,
    MemoryBreakdown,
    kv_budget,
    runtime_bytes,
)
from tokensched_sim.presets import MODELS, Dtype, ModelSpec
from tokensched_sim.shape import BatchShape

__all__ = ["ATTENTION_PHASES", "PHASES", "CostModel", "Deployment", "Efficiency", "KVCapacity", "Terms"]

ACTIVATION_BYTES = 2  # BF16 hidden states, exchanged between ranks
# DeepEP dispatches FP8 activations (1 byte a value + scales) and combines in BF16 (deepseek-ai/DeepEP README).
A2A_BYTES = 1 + 2

PHASES = ("attn_proj", "prefill_attn", "decode_attn", "dense_mlp", "moe", "lm_head")
"""Phase names, in the order of :meth:`CostModel.terms`. ``prefill_attn`` and ``decode_attn`` use the
attention efficiency, the others the matmul efficiency."""
ATTENTION_PHASES = frozenset({"prefill_attn", "decode_attn"})


@attrs.frozen(slots=True)
class Terms:
    """A step's cost before efficiencies: per phase, seconds at peak compute and at peak bandwidth."""

    compute_s: tuple[float, ...]  # one per PHASES entry
    memory_s: tuple[float, ...]
    network_s: float  # bytes exchanged between ranks at peak NVLink bandwidth
    num_allreduces: int  # collectives, each paying the fixed latency
    num_layers: int = 0  # layers run, each paying the latency floor


@attrs.frozen(slots=True)
class KVCapacity:
    """What the KV cache holds: ``num_blocks`` for the scheduler, ``max_request_tokens`` for one request."""

    block_size: int
    num_blocks: int
    num_tokens: int
    max_request_tokens: int


def default_draft(model: ModelSpec) -> DraftSpec:
    """The model preset's published EAGLE-3 head, or an EAGLE-3-shaped one at its width."""
    for key, spec in MODELS.items():
        if spec == model and key in DEFAULT_DRAFT:
            from tokensched_sim.draft import draft_preset

            return draft_preset(DEFAULT_DRAFT[key])
    return generic_draft(model.hidden_size, model.num_heads, model.intermediate_size)


def expert_imbalance(num_tokens: int, num_experts_per_token: int, ranks: int) -> float:
    """Busiest rank's routed load over the mean, for ``num_tokens`` tokens routed uniformly at random.

    Each rank receives ~Binomial(T k, 1/ranks) assignments; the expected maximum of
    ``ranks`` such loads is about ``mean + sd * sqrt(2 ln ranks)``. Real routing is
    skewed beyond this (DeepSeek-V3 report, section 3.4: EPLB replicates hot experts),
    which the model does not capture.
    """
    if ranks <= 1 or num_tokens <= 0:
        return 1.0
    spread = math.sqrt(2 * math.log(ranks) * (ranks - 1) / (num_tokens * num_experts_per_token))
    return min(1.0 + spread, float(ranks))


class CostModel:
    """Per-rank constants of a :class:`Deployment`, precomputed once; ``step_time`` is then O(1).

    >>> cm = CostModel(Deployment(model="dense-8b", gpu="h100", tp=1))
    >>> round(cm.step_time(BatchShape.from_counts(num_decode_requests=1, decode_context_tokens=1000)) * 1e3, 2)
    9.74
    """

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = d = deployment
        m, g, tp = d.model, d.gpu, d.tp
        self.engine = engine_preset(d.engine)
        self.efficiency = d.efficiency
        dp, ep = d.attention == "dp", d.moe == "ep"
        kv_dtype = d.kv_dtype or m.kv_dtype
        bw = g.hbm_bytes_per_s
        peak_w = g.peak_flops(m.weight_dtype)
        peak_e = g.peak_flops(m.expert_dtype)
        peak_attn = g.peak_flops(Dtype.BF16)
        if d.attention_dtype == "fp8":  # FP8 kernels reach their own fraction of the FP8 peak; fold it into the peak
            peak_attn = g.peak_flops(Dtype.FP8) * d.efficiency.attention_fp8 / d.efficiency.attention
        wb, eb = m.weight_dtype.bytes, m.expert_dtype.bytes
        heads = m.num_heads if dp else m.num_heads // tp
        self._dp_ranks = tp if dp else 1  # attention terms are scaled per step by the busiest rank's share
        self._pooled = dp  # num_kv_blocks counts every rank's pool (False in a one_dp_rank view)
        self.num_layers = m.num_layers
        self.num_dense_layers = m.num_layers - m.num_moe_layers
        self.num_moe_layers = m.num_moe_layers

        # Weights each rank reads per layer, and seconds per token of their matmuls at peak.
        attn_params = (m.attn_params_sharded if dp else m.attn_params_sharded / tp) + m.attn_params_replicated
        self._proj_c = 2 * attn_params / peak_w
        self._proj_m = attn_params * wb / bw
        mlp_params = m.dense_mlp_params / tp
        self._mlp_c = 2 * mlp_params / peak_w
        self._mlp_m = mlp_params * wb / bw
        always = m.num_shared_experts * m.expert_params / tp + m.router_params  # router replicated
        expert = m.expert_params / tp  # per touched expert: a slice (TP) or a whole expert over tp ranks (EP)
        self._always_c = 2 * always / peak_w
        self._routed_c = 2 * m.num_experts_per_token * expert / peak_e
        self._moe_always_m = always * wb / bw
        self._expert_m = expert * eb / bw
        self._num_experts = m.num_experts
        self._k = m.num_experts_per_token
        self._ep_ranks = tp if ep and m.num_experts else 1
        # (1 - k/E)^T is the chance one expert is missed by all T tokens (each picks k of E uniformly).
        self._log_miss = math.log1p(-m.num_experts_per_token / m.num_experts) if m.num_experts else 0.0
        head_params = m.embedding_params / tp
        self._head_c = 2 * head_params / peak_w
        self._head_m = head_params * wb / bw

        # Attention: FLOPs per query-key pair and KV bytes per cached token, per layer per rank.
        if m.attention == "mla":
            # Prefill decompresses the latent (kv_b_proj) and runs MHA over qk=nope+rope, v=v_head_dim;
            # decode absorbs kv_b into the query and attends in latent space: qk=kv_lora+rope, v=kv_lora.
            self._pre_pair_c = 2 * heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim) / peak_attn
            self._pre_ctx_c = 2 * m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim) / peak_attn
            self._dec_pair_c = 2 * heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim) / peak_attn
            kv_values_rank = m.kv_values_per_token_layer  # the latent is shared by all heads: whole on every rank
        else:
            self._pre_pair_c = self._dec_pair_c = 2 * heads * 2 * m.head_dim / peak_attn
            self._pre_ctx_c = 0.0
            kv_heads_rank = m.num_kv_heads if dp else max(m.num_kv_heads / tp, 1.0)  # replicated past their count
            kv_values_rank = round(2 * kv_heads_rank * m.head_dim)
        self.kv_bytes_per_token_layer = kv_values_rank * kv_dtype.bytes
        self._kv_m = self.kv_bytes_per_token_layer / bw

        # Communication per layer, seconds per step token at peak one-way NVLink, and collectives per layer.
        link = g.nvlink_bytes_per_s / 2
        ring = 2 * (tp - 1) / tp * m.hidden_size * ACTIVATION_BYTES / link if tp > 1 else 0.0
        self._a2a = False  # whether the MoE layers' traffic is this rank's tokens (all-to-all) or all tokens
        if tp == 1:
            dense_net = moe_net = 0.0
            dense_n = moe_n = 0
        elif not dp:  # an all-reduce after attention and one after the MLP/MoE (EP experts sum partial outputs too)
            dense_net = moe_net = 2 * ring
            dense_n = moe_n = 2
        else:  # all-gather before the MLP, reduce-scatter after: one all-reduce's volume in two collectives
            dense_net = moe_net = ring
            dense_n = moe_n = 2
            if ep and m.num_experts:  # dispatch + combine: each of this rank's tokens goes to k experts
                moe_net = m.num_experts_per_token * (tp - 1) / tp * m.hidden_size * A2A_BYTES / link
                self._a2a = True
        self._net_layers = (self.num_dense_layers * dense_net, self.num_moe_layers * moe_net)
        self._coll_layers = (self.num_dense_layers * dense_n, self.num_moe_layers * moe_n)

        # Speculation: the draft head's weights, KV and per-pass constants.
        self.num_speculative_tokens = d.num_speculative_tokens
        self.draft: DraftSpec | None = None
        draft_bytes = draft_kv_token = 0.0
        if d.num_speculative_tokens:
            self.draft = d.draft or default_draft(m)
            draft_params = self.draft.params() / tp
            draft_bytes = draft_params * self.draft.weight_dtype.bytes
            draft_kv_token = self.draft.kv_values_per_token(tp) * kv_dtype.bytes
            self._draft_c = 2 * draft_params / g.peak_flops(self.draft.weight_dtype)
            self._draft_m = draft_bytes / bw
            dheads = self.draft.num_layers * self.draft.num_heads / tp
            self._draft_pair_c = 2 * dheads * 2 * self.draft.head_dim / peak_attn
            self._draft_kv_m = draft_kv_token / bw
            self._draft_net = 2 * self.draft.num_layers * ring
            self._draft_coll = 2 * self.draft.num_layers if tp > 1 else 0

        # Memory: what the engine's rule leaves for the KV cache.
        self.weight_bytes_per_rank = (
            attn_params * wb * m.num_layers
            + mlp_params * wb * self.num_dense_layers
            + (m.num_experts * expert * eb + always * wb) * self.num_moe_layers
            + 2 * head_params * wb
        )
        self.kv_bytes_per_token = self.kv_bytes_per_token_layer * m.num_layers  # the target's, per rank
        self.memory = self._memory(draft_bytes, self.kv_bytes_per_token, draft_kv_token)
        self.kv_budget_bytes = self.memory.kv
        self.num_kv_tokens = self.memory.kv_tokens_per_rank
        self._fold_efficiency()

    # Memory ----------------------------------------------------------------------------------------

    def _memory(self, draft_bytes: float, target_cell: float, draft_cell: float) -> MemoryBreakdown:
        """Per-rank memory under the engine's rule; ``*_cell``: KV bytes per token of the target and the draft.

        vLLM and TensorRT-LLM size one pool whose tokens carry every attention layer, the draft's
        included. SGLang sizes the target's pool first (``profile_max_num_token`` counts only the
        target's layers) and then allocates the draft worker's cache for as many tokens
        (``draft_runner_cache_size``) out of the reserve, where it must fit with the rest.
        """
        d, m, e = self.deployment, self.deployment.model, self.engine
        gpu_bytes = d.gpu.memory_bytes
        fraction, batched, graphs = e.memory_fraction, e.max_num_batched_tokens, e.cuda_graph_max_batch
        if e.memory_rule == "static_fraction":
            mfs, chunk, max_bs = sglang_memory_settings(
                gpu_bytes,
                d.tp,
                speculative=bool(d.num_speculative_tokens),
                dp_attention=d.attention == "dp",
                vlm_factor=sglang_vlm_factor(m.vision_num_layers, m.vision_hidden_size),
            )
            fraction = fraction or mfs
            batched = batched or chunk
            graphs = max_bs if graphs is None else graphs
        if d.memory_utilization is not None:
            fraction = d.memory_utilization
        assert fraction is not None and batched is not None and graphs is not None  # every preset sets them
        graph_bytes = graphs * GRAPH_BYTES_PER_BATCH * (2 if d.num_speculative_tokens else 1)
        activations = batched * self._activation_bytes_per_token() + e.max_num_seqs * m.vocab_size / d.tp * 4
        runtime = runtime_bytes(d.tp)
        separate_draft = e.memory_rule == "static_fraction"
        cell = target_cell if separate_draft else target_cell + draft_cell
        kv, shortfall = kv_budget(
            e.memory_rule,
            fraction,
            gpu_bytes=gpu_bytes,
            weights=self.weight_bytes_per_rank,
            draft=draft_bytes,
            activations=activations,
            cuda_graphs=graph_bytes,
            runtime=runtime,
        )
        tokens = int(kv // cell) if kv > 0 else 0
        if separate_draft and draft_cell:
            draft_kv = tokens * draft_cell
            shortfall = max(shortfall, draft_bytes + draft_kv + activations + graph_bytes - (1 - fraction) * gpu_bytes)
            kv, cell = kv + draft_kv, cell + draft_cell
        if shortfall > 0 or tokens < 1:
            short = max(shortfall, cell - kv)
            raise DeploymentError(
                f"{m.name} on {d.tp}x {d.gpu.name} ({d.engine}, {e.memory_rule} {fraction:.3f}): weights take "
                f"{self.weight_bytes_per_rank / 1e9:.1f} GB per rank (+ draft {draft_bytes / 1e9:.1f}, activations "
                f"{activations / 1e9:.1f}, graphs {graph_bytes / 1e9:.1f}, runtime {runtime / 1e9:.1f}) of "
                f"{gpu_bytes / 1e9:.1f} GB: {short / 1e9:.1f} GB per rank short of room for a KV cache"
            )
        return MemoryBreakdown(
            engine=d.engine,
            rule=e.memory_rule,
            fraction=fraction,
            num_ranks=d.tp,
            attention=d.attention,
            gpu_bytes=gpu_bytes,
            weights=self.weight_bytes_per_rank,
            draft=draft_bytes,
            activations=activations,
            cuda_graphs=graph_bytes,
            runtime=runtime,
            kv=kv,
            kv_bytes_per_token=cell,
            kv_tokens_per_rank=tokens,
        )

    def _activation_bytes_per_token(self) -> float:
        """Peak activation bytes per batched token on one rank (see :mod:`tokensched_sim.memory`)."""
        m, tp = self.deployment.model, self.deployment.tp
        heads = m.num_heads if self.deployment.attention == "dp" else m.num_heads // tp
        hidden = 4 * m.hidden_size
        if m.attention == "mla":
            attn = heads * (2 * (m.qk_nope_head_dim + m.qk_rope_head_dim) + 2 * m.v_head_dim)
        else:
            attn = heads * 4 * m.head_dim
        if m.num_experts:
            mlp = m.num_experts_per_token * (2 * m.moe_intermediate_size / tp + m.hidden_size)
        else:
            mlp = 2 * m.intermediate_size / tp
        return (hidden + attn + mlp) * ACTIVATION_BYTES

    def memory_breakdown(self) -> MemoryBreakdown:
        """Per-rank bytes by item under the engine's rule (``.format()`` prints one line)."""
        return self.memory

    def num_kv_blocks(self, block_size: int) -> int:
        """KV blocks of ``block_size`` tokens the deployment holds (every rank's under DP attention)."""
        per_rank = self.num_kv_tokens // block_size
        return per_rank * self.deployment.tp if self._pooled else per_rank

    def one_dp_rank(self) -> CostModel:
        """This DP-attention deployment as one rank's scheduler sees it: its own pool, its own batch.

        The pooled model balances a step's requests over every rank (``dp_share``)
        and counts every rank's blocks. An engine that runs a scheduler per DP rank
        (SGLang's ``--enable-dp-attention``: one radix cache and pool per rank, a
        controller routing each request to one rank) is simulated with one such
        view per rank: a step holds only that rank's requests, so they all sit on
        the busiest rank (share 1), and the pool is one rank's. The other ranks'
        work in the same forward pass (MoE tokens gathered from every rank) is not
        in the view: each rank is priced as if the others were idle.
        """
        if self.deployment.attention != "dp":
            raise ValueError(
                f"one_dp_rank needs DP attention; this deployment has attention {self.deployment.attention!r}"
            )
        rank = copy.copy(self)
        rank._dp_ranks = 1
        rank._pooled = False
        return rank

    def max_request_tokens(self, block_size: int) -> int:
        """The longest context one request can hold: one rank's blocks (a request lives on one rank)."""
        return self.num_kv_tokens // block_size * block_size

    def kv_capacity(self, block_size: int) -> KVCapacity:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        blocks = self.num_kv_blocks(block_size)
        if blocks < 1:
            raise DeploymentError(f"block_size {block_size} exceeds the {self.num_kv_tokens}-token KV capacity")
        return KVCapacity(block_size, blocks, blocks * block_size, self.max_request_tokens(block_size))

    # Time ------------------------------------------------------------------------------------------

    def experts_touched(self, num_tokens: int) -> float:
        """Expected distinct routed experts per MoE layer when ``num_tokens`` tokens each pick k of E."""
        if not self._num_experts or num_tokens <= 0:
            return 0.0
        return self._num_experts * -math.expm1(num_tokens * self._log_miss)

    def dp_share(self, num_requests: int) -> float:
        """The busiest rank's share of a step's requests under DP attention (1 under attention TP).

        ``n`` requests over ``tp`` ranks leave ``ceil(n / tp)`` on the busiest one;
        with ``n`` unknown (0) the ranks are taken as perfectly balanced.
        """
        ranks = self._dp_ranks
        if ranks == 1:
            return 1.0
        if num_requests <= 0:
            return 1 / ranks
        return -(-num_requests // ranks) / num_requests

    def _imbalance(self, num_tokens: int) -> float:
        return expert_imbalance(num_tokens, self._k, self._ep_ranks) if self._ep_ranks > 1 else 1.0

    def terms(self, shape: BatchShape, layers: tuple[int, int, int] | None = None) -> Terms:
        """Seconds at peak per phase; ``layers`` = (attention, dense-MLP, MoE) layer counts (default: all)."""
        n_attn, n_dense, n_moe = layers or (self.num_layers, self.num_dense_layers, self.num_moe_layers)
        t = shape.num_tokens
        share = self.dp_share(shape.num_requests)
        kv_m = self._kv_m * share
        imb = self._imbalance(t)
        touched = min(self.experts_touched(t) * imb, self._num_experts)
        compute = (
            n_attn * t * self._proj_c * share,
            n_attn * (shape.prefill_pairs * self._pre_pair_c + shape.prefill_context_tokens * self._pre_ctx_c) * share,
            n_attn * shape.decode_pairs * self._dec_pair_c * share,
            n_dense * t * self._mlp_c,
            n_moe * t * (self._always_c + self._routed_c * imb),
            shape.num_logits * self._head_c,
        )
        memory = (
            n_attn * self._proj_m,
            n_attn * shape.prefill_kv_tokens * kv_m,
            n_attn * shape.decode_kv_tokens * kv_m,
            n_dense * self._mlp_m,
            n_moe * (self._moe_always_m + touched * self._expert_m) if t else 0.0,
            self._head_m if shape.num_logits else 0.0,
        )
        dense_layers, moe_layers = max(self.num_dense_layers, 1), max(self.num_moe_layers, 1)
        moe_net = self._net_layers[1] * (share if self._a2a else 1.0)
        net = t * (self._net_layers[0] * n_dense / dense_layers + moe_net * n_moe / moe_layers)
        coll = round(self._coll_layers[0] * n_dense / dense_layers + self._coll_layers[1] * n_moe / moe_layers)
        return Terms(compute, memory, net, coll, n_attn)

    def time_from_terms(self, terms: Terms, efficiency: Efficiency | None = None) -> float:
        """Seconds of a step from its :class:`Terms` and a set of efficiencies."""
        e = efficiency or self.efficiency
        x_mm, x_attn, x_mem = 1 / e.matmul, 1 / e.attention, 1 / e.memory
        c, m = terms.compute_s, terms.memory_s
        total = (
            max(c[0] * x_mm, m[0] * x_mem)
            + max(c[1] * x_attn, m[1] * x_mem)
            + max(c[2] * x_attn, m[2] * x_mem)
            + max(c[3] * x_mm, m[3] * x_mem)
            + max(c[4] * x_mm, m[4] * x_mem)
            + max(c[5] * x_mm, m[5] * x_mem)
        )
        fixed = terms.num_allreduces * e.allreduce_latency_s + terms.num_layers * e.layer_overhead_s
        return total + terms.network_s / e.network + fixed

    def _fold_efficiency(self) -> None:
        """Whole-model constants with the efficiencies applied, so ``step_time`` is a dozen multiply-adds."""
        e = self.efficiency
        x_mm, x_attn, x_mem = 1 / e.matmul, 1 / e.attention, 1 / e.memory
        n, nd, nm = self.num_layers, self.num_dense_layers, self.num_moe_layers
        self._f_proj = (n * self._proj_c * x_mm, n * self._proj_m * x_mem)
        self._f_attn = (n * self._pre_pair_c * x_attn, n * self._pre_ctx_c * x_attn, n * self._dec_pair_c * x_attn)
        self._f_kv = n * self._kv_m * x_mem
        self._f_mlp = (nd * self._mlp_c * x_mm, nd * self._mlp_m * x_mem)
        self._f_moe = (
            nm * self._always_c * x_mm,
            nm * self._routed_c * x_mm,
            nm * self._moe_always_m * x_mem,
            nm * self._expert_m * x_mem,
        )
        self._f_head = (self._head_c * x_mm, self._head_m * x_mem)
        self._f_net = (self._net_layers[0] / e.network, self._net_layers[1] / e.network)
        self._f_const = sum(self._coll_layers) * e.allreduce_latency_s + n * e.layer_overhead_s + e.step_overhead_s
        if self.draft is not None:
            self._f_draft = (self._draft_c * x_mm, self._draft_m * x_mem)
            self._f_draft_attn = max(self._draft_pair_c * x_attn, self._draft_kv_m * x_mem)
            draft_fixed = self._draft_coll * e.allreduce_latency_s + self.draft.num_layers * e.layer_overhead_s
            self._f_draft_net = (self._draft_net / e.network, draft_fixed)

    def count_terms(self, num_requests: int, num_tokens: int) -> tuple[float, float, float, float]:
        """The parts of :meth:`step_time` that depend on the counts only: (base, DP share, MLP, MoE).

        ``base`` is the fixed overhead, the network and the projections (the
        attention terms are added to it next); MLP and MoE are 0.0 for a model
        without those layers.
        """
        t = num_tokens
        share = 1.0 if self._dp_ranks == 1 else self.dp_share(num_requests)
        dense_net, moe_net = self._f_net
        proj_c, proj_m = self._f_proj
        proj_c *= share
        base = self._f_const + t * (dense_net + (moe_net * share if self._a2a else moe_net))
        base += t * proj_c if t * proj_c > proj_m else proj_m
        mlp = moe = 0.0
        if self.num_dense_layers:
            c, m = self._f_mlp
            mlp = t * c if t * c > m else m
        if self.num_moe_layers:
            always_c, routed_c, always_m, per_expert = self._f_moe
            imb = self._imbalance(t) if self._ep_ranks > 1 else 1.0
            touched = self.experts_touched(t) * imb
            if touched > self._num_experts:
                touched = self._num_experts
            c, m = t * (always_c + routed_c * imb), always_m + touched * per_expert
            moe = c if c > m else m
        return base, share, mlp, moe

    def step_time(self, shape: BatchShape) -> float:
        """Modelled seconds of one step of the target model, fixed overhead included.

        Equal to ``time_from_terms(terms(shape)) + step_overhead_s``, evaluated
        from precomputed whole-model constants: this runs once per simulated step.
        The terms that depend only on the counts come from :meth:`count_terms`,
        which :class:`~tokensched_sim.decode_cost.DecodeCost` caches for
        multi-step runs and adds in this order (``tests/sim/test_decode_cost.py``
        checks them equal to the bit).
        """
        s = shape
        return self._time(
            s.num_tokens,
            s.num_requests,
            s.num_logits,
            s.prefill_pairs,
            s.prefill_context_tokens,
            s.prefill_kv_tokens,
            s.decode_pairs,
            s.decode_kv_tokens,
        )

    def split_step_time(self, shape: BatchShape) -> float:
        """``step_time(prefill) + step_time(decode)`` of ``shape.split()``, the same float, without the two shapes.

        What an engine that does not mix prefill and decode in one batch pays
        for a mixed step (see :meth:`BatchShape.split`); one a single step of
        the SGLang profiles, whose two halves were built as objects only to be
        read here.
        """
        s = shape
        prefill = self._time(
            s.num_prefill_tokens,
            s.num_prefill_requests,
            s.num_prefill_logits,
            s.prefill_pairs,
            s.prefill_context_tokens,
            s.prefill_kv_tokens,
            0,
            0,
        )
        num_requests = s.num_requests - s.num_prefill_requests
        decode = self._time(
            s.num_tokens - s.num_prefill_tokens,
            num_requests if num_requests > 0 else 0,
            s.num_logits - s.num_prefill_logits,
            0,
            0,
            0,
            s.decode_pairs,
            s.decode_kv_tokens,
        )
        return prefill + decode

    def _time(
        self,
        t: int,
        num_requests: int,
        num_logits: int,
        prefill_pairs: int,
        prefill_context_tokens: int,
        prefill_kv_tokens: int,
        decode_pairs: int,
        decode_kv_tokens: int,
    ) -> float:
        """:meth:`step_time` from the shape's fields (:class:`BatchShape`'s names)."""
        if not t:
            return 0.0
        total, share, mlp, moe = self.count_terms(num_requests, t)
        pre_c, ctx_c, dec_c = self._f_attn
        kv = self._f_kv * share
        if prefill_pairs:
            c = (prefill_pairs * pre_c + prefill_context_tokens * ctx_c) * share
            m = prefill_kv_tokens * kv
            total += c if c > m else m
        if decode_pairs:
            c, m = decode_pairs * dec_c * share, decode_kv_tokens * kv
            total += c if c > m else m
        total += mlp  # 0.0 without the layers: adding it is exact
        total += moe
        if num_logits:
            c, m = self._f_head
            total += num_logits * c if num_logits * c > m else m
        return total

    def draft_time(self, num_requests: int, kv_tokens: int, num_drafts: int) -> float:
        """Seconds for the draft head to propose ``num_drafts`` tokens each for ``num_requests`` requests.

        The head (:attr:`draft`: one EAGLE-3 layer, its ``fc`` and its lm_head,
        TP-sharded) runs once per draft token, sequentially; the j-th pass
        attends over ``kv_tokens + j * num_requests`` tokens of its own cache.
        Each pass is ``max(weight FLOPs, weight bytes)`` plus attention plus two
        all-reduces per layer.
        """
        r = num_requests
        if not r or not num_drafts or self.draft is None:
            return 0.0
        c, m = self._f_draft
        net, latency = self._f_draft_net
        once = (r * c if r * c > m else m) + r * net + latency
        kv_total = num_drafts * kv_tokens + r * num_drafts * (num_drafts - 1) // 2
        return num_drafts * once + self._f_draft_attn * kv_total

    def breakdown(self, shape: BatchShape) -> dict[str, float]:
        """Seconds per phase with efficiencies applied (for reports and tests), plus network and overhead."""
        terms = self.terms(shape)
        e = self.efficiency
        out = {}
        for i, name in enumerate(PHASES):
            x = 1 / (e.attention if name in ATTENTION_PHASES else e.matmul)
            out[name] = max(terms.compute_s[i] * x, terms.memory_s[i] / e.memory)
        out["allreduce"] = terms.network_s / e.network + terms.num_allreduces * e.allreduce_latency_s
        out["overhead"] = e.step_overhead_s + terms.num_layers * e.layer_overhead_s
        return out
