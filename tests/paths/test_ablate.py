"""Real-model ablations (:func:`jetjax.ablate`) against transformers, and circuits checked with them.

References are independent of :mod:`jetjax.paths.ablate`: the HF torch model with the same output
replaced by a forward hook (components: the attention / MLP module's output; heads: the input of the
output projection; edges: the receiver recomputed by HF on a stream without the source's output at
that position, then patched in), and for :func:`jetjax.find_circuit` / ``graph.faithfulness`` the
faithfulness recomputed here from :func:`jetjax.ablate` alone.
"""

import dataclasses

import numpy as np
import pytest
import torch

import jetjax as jj
from jetjax.testing import tiny_model
from tests.conftest import GPT2_CONFIGS, make_gpt2_checkpoint
from tests.family_checkpoints import make_family_checkpoint

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

IDS = [3, 1, 4, 1, 5, 9, 2, 6, 5]          # T = 9; below every vocabulary here
T = len(IDS)
REFERENCE = [[1, 2, 3, 4, 5], [7, 3, 2], [0, 6, 6, 8, 9, 10, 2, 11], [12]]   # ragged on purpose
TOL = 1e-4                                   # relative to max |logit|


# -- the HF side -------------------------------------------------------------------------------

@dataclasses.dataclass
class Family:
    hf: object
    model: object
    layers: object
    attn_name: str
    o_proj_name: str
    attn_norm: str        # the norm the attention branch reads the stream through
    mlp_norm: str
    head_dim: int
    n_heads: int
    parallel: bool

    def module(self, kind, layer):
        return getattr(self.layers[layer], self.attn_name) if kind == "attn" else self.layers[layer].mlp

    def o_proj(self, layer):
        return getattr(getattr(self.layers[layer], self.attn_name), self.o_proj_name)

    def norm(self, kind, layer):
        return getattr(self.layers[layer], self.attn_norm if kind == "attn" else self.mlp_norm)


def _build(name, directory):
    if name == "gpt2":
        # wide weights (HF's default 0.02 leaves every component's effect near the tolerance)
        hf = make_gpt2_checkpoint(directory, seed=1, initializer_range=0.3, **GPT2_CONFIGS["prime"])
        c = hf.config
        fam = dict(layers=hf.transformer.h, attn_name="attn", o_proj_name="c_proj", attn_norm="ln_1",
                   mlp_norm="ln_2", head_dim=c.n_embd // c.n_head, n_heads=c.n_head, parallel=False)
    elif name == "llama":
        hf = make_family_checkpoint(directory, "llama_gqa_llama3", seed=11)
        c = hf.config
        fam = dict(layers=hf.model.layers, attn_name="self_attn", o_proj_name="o_proj",
                   attn_norm="input_layernorm", mlp_norm="post_attention_layernorm", head_dim=c.head_dim,
                   n_heads=c.num_attention_heads, parallel=False)
    else:
        hf = make_family_checkpoint(directory, "neox_parallel", seed=12)
        c = hf.config
        fam = dict(layers=hf.gpt_neox.layers, attn_name="attention", o_proj_name="dense",
                   attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
                   head_dim=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads, parallel=True)
    return Family(hf=hf, model=jj.from_pretrained(str(directory)), **fam)


@pytest.fixture(scope="module", params=["gpt2", "llama", "neox"])
def fam(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory.mktemp(f"ablate_{request.param}"))


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, new):
    return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new


def replace_output(p, value):
    """Forward hook: the module's output (element 0 of a tuple) at position ``p`` becomes ``value``."""
    def hook(_module, _inputs, out):
        o = _first(out).clone()
        o[0, p] = torch.as_tensor(np.asarray(value), dtype=o.dtype)
        return _with_first(out, o)
    return hook


def replace_head_input(p, h, head_dim, value):
    """Forward pre-hook on the output projection: head ``h``'s slice of its input at ``p`` becomes ``value``."""
    def hook(_module, args):
        x = args[0].clone()
        x[0, p, h * head_dim:(h + 1) * head_dim] = torch.as_tensor(np.asarray(value), dtype=x.dtype)
        return (x,) + tuple(args[1:])
    return hook


def shift_input(p, delta):
    """Forward pre-hook (on a norm): its input at position ``p`` gets ``delta`` added."""
    def hook(_module, args):
        x = args[0].clone()
        x[0, p] += torch.as_tensor(np.asarray(delta), dtype=x.dtype)
        return (x,) + tuple(args[1:])
    return hook


