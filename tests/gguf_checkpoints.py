"""Tiny GGUF files written from random Hugging Face models, the way llama.cpp's converter lays them out.

The layout conventions (tensor names, Q/K row order of rotary models, GPT-2's transposed matrices,
dimensions listed innermost first) are written here independently of :mod:`jetjax.io.gguf`; the tests
load each file with both jetjax and transformers' own GGUF loader, so a convention both got wrong the
same way would still have to match transformers' reading of the file.
"""

import numpy as np

# name -> (HF config class, HF model class, GGUF architecture, config kwargs)
GGUF_CONFIGS = {
    # GQA, odd vocabulary, untied output, norms and attention far from identity
    "llama_gqa": ("LlamaConfig", "LlamaForCausalLM", "llama", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=61, tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0})),
    # d=256 so that Q4_K / Q6_K blocks (256 values) fit the rows; tied embeddings as SmolLM2
    "llama_k_quants": ("LlamaConfig", "LlamaForCausalLM", "llama", dict(
        hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, intermediate_size=256,
        vocab_size=67, tie_word_embeddings=True, rms_norm_eps=1e-5, initializer_range=0.05,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM", "qwen2", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=53, tie_word_embeddings=False, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", "gpt2", dict(
        # transformers' GGUF reader sizes the position table by its default (1024), not by the file
        n_embd=64, n_layer=2, n_head=4, vocab_size=59, n_positions=1024, bos_token_id=0, eos_token_id=0)),
    # Gemma: windows shorter than SEQ, head sizes that are neither d/heads nor 256 (so the query
    # scale has to come from the file), soft-caps small enough to bite on random weights
    "gemma2_capped": ("Gemma2Config", "Gemma2ForCausalLM", "gemma2", dict(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
        intermediate_size=96, vocab_size=61, rms_norm_eps=1e-6, sliding_window=5, query_pre_attn_scalar=12,
        attn_logit_softcapping=7.0, final_logit_softcapping=11.0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # 7 layers: five local, one global, one local again (llama.cpp's fixed 5:1 pattern)
    "gemma3_local": ("Gemma3TextConfig", "Gemma3ForCausalLM", "gemma3", dict(
        hidden_size=64, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2, head_dim=10,
        intermediate_size=96, vocab_size=67, rms_norm_eps=1e-6, sliding_window=4, query_pre_attn_scalar=10,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    # linear rope scaling on the global layers, a final soft-cap, an untied output matrix
    "gemma3_scaled": ("Gemma3TextConfig", "Gemma3ForCausalLM", "gemma3", dict(
        hidden_size=64, num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1, head_dim=14,
        intermediate_size=64, vocab_size=53, rms_norm_eps=1e-6, sliding_window=3, query_pre_attn_scalar=14,
        final_logit_softcapping=5.0, tie_word_embeddings=False,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
}

SEQ = 13


def make_hf_model(name, seed=0):
    import torch
    import transformers

    config_cls, model_cls, _, kwargs = GGUF_CONFIGS[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(**{"initializer_range": 0.2, **kwargs})
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or ".ln" in pname or pname.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model


def _permute_rows(w, n_heads):
    """HF "rotate half" row order -> llama.cpp's interleaved pairs, per head."""
    per_head = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, per_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_tensors(sd, cfg, permute=True):
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight", "self_attn.o_proj.weight": "attn_output.weight"}
    for proj in "qkv":
        for kind in ("weight", "bias"):
            names[f"self_attn.{proj}_proj.{kind}"] = f"attn_{proj}.{kind}"
    for i in range(cfg.num_hidden_layers):
        for hf, g in names.items():
            key = f"model.layers.{i}.{hf}"
            if key not in sd:
                continue
            w = sd[key]
            if permute and hf.startswith("self_attn.q_proj"):
                w = _permute_rows(w, heads)
            elif permute and hf.startswith("self_attn.k_proj"):
                w = _permute_rows(w, kv)
            out[f"blk.{i}.{g}"] = w
    return out


def _gpt2_tensors(sd, cfg):
    out = {"token_embd.weight": sd["transformer.wte.weight"], "position_embd.weight": sd["transformer.wpe.weight"],
           "output_norm.weight": sd["transformer.ln_f.weight"], "output_norm.bias": sd["transformer.ln_f.bias"]}
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(cfg.n_layer):
        for hf, g in names.items():
            w = sd[f"transformer.h.{i}.{hf}.weight"]
            out[f"blk.{i}.{g}.weight"] = w.T if w.ndim == 2 else w  # Conv1D (in, out) -> (out, in)
            out[f"blk.{i}.{g}.bias"] = sd[f"transformer.h.{i}.{hf}.bias"]
    return out


def _gemma_tensors(sd, cfg, arch):
    """llama.cpp's Gemma layout: HF's tensors under GGUF names, every RMS norm gain stored as 1 + w,
    Q/K rows in HF's order."""
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"] + 1}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
             "post_feedforward_layernorm": "post_ffw_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    if arch == "gemma3":
        names.update({"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"})
    for i in range(cfg.num_hidden_layers):
        for hf, g in names.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            out[f"blk.{i}.{g}.weight"] = w + 1 if hf.endswith(("layernorm", "_norm")) else w
    return out


def _gemma_metadata(w, cfg, arch):
    """The keys llama.cpp's converter (Gemma2Model / Gemma3Model) writes."""
    from gguf import RopeScalingType

    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(256)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_sliding_window(cfg.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        return
    full = cfg.rope_parameters["full_attention"]
    w.add_rope_freq_base(full["rope_theta"])
    if full.get("rope_type") == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
    if cfg.final_logit_softcapping:
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)


def write_gguf(path, model, arch, qtype="F32", *, tokenizer=None, extra_metadata=None, drop=(), rename=None):
    """Write ``model`` (an HF torch model) to ``path`` as GGUF.

    ``qtype``: a ``GGMLQuantizationType`` name used for every 2-D matrix whose rows fit its block
    size (others stay F32, as llama.cpp's converter does); 1-D tensors stay F32.
    ``tokenizer``: optional dict of ``tokenizer.ggml.*`` metadata. ``drop``: tensor names to leave
    out; ``rename``: {old: new} tensor names (both for bad-input tests).
    """
    from gguf import GGMLQuantizationType, GGUFWriter, quants
    from gguf.constants import GGML_QUANT_SIZES

    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny random " + arch)
    if arch == "gpt2":
        tensors = _gpt2_tensors(sd, cfg)
        w.add_block_count(cfg.n_layer)
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    elif arch in ("gemma2", "gemma3"):
        tensors = _gemma_tensors(sd, cfg, arch)
        _gemma_metadata(w, cfg, arch)
    else:
        tensors = _llama_tensors(sd, cfg, permute=arch == "llama")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(256)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0)
    for key, value in (tokenizer or {}).items():
        _add_value(w, key, value)
    for key, value in (extra_metadata or {}).items():
        _add_value(w, key, value)
    q = GGMLQuantizationType[qtype]
    block = GGML_QUANT_SIZES[q][0]
    rng = np.random.default_rng(0)
    for name, arr in tensors.items():
        if name in drop:
            continue
        name = (rename or {}).get(name, name)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 2 and q != GGMLQuantizationType.F32 and arr.shape[-1] % block == 0:
            data = _random_k_quant(arr.shape, q, rng) if qtype in K_QUANTS else quants.quantize(arr, q)
            w.add_tensor(name, data, raw_dtype=q)
        else:
            w.add_tensor(name, arr)
    return finish(w, path)


def finish(writer, path):
    """Write out and close a ``GGUFWriter``; returns ``path``."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_metadata_gguf(path, meta):
    """A GGUF file holding the metadata ``meta`` (plain values; ``general.architecture`` default
    ``llama``) and no tensors."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), meta.get("general.architecture", "llama"))
    for key, value in meta.items():
        if key != "general.architecture":
            _add_value(w, key, value)
    return finish(w, path)


# gguf.quants dequantizes these but cannot quantize them: such matrices get random blocks (any bytes
# are a valid block once its float16 scales are finite), the same for both loaders under test.
K_QUANTS = {"Q4_K": (144, (0, 2)), "Q6_K": (210, (208,))}  # block bytes, offsets of float16 scales


def _random_k_quant(shape, q, rng):
    from gguf.constants import GGML_QUANT_SIZES

    n_bytes, scale_offsets = K_QUANTS[q.name]
    block, type_size = GGML_QUANT_SIZES[q]
    rows, cols = shape
    blocks = rng.integers(0, 256, (rows * cols // block, type_size), dtype=np.uint8)
    for off in scale_offsets:
        blocks[:, off:off + 2] = np.frombuffer(np.float16(3e-5).tobytes(), np.uint8)
    return blocks.reshape(rows, cols // block * type_size)


def _add_value(w, key, value):
    """Ids and counts as uint32, like llama.cpp's converter; lists typed by their first element."""
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        w.add_array(key, list(value))


def byte_level_tokenizer_metadata(vocab_size, pre="gpt-2"):
    """A consistent byte-level BPE vocabulary of ``vocab_size`` tokens for tiny models: an end-of-text
    control token, a prefix of the 256 byte symbols and one merged token (enough for loading)."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|endoftext|>"] + alphabet[:vocab_size - 2] + [alphabet[0] + alphabet[1]]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3] + [1] * (vocab_size - 1),
            "tokenizer.ggml.merges": [f"{alphabet[0]} {alphabet[1]}"],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0}
