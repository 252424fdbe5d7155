"""Bad input raises the mla_decode.errors class of the library's status, with a message that
names the argument, and leaves the outputs untouched."""

import ml_dtypes
import mla_decode
import numpy as np
import pytest
from cases import make_decode_case


def valid_call():
    case = make_decode_case(np.random.default_rng(20), "bfloat16", [5, 20], 1, 4, 8)
    q, kv = case.arrays()
    return {
        "q": q,
        "kv_cache": kv,
        "block_table": case.block_table,
        "seq_lens": case.seq_lens,
        "softmax_scale": case.softmax_scale,
        "out": np.full((2, 1, 4, 512), 7, dtype=ml_dtypes.bfloat16),
        "lse": np.full((2, 1, 4), 7, dtype=np.float32),
    }


def with_(**changes):
    def apply(args):
        args.update(changes)

    return apply


def set_item(name, index, value):
    def apply(args):
        args[name] = args[name].copy()
        args[name][index] = value

    return apply


def cast(name, dtype):
    def apply(args):
        args[name] = args[name].astype(dtype)

    return apply


def reshape(name, fn):
    def apply(args):
        args[name] = fn(args[name])

    return apply


def read_only(name):
    def apply(args):
        args[name].flags.writeable = False

    return apply


CASES = [
    ("q float32", cast("q", np.float32), mla_decode.InvalidArgumentError, r"'q'.*float32"),
    ("q uint8", cast("q", np.uint8), mla_decode.InvalidArgumentError, r"'q'.*uint8"),
    ("q list", with_(q=[[1.0]]), mla_decode.InvalidArgumentError, r"'q'"),
    (
        "kv_cache list",
        with_(kv_cache=[[1.0]]),
        mla_decode.InvalidArgumentError,
        r"'kv_cache'.*cannot use a list",
    ),
    ("q 3-d", reshape("q", lambda q: q[0]), mla_decode.InvalidArgumentError, r"'q'"),
    ("q width", reshape("q", lambda q: q[..., :500]), mla_decode.InvalidArgumentError, r"'q'"),
    (
        "q heads > 128",
        reshape("q", lambda q: np.repeat(q, 40, axis=2)),
        mla_decode.UnsupportedError,
        r"'q'.*h_q.*160",
    ),
    ("kv dtype", cast("kv_cache", np.float16), mla_decode.InvalidArgumentError, r"'kv_cache'"),
    (
        "kv width",
        reshape("kv_cache", lambda kv: kv[..., :512]),
        mla_decode.InvalidArgumentError,
        r"'kv_cache'",
    ),
    (
        "page size 3",
        reshape("kv_cache", lambda kv: kv[:, :3]),
        mla_decode.UnsupportedError,
        r"'kv_cache'.*page_size",
    ),
    (
        "block_table int64",
        cast("block_table", np.int64),
        mla_decode.InvalidArgumentError,
        r"'block_table'.*int32",
    ),
    (
        "block_table rows",
        reshape("block_table", lambda bt: bt[:1]),
        mla_decode.InvalidArgumentError,
        r"'block_table'",
    ),
    ("seq_lens dtype", cast("seq_lens", np.int64), mla_decode.InvalidArgumentError, r"'seq_lens'"),
    ("seq_len < 0", set_item("seq_lens", 1, -1), mla_decode.DataError, r"seq_lens\[1\] = -1"),
    ("seq_len too long", set_item("seq_lens", 0, 10_000), mla_decode.DataError, r"seq_lens\[0\]"),
    (
        "live page out of range",
        set_item("block_table", (1, 0), 2147480000),
        mla_decode.DataError,
        r"block_table\[1\]\[0\] = 2147480000",
    ),
    ("out dtype", cast("out", np.float16), mla_decode.InvalidArgumentError, r"'out'"),
    (
        "out shape",
        reshape("out", lambda o: o[:, :, :3]),
        mla_decode.InvalidArgumentError,
        r"'out'",
    ),
    (
        "out aliases itself",
        reshape("out", lambda o: np.lib.stride_tricks.as_strided(o, strides=(0, 0, 0, 2))),
        mla_decode.InvalidArgumentError,
        r"'out'.*overlap",
    ),
    ("out read-only", read_only("out"), mla_decode.InvalidArgumentError, r"'out'.*writable"),
    ("lse dtype", cast("lse", np.float16), mla_decode.InvalidArgumentError, r"'lse'"),
    ("lse shape", reshape("lse", lambda x: x[:1]), mla_decode.InvalidArgumentError, r"'lse'"),
    ("scale 0", with_(softmax_scale=0.0), mla_decode.InvalidArgumentError, r"'softmax_scale'"),
    ("scale nan", with_(softmax_scale=float("nan")), ValueError, r"'softmax_scale'"),
    (
        "workspace too small",
        with_(workspace=np.zeros(0, dtype=np.uint8)),
        mla_decode.InvalidArgumentError,
        r"'workspace'",
    ),
    (
        "workspace strided",
        with_(workspace=np.zeros((1 << 20, 2), dtype=np.uint8)[:, 0]),
        mla_decode.InvalidArgumentError,
        r"'workspace'.*densely",
    ),
]


