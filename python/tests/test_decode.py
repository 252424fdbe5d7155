"""mla_decode.decode / plan / decode_planned on the CPU with numpy arrays (bf16 via ml_dtypes),
against the library's reference (reference=True) and the float64 spec in spec.py. Every output
buffer and workspace is poisoned before each call; dead pages and page tails hold NaN and dead
block-table entries hold a huge page id."""

import mla_decode
import numpy as np
import pytest
import spec
from cases import (
    DTYPES,
    HEAD_DIM_V,
    LSE_TOL,
    OUT_TOL,
    REFERENCE_OUT_TOL,
    assert_close,
    make_decode_case,
    np_dtype,
)

# (seq_lens, s_q, h_q, page_size, causal): corner cases from the house style list.
SHAPES = [
    ([1], 1, 1, 1, False),
    ([37], 1, 16, 16, False),
    ([0, 5, 64, 130], 1, 16, 64, False),
    ([300], 1, 3, 256, False),
    ([17, 0, 33], 2, 8, 16, True),
    ([1, 2, 3], 3, 4, 4, True),
    ([64, 65], 4, 2, 32, True),
    ([9], 1, 128, 8, False),
]


def poisoned(shape, dtype):
    return np.full(shape, np.nan, dtype=dtype)


def poisoned_workspace(q, num_threads=0):
    batch, s_q, h_q = q.shape[:3]
    ws = mla_decode.alloc_workspace(q, batch, s_q, h_q, num_threads=num_threads)
    ws.fill(0xFF)  # NaN bit patterns in any float interpretation
    return ws


def run(case, *, reference=False, num_threads=0, split_q=False, lse_layout="bsh"):
    q, kv = case.arrays()
    batch, s_q, h_q = q.shape[:3]
    out = poisoned((batch, s_q, h_q, HEAD_DIM_V), q.dtype)
    if lse_layout == "bsh":
        lse = poisoned((batch, s_q, h_q), np.float32)
    else:  # FlashMLA's [batch, h_q, s_q], passed as a permuted view
        lse = poisoned((batch, h_q, s_q), np.float32).transpose(0, 2, 1)
    kwargs = {}
    if split_q:
        kwargs["q_pe"] = np.ascontiguousarray(q[..., HEAD_DIM_V:])
        q = np.ascontiguousarray(q[..., :HEAD_DIM_V])
    result = mla_decode.decode(
        q,
        kv,
        case.block_table,
        case.seq_lens,
        case.softmax_scale,
        causal=case.causal,
        out=out,
        lse=lse,
        workspace=poisoned_workspace(q, num_threads),
        num_threads=num_threads,
        reference=reference,
        **kwargs,
    )
    assert result[0] is out and result[1] is lse
    return out, lse


