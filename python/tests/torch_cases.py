"""cases.DecodeCase as torch tensors, for the torch tests (imported only where torch exists)."""

import numpy as np
import torch


def tensors(case, device="cpu"):
    """q, kv_cache (NaN poison kept), block_table, seq_lens of a case on `device`."""
    dtype = getattr(torch, case.dtype)
    return (
        torch.from_numpy(case.q).to(device=device, dtype=dtype),
        torch.from_numpy(case.kv_cache).to(device=device, dtype=dtype),
        torch.from_numpy(case.block_table).to(device),
        torch.from_numpy(case.seq_lens).to(device),
    )


def nan_like_out(q):
    return torch.full((*q.shape[:3], 512), float("nan"), dtype=q.dtype, device=q.device)


def nan_lse(q, layout="bsh"):
    b, s, h = q.shape[:3]
    shape = (b, s, h) if layout == "bsh" else (b, h, s)
    return torch.full(shape, float("nan"), dtype=torch.float32, device=q.device)


def numpy(t):
    return t.detach().float().cpu().numpy().astype(np.float64)
