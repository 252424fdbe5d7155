"""A small DeepSeek-V3 with random weights, built from a config (nothing is downloaded).

The attention shapes are DeepSeek-V3's (kv_lora_rank 512, qk_rope_head_dim 64, qk_nope_head_dim
128, v_head_dim 128, YaRN RoPE with mscale, so the softmax scale is 192**-0.5 * mscale**2); the
rest is shrunk: 3 layers of hidden size 1024, 16 heads, a small vocabulary, and one MoE layer
whose router picks every expert (top-k = all experts keeps the routing continuous, so tiny
numerical differences between two attention implementations cannot flip an expert choice).
"""

import math

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 40.0,
    "original_max_position_embeddings": 4096,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}


def small_config(num_layers: int = 3, num_heads: int = 16, moe: bool = True, **overrides):
    """DeepseekV3Config of the example model; moe=False makes every layer dense."""
    kwargs = dict(
        vocab_size=2048,
        hidden_size=1024,
        intermediate_size=2048,
        moe_intermediate_size=512,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        n_shared_experts=1,
        n_routed_experts=4,
        num_experts_per_tok=4,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=num_layers - 1 if moe else num_layers,
        q_lora_rank=384,
        kv_lora_rank=512,
        qk_rope_head_dim=64,
        qk_nope_head_dim=128,
        v_head_dim=128,
        max_position_embeddings=163840,
        rope_parameters=dict(YARN),
        rope_interleave=True,
        tie_word_embeddings=False,
        num_mtp_layers=0,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    return DeepseekV3Config(**kwargs)


def yarn_softmax_scale(config) -> float:
    """1/sqrt(qk_nope + qk_rope) times YaRN's mscale(factor, mscale_all_dim) squared, as
    DeepSeek-V3 computes it (here 192**-0.5 * (0.1 * ln(40) + 1)**2)."""
    rope = config.rope_parameters
    mscale = 0.1 * rope["mscale_all_dim"] * math.log(rope["factor"]) + 1.0
    return (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5 * mscale * mscale


def build_model(config=None, seed: int = 0, dtype=torch.bfloat16, device="cpu"):
    """DeepseekV3ForCausalLM with random weights (seeded; built on the CPU, so every process and
    device gets the same weights), in eval mode."""
    config = config or small_config()
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config)
    return model.to(dtype=dtype, device=device).eval()
