"""Test set-up: 4 fake CPU devices and strict dtype promotion on every run.

Tiny random HF checkpoints are built with transformers + CPU torch into temp dirs (no hub access).
"""

import os

# Must happen before jax initialises its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JETJAX_COMPILE_CACHE", "off")   # the CLI never writes compiled code into ~/.cache during tests

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")


# Odd / prime sizes so that a transposed axis cannot pass by accident.
GPT2_CONFIGS = {
    "prime": dict(n_embd=28, n_layer=3, n_head=4, vocab_size=37, n_positions=23),
    "odd_mlp": dict(n_embd=30, n_layer=4, n_head=5, n_inner=53, vocab_size=41, n_positions=19,
                    activation_function="gelu", layer_norm_epsilon=1e-6),
    "untied_scaled": dict(n_embd=24, n_layer=3, n_head=3, vocab_size=31, n_positions=17,
                          activation_function="relu", tie_word_embeddings=False,
                          scale_attn_by_inverse_layer_idx=True),
}


def make_gpt2_checkpoint(directory, seed=0, dtype=None, **overrides):
    """Save a random-init GPT2LMHeadModel (float32 unless ``dtype``) into ``directory``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(bos_token_id=0, eos_token_id=0, **overrides)
    model = GPT2LMHeadModel(cfg).eval()
    # Default init leaves LayerNorms at identity and biases at zero: randomise them so a
    # mis-mapped norm or bias cannot pass.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="session")
def gpt2_checkpoints(tmp_path_factory):
    """{name: (directory, torch model)} for every config in GPT2_CONFIGS."""
    out = {}
    for i, (name, cfg) in enumerate(GPT2_CONFIGS.items()):
        d = tmp_path_factory.mktemp(f"gpt2_{name}")
        out[name] = (d, make_gpt2_checkpoint(d, seed=i, **cfg))
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Test tiers (pytest markers): a file that is not unit-tier says so with `pytestmark = pytest.mark.parity`
# (or product, notebooks); every other test is unit-tier. `make test-fast` runs the unit tier; `make test` (CI) all.
TIERS = ("parity", "product", "notebooks")


def pytest_collection_modifyitems(config, items):
    # README figures whose full recomputation is too slow for CI: `make verify-claims` runs them
    # (JETJAX_VERIFY_CLAIMS=1); CI checks a reduced share of each beside it
    full = os.environ.get("JETJAX_VERIFY_CLAIMS") == "1"
    for item in items:
        if "verify_claims" in item.keywords and not full:
            item.add_marker(pytest.mark.skip(reason="a README figure recomputed in full: make verify-claims"))
    for item in items:
        if not any(tier in item.keywords for tier in TIERS):
            item.add_marker(pytest.mark.unit)
    _heavy_first(items)


# `make test` runs the suite on two workers (pytest-xdist, `--dist loadscope --no-loadscope-reorder`):
# a module runs whole on one worker, so its module fixtures (one SmolLM2 load, one demo run) are
# built once. The longest modules are handed out first, so that neither worker is left alone with one
# at the end; the order of everything else is the collection order.
HEAVY_FIRST = ("tests/test_real_model.py", "tests/test_notebooks.py", "tests/io/test_lora_real.py",
               "tests/paths/test_search.py", "tests/cli/test_cli.py", "tests/jet/test_taylor.py",
               "tests/paths/test_paths.py", "tests/test_multiprocess.py", "tests/cli/test_cli_graph.py")


def _heavy_first(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}

    def key(item):
        path = item.nodeid.split("::", 1)[0]
        return rank.get(path, len(rank))

    items.sort(key=key)     # stable: within a rank, the collection order


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


RSS_LIMIT = 3 << 30     # a worker holding more than this after a module drops its compiled code


@pytest.fixture(scope="module", autouse=True)
def _free_memory_after_each_module():
    """Two workers share 24 GiB with everything else: after each module the garbage it left (models
    in reference cycles with their compiled functions) is collected, and a worker that still holds
    more than :data:`RSS_LIMIT` drops every compiled function (the next module compiles its own again)."""
    yield
    import gc

    gc.collect()
    if _rss_bytes() > RSS_LIMIT:
        from jetjax._internal.compiled import clear_caches

        clear_caches()
        jax.clear_caches()
        gc.collect()
