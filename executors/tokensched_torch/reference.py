"""A dense reference forward: the same weights, no cache, naive (non-absorbed) attention.

The paged path never materialises per-head keys and values; this one expands
the latent with ``kv_b_proj`` into ``k_nope`` and ``v`` per head and runs plain
causal softmax attention over the whole sequence. The tests compare the two:
agreement checks the cache layout, slot mapping, block tables, causal offsets
and the weight absorption at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tokensched_torch.model import MLAAttention, MLAModel, Rotary


def _naive_attention(attn: MLAAttention, x: Tensor, rope: Rotary) -> Tensor:
    cfg = attn.cfg
    q_nope, q_pe = attn.project_q(x, rope)
    c_kv, k_pe = attn.project_kv(x, rope)
    kv = attn.kv_b_proj(c_kv).view(x.shape[0], cfg.num_heads, cfg.qk_nope_head_dim + cfg.v_head_dim)
    k_nope, v = kv.split([cfg.qk_nope_head_dim, cfg.v_head_dim], dim=-1)
    q = torch.cat((q_nope, q_pe), dim=-1)  # [T, H, D]
    k = torch.cat((k_nope, k_pe[:, None, :].expand(-1, cfg.num_heads, -1)), dim=-1)
    scores = torch.einsum("thd,shd->hts", q, k) * cfg.softmax_scale
    n = x.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
    o = torch.einsum("hts,shv->thv", probs, v)
    out: Tensor = attn.o_proj(o.reshape(n, -1))
    return out


@torch.inference_mode()
def dense_reference_hidden(model: MLAModel, token_ids: Sequence[int]) -> Tensor:
    """Final hidden states ``[len(token_ids), hidden]`` of one sequence, from scratch."""
    tokens = torch.tensor(list(token_ids), dtype=torch.int64, device=model.device)
    x = model.embed(tokens)
    positions = torch.arange(len(tokens), device=model.device)
    rope = Rotary(positions, model.cfg.qk_rope_head_dim, model.cfg.rope_theta, x.dtype)
    for layer in model.decoder_layers():
        x = x + _naive_attention(layer.attn, layer.input_norm(x), rope)
        x = x + layer.ffn(layer.post_attn_norm(x))
    out: Tensor = model.norm(x)
    return out


def dense_reference_logits(model: MLAModel, token_ids: Sequence[int]) -> Tensor:
    """Logits ``[len(token_ids), vocab]``: row ``p`` predicts the token after position ``p``."""
    with torch.inference_mode():
        return model.compute_logits(dense_reference_hidden(model, token_ids))


@torch.inference_mode()
def greedy_reference(model: MLAModel, prompt: Sequence[int], max_tokens: int) -> list[int]:
    """Plain greedy decoding with the dense forward (quadratic; for tests on tiny models)."""
    tokens = list(prompt)
    out: list[int] = []
    for _ in range(max_tokens):
        nxt = int(dense_reference_logits(model, tokens)[-1].argmax())
        tokens.append(nxt)
        out.append(nxt)
    return out