def capture_output(store, key):
    def hook(_module, _inputs, out):
        store.setdefault(key, []).append(_first(out)[0].detach().numpy().astype(np.float64))
    return hook


def capture_input(store, key):
    def hook(_module, args):
        store.setdefault(key, []).append(args[0][0].detach().numpy().astype(np.float64))
    return hook


def hf_run(hf, ids, hooks=(), pre_hooks=(), hidden=False):
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    handles += [m.register_forward_pre_hook(fn) for m, fn in pre_hooks]
    try:
        with torch.no_grad():
            out = hf(torch.tensor([list(ids)]), output_hidden_states=hidden)
    finally:
        for h in handles:
            h.remove()
    logits = out.logits[0].numpy()
    return (logits, [s[0].numpy() for s in out.hidden_states]) if hidden else logits


def _check(fam, got, ref, p, layer):
    """``got`` (jetjax) equals ``ref`` (HF); and the ablation moved the logits where it must and only there."""
    got = np.asarray(got)
    clean = hf_run(fam.hf, IDS)
    atol = TOL * float(np.abs(clean).max())
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)
    change = np.abs(ref - clean).max(axis=-1)
    assert change[:p].max(initial=0.0) <= atol, change                 # causal: nothing before p moves
    assert change[p] > 100 * atol, change                              # not vacuous
    if layer < fam.model.config.n_layers - 1 and p < T - 1:           # a later layer reads p from later positions
        assert change[p + 1:].max() > atol, change


def _mean_outputs(fam):
    """HF mean over every token of every REFERENCE sequence: each component's output, and the output
    projections' inputs (the heads, concatenated)."""
    store = {}
    hooks, pre = [], []
    for layer in range(len(fam.layers)):
        for kind in ("attn", "mlp"):
            hooks.append((fam.module(kind, layer), capture_output(store, (kind, layer))))
        pre.append((fam.o_proj(layer), capture_input(store, ("heads", layer))))
    for seq in REFERENCE:
        hf_run(fam.hf, seq, hooks, pre)
    return {k: np.concatenate(v).mean(axis=0) for k, v in store.items()}


# -- 1. parity with transformers -----------------------------------------------------------------

COMPONENT_CASES = [("attn", 0, 2), ("mlp", 0, 0), ("mlp", 1, 4), ("attn", 1, 6), ("attn", 2, 8), ("mlp", 2, 3)]


@pytest.mark.parametrize("kind,layer,p", COMPONENT_CASES)
def test_zero_component_matches_hook(fam, kind, layer, p):
    ref = hf_run(fam.hf, IDS, [(fam.module(kind, layer), replace_output(p, 0.0))])
    _check(fam, jj.ablate(fam.model, IDS, nodes=[f"{kind}{layer}@{p}"]), ref, p, layer)


def test_mean_component_matches_hook(fam):
    means = _mean_outputs(fam)
    for kind, layer, p in COMPONENT_CASES[:4]:
        ref = hf_run(fam.hf, IDS, [(fam.module(kind, layer), replace_output(p, means[kind, layer]))])
        got = jj.ablate(fam.model, IDS, nodes=[f"{kind}{layer}@{p}"], mode="mean", reference=REFERENCE)
        _check(fam, got, ref, p, layer)


