"""mla_decode.sparse_decode (numpy; torch op when torch is installed) against a float64 spec of
its own: -1 entries, duplicates, topk_lengths with garbage beyond it, attn_sink (lse includes
it), empty rows, every unchosen token NaN; data errors leave out/lse untouched; without a CUDA
device, CUDA sizes are unsupported."""

import numpy as np
import pytest

import mla_decode
from cases import LSE_TOL, OUT_TOL, REFERENCE_OUT_TOL, assert_close, np_dtype, rounded


def spec(q, kv, indices, lengths, sink, scale):
    """float64 sparse decode, SparseDecodeParams' formula."""
    batch, s_q, h_q, _ = q.shape
    page_size = kv.shape[1]
    flat = kv.reshape(-1, kv.shape[-1]).astype(np.float64)
    out = np.zeros((batch, s_q, h_q, 512))
    lse = np.full((batch, s_q, h_q), -np.inf)
    for b in range(batch):
        for s in range(s_q):
            row = indices[b, s, : lengths[b]]
            keys = flat[row[row != -1]]
            for h in range(h_q):
                logits = scale * (keys @ q[b, s, h].astype(np.float64))
                terms = list(logits) + ([float(sink[h])] if sink is not None else [])
                m = max(terms) if terms else -np.inf
                if m == -np.inf:
                    continue
                w = np.exp(logits - m)
                z = w.sum() + (np.exp(sink[h] - m) if sink is not None else 0.0)
                out[b, s, h] = (w @ keys[:, :512]) / z if len(keys) else 0.0
                lse[b, s, h] = m + np.log(z)
    del page_size
    return out, lse


