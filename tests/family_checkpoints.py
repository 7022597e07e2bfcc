"""Tiny random Hugging Face checkpoints of every family jetjax loads besides GPT-2.

Sizes are small and odd (heads not dividing evenly into "nice" numbers, GQA with fewer key/value
heads, head_dim independent of d_model / n_heads, windows shorter than the test sequences), and
weights are drawn wide enough that attention is far from uniform: a wrong mask, rotary angle or
head grouping changes the logits well beyond the tolerance.
"""

import torch

SEQ = 11  # test sequence length: longer than every sliding window below

# name -> (HF config class, HF model class, config kwargs)
FAMILY_CONFIGS = {
    "neox_parallel": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        hidden_size=30, num_hidden_layers=3, num_attention_heads=3, intermediate_size=37, vocab_size=41,
        hidden_act="gelu", use_parallel_residual=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4})),
    "neox_sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        hidden_size=36, num_hidden_layers=2, num_attention_heads=4, intermediate_size=29, vocab_size=31,
        hidden_act="gelu_new", use_parallel_residual=False, attention_bias=False, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5})),
    "llama_gqa_llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=30, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=6,
        intermediate_size=29, vocab_size=37, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 2000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 256})),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(
        hidden_size=20, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=6,
        intermediate_size=27, vocab_size=31, sliding_window=3)),
    "qwen2_sliding_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=24, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=23,
        vocab_size=29, use_sliding_window=True, sliding_window=4, max_window_layers=1, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    "gemma_mqa": ("GemmaConfig", "GemmaForCausalLM", dict(
        hidden_size=18, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1, head_dim=8,
        intermediate_size=23, vocab_size=29)),
    # Gemma 2: post-norms, local/global alternation (window 4 < SEQ), query_pre_attn_scalar, both
    # soft-caps set low enough to bend the scores and logits of these wide random weights
    "gemma2_softcap": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        hidden_size=21, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1, head_dim=10,
        intermediate_size=27, vocab_size=31, sliding_window=4, query_pre_attn_scalar=13,
        attn_logit_softcapping=2.5, final_logit_softcapping=4.0)),
    # Gemma 3: q/k norms, a local rope (base 1e4) and a linearly scaled global one (base 1e6)
    "gemma3_local_global": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        hidden_size=20, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=6,
        intermediate_size=23, vocab_size=37, sliding_window=3, query_pre_attn_scalar=7,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    "gpt_neo_local": ("GPTNeoConfig", "GPTNeoForCausalLM", dict(
        hidden_size=20, num_layers=3, num_heads=4, intermediate_size=33, vocab_size=31, max_position_embeddings=19,
        attention_types=[[["global", "local"], 1], [["local"], 1]], window_size=3, bos_token_id=0, eos_token_id=0)),
    "olmo_clip": ("OlmoConfig", "OlmoForCausalLM", dict(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=31,
        vocab_size=31, clip_qkv=0.8, eos_token_id=0)),
}


def make_family_checkpoint(directory, name, seed=0, **overrides):
    """Save a random-init HF model of ``FAMILY_CONFIGS[name]`` (or ``NEW_FAMILY_CONFIGS[name]``; float32,
    config kwargs changed by ``overrides``) into ``directory`` (``None``: build it, save nothing)."""
    import transformers

    config_cls, model_cls, kwargs = {**FAMILY_CONFIGS, **NEW_FAMILY_CONFIGS}[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(initializer_range=0.3, **{**kwargs, **overrides})
    model = getattr(transformers, model_cls)(cfg).eval()
    # Default init leaves norms at identity (Gemma: at zero) and biases at zero: randomise
    # them so a mis-mapped norm or bias cannot pass.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or ".ln" in pname or pname.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    if directory is not None:
        model.save_pretrained(directory)
    return model


# The families of issue 36, tested in tests/models/test_new_families.py (2 layers each, to stay fast):
# name -> (HF config class, HF model class, config kwargs), built by make_family_checkpoint too.
NEW_FAMILY_CONFIGS = {
    # per-head q/k norms, GQA, head_dim independent of d_model / n_heads, a window (4 < SEQ) on layer 1
    "qwen3_window": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        hidden_size=20, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=6,
        intermediate_size=23, vocab_size=31, use_sliding_window=True, sliding_window=4, max_window_layers=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0})),
    # attention_bias: biases on all four attention projections; tied unembedding; linear rope scaling
    "qwen3_bias_tied": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        hidden_size=18, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1, head_dim=8,
        intermediate_size=19, vocab_size=29, attention_bias=True, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    # post-branch norms (no pre-norms), q/k norms over the whole projection, GQA
    "olmo2_gqa": ("Olmo2Config", "Olmo2ForCausalLM", dict(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=31,
        vocab_size=31, rms_norm_eps=1e-5, eos_token_id=0, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0})),
    # layer norms with biases, biases on every projection, plain GELU MLP, a window (4 < SEQ) on every layer
    "starcoder2_window": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=29,
        vocab_size=31, sliding_window=4, bos_token_id=0, eos_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0})),
    # all four multipliers far from 1 (and from each other), GQA, MLP biases
    "granite_multipliers": ("GraniteConfig", "GraniteForCausalLM", dict(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=29,
        vocab_size=31, mlp_bias=True, embedding_multiplier=3.5, attention_multiplier=0.6, residual_multiplier=0.4,
        logits_scaling=2.5, bos_token_id=0, eos_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0})),
    # fused qkv and gate/up, GQA, partial rotary (6 of 8 dims, as Phi-4-mini), a window (4 < SEQ)
    "phi3_partial_window": ("Phi3Config", "Phi3ForCausalLM", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=23,
        vocab_size=31, sliding_window=4, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.75})),
    # layer 1 without rotary embedding (NoPE) and with a window (4 < SEQ); GQA, tied
    "smollm3_nope": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=29,
        vocab_size=31, no_rope_layers=[1, 0], use_sliding_window=True, sliding_window=4, bos_token_id=0,
        eos_token_id=0, pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 1000.0})),
}