def test_several_nodes_at_once_match_hooks(fam):
    """Three nodes in one call, including two of one component at two positions."""
    means = _mean_outputs(fam)
    hooks = [(fam.module("attn", 0), replace_output(1, means["attn", 0])),
             (fam.module("attn", 0), replace_output(5, means["attn", 0])),
             (fam.module("mlp", 1), replace_output(3, means["mlp", 1]))]
    ref = hf_run(fam.hf, IDS, hooks)
    got = jj.ablate(fam.model, IDS, nodes=["attn0@1", "attn0@5", "mlp1@3"], mode="mean", reference=REFERENCE)
    _check(fam, got, ref, 1, 0)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_heads_match_pre_hook_on_output_projection(fam, mode):
    means = _mean_outputs(fam) if mode == "mean" else None
    kw = dict(mode="mean", reference=REFERENCE) if mode == "mean" else {}
    last = fam.n_heads - 1
    for layer, h, p in [(0, 1, 3), (1, last, 0), (2, 0, 8)]:
        value = 0.0 if means is None else means["heads", layer][h * fam.head_dim:(h + 1) * fam.head_dim]
        ref = hf_run(fam.hf, IDS, pre_hooks=[(fam.o_proj(layer), replace_head_input(p, h, fam.head_dim, value))])
        _check(fam, jj.ablate(fam.model, IDS, nodes=[f"attn{layer}.h{h}@{p}"], **kw), ref, p, layer)
    # two heads of one layer, and an MLP beside them
    ref = hf_run(fam.hf, IDS, [(fam.module("mlp", 0), replace_output(4, 0.0 if means is None else means["mlp", 0]))],
                 [(fam.o_proj(1), replace_head_input(2, 0, fam.head_dim, 0.0 if means is None else
                                                     means["heads", 1][:fam.head_dim])),
                  (fam.o_proj(1), replace_head_input(2, last, fam.head_dim, 0.0 if means is None else
                                                     means["heads", 1][last * fam.head_dim:]))])
    _check(fam, jj.ablate(fam.model, IDS, nodes=["attn1.h0@2", f"attn1.h{last}@2", "mlp0@4"], **kw), ref, 2, 1)


def _hf_edge(fam, src, dst, baseline):
    """HF logits with the edge ``src → dst`` cut: the receiver recomputed by HF on the stream with the
    source's output at its position swapped for ``baseline``, patched into a clean run at ``dst``'s position."""
    (skind, slayer, sp), (dkind, dlayer, dp) = src, dst
    if skind == "emb":
        _, hidden = hf_run(fam.hf, IDS, hidden=True)
        out = hidden[0][sp]
    else:
        store = {}
        hf_run(fam.hf, IDS, [(fam.module(skind, slayer), capture_output(store, "src"))])
        out = store["src"][0][sp]
    store = {}
    hf_run(fam.hf, IDS, [(fam.module(dkind, dlayer), capture_output(store, "dst"))],
           [(fam.norm(dkind, dlayer), shift_input(sp, baseline - out))])
    cut = store["dst"][0][dp]
    return hf_run(fam.hf, IDS, [(fam.module(dkind, dlayer), replace_output(dp, cut))])


EDGE_CASES = [(("mlp", 0, 1), ("attn", 1, 3)), (("attn", 0, 2), ("mlp", 1, 2)), (("emb", 0, 0), ("attn", 0, 5)),
              (("emb", 0, 2), ("mlp", 1, 2)), (("attn", 1, 5), ("attn", 2, 5))]


def _node(c):
    kind, layer, p = c
    return f"emb@{p}" if kind == "emb" else f"{kind}{layer}@{p}"


@pytest.mark.parametrize("src,dst", EDGE_CASES, ids=[f"{_node(s)}->{_node(d)}" for s, d in EDGE_CASES])
def test_zero_edge_matches_hf_recomputation(fam, src, dst):
    ref = _hf_edge(fam, src, dst, 0.0)
    got = jj.ablate(fam.model, IDS, edges=[(_node(src), _node(dst))])
    _check(fam, got, ref, dst[2], dst[1])


def test_mean_edge_and_node_match_hf(fam):
    means = _mean_outputs(fam)
    src, dst = ("mlp", 0, 1), ("attn", 1, 3)
    ref = _hf_edge(fam, src, dst, means["mlp", 0])
    got = jj.ablate(fam.model, IDS, edges=[("mlp0@1", "attn1@3")], mode="mean", reference=REFERENCE)
    _check(fam, got, ref, 3, 1)


def test_edge_cut_differs_from_node_ablation(fam):
    """Cutting one edge is not ablating the source: other readers still see it."""
    edge = np.asarray(jj.ablate(fam.model, IDS, edges=[("mlp0@1", "attn1@3")]))
    node = np.asarray(jj.ablate(fam.model, IDS, nodes=["mlp0@1"]))
    clean = np.asarray(fam.model.logits(IDS))
    scale = float(np.abs(clean).max())
    np.testing.assert_allclose(edge[:3], clean[:3], rtol=0, atol=TOL * scale)   # the cut acts at 3 only
    assert np.abs(node[1] - clean[1]).max() > 100 * TOL * scale


# -- 2. circuits and graph faithfulness, recomputed with ablate ----------------------------------

