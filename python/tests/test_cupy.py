"""The framework-neutral API with cupy arrays on a GPU (float16: cupy has no bfloat16): outputs
allocated with cupy, calls on cupy's current stream. Skipped without cupy or a CUDA device."""

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

import mla_decode  # noqa: E402
import spec  # noqa: E402
from cases import LSE_TOL, OUT_TOL, assert_close, make_decode_case  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not mla_decode.cuda_available_in_build() or mla_decode.cuda_device_count() == 0,
        reason="needs a CUDA build of mla_decode and a CUDA device",
    ),
]


def test_decode_and_merge_with_cupy_arrays_on_a_side_stream():
    case = make_decode_case(np.random.default_rng(50), "float16", [0, 37, 200], 2, 16, 16, True)
    q, kv = case.arrays()
    args = [cupy.asarray(a) for a in (q, kv, case.block_table, case.seq_lens)]
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        out, lse = mla_decode.decode(*args, case.softmax_scale, causal=True, return_lse=True)
        flat_out, flat_lse = out.reshape(6, 16, 512), lse.reshape(6, 16)
        merged, merged_lse = mla_decode.merge_states(flat_out, flat_lse, flat_out, flat_lse)
    stream.synchronize()
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float16
    want_out, want_lse = spec.decode(
        case.q, case.kv_cache, case.block_table, case.seq_lens, case.softmax_scale, True
    )
    assert_close(cupy.asnumpy(out), want_out, *OUT_TOL["float16"], "out")
    assert_close(cupy.asnumpy(lse), want_lse, *LSE_TOL, "lse")
    # Merging a result with itself keeps it and adds ln 2 to its LSE (-inf stays -inf).
    assert_close(cupy.asnumpy(merged).reshape(out.shape), want_out, *OUT_TOL["float16"], "merge")
    assert_close(cupy.asnumpy(merged_lse).reshape(lse.shape), want_lse + np.log(2), *LSE_TOL, "lse")