@pytest.mark.parametrize("mutate,error,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decode_errors_name_the_argument(mutate, error, pattern):
    args = valid_call()
    mutate(args)
    out, lse = args.pop("out"), args.pop("lse")
    out_before, lse_before = np.copy(out), np.copy(lse)
    q = args.pop("q")
    with pytest.raises(error, match=pattern) as info:
        mla_decode.decode(q, **args, out=out, lse=lse)
    if issubclass(error, mla_decode.MlaError):
        assert str(info.value).startswith("mla::")
    assert np.array_equal(out.astype(np.float32), out_before.astype(np.float32))
    assert np.array_equal(lse, lse_before, equal_nan=True)


def test_error_classes_derive_from_builtins():
    assert issubclass(mla_decode.InvalidArgumentError, ValueError)
    assert issubclass(mla_decode.DataError, ValueError)
    assert issubclass(mla_decode.UnsupportedError, NotImplementedError)
    assert issubclass(mla_decode.CudaError, RuntimeError)
    assert issubclass(mla_decode.InternalError, RuntimeError)
    for cls in (mla_decode.InvalidArgumentError, mla_decode.UnsupportedError):
        assert issubclass(cls, mla_decode.MlaError)


def test_workspace_size_errors():
    with pytest.raises(mla_decode.InvalidArgumentError, match="h_q"):
        mla_decode.workspace_size(1, 1, 0)
    with pytest.raises(mla_decode.UnsupportedError, match="s_q"):
        mla_decode.workspace_size(1, 17, 16)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'device'"):
        mla_decode.workspace_size(1, 1, 16, device="tpu")


def test_cuda_workspace_needs_a_device():
    if mla_decode.cuda_device_count() == 0:
        with pytest.raises(mla_decode.MlaError):
            mla_decode.workspace_size(1, 1, 16, device="cuda:0")


def test_merge_and_write_errors_name_the_argument():
    a = np.zeros((2, 3, 8), dtype=np.float32)
    lse = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'out_b'"):
        mla_decode.merge_states(a, lse, a.astype(np.float16), lse)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'lse_b'"):
        mla_decode.merge_states(a, lse, a, lse[:1])
    cache = np.zeros((2, 4, 576), dtype=np.float16)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'slot_mapping'"):
        mla_decode.write_kv_cache(
            np.zeros((1, 512), np.float16),
            np.zeros((1, 64), np.float16),
            np.zeros(1, np.int32),
            cache,
        )
    with pytest.raises(mla_decode.InvalidArgumentError, match="'k_pe'"):
        mla_decode.write_kv_cache(
            np.zeros((1, 512), np.float16),
            np.zeros((1, 32), np.float16),
            np.zeros(1, np.int64),
            cache,
        )


def _none_cases():
    """(entry point, call taking the argument to replace with None, argument names)."""
    args = valid_call()
    ws = mla_decode.alloc_workspace(args["q"], 2, 1, 4)
    decode_args = {k: args[k] for k in ("q", "kv_cache", "block_table", "seq_lens")}

    def decode(**over):
        a = {**decode_args, **over}
        return mla_decode.decode(a["q"], a["kv_cache"], a["block_table"], a["seq_lens"], 0.1)

    def planned(fn):
        def call(**over):
            a = {**decode_args, "out": args["out"], "workspace": ws, **over}
            return fn(
                a["q"],
                a["kv_cache"],
                a["block_table"],
                a["seq_lens"],
                0.1,
                out=a["out"],
                workspace=a["workspace"],
            )

        return call

    kv = {
        "kv_c": np.zeros((1, 512), np.float16),
        "k_pe": np.zeros((1, 64), np.float16),
        "slot_mapping": np.zeros(1, np.int64),
        "kv_cache": np.zeros((2, 4, 576), np.float16),
    }

    def write(**over):
        a = {**kv, **over}
        return mla_decode.write_kv_cache(a["kv_c"], a["k_pe"], a["slot_mapping"], a["kv_cache"])

    merge = {
        "out_a": np.zeros((2, 3, 8), np.float32),
        "lse_a": np.zeros((2, 3), np.float32),
        "out_b": np.zeros((2, 3, 8), np.float32),
        "lse_b": np.zeros((2, 3), np.float32),
    }

    def merge_call(**over):
        a = {**merge, **over}
        return mla_decode.merge_states(a["out_a"], a["lse_a"], a["out_b"], a["lse_b"])

    def check(**over):
        return mla_decode.check_data_errors(over.get("workspace", ws))

    return [
        ("mla::decode", decode, ["q", "kv_cache", "block_table", "seq_lens"]),
        (
            "mla::plan",
            planned(mla_decode.plan),
            ["q", "kv_cache", "block_table", "seq_lens", "out", "workspace"],
        ),
        (
            "mla::decode_planned",
            planned(mla_decode.decode_planned),
            ["q", "kv_cache", "block_table", "seq_lens", "out", "workspace"],
        ),
        ("mla::check_data_errors", check, ["workspace"]),
        ("mla::write_kv_cache", write, list(kv)),
        ("mla::merge_states", merge_call, list(merge)),
    ]


@pytest.mark.parametrize(
    "fn,call,name",
    [(fn, call, name) for fn, call, names in _none_cases() for name in names],
    ids=[f"{fn}-{name}" for fn, _, names in _none_cases() for name in names],
)
def test_none_for_a_required_array_names_it(fn, call, name):
    with pytest.raises(mla_decode.InvalidArgumentError) as info:
        call(**{name: None})
    message = str(info.value)
    assert message.startswith(fn + ": "), message
    assert f"argument '{name}'" in message and "None" in message, message


def test_extension_reports_none_by_name():
    """The extension itself (not only the Python layer) names a None argument."""
    from mla_decode import _C

    args = valid_call()
    ws = mla_decode.alloc_workspace(args["q"], 2, 1, 4)
    positional = [args["q"], args["kv_cache"], args["block_table"], args["seq_lens"], 0.1]
    for index, name in [(0, "q"), (1, "kv_cache"), (2, "block_table"), (3, "seq_lens")]:
        call = list(positional)
        call[index] = None
        with pytest.raises(mla_decode.InvalidArgumentError, match=f"'{name}'.*None"):
            _C.decode(*call, args["out"], ws)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'out'.*None"):
        _C.decode(*positional, None, ws)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'workspace'.*None"):
        _C.decode(*positional, args["out"], None)
    a = np.zeros((2, 3, 8), np.float32)
    lse = np.zeros((2, 3), np.float32)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'out'.*None"):
        _C.merge_states(a, lse, a, lse, None)
    with pytest.raises(mla_decode.InvalidArgumentError, match="'kv_cache'.*None"):
        _C.write_kv_cache(
            np.zeros((1, 512), np.float16),
            np.zeros((1, 64), np.float16),
            np.zeros(1, np.int64),
            None,
        )
    with pytest.raises(mla_decode.InvalidArgumentError, match="'workspace'.*None"):
        _C.check_data_errors(None)
