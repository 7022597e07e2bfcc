"""LoRA adapters: low-rank weight deltas for any loaded family, their file format and their merge.

A LoRA adapter changes chosen weight matrices of a base model, ``W' = W + (alpha / rank) · A @ B``
with ``A [d_in, rank]`` and ``B [rank, d_out]`` per layer and target (jetjax kernels are stored
``[d_in, d_out]`` and applied as ``x @ W``; PEFT's ``lora_A.weight`` is our ``A.T``, its
``lora_B.weight`` our ``B.T``). A *target* names a matrix inside a layer by its parameter path,
e.g. ``"self_attn.q_proj"`` (Llama-like) or ``"attn.c_attn"`` (GPT-2); :func:`layer_matrices` lists
what a model has. A merged model is an ordinary :class:`~jetjax.models.model.Model`: every lens,
path and sweep applies to it unchanged, which is what model diffing needs.

File format (``.safetensors``, read without pickle): tensors ``layers.{l}.{target}.lora_a`` and
``.lora_b`` (float32) and string metadata: ``format = "jetjax-lora"``, ``format_version``,
``arch``, ``n_layers``, ``d_model``, ``vocab_size``, ``rank``, ``alpha``, ``targets`` (JSON list),
``layers`` (JSON list), ``base_fingerprint`` (the sha256 of the base's weights,
:func:`~jetjax.ngrams.model_fingerprint`) and ``card`` (JSON: how it was trained). Merging onto a
model whose weights hash differently is refused, so an adapter cannot silently land on the wrong base.

Example (a random tiny Llama and a rank-2 adapter on its query projections):
  >>> import numpy as np
  >>> from jetjax.models import ModelConfig, random_model
  >>> from jetjax.io.adapters import init_lora, merge_adapter
  >>> base = random_model(ModelConfig(arch="llama", n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=24,
  ...                                 vocab_size=31, n_positions=32, n_kv_heads=1,
  ...                                 norm_eps=1e-5, activation="silu"))
  >>> adapter = init_lora(base, rank=2, targets=("q_proj",))
  >>> adapter.targets, adapter.a[(0, "self_attn.q_proj")].shape, adapter.b[(0, "self_attn.q_proj")].shape
  (('self_attn.q_proj',), (16, 2), (2, 16))
  >>> tuned = merge_adapter(base, adapter)   # B starts at zero: the same model, bit for bit
  >>> bool(np.array_equal(tuned.logits(np.arange(5)), base.logits(np.arange(5))))
  True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jetjax.models.model import Model

__all__ = ["ADAPTERS", "adapter_path", "LoraAdapter", "layer_matrices", "init_lora", "merge_adapter", "merged_params", "save_adapter",
           "load_adapter", "check_adapter"]

FORMAT = "jetjax-lora"
FORMAT_VERSION = "1"
_META_KEYS = ("format", "format_version", "arch", "n_layers", "d_model", "vocab_size", "rank", "alpha",
              "targets", "layers", "base_fingerprint", "card")


@dataclasses.dataclass(frozen=True, eq=False)
class LoraAdapter:
    """A LoRA adapter: ``A``/``B`` per ``(layer, target)`` plus what identifies its base.

    Attributes:
      rank, alpha: ``W' = W + (alpha / rank) · A @ B``.
      targets: matrix names inside a layer (``"self_attn.q_proj"``), sorted.
      layers: the layers adapted, sorted.
      a, b: ``{(layer, target): float32 array}``, ``A [d_in, rank]``, ``B [rank, d_out]``.
      arch, n_layers, d_model, vocab_size: the base's architecture (checked before the fingerprint).
      base_fingerprint: sha256 of the base's weights (``None``: not bound to a base yet).
      card: free-form JSON-able record of how it was made (data, steps, losses).
    """

    rank: int
    alpha: float
    targets: tuple[str, ...]
    layers: tuple[int, ...]
    a: Mapping[tuple[int, str], Any]
    b: Mapping[tuple[int, str], Any]
    arch: str
    n_layers: int
    d_model: int
    vocab_size: int
    base_fingerprint: str | None = None
    card: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def n_params(self) -> int:
        return int(sum(np.size(x) for x in self.a.values()) + sum(np.size(x) for x in self.b.values()))

    def __repr__(self) -> str:
        return (f"LoraAdapter(arch={self.arch!r}, rank={self.rank}, alpha={self.alpha}, targets={self.targets}, "
                f"layers={len(self.layers)}, n_params={self.n_params})")

    def with_weights(self, a, b) -> "LoraAdapter":
        """The same adapter with other ``A``/``B`` (e.g. after a training step)."""
        return dataclasses.replace(self, a=dict(a), b=dict(b))


# LoRA adapters shipped in the package: name -> (file under jetjax/assets/lora, the base model's name)
ADAPTERS = {
    "shakespeare": ("smollm2-shakespeare.safetensors", "smollm2"),
}


def adapter_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a shipped adapter (a name of :data:`ADAPTERS`) or the path given.

    Raises ``FileNotFoundError`` for neither, listing the shipped names; ``TypeError`` for a value
    that is not a str or path."""
    if isinstance(name_or_path, str) and name_or_path in ADAPTERS:
        return Path(__file__).parent.parent / "assets" / "lora" / ADAPTERS[name_or_path][0]
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"an adapter is a LoraAdapter, a .safetensors path or a shipped name "
                        f"({', '.join(sorted(ADAPTERS))}); got {type(name_or_path).__name__} {name_or_path!r:.60}")
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file {str(path)!r}: give a .safetensors file or a shipped adapter's "
                                f"name ({', '.join(repr(n) for n in sorted(ADAPTERS))})")
    return path


