"""The engine (mla-decode, paged latent cache) against the model's own forward (HF eager attention,
its own cache) on the same tokens, step by step.

A batch of prompts of different lengths is prefilled, then decoded for `steps` steps with s_q
tokens per request per step. The reference decides the tokens: each step feeds the greedy token of
its previous logits (and with s_q 2, MTP-style, one random draft token after it, kept as if
accepted); the engine is fed the same tokens, in a batch with one extra padding slot
(seq_len 0). Every logit of every prompt token and every step is compared.

Run:
    python examples/deepseek/compare.py [--device cpu|cuda] [--page-size 16] [--s-q 2]
                                        [--cuda-graph]
    torchrun --nproc-per-node 2 examples/deepseek/compare.py --device cuda   # tensor parallel
(with torchrun, rank 0 also runs the single-process engine and compares the two.)
"""

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deepseek.engine import Engine  # noqa: E402
from deepseek.model import build_model, small_config  # noqa: E402

# Logits of this model (bf16 weights, random init) have a standard deviation of about 0.64 and
# are bf16 (0.0156 apart between 2 and 4). The engine and the reference round in different places
# (W_UK applied to q instead of to the cached latents, bf16 q_lat and attention output, another
# summation order): on the CPU they differ by up to 0.031 at every page size and s_q, while the
# bf16 reference itself is 0.037 away from the same model run in float32. The tolerance is four
# bf16 steps at that magnitude. Bugs move logits by far more: a softmax scale without YaRN's
# mscale by 0.47, RoPE without the interleave by 0.62.
LOGIT_TOL = 0.0625

PROMPT_LENS = (5, 19, 37)  # prefill chunks of 16 and page boundaries at every page size tested
PADDING_SLOT = 1  # engine slot that stays empty (seq_len 0) throughout


@dataclasses.dataclass
class Run:
    prompts: List[torch.Tensor]  # per request [len] int64
    prompt_logits: List[torch.Tensor]  # per request [len, vocab] float32
    tokens: torch.Tensor  # [steps, batch, s_q] int64: what every step feeds
    step_logits: torch.Tensor  # [steps, batch, s_q, vocab] float32


def make_prompts(vocab: int, lens=PROMPT_LENS, seed: int = 1) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lens]


@torch.no_grad()
def reference_run(model, prompts, steps: int, s_q: int, seed: int = 2, tokens=None) -> Run:
    """The model's own forward: the prompts left-padded into one batch with an attention mask and
    explicit positions, then decode steps on its own (latent) DynamicCache. `tokens`
    [steps, batch, s_q], when given, are fed instead of its own choices."""
    dev = model.lm_head.weight.device
    batch, longest = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(batch, longest, dtype=torch.int64)
    mask = torch.zeros(batch, longest, dtype=torch.int64)
    for b, p in enumerate(prompts):
        ids[b, longest - len(p) :], mask[b, longest - len(p) :] = p, 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(dev), mask.to(dev), positions.to(dev)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache, logits = out.past_key_values, out.logits.float()
    prompt_logits = [logits[b, longest - len(p) :].cpu() for b, p in enumerate(prompts)]
    lens = torch.tensor([len(p) for p in prompts], device=dev)

    g = torch.Generator().manual_seed(seed)
    last = logits[:, -1]
    all_tokens, all_logits = [], []
    forced = tokens
    for step in range(steps):
        tokens = last.argmax(-1, keepdim=True)
        if s_q > 1:  # MTP-style draft tokens after the greedy one
            drafts = torch.randint(0, last.shape[-1], (batch, s_q - 1), generator=g).to(dev)
            tokens = torch.cat([tokens, drafts], dim=1)
        if forced is not None:
            tokens = forced[step].to(dev)
        mask = torch.cat([mask, torch.ones(batch, s_q, dtype=mask.dtype, device=dev)], dim=1)
        positions = lens[:, None] + torch.arange(s_q, device=dev)
        out = model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        cache, logits = out.past_key_values, out.logits.float()
        lens += s_q
        last = logits[:, -1]
        all_tokens.append(tokens.cpu())
        all_logits.append(logits.cpu())
    return Run(prompts, prompt_logits, torch.stack(all_tokens), torch.stack(all_logits))


def engine_slots(num_requests: int) -> List[int]:
    """Engine slot of each request: every slot but PADDING_SLOT."""
    return [s for s in range(num_requests + 1) if s != PADDING_SLOT]


def make_engine(model, num_requests: int, steps: int, s_q: int, page_size: int, **kw) -> Engine:
    longest = max(PROMPT_LENS) + steps * s_q
    pages_per_seq = math.ceil(longest / page_size)
    return Engine(
        model,
        max_batch=num_requests + 1,
        s_q=s_q,
        page_size=page_size,
        num_pages=(num_requests + 1) * pages_per_seq + 3,
        max_pages_per_seq=pages_per_seq,
        **kw,
    )