CIRCUIT_IDS = [3, 1, 4, 1, 5, 9, 2, 6]
TARGET, FOIL = 5, 2


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _components(model, t):
    return [f"{kind}{layer}@{p}" for layer in range(model.config.n_layers) for kind in ("attn", "mlp")
            for p in range(t)]


def _number(model, ids, ablated):
    logits = np.asarray(jj.ablate(model, ids, nodes=list(ablated)), np.float64)
    return logits[-1, TARGET] - logits[-1, FOIL]


def _real_f(model, ids, kept):
    everything = _components(model, len(ids))
    full = _number(model, ids, [])
    empty = _number(model, ids, everything)
    with_c = _number(model, ids, [n for n in everything if n not in set(kept)])
    return (with_c - empty) / (full - empty), full, empty, with_c


def test_find_circuit_faithfulness_recomputed_with_ablate(llama):
    max_passes = 400
    circuit = jj.find_circuit(llama, CIRCUIT_IDS, TARGET, FOIL, 0.8, mode="zero", max_passes=max_passes)
    everything = _components(llama, len(CIRCUIT_IDS))
    assert circuit.nodes and set(circuit.nodes) <= set(everything)
    assert circuit.n_components == len(everything)
    assert len(circuit.nodes) < len(everything)          # it found something smaller than the model
    f, full, empty, _ = _real_f(llama, CIRCUIT_IDS, circuit.nodes)
    assert abs(full - empty) > 1e-2                      # f is well defined here
    assert abs(f - circuit.faithfulness) < 1e-4, (f, circuit.faithfulness)
    assert f >= 0.8
    assert 0 < circuit.forward_passes <= max_passes
    # a search cut short by its budget still reports the real f of what it returns
    small = jj.find_circuit(llama, CIRCUIT_IDS, TARGET, FOIL, 0.8, mode="zero", max_passes=20)
    assert abs(_real_f(llama, CIRCUIT_IDS, small.nodes)[0] - small.faithfulness) < 1e-4
    assert small.faithfulness >= 0.8
    # the budget bounds every pass after the two references and the grid (17 here: 32 components)
    assert small.forward_passes <= 20 < circuit.forward_passes


def test_graph_faithfulness_recomputed_with_ablate(llama):
    graph = jj.attribution_graph(llama, CIRCUIT_IDS, TARGET, FOIL, baseline="zero")
    pruned = graph.prune(0.8, 0.98)
    fa = pruned.faithfulness(mode="zero")
    f, full, empty, kept = _real_f(llama, CIRCUIT_IDS, pruned.components)
    assert abs(fa.full - full) < 1e-4 and abs(fa.empty - empty) < 1e-4 and abs(fa.kept - kept) < 1e-4
    assert abs(fa.f - f) < 1e-4, (fa.f, f)
    assert fa.n_kept == len(pruned.components) and fa.n_components == len(_components(llama, len(CIRCUIT_IDS)))
    assert len(fa.checked) > 0
    for node, real in zip(fa.checked, fa.real_effect):   # F(M) − F(M without that node alone)
        assert abs(real - (full - _number(llama, CIRCUIT_IDS, [node]))) < 1e-4, node


# -- 3. bad input: one-line errors, before any forward pass ----------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Any baseline, graph or forward computation fails the test: errors must come first."""
    import jetjax.paths.ablate as ablate_mod
    import jetjax.paths.circuit as circuit_mod

    def boom(*a, **k):
        raise AssertionError("heavy work started before the input was checked")

    for mod, name in [(ablate_mod, "_baselines"), (ablate_mod, "_forward"), (ablate_mod, "_forward_with_edges"),
                      (ablate_mod, "Evaluator"), (circuit_mod, "attribution_graph"), (circuit_mod, "Evaluator")]:
        monkeypatch.setattr(mod, name, boom)


def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("node", ["attn3", "mlp 0@1", "mlp00@1", "mlp0@-1", "ffn0@1", "attn0.h@1", 5, None])
def test_unparseable_node(llama, no_work, node):
    with pytest.raises(ValueError) as e:
        jj.ablate(llama, CIRCUIT_IDS, nodes=[node])
    _one_line(e, "not a node id")


