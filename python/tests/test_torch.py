"""mla_decode.torch: the custom ops on CPU and CUDA tensors against the float64 spec and the
library's CPU reference, their fake implementations (opcheck), the FlashMLA drop-in, torch.compile,
CUDA-graph capture with changing seq_lens, streams and device-side data errors.

Skipped where torch is not installed; the CUDA cases (marked gpu) where torch sees no GPU.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mla_decode  # noqa: E402
import mla_decode.torch as mt  # noqa: E402
import spec  # noqa: E402
from cases import LSE_TOL, OUT_TOL, assert_close, make_decode_case, rounded  # noqa: E402
from torch_cases import nan_like_out, nan_lse, numpy, tensors  # noqa: E402

if not torch.cuda.is_available():
    NO_CUDA = "torch sees no CUDA device"
elif not mla_decode.cuda_available_in_build():
    NO_CUDA = "mla_decode was built without CUDA (MLA_CUDA=OFF or no nvcc)"
elif mla_decode.cuda_device_count() == 0:
    NO_CUDA = "mla_decode sees no CUDA device"
else:
    NO_CUDA = ""
cuda_only = [pytest.mark.gpu, pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)]
DEVICES = ["cpu", pytest.param("cuda", marks=cuda_only)]

# (seq_lens, s_q, h_q, page_size, causal)
SHAPES = [
    ([1], 1, 1, 1, False),
    ([0, 45, 130, 2], 1, 16, 16, False),
    ([0, 45, 130], 2, 16, 64, True),
    ([300, 64], 1, 128, 64, False),
    ([5, 70, 1], 4, 3, 256, True),
    ([1000, 0, 513], 1, 32, 32, False),
]


def expected(case, seq_lens=None):
    lens = case.seq_lens if seq_lens is None else np.asarray(seq_lens, dtype=np.int32)
    return spec.decode(
        case.q, case.kv_cache, case.block_table, lens, case.softmax_scale, case.causal
    )


def cpu_reference(q, kv, bt, sl, scale, causal):
    out, lse = mla_decode.decode(
        q.cpu(), kv.cpu(), bt.cpu(), sl.cpu(), scale, causal=causal, return_lse=True, reference=True
    )
    return numpy(out), numpy(lse)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_decode_matches_spec_and_reference(device, dtype, shape):
    seq_lens, s_q, h_q, page_size, causal = shape
    case = make_decode_case(np.random.default_rng(30), dtype, seq_lens, s_q, h_q, page_size, causal)
    q, kv, bt, sl = tensors(case, device)
    out, lse = nan_like_out(q), nan_lse(q)
    result = mt.decode(q, kv, bt, sl, case.softmax_scale, causal=causal, out=out, lse=lse)
    assert result[0] is out and result[1] is lse
    want_out, want_lse = expected(case)
    assert_close(numpy(out), want_out, *OUT_TOL[dtype], "out vs spec")
    assert_close(numpy(lse), want_lse, *LSE_TOL, "lse vs spec")
    ref_out, ref_lse = cpu_reference(q, kv, bt, sl, case.softmax_scale, causal)
    assert_close(numpy(out), ref_out, *OUT_TOL[dtype], "out vs reference")
    assert_close(numpy(lse), ref_lse, *LSE_TOL, "lse vs reference")


@pytest.mark.parametrize("device", DEVICES)
def test_split_query_and_inputs_that_require_grad(device):
    case = make_decode_case(np.random.default_rng(31), "bfloat16", [20, 3], 1, 8, 4)
    q, kv, bt, sl = tensors(case, device)
    q = q.requires_grad_()
    out = mt.decode(q[..., :512], kv, bt, sl, case.softmax_scale, q_pe=q[..., 512:])
    assert_close(numpy(out), expected(case)[0], *OUT_TOL["bfloat16"], "out")


@pytest.mark.parametrize("device", DEVICES)
def test_framework_neutral_api_allocates_torch_tensors(device):
    case = make_decode_case(np.random.default_rng(32), "float16", [9, 17], 1, 4, 8)
    q, kv, bt, sl = tensors(case, device)
    out, lse = mla_decode.decode(q, kv, bt, sl, case.softmax_scale, return_lse=True)
    assert isinstance(out, torch.Tensor) and out.device == q.device
    assert out.dtype == torch.float16 and lse.dtype == torch.float32
    assert_close(numpy(out), expected(case)[0], *OUT_TOL["float16"], "out")


@pytest.mark.parametrize("device", DEVICES)
def test_flash_mla_with_kvcache_shapes_and_values(device):
    case = make_decode_case(np.random.default_rng(33), "bfloat16", [64, 0, 100], 2, 16, 64, True)
    q, kv, bt, sl = tensors(case, device)
    metadata, num_splits = mt.get_mla_metadata(sl, 2 * 16, 1)
    out, lse = mt.flash_mla_with_kvcache(
        q, kv.unsqueeze(2), bt, sl, 512, metadata, num_splits, causal=True
    )
    assert out.shape == (3, 2, 16, 512) and lse.shape == (3, 16, 2)
    case.softmax_scale = 576**-0.5  # FlashMLA's default
    want_out, want_lse = expected(case)
    assert_close(numpy(out), want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(numpy(lse), want_lse.transpose(0, 2, 1), *LSE_TOL, "lse")
    with pytest.raises(ValueError, match="head_dim_v"):
        mt.flash_mla_with_kvcache(q, kv, bt, sl, 128)
    with pytest.raises(ValueError, match="one KV head"):
        mt.flash_mla_with_kvcache(q, kv.unsqueeze(2).expand(-1, -1, 2, -1), bt, sl, 512)


@pytest.mark.parametrize("device", DEVICES)
def test_plan_shared_by_several_decode_planned_calls(device):
    case = make_decode_case(np.random.default_rng(34), "bfloat16", [5, 77, 0], 1, 16, 16)
    q, kv, bt, sl = tensors(case, device)
    ws = mt.alloc_workspace(3, 1, 16, device=device)
    out = nan_like_out(q)
    mt.plan(q, kv, bt, sl, case.softmax_scale, out=out, workspace=ws)
    for layer in range(2):  # layers share the step's schedule, each with its own q and cache
        q_layer, kv_layer = q * (layer + 1), kv.flip(-1)
        want = mt.decode(q_layer, kv_layer, bt, sl, case.softmax_scale)
        out.fill_(float("nan"))
        got = mt.decode_planned(
            q_layer, kv_layer, bt, sl, case.softmax_scale, workspace=ws, out=out
        )
        assert got is out
        assert_close(numpy(out), numpy(want), *OUT_TOL["bfloat16"], f"layer {layer}")


@pytest.mark.parametrize("device", DEVICES)
def test_errors_surface_from_the_op(device):
    case = make_decode_case(np.random.default_rng(35), "bfloat16", [5], 1, 4, 4)
    q, kv, bt, sl = tensors(case, device)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'kv_cache'"):
        mt.decode(q, kv.half(), bt, sl, case.softmax_scale)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'block_table'"):
        mt.decode(q, kv, bt.long(), sl, case.softmax_scale)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'q'"):
        mt.decode(q[0], kv, bt, sl, case.softmax_scale)
    with pytest.raises(mla_decode.UnsupportedError, match="'q'.*h_q"):
        mt.decode(q.repeat(1, 1, 40, 1), kv, bt, sl, case.softmax_scale)


@pytest.mark.parametrize("device", DEVICES)
def test_none_for_a_required_tensor_names_it(device):
    case = make_decode_case(np.random.default_rng(36), "bfloat16", [5], 1, 4, 4)
    q, kv, bt, sl = tensors(case, device)
    args = {"q": q, "kv_cache": kv, "block_table": bt, "seq_lens": sl}
    for name in args:
        call = {**args, name: None}
        pattern = f"mla::decode: argument '{name}'"
        with pytest.raises(mla_decode.InvalidArgumentError, match=pattern):
            mt.decode(**call, softmax_scale=case.softmax_scale)
    lse = torch.zeros(2, 3)
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'lse_b'"):
        mt.merge_states(torch.zeros(2, 3, 8), lse, torch.zeros(2, 3, 8), None)
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'kv_cache'"):
        mt.write_kv_cache(kv[0, :1, :512], kv[0, :1, 512:], torch.zeros(1, dtype=torch.long), None)
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'k_cache'"):
        mt.flash_mla_with_kvcache(q, None, bt, sl, 512)


@pytest.mark.parametrize("device", DEVICES)
def test_write_kv_cache_and_merge_states(device):
    rng = np.random.default_rng(36)
    cache = torch.full((4, 8, 576), float("nan"), dtype=torch.bfloat16, device=device)
    kv_c = torch.from_numpy(rounded(rng.standard_normal((3, 512), dtype=np.float32), "bfloat16"))
    k_pe = torch.from_numpy(rounded(rng.standard_normal((3, 64), dtype=np.float32), "bfloat16"))
    slots = torch.tensor([5, -1, 30])
    want = spec.write_kv_cache(kv_c.numpy(), k_pe.numpy(), slots.numpy(), numpy(cache))
    mt.write_kv_cache(
        kv_c.to(device, torch.bfloat16), k_pe.to(device, torch.bfloat16), slots.to(device), cache
    )
    np.testing.assert_array_equal(numpy(cache), want)

    out_a, out_b = torch.randn(4, 2, 512), torch.randn(4, 2, 512)
    lse_a, lse_b = torch.randn(4, 2) * 3, torch.randn(4, 2) * 3
    lse_a[0, 0] = lse_b[0, 0] = lse_a[1, 1] = float("-inf")
    out_a[0, 0] = out_b[0, 0] = out_a[1, 1] = 0
    want_out, want_lse = spec.merge_states(*(t.numpy() for t in (out_a, lse_a, out_b, lse_b)))
    # LSEs as transposed views of [H, T] buffers, as vLLM keeps them.
    lse_a, lse_b = (t.t().contiguous().t() for t in (lse_a, lse_b))
    out, lse = mt.merge_states(*(t.to(device) for t in (out_a, lse_a, out_b, lse_b)))
    assert_close(numpy(out), want_out, 1e-5, 1e-5, "merge out")
    assert_close(numpy(lse), want_lse, 1e-5, 1e-6, "merge lse")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_decode(device):
    case = make_decode_case(np.random.default_rng(37), "bfloat16", [7, 0], 1, 4, 4)
    q, kv, bt, sl = tensors(case, device)
    args = (q, None, kv, bt, sl, case.softmax_scale, False, nan_like_out(q), nan_lse(q), None)
    torch.library.opcheck(torch.ops.mla_decode.decode.default, args)


def compiled_step(q, kv, bt, sl):
    out, lse = mt.flash_mla_with_kvcache(q, kv.unsqueeze(2), bt, sl, 512, causal=True)
    return out.float() * 2, lse


@pytest.mark.parametrize(
    "device,options",
    [
        ("cpu", {"backend": "aot_eager"}),
        ("cpu", {"backend": "aot_eager", "dynamic": True}),
        pytest.param("cuda", {}, marks=cuda_only, id="cuda-inductor"),
        pytest.param("cuda", {"mode": "reduce-overhead"}, marks=cuda_only, id="cuda-graphs"),
    ],
)
def test_torch_compile(device, options):
    case = make_decode_case(np.random.default_rng(38), "bfloat16", [33, 1, 90], 2, 8, 16, True)
    case.softmax_scale = 576**-0.5  # flash_mla_with_kvcache's default
    q, kv, bt, sl = tensors(case, device)
    if device == "cuda":
        mt.reserve_workspace(3, 2, 8, device=device)
    step = torch.compile(compiled_step, fullgraph=True, **options)
    for lens in ([33, 1, 90], [0, 1, 2], [17, 0, 89]):  # within the poisoned tails
        sl.copy_(torch.tensor(lens))
        got = step(q, kv, bt, sl)
        got = (got[0].clone(), got[1].clone())  # cudagraph outputs are overwritten by the next run
        want_out, want_lse = expected(case, lens)
        assert_close(numpy(got[0]), 2 * want_out, *OUT_TOL["bfloat16"], f"out {lens}")
        assert_close(numpy(got[1]), want_lse.transpose(0, 2, 1), *LSE_TOL, f"lse {lens}")
    got = step(q[:2], kv, bt[:2], sl[:2])  # another batch size
    assert_close(numpy(got[0]), 2 * want_out[:2], *OUT_TOL["bfloat16"], "out, batch 2")
    assert_close(numpy(got[1]), want_lse[:2].transpose(0, 2, 1), *LSE_TOL, "lse, batch 2")


@pytest.mark.gpu
@pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)
def test_cuda_graph_capture_and_replay_with_changed_seq_lens():
    capacity = [200, 200, 200, 200]
    case = make_decode_case(np.random.default_rng(40), "bfloat16", capacity, 2, 16, 16, True)
    q, kv, bt, sl = tensors(case, "cuda")
    out, lse = nan_like_out(q), nan_lse(q, "bhs")
    mt.reserve_workspace(4, 2, 16, device="cuda")

    def step():
        mt.decode(q, kv, bt, sl, case.softmax_scale, causal=True, out=out, lse=lse.transpose(1, 2))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside capture, as torch recommends
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for lens in ([200, 0, 1, 150], [17, 200, 0, 0], [0, 0, 0, 0], [64, 65, 128, 3]):
        sl.copy_(torch.tensor(lens))
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        want_out, want_lse = expected(case, lens)
        assert_close(numpy(out), want_out, *OUT_TOL["bfloat16"], f"out {lens}")
        assert_close(numpy(lse), want_lse.transpose(0, 2, 1), *LSE_TOL, f"lse {lens}")


@pytest.mark.gpu
@pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)
def test_calls_run_on_the_current_stream():
    case = make_decode_case(np.random.default_rng(41), "bfloat16", [500, 300], 1, 16, 64)
    q_src, kv, bt, sl = tensors(case, "cuda")
    want_out = expected(case)[0]
    for call in (mt.decode, mla_decode.decode):
        q = torch.full_like(q_src, float("nan"))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            torch.cuda._sleep(50_000_000)  # q is written late on this stream ...
            q.copy_(q_src)
            out = call(q, kv, bt, sl, case.softmax_scale)  # ... and must be read after that
        stream.synchronize()
        assert_close(numpy(out), want_out, *OUT_TOL["bfloat16"], call.__module__)


@pytest.mark.gpu
@pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)
def test_device_data_errors_give_nan_rows_and_data_error():
    case = make_decode_case(np.random.default_rng(42), "bfloat16", [40, 40, 40], 1, 8, 16)
    q, kv, bt, sl = tensors(case, "cuda")
    ws = mt.alloc_workspace(3, 1, 8, device="cuda")
    out = mt.decode(q, kv, bt, sl, case.softmax_scale, workspace=ws)
    mla_decode.check_data_errors(ws)  # good data: no error
    bad_sl, bad_bt = sl.clone(), bt.clone()
    bad_sl[1] = 100_000  # beyond the block table
    bad_bt[2, 0] = kv.shape[0]  # a page id outside the cache
    out = mt.decode(q, kv, bad_bt, bad_sl, case.softmax_scale, workspace=ws)
    with pytest.raises(mla_decode.DataError, match=r"seq_lens\[1\]|block_table\[2\]"):
        mla_decode.check_data_errors(ws)
    assert torch.isnan(out[1:].float()).all()
    assert_close(numpy(out[:1]), expected(case)[0][:1], *OUT_TOL["bfloat16"], "good row")


@pytest.mark.gpu
@pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)
def test_mixed_devices_are_rejected():
    case = make_decode_case(np.random.default_rng(43), "bfloat16", [5], 1, 4, 4)
    q, kv, bt, sl = tensors(case, "cuda")
    with pytest.raises(mla_decode.InvalidArgumentError, match="'kv_cache'.*cpu"):
        mt.decode(q, kv.cpu(), bt, sl, case.softmax_scale)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'workspace'.*cpu"):
        mt.decode(q, kv, bt, sl, case.softmax_scale, workspace=mt.alloc_workspace(1, 1, 4, "cpu"))