def expected(case):
    return spec.decode(
        case.q, case.kv_cache, case.block_table, case.seq_lens, case.softmax_scale, case.causal
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_spec_and_reference(dtype, shape):
    seq_lens, s_q, h_q, page_size, causal = shape
    case = make_decode_case(np.random.default_rng(0), dtype, seq_lens, s_q, h_q, page_size, causal)
    want_out, want_lse = expected(case)

    ref_out, ref_lse = run(case, reference=True)
    assert_close(ref_out, want_out, *REFERENCE_OUT_TOL[dtype], "reference out vs spec")
    assert_close(ref_lse, want_lse, 1e-5, 1e-6, "reference lse vs spec")

    out, lse = run(case)
    assert_close(out, want_out, *OUT_TOL[dtype], "out vs spec")
    assert_close(lse, want_lse, *LSE_TOL, "lse vs spec")
    assert_close(out, ref_out, *OUT_TOL[dtype], "out vs reference")
    assert_close(lse, ref_lse, *LSE_TOL, "lse vs reference")


@pytest.mark.parametrize("num_threads", [1, 3])
@pytest.mark.parametrize("split_q", [False, True])
@pytest.mark.parametrize("lse_layout", ["bsh", "bhs"])
def test_variants(num_threads, split_q, lse_layout):
    case = make_decode_case(np.random.default_rng(1), "bfloat16", [0, 200, 31], 2, 16, 16, True)
    want_out, want_lse = expected(case)
    out, lse = run(case, num_threads=num_threads, split_q=split_q, lse_layout=lse_layout)
    assert_close(out, want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(lse, want_lse, *LSE_TOL, "lse")


def test_empty_rows_are_zero_and_minus_inf():
    # Request 0 is CUDA-graph padding; request 1 sees 1 token, so with s_q = 3 and causal its
    # first two query tokens see nothing.
    case = make_decode_case(np.random.default_rng(2), "float16", [0, 1], 3, 4, 16, True)
    for reference in (False, True):
        out, lse = run(case, reference=reference)
        assert (out[0] == 0).all() and np.isneginf(lse[0]).all()
        assert (out[1, :2] == 0).all() and np.isneginf(lse[1, :2]).all()
        assert np.isfinite(out[1, 2].astype(np.float32)).all() and np.isfinite(lse[1, 2]).all()


def test_strided_query_and_cache():
    case = make_decode_case(np.random.default_rng(3), "bfloat16", [40, 7], 1, 4, 8)
    q, kv = case.arrays()
    # q rows and cache pages live inside larger buffers: only the last dimension is contiguous.
    q_big = np.zeros((2, 1, 8, 640), dtype=q.dtype)
    q_big[:, :, ::2, :576] = q
    kv_big = np.zeros((kv.shape[0], kv.shape[1], 600), dtype=kv.dtype)
    kv_big[..., :576] = kv
    out, lse = mla_decode.decode(
        q_big[:, :, ::2, :576],
        kv_big[..., :576],
        case.block_table,
        case.seq_lens,
        case.softmax_scale,
        return_lse=True,
    )
    want_out, want_lse = expected(case)
    assert_close(out, want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(lse, want_lse, *LSE_TOL, "lse")


def test_allocates_outputs_with_numpy():
    case = make_decode_case(np.random.default_rng(4), "bfloat16", [5, 9], 1, 2, 4)
    q, kv = case.arrays()
    out = mla_decode.decode(q, kv, case.block_table, case.seq_lens, case.softmax_scale)
    assert isinstance(out, np.ndarray) and out.dtype == np_dtype("bfloat16")
    assert out.shape == (2, 1, 2, HEAD_DIM_V)
    out2, lse = mla_decode.decode(
        q, kv, case.block_table, case.seq_lens, case.softmax_scale, return_lse=True
    )
    assert lse.dtype == np.float32 and lse.shape == (2, 1, 2)
    np.testing.assert_array_equal(out.view(np.uint16), out2.view(np.uint16))


def test_read_only_inputs_are_accepted():
    case = make_decode_case(np.random.default_rng(5), "float16", [12], 1, 2, 4)
    q, kv = case.arrays()
    for a in (q, kv, case.block_table, case.seq_lens):
        a.flags.writeable = False
    out = mla_decode.decode(q, kv, case.block_table, case.seq_lens, case.softmax_scale)
    assert_close(out, expected(case)[0], *OUT_TOL["float16"], "out")


def test_workspace_is_reusable_and_results_do_not_depend_on_it():
    case = make_decode_case(np.random.default_rng(6), "bfloat16", [100, 3, 0], 2, 8, 16, True)
    q, kv = case.arrays()
    ws = mla_decode.alloc_workspace(q, 3, 2, 8)
    assert ws.nbytes == mla_decode.workspace_size(3, 2, 8, device="cpu")
    first = mla_decode.decode(
        q, kv, case.block_table, case.seq_lens, case.softmax_scale, causal=True, workspace=ws
    )
    ws.fill(0xFF)
    second = mla_decode.decode(
        q, kv, case.block_table, case.seq_lens, case.softmax_scale, causal=True, workspace=ws
    )
    np.testing.assert_array_equal(first.view(np.uint16), second.view(np.uint16))


def test_plan_then_decode_planned_matches_decode():
    case = make_decode_case(np.random.default_rng(7), "bfloat16", [70, 1, 129], 1, 16, 64)
    q, kv = case.arrays()
    args = (q, kv, case.block_table, case.seq_lens, case.softmax_scale)
    want = mla_decode.decode(*args)
    out = poisoned(want.shape, q.dtype)
    lse = poisoned(want.shape[:3], np.float32)
    ws = poisoned_workspace(q)
    mla_decode.plan(*args, out=out, lse=lse, workspace=ws)
    for _ in range(2):  # e.g. two layers sharing one step's schedule
        result = mla_decode.decode_planned(*args, out=out, lse=lse, workspace=ws)
        assert result[0] is out
        np.testing.assert_array_equal(out.view(np.uint16), want.view(np.uint16))
    assert_close(lse, expected(case)[1], *LSE_TOL, "lse")


def test_check_data_errors_is_ok_on_the_cpu():
    ws = mla_decode.alloc_workspace(np.zeros(1), 2, 1, 16)
    assert mla_decode.check_data_errors(ws) is None


def test_workspace_size():
    for num_threads in (0, 1, 8):
        size = mla_decode.workspace_size(4, 1, 16, device="cpu", num_threads=num_threads)
        assert isinstance(size, int) and size >= 0
    ws = mla_decode.alloc_workspace(np.zeros(1), 4, 2, 128)
    assert mla_decode._C.data_ptr(ws) % 256 == 0


def test_build_info():
    assert isinstance(mla_decode.cuda_available_in_build(), bool)
    assert mla_decode.cuda_device_count() >= 0
    assert (mla_decode.HEAD_DIM_QK, mla_decode.HEAD_DIM_V, mla_decode.HEAD_DIM_ROPE) == (
        576,
        512,
        64,
    )
