"""The contract between an architecture family and the loaders: one frozen :class:`Family` record each.

The loaders (:mod:`jetjax.io.hf` for safetensors, :mod:`jetjax.io.gguf` for GGUF) know no architecture:
they look the checkpoint's ``model_type`` up in :data:`FAMILIES` (a GGUF file's ``general.architecture``
in :data:`GGUF_FAMILIES`) and use only the record found there.
Each family file ends with ``FAMILY = Family(...)``; ``jetjax/models/__init__.py`` passes it to
:func:`register`, which checks it, so a malformed record fails at import with a message naming it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from types import MappingProxyType
from typing import Callable, Mapping

from jetjax.models.config import ModelConfig
from jetjax.models.hf_config import ConfigKeys, ConfigValueError
from jetjax.models.model import ResidualModule, nest

WeightMap = dict[str, tuple[tuple, bool]]


# ---------------------------------------------------------------------------------------------
# GGUF: what a family tells the GGUF loader (jetjax.io.gguf), and the metadata helpers its
# config builders share.

def keep_layout(hf_name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    """The :attr:`GgufArch.fix` of an architecture whose tensors llama.cpp stores as Hugging Face does."""
    return w


@dataclasses.dataclass(frozen=True)
class GgufArch:
    """How one GGUF ``general.architecture`` maps onto a family (an entry of :attr:`Family.gguf`).

    Attributes:
      model_type: the Hugging Face ``model_type`` the file is read as (one of the family's ``config_keys``).
      handled: the ``<arch>.*`` metadata keys ``config`` reads (without the ``<arch>.`` prefix).
      ignored: ``<arch>.*`` keys known to have no effect on the computation. Any other ``<arch>.*``
        key makes the loader refuse the file, naming it.
      config: ``(metadata, tensor names) -> config.json dict`` in the family's Hugging Face vocabulary
        (checked against its allowlist, then parsed by ``config_from_hf``). Whether the output is tied
        to the embedding is decided here, from the tensor names (``"output.weight" in names``).
      global_tensors: GGUF tensor name -> Hugging Face name (without the family's prefix), for the
        tensors outside the layers.
      layer_tensors: the same for one layer, with ``{i}`` standing for the layer index.
      fix: ``(hf_name, array, hf_config) -> array``, undoing llama.cpp's layout changes (row order,
        transposes, stored offsets) on the dequantized float32 array.
    """

    model_type: str
    handled: frozenset[str]
    ignored: frozenset[str]
    config: Callable[[dict, set], dict]
    global_tensors: Mapping[str, str]
    layer_tensors: Mapping[str, str]
    fix: Callable[[str, np.ndarray, dict], np.ndarray] = keep_layout

    def __post_init__(self):
        for field in ("handled", "ignored"):
            object.__setattr__(self, field, frozenset(getattr(self, field)))
        for field in ("global_tensors", "layer_tensors"):
            object.__setattr__(self, field, MappingProxyType(dict(getattr(self, field))))
        for field in ("config", "fix"):
            if not callable(getattr(self, field)):
                raise TypeError(f"GgufArch for {self.model_type!r}: {field} must be callable, "
                                f"got {getattr(self, field)!r}")


def gguf_need(meta: dict, key: str):
    """``meta[key]``, or a ``ValueError`` saying the GGUF metadata lacks it."""
    if key not in meta:
        raise ValueError(f"the GGUF metadata lacks {key!r}, which jetjax needs for "
                         f"{meta.get('general.architecture')!r}")
    return meta[key]


def gguf_vocab_size(meta: dict, a: str) -> int:
    """The vocabulary size: ``<a>.vocab_size``, else the length of ``tokenizer.ggml.tokens``."""
    if f"{a}.vocab_size" in meta:
        return int(meta[f"{a}.vocab_size"])
    if "tokenizer.ggml.tokens" in meta:
        return len(meta["tokenizer.ggml.tokens"])
    raise ValueError(f"the file states no vocabulary size ({a}.vocab_size or tokenizer.ggml.tokens)")


def gguf_rope_scaling(meta: dict, a: str) -> dict:
    """``<a>.rope.scaling.*`` as ``rope_parameters`` entries (``{}`` for none, linear only)."""
    kind = meta.get(f"{a}.rope.scaling.type", "none")
    if kind == "none":
        return {}
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(gguf_need(meta, f"{a}.rope.scaling.factor"))}
    raise ValueError(f"{a}.rope.scaling.type={kind!r} is not supported (jetjax implements 'none' and 'linear')")


# ---------------------------------------------------------------------------------------------
# The record and the registry.

@dataclasses.dataclass(frozen=True, eq=False)
class Family:
    """Everything a loader needs to know about one architecture family.

    Attributes:
      name: the family's name (its file under ``jetjax/models/``), used in messages.
      config_keys: ``{model_type: ConfigKeys}``: the Hugging Face ``model_type`` values this family
        loads (at least one), each with its ``config.json`` allowlist: keys the parser reads, keys
        that cannot change the forward pass, and keys accepted only at some values. Any other key
        makes :func:`jetjax.from_pretrained` refuse the checkpoint, naming the key. Model types that
        share a module but accept different keys (Llama has no sliding window, Mistral does) get
        one entry each. Stored read-only.
      config_from_hf: ``(cfg: dict) -> ModelConfig``: a ``config.json`` (already checked against the
        allowlist of ``cfg["model_type"]``) in our vocabulary. The result's ``arch`` is that
        ``model_type``, so :func:`~jetjax.models.random_model` finds the family again. Raises
        ``ValueError`` naming any feature it does not implement.
      module: the Flax NNX class, a :class:`~jetjax.models.model.ResidualModule` subclass, built as
        ``module(config, dtype=...)``; its parameter paths are what ``weight_map`` points at.
      weight_map: ``(config) -> {hf_name: (param_path, transpose)}``: every tensor a checkpoint of
        ``config`` holds. ``hf_name`` is the Hugging Face tensor name without the prefix in
        ``strip_prefixes`` (``"h.0.attn.c_attn.weight"``); ``param_path`` the path of the parameter
        in ``module(config)``'s state (``("h", 0, "attn", "c_attn", "kernel")``); ``transpose``
        whether the stored array is the transpose of ours. Our kernels are ``(in, out)``
        (``x @ kernel``), embeddings ``[vocab, d_model]``: a torch ``nn.Linear`` weight, stored
        ``(out, in)``, needs ``True``; GPT-2's ``Conv1D`` (stored ``(in, out)``), embeddings, norm
        gains and biases need ``False``. Tensors the config says are absent (the head when tied,
        switched-off biases) are left out; every parameter of ``module(config)`` is covered.
      strip_prefixes: prefixes removed from checkpoint tensor names (the first that matches) before
        ``weight_map`` is consulted: ``("transformer.",)``, ``("model.",)``. Names without one
        (``lm_head.weight``) are used as they are.
      ignored_tensors: suffixes of tensor names that are buffers, not weights (mask buffers,
        ``.rotary_emb.inv_freq`` that old checkpoints saved): the loader skips them rather than
        refuse the checkpoint for holding tensors nobody maps. May be empty.
      gguf: ``{GGUF general.architecture: GgufArch}``: the llama.cpp architectures this family
        reads from GGUF files (:mod:`jetjax.io.gguf`), each with its metadata keys, config builder,
        tensor names and layout fix; each entry's ``model_type`` is one of ``config_keys``. Empty:
        no GGUF support. Stored read-only.
      independent_head_dim: whether ``d_head`` may differ from ``d_model / n_heads`` (Llama,
        Gemma); when ``False``, :func:`~jetjax.models.random_model` requires
        ``n_heads * d_head == d_model``.

    Example (a second name for GPT-2 is refused: ``"gpt2"`` is registered already):
      >>> import dataclasses
      >>> from jetjax.models import gpt2, register
      >>> register(dataclasses.replace(gpt2.FAMILY, name="gpt2_again"))
      Traceback (most recent call last):
        ...
      ValueError: family 'gpt2_again': model type(s) ['gpt2'] are registered already (by family 'gpt2')
    """

    name: str
    config_keys: Mapping[str, ConfigKeys]
    config_from_hf: Callable[[dict], ModelConfig]
    module: type[ResidualModule]
    weight_map: Callable[[ModelConfig], WeightMap]
    strip_prefixes: tuple[str, ...]
    ignored_tensors: tuple[str, ...] = ()
    gguf: Mapping[str, GgufArch] = dataclasses.field(default_factory=dict)
    independent_head_dim: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Family.name must be a non-empty str, got {self.name!r}")
        where = f"family {self.name!r}"
        if not isinstance(self.config_keys, Mapping) or not self.config_keys:
            raise ValueError(f"{where}: config_keys must map at least one model_type to its ConfigKeys, "
                             f"got {self.config_keys!r}")
        for model_type, keys in self.config_keys.items():
            if not isinstance(model_type, str) or not model_type:
                raise ValueError(f"{where}: model types must be non-empty strings, got {model_type!r}")
            if not isinstance(keys, ConfigKeys):
                raise TypeError(f"{where}: config_keys[{model_type!r}] must be a ConfigKeys, "
                                f"got {type(keys).__name__}")
        for field in ("config_from_hf", "weight_map"):
            if not callable(getattr(self, field)):
                raise TypeError(f"{where}: {field} must be callable, got {getattr(self, field)!r}")
        if not (isinstance(self.module, type) and issubclass(self.module, ResidualModule)):
            raise TypeError(f"{where}: module must be a ResidualModule subclass, got {self.module!r}")
        for field in ("strip_prefixes", "ignored_tensors"):
            value = getattr(self, field)
            # a bare str would pass `startswith`/`endswith` one character at a time
            if not isinstance(value, tuple) or not all(isinstance(s, str) and s for s in value):
                raise TypeError(f"{where}: {field} must be a tuple of non-empty strings, got {value!r}")
        if not isinstance(self.gguf, Mapping):
            raise TypeError(f"{where}: gguf must map GGUF architecture names to GgufArch records, got {self.gguf!r}")
        for arch, entry in self.gguf.items():
            if not isinstance(arch, str) or not arch:
                raise ValueError(f"{where}: GGUF architecture names must be non-empty strings, got {arch!r}")
            if not isinstance(entry, GgufArch):
                raise TypeError(f"{where}: gguf[{arch!r}] must be a GgufArch, got {type(entry).__name__}")
        if not isinstance(self.independent_head_dim, bool):
            raise TypeError(f"{where}: independent_head_dim must be a bool, got {self.independent_head_dim!r}")
        object.__setattr__(self, "config_keys", MappingProxyType(dict(self.config_keys)))
        object.__setattr__(self, "gguf", MappingProxyType(dict(self.gguf)))


_REGISTRY: dict[str, Family] = {}
# Hugging Face model_type -> its Family; read-only: families enter through `register`.
FAMILIES: Mapping[str, Family] = MappingProxyType(_REGISTRY)
_GGUF_REGISTRY: dict[str, Family] = {}
# GGUF general.architecture -> the Family whose `gguf` map reads it; read-only, filled by `register`.
GGUF_FAMILIES: Mapping[str, Family] = MappingProxyType(_GGUF_REGISTRY)


def register(family: Family) -> Family:
    """Make ``family``'s model types loadable (``FAMILIES[t] is family`` for each) and return it.

    Raises:
      TypeError: ``family`` is not a :class:`Family` (a malformed record fails when it is built).
      ValueError: one of its model types, GGUF architectures or its name is registered already.
    """
    if not isinstance(family, Family):
        raise TypeError(f"register expects a Family record, got {type(family).__name__}")
    taken = sorted(t for t in family.config_keys if t in _REGISTRY)
    if taken:
        owner = _REGISTRY[taken[0]].name
        raise ValueError(f"family {family.name!r}: model type(s) {taken} are registered already "
                         f"(by family {owner!r})")
    if any(f.name == family.name for f in _REGISTRY.values()):
        raise ValueError(f"a family named {family.name!r} is registered already")
    foreign = sorted(a for a, entry in family.gguf.items() if entry.model_type not in family.config_keys)
    if foreign:   # e.g. a `dataclasses.replace` of another family that kept its GGUF map
        raise ValueError(f"family {family.name!r}: GGUF architecture(s) {foreign} build model types outside its "
                         f"config_keys {sorted(family.config_keys)}")
    taken = sorted(a for a in family.gguf if a in _GGUF_REGISTRY)
    if taken:
        raise ValueError(f"family {family.name!r}: GGUF architecture(s) {taken} are registered already "
                         f"(by family {_GGUF_REGISTRY[taken[0]].name!r})")
    for model_type in family.config_keys:
        _REGISTRY[model_type] = family
    for arch in family.gguf:
        _GGUF_REGISTRY[arch] = family
    return family


def family_for(model_type, where) -> Family:
    """The :class:`~jetjax.models.family.Family` of ``model_type``, or a ``ValueError`` naming it and ``where``."""
    family = FAMILIES.get(model_type)
    if family is None:
        raise ValueError(f"{where}: model_type {model_type!r} is not supported; "
                         f"supported model types: {', '.join(sorted(FAMILIES))}")
    return family


def config_for(family: Family, cfg: dict, where) -> ModelConfig:
    """``family.config_from_hf(cfg)``, with any bad value reported as a :class:`ConfigValueError`
    that names the file (``where``), the key and the value (shared by both loaders)."""
    try:
        return family.config_from_hf(cfg)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise ConfigValueError(f"{where}: {err}") from None


def check_finite_tensors(tensors: dict, where) -> None:
    """Refuse tensors holding NaN or ±inf, naming each one (a pass over the weights, before any use).

    One NaN weight turns whole rows of every lens and table into NaN without an error, so the
    loaders stop here instead. ``tensors``: ``{name: array}``.
    """
    bad = []
    for name, value in tensors.items():
        arr = np.asarray(value)
        finite = np.isfinite(arr)
        if finite.all():
            continue
        nan = int(np.isnan(arr).sum())
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        bad.append(f"{name!r} ({nan} NaN, {arr.size - int(finite.sum()) - nan} inf of {arr.size}; "
                   f"first at index {first})")
    if bad:
        raise ValueError(f"{where}: non-finite weights in {len(bad)} tensor(s): {'; '.join(bad[:5])}"
                         f"{' ...' if len(bad) > 5 else ''}. Every result computed from them would be NaN "
                         "or inf; jetjax refuses them (pass check_finite=False to load anyway).")


def assign_params(config, family: Family, tensors: dict, expected: dict, path, dtype, *,
                  check_finite: bool = True) -> dict:
    """Map HF-named tensors onto our param paths, checking names, shapes and (``check_finite``)
    finiteness against ``expected`` (shared by the safetensors and GGUF loaders)."""
    mapping = family.weight_map(config)
    stripped = {}
    for name, value in tensors.items():
        for prefix in family.strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        stripped[name] = value

    flat, named = {}, {}
    for hf_name, (ours, transpose) in mapping.items():
        if hf_name not in stripped:
            raise ValueError(f"{path}: tensor {hf_name!r} is missing from the checkpoint "
                             f"(needed for {config.arch} with {config.n_layers} layers)")
        value = stripped[hf_name]
        if transpose:
            value = value.T
        want = expected[ours].shape
        if tuple(value.shape) != tuple(want):
            shown = tuple(value.T.shape) if transpose else tuple(value.shape)
            raise ValueError(f"{path}: tensor {hf_name!r} has shape {shown}, expected "
                             f"{tuple(want[::-1]) if transpose else tuple(want)} from the config")
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(f"{path}: tensor {hf_name!r} has dtype {value.dtype}; expected floating point")
        flat[ours] = value.astype(dtype) if dtype is not None else value
        named[hf_name] = flat[ours].T if transpose else flat[ours]   # indices as in the checkpoint
    extra = sorted(n for n in stripped if n not in mapping and not n.endswith(family.ignored_tensors)
                   and not (config.tie_embeddings and n == "lm_head.weight"))
    if extra:
        raise ValueError(f"{path}: the checkpoint has tensors jetjax does not use for {config.arch}: "
                         f"{extra[:5]}{' ...' if len(extra) > 5 else ''}; it may be a different variant")
    if check_finite:
        check_finite_tensors(named, path)
    return nest(flat)


__all__ = ["Family", "FAMILIES", "GGUF_FAMILIES", "GgufArch", "register", "WeightMap", "family_for", "assign_params",
           "config_for", "check_finite_tensors", "gguf_need", "gguf_vocab_size", "gguf_rope_scaling", "keep_layout"]