# ---------------------------------------------------------------------------------------------
# Targets

def layer_matrices(model: Model) -> dict[str, tuple[int, int]]:
    """``{target: (d_in, d_out)}`` of every weight matrix in layer 0 of ``model`` (what LoRA can adapt)."""
    layer0 = model.params[_layers_key(model.params)][0]
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(layer0)[0]:
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        if np.ndim(leaf) == 2 and keys and keys[-1] == "kernel":
            out[".".join(str(k) for k in keys[:-1])] = tuple(int(s) for s in np.shape(leaf))
    return out


def _resolve_targets(model: Model, targets: Sequence[str]) -> tuple[str, ...]:
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise TypeError(f"targets must be a non-empty list of matrix names, got {targets!r}")
    available = layer_matrices(model)
    names = []
    for t in targets:
        if not isinstance(t, str):
            raise TypeError(f"target names are strings, got {type(t).__name__} {t!r}")
        if t in available:
            names.append(t)
            continue
        matches = [name for name in available if name.endswith("." + t)]
        if len(matches) != 1:
            what = "names several matrices" if matches else "is not a weight matrix"
            raise ValueError(f"LoRA target {t!r} {what} of this {model.config.arch} model; "
                             f"its layers have: {', '.join(sorted(available))}")
        names.append(matches[0])
    if len(set(names)) != len(names):
        raise ValueError(f"LoRA targets {list(targets)} name the same matrix twice")
    return tuple(sorted(names))


def _layers_key(params) -> str:
    """The top-level entry of ``params`` holding the per-layer parameters (``"layers"`` for
    Llama-like families, ``"h"`` for GPT-2): the one keyed ``0..n-1``."""
    for key, node in params.items():
        if isinstance(node, dict) and node and sorted(node) == list(range(len(node))):
            return key
        if isinstance(node, (list, tuple)) and node and all(isinstance(x, dict) for x in node):
            return key
    raise ValueError(f"cannot find the per-layer parameters among {sorted(params)}")


def _kernel(params, layer: int, target: str):
    node = params[_layers_key(params)][layer]
    for key in target.split("."):
        node = node[key]
    return node["kernel"]