@torch.no_grad()
def engine_run(engine: Engine, prompts, tokens: torch.Tensor) -> Run:
    """Feeds the engine the prompts and the reference's tokens; the padding slot stays empty."""
    dev = engine.device
    slots = engine_slots(len(prompts))
    prompt_logits = [engine.prefill(s, p.tolist()).cpu() for s, p in zip(slots, prompts)]
    active = [s != PADDING_SLOT for s in range(engine.max_batch)]
    step_logits = []
    for step_tokens in tokens:
        batch_tokens = torch.zeros(engine.max_batch, engine.s_q, dtype=torch.int64)
        batch_tokens[slots] = step_tokens
        logits = engine.step(batch_tokens.to(dev), active)
        if not torch.isfinite(logits[PADDING_SLOT]).all():
            raise AssertionError("the padding slot's logits are not finite")
        step_logits.append(logits[slots].cpu())
    # The cache started as NaN: exactly the requests' tokens were written, nothing for padding.
    written = (~engine.kv_cache.isnan().any(-1)).sum(dim=(1, 2))
    if not (written == sum(engine.lens)).all():
        raise AssertionError(
            f"cache rows written per layer {written.tolist()}, tokens {engine.lens}"
        )
    return Run(prompts, prompt_logits, tokens, torch.stack(step_logits))


def compare(ref: Run, got: Run, tol: float = LOGIT_TOL) -> dict:
    """Largest logit difference over every prompt token and step, and greedy agreement wherever
    the reference's top-two margin exceeds tol."""
    ref_all = torch.cat([torch.cat(ref.prompt_logits), ref.step_logits.flatten(0, -2)])
    got_all = torch.cat([torch.cat(got.prompt_logits), got.step_logits.flatten(0, -2)])
    diff = (ref_all - got_all).abs()
    top2 = ref_all.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1]) > tol
    mismatch = decisive & (ref_all.argmax(-1) != got_all.argmax(-1))
    per_step = (ref.step_logits - got.step_logits).abs().amax(dim=(1, 2, 3))
    return {
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "worst_step_diffs": [
            round(x, 5) for x in per_step.topk(min(3, len(per_step))).values.tolist()
        ],
        "logit_std": ref_all.std().item(),
        "rows": ref_all.shape[0],
        "greedy_checked": int(decisive.sum()),
        "greedy_mismatches": int(mismatch.sum()),
        "tol": tol,
        "ok": bool(
            diff.max().item() <= tol and not mismatch.any() and torch.isfinite(got_all).all()
        ),
    }


def run_single(
    device="cpu",
    page_size=16,
    s_q=1,
    steps=32,
    cuda_graph=False,
    moe=True,
    seed=0,
) -> dict:
    """Reference and engine in one process; returns compare()'s report."""
    config = small_config(moe=moe)
    prompts = make_prompts(config.vocab_size)
    ref = reference_run(build_model(config, seed, device=device), prompts, steps, s_q)
    model = build_model(config, seed, device=device)
    engine = make_engine(model, len(prompts), steps, s_q, page_size, cuda_graph=cuda_graph)
    report = compare(ref, engine_run(engine, prompts, ref.tokens))
    report.update(device=device, page_size=page_size, s_q=s_q, steps=steps, cuda_graph=cuda_graph)
    return report


def run_tensor_parallel(
    device="cpu", page_size=16, s_q=1, steps=32, moe=True, seed=0
) -> Optional[dict]:
    """Under torchrun: every rank runs the engine on its share of the heads; rank 0 also runs the
    reference and the single-process engine and returns both comparisons (other ranks: None)."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        device = f"cuda:{torch.cuda.current_device()}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        config = small_config(moe=moe)
        prompts = make_prompts(config.vocab_size)
        shape = (steps, len(prompts), s_q)
        tokens = torch.empty(shape, dtype=torch.int64, device=device)
        if rank == 0:  # the reference decides the tokens; every rank is fed the same ones
            ref = reference_run(build_model(config, seed, device=device), prompts, steps, s_q)
            tokens.copy_(ref.tokens)
        dist.broadcast(tokens, src=0)
        tokens = tokens.cpu()
        model = build_model(config, seed, device=device)
        engine = make_engine(
            model, len(prompts), steps, s_q, page_size, tp_rank=rank, tp_world=world
        )
        tp = engine_run(engine, prompts, tokens)
        if rank != 0:
            return None
        single_model = build_model(config, seed, device=device)
        single = engine_run(
            make_engine(single_model, len(prompts), steps, s_q, page_size), prompts, tokens
        )
        report = {
            "world": world,
            "h_q_per_rank": config.num_attention_heads // world,
            "device": device,
            "page_size": page_size,
            "s_q": s_q,
            "steps": steps,
            "tp_vs_reference": compare(ref, tp),
            "tp_vs_single": compare(single, tp),
            "single_vs_reference": compare(ref, single),
        }
        report["ok"] = all(
            report[k]["ok"] for k in ("tp_vs_reference", "tp_vs_single", "single_vs_reference")
        )
        return report
    finally:
        dist.destroy_process_group()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--s-q", type=int, default=1)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument(
        "--cuda-graph", action="store_true", help="replay each step from a CUDA graph"
    )
    parser.add_argument("--dense", action="store_true", help="no MoE layer")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    moe = not args.dense
    common = dict(
        device=args.device, page_size=args.page_size, s_q=args.s_q, steps=args.steps, moe=moe
    )
    if "WORLD_SIZE" in os.environ:
        report = run_tensor_parallel(**common)
        if report is None:
            return 0
    else:
        report = run_single(cuda_graph=args.cuda_graph, **common)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
