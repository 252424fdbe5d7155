"""examples/deepseek: a small random-weight DeepSeek-V3 decoded through mla-decode (absorbed MLA
over a paged latent cache) against the model's own forward, for every logit of every prompt token
and of 32 decode steps, in a batch with a padding slot (seq_len 0).

CPU (the library's CPU backend): page sizes 1, 16 and 64; s_q 2 (MTP-style, causal); tensor
parallel over 2 gloo ranks launched by torchrun. GPU (marker gpu): the same on CUDA, with and
without CUDA graphs, and tensor parallel over 2 GPUs with NCCL.

Skipped without torch or a transformers that has DeepseekV3; the GPU cases without a CUDA device
(or mla_decode built without CUDA), the 2-GPU case with fewer than two GPUs.
"""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers.models.deepseek_v3", reason="transformers without DeepseekV3")

import mla_decode  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
sys.path.insert(0, os.path.abspath(EXAMPLES))
from deepseek import compare as cmp  # noqa: E402
from deepseek.model import build_model, small_config, yarn_softmax_scale  # noqa: E402

if not torch.cuda.is_available():
    NO_CUDA = "torch sees no CUDA device"
elif not mla_decode.cuda_available_in_build():
    NO_CUDA = "mla_decode was built without CUDA (MLA_CUDA=OFF or no nvcc)"
else:
    NO_CUDA = ""
two_gpus = pytest.mark.skipif(
    not NO_CUDA and torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"
)
STEPS = 32


def check(report):
    # The whole report in the assertion message: the largest differences are what a reader wants.
    # Printed too, for runs that keep the output (pytest -s, as tools/gpu-check.sh runs them).
    print("model check report:", json.dumps(report))
    assert report["ok"], json.dumps(report, indent=1)


@pytest.fixture(scope="module")
def cpu_references():
    """The reference runs on the CPU, per s_q, shared by the page sizes."""
    config = small_config()
    prompts = cmp.make_prompts(config.vocab_size)
    return (
        config,
        prompts,
        {s_q: cmp.reference_run(build_model(config), prompts, STEPS, s_q) for s_q in (1, 2)},
    )


def test_softmax_scale_includes_yarn_mscale():
    attn = build_model(small_config(num_layers=1)).model.layers[0].self_attn
    assert attn.scaling == pytest.approx(yarn_softmax_scale(attn.config), rel=1e-12)
    assert attn.scaling > 1.8 * 192**-0.5  # (0.1 ln 40 + 1)^2 = 1.87


@pytest.mark.parametrize(
    "page_size, s_q", [(1, 1), (16, 1), (64, 1), (1, 2), (16, 2), (64, 2)], ids=str
)
def test_cpu_engine_matches_model(cpu_references, page_size, s_q):
    config, prompts, refs = cpu_references
    ref = refs[s_q]
    engine = cmp.make_engine(build_model(config), len(prompts), STEPS, s_q, page_size)
    report = cmp.compare(ref, cmp.engine_run(engine, prompts, ref.tokens))
    check(report)
    assert report["greedy_checked"] > report["rows"] // 3  # the greedy check is not vacuous


def torchrun(nproc, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", NCCL_NVLS_ENABLE="0")
    env.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    script = os.path.join(EXAMPLES, "deepseek", "compare.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", script, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 or lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1])


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed without gloo",
)
def test_cpu_tensor_parallel_2_ranks_gloo():
    report = torchrun(2, "--device", "cpu", "--page-size", "16", "--steps", str(STEPS))
    assert report["world"] == 2 and report["h_q_per_rank"] == 8
    check(report)


GPU_CASES = [  # (page_size, s_q, cuda_graph, moe)
    *[(p, s, False, True) for p, s in [(1, 1), (16, 1), (64, 1), (64, 2)]],
    *[(p, s, True, False) for p, s in [(1, 1), (16, 1), (64, 1), (64, 2)]],
    # transformers' default MoE (grouped_mm, offsets by histc) is meant to be capturable
    (64, 1, True, True),
]


@pytest.mark.gpu
@pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)
@pytest.mark.parametrize("page_size, s_q, cuda_graph, moe", GPU_CASES, ids=str)
def test_gpu_engine_matches_model(page_size, s_q, cuda_graph, moe):
    check(cmp.run_single("cuda", page_size, s_q, STEPS, cuda_graph=cuda_graph, moe=moe))


@pytest.mark.gpu
@pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)
@two_gpus
@pytest.mark.parametrize("s_q", [1, 2])
def test_gpu_tensor_parallel_2_ranks_nccl(s_q):
    report = torchrun(
        2, "--device", "cuda", "--page-size", "64", "--s-q", str(s_q), "--steps", str(STEPS)
    )
    assert report["world"] == 2 and report["h_q_per_rank"] == 8
    check(report)
