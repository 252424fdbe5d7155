"""An independent float64 numpy implementation of the operations in MLA_DECODE.md section 1 and
include/mla/mla.h, written from the text of the spec, not from the library."""

import numpy as np

HEAD_DIM_V = 512


def gather_keys(kv_cache, block_table_row, length):
    """Tokens [0, length) of one request: row j % page_size of page block_table_row[j // ps]."""
    page_size = kv_cache.shape[1]
    j = np.arange(length)
    return kv_cache[block_table_row[j // page_size], j % page_size].astype(np.float64)


def decode(q, kv_cache, block_table, seq_lens, softmax_scale, causal):
    """q [B, S, H, 576], kv_cache [P, page_size, 576] -> out [B, S, H, 512], lse [B, S, H]."""
    q = q.astype(np.float64)
    batch, s_q, h_q, _ = q.shape
    out = np.zeros((batch, s_q, h_q, HEAD_DIM_V))
    lse = np.full((batch, s_q, h_q), -np.inf)
    for b in range(batch):
        length = int(seq_lens[b])
        keys = gather_keys(kv_cache, block_table[b], length)
        for s in range(s_q):
            visible = length - (s_q - 1 - s) if causal else length
            if visible <= 0:
                continue
            k = keys[:visible]
            logits = softmax_scale * (q[b, s] @ k.T)  # [H, visible]
            peak = logits.max(axis=1, keepdims=True)
            weights = np.exp(logits - peak)
            total = weights.sum(axis=1, keepdims=True)
            out[b, s] = (weights @ k[:, :HEAD_DIM_V]) / total
            lse[b, s] = (peak + np.log(total))[:, 0]
    return out, lse


def write_kv_cache(kv_c, k_pe, slot_mapping, kv_cache):
    """Returns a float64 copy of kv_cache with the new tokens scattered in."""
    result = kv_cache.astype(np.float64)
    page_size = kv_cache.shape[1]
    for t, slot in enumerate(slot_mapping):
        if slot == -1:
            continue
        row = np.concatenate([kv_c[t], k_pe[t]]).astype(np.float64)
        result[slot // page_size, slot % page_size] = row
    return result


def merge_states(out_a, lse_a, out_b, lse_b):
    """out_* [T, H, D], lse_* [T, H] (natural log; -inf = empty part) -> out, lse."""
    lse_a = lse_a.astype(np.float64)
    lse_b = lse_b.astype(np.float64)
    lse = np.logaddexp(lse_a, lse_b)
    out = _part(out_a, lse_a, lse) + _part(out_b, lse_b, lse)
    return out, lse


def _part(out, lse_part, lse):
    """exp(lse_part - lse) * out; an empty part (-inf) contributes exactly nothing."""
    empty = np.isneginf(lse_part)
    with np.errstate(invalid="ignore"):
        weight = np.exp(np.where(empty, 0.0, lse_part - lse))
        return np.where(empty[..., None], 0.0, weight[..., None] * out.astype(np.float64))