@pytest.mark.parametrize("node,error,words", [
    ("attn2@0", ValueError, ["cannot be ablated", "0..1"]),          # layer out of range (2 layers)
    ("mlp7@3", ValueError, ["cannot be ablated"]),
    ("mlp0@99", IndexError, ["position 99", "8 tokens"]),
    ("attn1@8", IndexError, ["position 8"]),
    ("emb@0", ValueError, ["cannot be ablated"]),                    # a source, not a component
    ("logit@7", ValueError, ["cannot be ablated"]),
    ("attn2.h0@1", ValueError, ["cannot be ablated", "0..1"]),        # heads of a layer that does not exist
    ("attn0.h4@1", ValueError, ["cannot be ablated", "h in 0..3"]),   # a head that does not exist (4 heads)
    ("attn0.h1@8", IndexError, ["position 8"]),
])
def test_node_that_does_not_exist(llama, no_work, node, error, words):
    with pytest.raises(error) as e:
        jj.ablate(llama, CIRCUIT_IDS, nodes=[node])
    _one_line(e, repr(node), *words)


@pytest.mark.parametrize("edge,error,words", [
    (("mlp0@1",), ValueError, ["pairs"]),
    ("mlp0@1", ValueError, ["pairs"]),
    (("mlp0@3", "attn1@2"), ValueError, ["causal"]),
    (("mlp0@1", "attn5@3"), ValueError, ["cannot be ablated"]),
    (("mlp0@1", "attn1@30"), IndexError, ["position 30"]),
    (("attn0.h1@1", "attn1@3"), ValueError, ["heads"]),
    (("mlp0@1", "attn 1@3"), ValueError, ["not a node id"]),
    (("mlp1@1", "attn1@3"), ValueError, ["does not read"]),        # the source runs after the receiver
    (("attn1@1", "attn1@3"), ValueError, ["does not read"]),       # a component does not read itself
    (("mlp1@1", "mlp0@3"), ValueError, ["does not read"]),
    (("attn0@1", "emb@3"), ValueError, ["cannot be ablated"]),     # emb is no receiver
])
def test_bad_edge(llama, no_work, edge, error, words):
    with pytest.raises(error) as e:
        jj.ablate(llama, CIRCUIT_IDS, edges=[edge])
    _one_line(e, *words)


def test_edge_within_a_parallel_layer_refused(no_work):
    """Parallel residual: a layer's attn and mlp read the same stream, so neither reads the other."""
    model = tiny_model("gpt2", parallel_residual=True)
    for edge in [("attn1@2", "mlp1@2"), ("mlp1@2", "attn1@3"), ("mlp0@2", "mlp0@2")]:
        with pytest.raises(ValueError) as e:
            jj.ablate(model, CIRCUIT_IDS[:6], edges=[edge])
        _one_line(e, "does not read")


def test_edges_with_head_nodes_refused(llama, no_work):
    with pytest.raises(ValueError) as e:
        jj.ablate(llama, CIRCUIT_IDS, nodes=["attn0.h1@2"], edges=[("mlp0@1", "attn1@3")])
    _one_line(e, "head")


def test_bad_mode(llama, no_work):
    with pytest.raises(ValueError) as e:
        jj.ablate(llama, CIRCUIT_IDS, nodes=["mlp0@1"], mode="mean")
    _one_line(e, "reference")
    with pytest.raises(ValueError) as e:
        jj.ablate(llama, CIRCUIT_IDS, nodes=["mlp0@1"], mode="resample")
    _one_line(e, "zero", "mean")
    with pytest.raises(ValueError) as e:
        jj.find_circuit(llama, CIRCUIT_IDS, TARGET, FOIL, mode="mean")
    _one_line(e, "reference")


@pytest.mark.parametrize("target", [0, 0.0, -0.5, 1.01, 2, True, "0.8", None, float("nan")])
def test_faithfulness_target_outside_unit_interval(llama, no_work, target):
    with pytest.raises(ValueError) as e:
        jj.find_circuit(llama, CIRCUIT_IDS, TARGET, FOIL, target, mode="zero")
    _one_line(e, "(0, 1]")


def test_graph_faithfulness_bad_mode(llama):
    graph = jj.attribution_graph(llama, CIRCUIT_IDS[:4], TARGET, FOIL, baseline="zero")
    with pytest.raises(ValueError) as e:
        graph.faithfulness(mode="mean")
    _one_line(e, "reference")
    with pytest.raises(ValueError) as e:
        graph.faithfulness(mode="ZERO")
    _one_line(e, "zero")