def init_lora(model: Model, *, rank: int = 8, alpha: float = 16.0,
              targets: Sequence[str] = ("q_proj", "v_proj"), layers: Sequence[int] | None = None,
              seed: int = 0) -> LoraAdapter:
    """A fresh adapter for ``model``: ``A`` random (normal, std ``1/sqrt(d_in)``), ``B`` zero.

    With ``B = 0`` the merged model equals the base exactly; training moves ``B`` (and ``A``).
    ``targets`` are matrix names inside a layer (full, ``"self_attn.q_proj"``, or an unambiguous
    last part, ``"q_proj"``); ``layers`` default to all. The adapter is bound to ``model``'s weights
    by their fingerprint.
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    names = _resolve_targets(model, targets)
    shapes = layer_matrices(model)
    layers = _check_layers(model, layers)
    if rank > min(min(shapes[t]) for t in names):
        raise ValueError(f"rank={rank} exceeds the smallest dimension of the targets "
                         f"({', '.join(f'{t} {shapes[t]}' for t in names)}): not low rank")
    rng = np.random.default_rng(seed)
    a, b = {}, {}
    for layer in layers:
        for t in names:
            d_in, d_out = shapes[t]
            a[(layer, t)] = (rng.standard_normal((d_in, rank)) / math.sqrt(d_in)).astype(np.float32)
            b[(layer, t)] = np.zeros((rank, d_out), np.float32)
    from jetjax.ngrams.sweep import model_fingerprint

    c = model.config
    return LoraAdapter(rank=int(rank), alpha=float(alpha), targets=names, layers=layers, a=a, b=b, arch=c.arch,
                       n_layers=c.n_layers, d_model=c.d_model, vocab_size=c.vocab_size,
                       base_fingerprint=model_fingerprint(model))


def _check_layers(model: Model, layers) -> tuple[int, ...]:
    n = model.config.n_layers
    if layers is None:
        return tuple(range(n))
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n:
            raise ValueError(f"LoRA layer {layer!r} is not a layer index of this model (0..{n - 1})")
        out.append(int(layer))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"layers must be distinct layer indices, at least one; got {list(layers)}")
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------
# Merging

def check_adapter(model: Model, adapter: LoraAdapter, *, check_base: bool = True) -> None:
    """Refuse, naming the mismatch, an adapter that does not fit ``model``: another architecture or
    size, a target this model lacks, a misshapen ``A``/``B``, or (``check_base``) other base weights."""
    if not isinstance(adapter, LoraAdapter):
        raise TypeError(f"expected a LoraAdapter (see jetjax.io.adapters.load_adapter), got {type(adapter).__name__}")
    c = model.config
    mine = (c.arch, c.n_layers, c.d_model, c.vocab_size)
    theirs = (adapter.arch, adapter.n_layers, adapter.d_model, adapter.vocab_size)
    if mine != theirs:
        raise ValueError(f"this adapter was made for a {adapter.arch} model with n_layers={adapter.n_layers}, "
                         f"d_model={adapter.d_model}, vocab_size={adapter.vocab_size}; the model is {c.arch} with "
                         f"n_layers={c.n_layers}, d_model={c.d_model}, vocab_size={c.vocab_size}")
    shapes = layer_matrices(model)
    missing = [t for t in adapter.targets if t not in shapes]
    if missing:
        raise ValueError(f"adapter targets {missing} are not weight matrices of this {c.arch} model; "
                         f"its layers have: {', '.join(sorted(shapes))}")
    for layer in adapter.layers:
        if not 0 <= layer < c.n_layers:
            raise ValueError(f"adapter layer {layer} is out of range for a model of {c.n_layers} layers")
        for t in adapter.targets:
            d_in, d_out = shapes[t]
            for name, table, want in (("A", adapter.a, (d_in, adapter.rank)), ("B", adapter.b, (adapter.rank, d_out))):
                if (layer, t) not in table:
                    raise ValueError(f"adapter has no {name} for layer {layer} target {t!r}")
                got = tuple(np.shape(table[(layer, t)]))
                if got != want:
                    raise ValueError(f"adapter {name} of layer {layer} target {t!r} has shape {got}; this model "
                                     f"needs {want} (d_in, d_out = {d_in}, {d_out}; rank {adapter.rank})")
    if check_base and adapter.base_fingerprint is not None:
        from jetjax.ngrams.sweep import model_fingerprint

        fp = model_fingerprint(model)
        if fp != adapter.base_fingerprint:
            base = adapter.card.get("base_model", "its base") if isinstance(adapter.card, Mapping) else "its base"
            raise ValueError(f"this adapter was trained on other weights ({base}, fingerprint "
                             f"{adapter.base_fingerprint[:16]}…) than the model's ({fp[:16]}…, {model.source}); "
                             "load the base it names (same file, same dtype), or pass check_base=False to merge anyway")


def merged_params(params, a, b, scale: float):
    """``params`` with ``W + scale · A @ B`` for every ``(layer, target)`` key of ``a`` (pure: jit and
    differentiate through it; ``a``/``b`` are dicts keyed like :attr:`LoraAdapter.a`)."""
    key = _layers_key(params)
    container = params[key]
    layers = dict(container) if isinstance(container, dict) else list(container)
    for (layer, target), a_ in a.items():
        kernel = _kernel(params, layer, target)
        delta = (jnp.asarray(a_, jnp.float32) @ jnp.asarray(b[(layer, target)], jnp.float32)) * scale
        new = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
        layers[layer] = _replace_kernel(layers[layer], target.split("."), new)
    out = dict(params)
    out[key] = layers if isinstance(container, (dict, list)) else type(container)(layers)
    return out


def _replace_kernel(node, keys, new):
    node = dict(node)
    if len(keys) == 0:
        node["kernel"] = new
        return node
    node[keys[0]] = _replace_kernel(node[keys[0]], keys[1:], new)
    return node


#: The most a merge may change a weight matrix, relative to the matrix's largest weight: a LoRA delta is
#: a correction (trained adapters change a matrix by a small fraction of its scale), so one this many
#: times larger is a mis-set ``alpha`` or corrupt ``A``/``B``, on its way to overflowing float32 in the
#: forward pass (an ``alpha`` of 1e30 merges into finite weights whose logits are all NaN).
MAX_RELATIVE_CHANGE = 1e4


def merge_adapter(model: Model, adapter: LoraAdapter | str | os.PathLike, *, check_base: bool = True,
                  check_scale: bool = True) -> Model:
    """A new :class:`~jetjax.models.model.Model` with ``adapter`` merged into ``model``'s weights.

    ``adapter`` is a :class:`LoraAdapter`, a path to its ``.safetensors`` file, or the name of an
    adapter jetjax ships (:data:`ADAPTERS`: ``"shakespeare"``). The result shares the tokenizer; its
    ``source`` names the adapter. Refuses (ValueError, before any arithmetic) an adapter for another
    architecture or size, a missing target, misshapen ``A``/``B``, and, unless ``check_base=False``, a
    base whose weights are not the ones the adapter was trained on. After merging, refuses (naming
    ``alpha``, the scale and the matrix) a delta ``(alpha / rank) · A @ B`` that is not finite in
    float32 or, unless ``check_scale=False``, exceeds :data:`MAX_RELATIVE_CHANGE` times the largest
    weight of the matrix it changes: such weights are finite but overflow in the forward pass.
    """
    name = None
    if isinstance(adapter, (str, os.PathLike)):
        name = str(adapter)
        adapter = load_adapter(adapter)
    try:
        check_adapter(model, adapter, check_base=check_base)
    except ValueError as err:
        if name is None:
            raise
        raise ValueError(f"{name}: {err}") from None
    _check_scale(model, adapter, name, relative=check_scale)
    params = merged_params(model.params, adapter.a, adapter.b, adapter.scale)
    bad = [f"layer {layer} {t}" for layer, t in adapter.a
           if not bool(jnp.isfinite(_kernel(params, layer, t)).all())]
    if bad:
        raise ValueError(f"{name + ': ' if name else ''}merging this adapter gives non-finite weights "
                         f"({', '.join(bad[:4])}; alpha={adapter.alpha!r}, rank {adapter.rank})")
    source = f"{model.source} + LoRA {name or f'rank {adapter.rank}'}"
    return Model(model.module(params), params, tokenizer=model.tokenizer, source=source)


def _check_scale(model: Model, adapter: LoraAdapter, name: str | None, *, relative: bool) -> None:
    """Refuse a delta ``scale · A @ B`` that is not finite in float32 or (``relative``) that dwarfs the
    matrix it is added to (see :func:`merge_adapter`); float64 on the host, one matrix at a time."""
    scale = float(adapter.alpha) / adapter.rank
    who = f"{name}: " if name else ""
    f32_max = float(np.finfo(np.float32).max)
    for layer, t in sorted(adapter.a):
        a = np.asarray(adapter.a[(layer, t)], np.float64)
        b = np.asarray(adapter.b[(layer, t)], np.float64)
        base = float(jnp.max(jnp.abs(_kernel(model.params, layer, t).astype(jnp.float32))))
        with np.errstate(over="ignore", invalid="ignore"):
            # |(A @ B)_ij| <= |A_i,:| |B_:,j| (Cauchy-Schwarz): the product itself only when the bound fails
            bound = math.sqrt(float(np.max(np.sum(a * a, axis=1)))) * math.sqrt(float(np.max(np.sum(b * b, axis=0))))
            bound *= abs(scale)
            fits = math.isfinite(bound) and bound + base <= f32_max
            if fits and (not relative or bound <= MAX_RELATIVE_CHANGE * base):
                continue
            biggest = float(np.max(np.abs(a @ b))) * abs(scale)
        where = f"layer {layer} {t!r}"
        if not math.isfinite(biggest) or biggest + base > f32_max:
            raise ValueError(f"{who}alpha={adapter.alpha!r} (scale alpha / rank = {scale:.3g}) times A @ B of "
                             f"{where} changes weights by up to {biggest:.3g}, beyond float32 ({f32_max:.3g}); "
                             "the adapter's alpha or its lora_a / lora_b weights are wrong")
        if relative and biggest > MAX_RELATIVE_CHANGE * base:
            raise ValueError(f"{who}alpha={adapter.alpha!r} (scale alpha / rank = {scale:.3g}) times A @ B of "
                             f"{where} changes weights by up to {biggest:.3g}, "
                             f"{biggest / base if base else math.inf:.3g} "
                             f"times the matrix's largest weight ({base:.3g}); a LoRA delta is a small correction, "
                             f"and one this large overflows float32 in the forward pass (model.logits gives NaN). "
                             "The adapter's alpha or its lora_a / lora_b weights are wrong (check_scale=False merges "
                             "anyway)")


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------
# File format

def save_adapter(adapter: LoraAdapter, path: str | os.PathLike) -> Path:
    """Write ``adapter`` as one ``.safetensors`` file (temporary file, then renamed into place)."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"adapter files end in .safetensors, got {path.name!r}")
    tensors = {}
    for (layer, t), a in adapter.a.items():
        tensors[f"layers.{layer}.{t}.lora_a"] = np.ascontiguousarray(np.asarray(a, np.float32))
        tensors[f"layers.{layer}.{t}.lora_b"] = np.ascontiguousarray(np.asarray(adapter.b[(layer, t)], np.float32))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": adapter.arch,
            "n_layers": str(adapter.n_layers), "d_model": str(adapter.d_model), "vocab_size": str(adapter.vocab_size),
            "rank": str(adapter.rank), "alpha": repr(float(adapter.alpha)), "targets": json.dumps(list(adapter.targets)),
            "layers": json.dumps(list(adapter.layers)), "base_fingerprint": adapter.base_fingerprint or "",
            "card": json.dumps(dict(adapter.card), sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_adapter(path: str | os.PathLike) -> LoraAdapter:
    """Read an adapter written by :func:`save_adapter` (a path, or a shipped adapter's name of
    :data:`ADAPTERS`), checking every field before returning it.

    Raises:
      FileNotFoundError: no such file (the message lists the shipped names).
      ValueError: not a jetjax LoRA file (naming what is wrong: metadata, a missing or extra
        tensor, a shape that disagrees with the rank, non-finite values).
    """
    from safetensors import safe_open

    path = adapter_path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None

    def bad(why):
        return ValueError(f"{path.name}: {why}")

    if meta.get("format") != FORMAT:
        raise bad(f"not a jetjax LoRA adapter (metadata format={meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise bad(f"format_version {meta.get('format_version')!r} is not supported (this jetjax reads {FORMAT_VERSION!r})")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise bad(f"metadata lacks {missing}")
    def integer(key):
        text = meta[key]
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise bad(f"malformed metadata: {key}={text!r} is not a positive integer")
        return int(text)

    def parsed(key):
        try:
            return json.loads(meta[key])
        except ValueError as err:
            raise bad(f"malformed metadata: {key}={meta[key][:60]!r} is not JSON ({err})") from None

    rank, n_layers, d_model, vocab = (integer(k) for k in ("rank", "n_layers", "d_model", "vocab_size"))
    try:
        alpha = float(meta["alpha"])
    except ValueError:
        raise bad(f"malformed metadata: alpha={meta['alpha'][:60]!r} is not a number") from None
    if not math.isfinite(alpha) or alpha <= 0:
        raise bad(f"alpha={alpha} must be a positive finite number")
    targets, layers, card = parsed("targets"), parsed("layers"), parsed("card")
    if (not isinstance(targets, list) or not targets
            or not all(isinstance(t, str) and t and t == t.strip() for t in targets)):
        raise bad(f"targets={_brief(targets)} must be a non-empty list of matrix names (non-empty strings)")
    if len(set(targets)) != len(targets):
        raise bad(f"targets={_brief(targets)} names {sorted({t for t in targets if targets.count(t) > 1})} "
                  "more than once")
    if (not isinstance(layers, list) or not layers
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < n_layers for x in layers)):
        raise bad(f"layers={_brief(layers)} must be a non-empty list of layer indices below n_layers={n_layers} "
                  "(integers, not booleans)")
    if len(set(layers)) != len(layers):
        raise bad(f"layers={_brief(layers)} lists layer(s) {sorted({x for x in layers if layers.count(x) > 1})} "
                  "more than once")
    a, b = {}, {}
    for layer in layers:
        for t in targets:
            for name, table, rank_axis in (("lora_a", a, 1), ("lora_b", b, 0)):
                key = f"layers.{layer}.{t}.{name}"
                if key not in tensors:
                    raise bad(f"tensor {key} is missing")
                arr = tensors.pop(key)
                if arr.ndim != 2 or arr.shape[rank_axis] != rank:
                    raise bad(f"tensor {key} has shape {arr.shape}; a rank-{rank} adapter needs "
                              f"{'[d_in, rank]' if name == 'lora_a' else '[rank, d_out]'}")
                if not np.isfinite(arr).all():
                    raise bad(f"tensor {key} holds NaN or infinite values")
                table[(layer, t)] = arr.astype(np.float32)
    if tensors:
        raise bad(f"unexpected tensors {sorted(tensors)[:4]} (not among targets {targets} of layers {layers})")
    return LoraAdapter(rank=rank, alpha=alpha, targets=tuple(targets), layers=tuple(layers), a=a, b=b,
                       arch=meta["arch"], n_layers=n_layers, d_model=d_model, vocab_size=vocab,
                       base_fingerprint=meta["base_fingerprint"] or None, card=card)