def make_case(rng, dtype, batch=3, s_q=2, h_q=16, topk=40, page_size=16, num_pages=12):
    slots = num_pages * page_size
    kv = np.full((num_pages, page_size, 576), np.nan, dtype=np.float32)
    flat = kv.reshape(slots, 576)
    indices = rng.integers(0, slots, size=(batch, s_q, topk)).astype(np.int32)
    indices[rng.random(indices.shape) < 0.3] = -1
    if topk > 1:
        indices[:, :, 1] = indices[:, :, 0]  # duplicates
    indices[0, s_q - 1, :] = -1  # an empty row
    lengths = np.array([topk, 0, topk // 2][:batch] + [topk] * max(0, batch - 3), dtype=np.int32)
    for b in range(batch):
        chosen = indices[b, :, : lengths[b]]
        for slot in np.unique(chosen[chosen >= 0]):
            flat[slot] = rounded(rng.standard_normal(576, dtype=np.float32), dtype)
        indices[b, :, lengths[b] :] = 2147480000  # garbage that must never be read
    q = rounded(rng.standard_normal((batch, s_q, h_q, 576), dtype=np.float32), dtype)
    sink = rng.uniform(-1, 3, size=h_q).astype(np.float32)
    return q, kv, indices, lengths, sink


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("with_sink", [False, True])
@pytest.mark.parametrize("reference", [False, True])
def test_matches_spec(dtype, with_sink, reference):
    rng = np.random.default_rng(5)
    q, kv, indices, lengths, sink = make_case(rng, dtype)
    scale = 1.0 / np.sqrt(192.0)
    nd = np_dtype(dtype)
    out = np.full((3, 2, 16, 512), np.nan, dtype=nd)
    lse = np.full((3, 2, 16), np.nan, dtype=np.float32)
    mla_decode.sparse_decode(
        q.astype(nd),
        kv.astype(nd),
        indices,
        scale,
        topk_lengths=lengths,
        attn_sink=sink if with_sink else None,
        out=out,
        lse=lse,
        num_threads=3,
        reference=reference,
    )
    want_out, want_lse = spec(q, kv, indices, lengths, sink if with_sink else None, scale)
    tol = REFERENCE_OUT_TOL[dtype] if reference else OUT_TOL[dtype]
    assert_close(out, want_out, *tol, "out")
    assert_close(lse, want_lse, *LSE_TOL, "lse")
    # Empty rows: out = 0, lse = -inf or the sink alone.
    assert np.all(out.astype(np.float32)[0, 1] == 0)
    assert np.all(lse[1] == (sink if with_sink else -np.inf))


def test_returns_lse_and_allocates():
    rng = np.random.default_rng(6)
    q, kv, indices, lengths, _ = make_case(rng, "bfloat16", batch=2, s_q=1, h_q=8, topk=1)
    nd = np_dtype("bfloat16")
    out, lse = mla_decode.sparse_decode(
        q.astype(nd), kv.astype(nd), indices, 0.1, topk_lengths=lengths, return_lse=True
    )
    assert out.shape == (2, 1, 8, 512) and lse.shape == (2, 1, 8)
    want_out, want_lse = spec(q, kv, indices, lengths, None, 0.1)
    assert_close(out, want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(lse, want_lse, *LSE_TOL, "lse")


def test_data_error_writes_nothing():
    rng = np.random.default_rng(7)
    q, kv, indices, lengths, _ = make_case(rng, "bfloat16")
    nd = np_dtype("bfloat16")
    indices[2, 0, 3] = kv.shape[0] * kv.shape[1]  # one past the cache, within topk_lengths[2]
    out = np.full((3, 2, 16, 512), np.nan, dtype=nd)
    lse = np.full((3, 2, 16), np.nan, dtype=np.float32)
    with pytest.raises(mla_decode.DataError, match=r"argument 'indices': indices\[2\]\[0\]\[3\]"):
        mla_decode.sparse_decode(
            q.astype(nd), kv.astype(nd), indices, 0.1, topk_lengths=lengths, out=out, lse=lse
        )
    assert np.isnan(out.astype(np.float32)).all() and np.isnan(lse).all()


def test_invalid_arguments_named():
    rng = np.random.default_rng(8)
    q, kv, indices, _, _ = make_case(rng, "bfloat16")
    nd = np_dtype("bfloat16")
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'indices'"):
        mla_decode.sparse_decode(q.astype(nd), kv.astype(nd), indices.astype(np.int64), 0.1)
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'attn_sink'"):
        mla_decode.sparse_decode(
            q.astype(nd), kv.astype(nd), indices, 0.1, attn_sink=np.zeros(3, np.float32)
        )
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'indices'"):
        mla_decode.sparse_decode(q.astype(nd), kv.astype(nd), None, 0.1)
    if mla_decode.cuda_device_count() == 0:
        with pytest.raises(mla_decode.UnsupportedError):
            mla_decode.sparse_workspace_size(1, 1, 16, 64, device="cuda")
    assert mla_decode.sparse_workspace_size(1, 1, 16, 64) > 0


def test_torch_op():
    torch = pytest.importorskip("torch")
    import mla_decode.torch as mt

    rng = np.random.default_rng(9)
    q, kv, indices, lengths, sink = make_case(rng, "bfloat16")
    tq = torch.from_numpy(q).to(torch.bfloat16)
    tkv = torch.from_numpy(kv).to(torch.bfloat16)
    out, lse = mt.sparse_decode(
        tq,
        tkv,
        torch.from_numpy(indices),
        0.1,
        topk_lengths=torch.from_numpy(lengths),
        attn_sink=torch.from_numpy(sink),
        return_lse=True,
    )
    want_out, want_lse = spec(q, kv, indices, lengths, sink, 0.1)
    assert_close(out.float().numpy(), want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(lse.numpy(), want_lse, *LSE_TOL, "lse")
    torch.library.opcheck(
        torch.ops.mla_decode.sparse_decode.default,
        (
            tq,
            None,
            tkv,
            torch.from_numpy(indices),
            torch.from_numpy(lengths),
            torch.from_numpy(sink),
            0.1,
            torch.empty(3, 2, 16, 512, dtype=torch.bfloat16),
            torch.empty(3, 2, 16),
            None,
        ),
    )
