"""Load Hugging Face checkpoints: config.json -> ModelConfig, safetensors -> params, tokenizer.

Nothing here runs code from a checkpoint: tensors come from safetensors files only (no pickle,
no ``trust_remote_code``), and neither torch nor transformers is imported. Only files inside the
directory given are read: a shard a ``model.safetensors.index.json`` names, or any file reached
through a symlink, must resolve inside it (:func:`jetjax.io.checks.inside`). The config's layer count
and every tensor's shape are checked against the safetensors headers before any data is read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp

from jetjax.io.checks import check_layer_count, check_tensor_table, inside, safetensors_shapes
from jetjax.io.gguf import is_gguf
from jetjax.models import FAMILIES
from jetjax.models.family import Family, assign_params, config_for, family_for
from jetjax.models.model import Model, abstract_params

# config.json keys that describe the file, the tokenizer or generation, never the computation.
METADATA_KEYS = {
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "cls_token_id", "unk_token_id",
    "decoder_start_token_id", "task_specific_params", "id2label", "label2id", "problem_type",
    "tokenizer_class", "prefix", "use_cache", "return_dict", "output_hidden_states",
    "output_attentions", "torchscript", "finetuning_task", "_attn_implementation",
    "_attn_implementation_autoset", "gradient_checkpointing", "max_length", "min_length",
    "do_sample", "num_beams", "temperature", "top_k", "top_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "early_stopping", "chunk_size_feed_forward", "is_decoder", "is_encoder_decoder",
    "tie_encoder_decoder", "pruned_heads", "quantization_config_ignored", "_commit_hash",
    "model_card", "license",
}

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def from_pretrained(src: str | os.PathLike, *, dtype=None, gguf_file: str | None = None,
                    check_finite: bool = True, adapter: str | os.PathLike | None = None) -> Model:
    """Load a causal LM from a GGUF file, a local Hugging Face directory or a hub id.

    Args:
      src: one of
        * a ``.gguf`` file (llama.cpp's format; quantized tensors are dequantized, the tokenizer
          is read from the metadata, see :mod:`jetjax.io.gguf`);
        * a directory holding ``config.json`` and ``model.safetensors`` (or a sharded
          ``model.safetensors.index.json``), plus tokenizer files (``tokenizer.json``, or
          ``vocab.json`` + ``merges.txt``) if you want ``model.tokenize``;
        * a directory with no ``config.json`` holding exactly one ``.gguf`` file;
        * a hub id such as ``"gpt2"``, fetched with ``huggingface_hub`` (config, safetensors and
          tokenizer files only; with ``gguf_file``, that one file).
      dtype: storage dtype of the parameters, a floating type (e.g. ``jnp.bfloat16``); default: the
        checkpoint's (float32 for GGUF). Activations are computed in float32 (float64 for float64
        parameters).
      gguf_file: the name of a GGUF file inside the directory or hub repository ``src``
        (as in transformers' ``from_pretrained(..., gguf_file=...)``).
      check_finite: refuse weights holding NaN or ±inf, naming the tensors (one pass over the
        weights; ``False`` loads them anyway, and every result computed from them may be NaN).
      adapter: a LoRA adapter file (``.safetensors``, :mod:`jetjax.io.adapters`), or the name of one
        jetjax ships (``"shakespeare"``: SmolLM2 fine-tuned on Shakespeare), to merge into the
        loaded weights; it is read and checked before the model loads, and refused if it was
        trained on other base weights (their sha256 fingerprint differs) or another architecture.

    Returns:
      a :class:`~jetjax.models.model.Model`.

    Raises:
      FileNotFoundError: no such file or directory, no ``config.json``, no weights.
      ValueError: unsupported ``model_type``/GGUF architecture or config feature, a config value
        of the wrong type or out of range (naming the key), missing, misshapen or non-finite
        tensors, a ``pytorch_model.bin``-only checkpoint (pickle; refused), a corrupt file, an
        empty ``src``.
      TypeError: ``src`` that is not a path or string; a non-floating ``dtype``.

    Example:
      >>> import jetjax as jj                          # doctest: +SKIP
      >>> model = jj.from_pretrained("path/to/gpt2")   # doctest: +SKIP
      >>> model.logits(model.tokenize("Hello")).shape  # doctest: +SKIP
      (1, 50257)
    """
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"src must be a path (str or os.PathLike) or a hub id, got {type(src).__name__} {src!r:.60}")
    if not str(src).strip():
        raise ValueError(f"src {str(src)!r} is empty; give a GGUF file, a model directory or a hub id")
    dtype = _check_dtype(dtype)
    if adapter is not None:
        from jetjax.io.adapters import adapter_path, load_adapter, merge_adapter

        adapter = adapter_path(adapter)
        lora = load_adapter(adapter)   # a bad adapter file fails before the base loads
        base = from_pretrained(src, dtype=dtype, gguf_file=gguf_file, check_finite=check_finite)
        try:
            merged = merge_adapter(base, lora)
        except ValueError as err:
            raise ValueError(f"{adapter}: {err}") from None
        merged.source = f"{base.source} + LoRA {adapter}"
        return merged
    gguf_path = _gguf_source(src, gguf_file)
    if gguf_path is not None:
        from jetjax.io.gguf import load_gguf

        return load_gguf(gguf_path, dtype=dtype, check_finite=check_finite)
    path = _resolve(src)
    cfg = _read_config(path)
    family = family_for(cfg.get("model_type"), path / "config.json")
    _check_config_keys(cfg, family, path)
    # Sizes before work: the weights' headers (names and shapes, no data) bound the layer count the
    # config may declare before anything is built or looped per declared layer, and every shape is
    # compared with the config before a byte of tensor data is read.
    files = _weight_files(path)
    shapes = _tensor_shapes(files)
    _check_layer_keys(cfg, shapes, path / "config.json")
    config = config_for(family, cfg, path / "config.json")
    tokenizer = _load_tokenizer(path)   # before the weights: a bad tokenizer file fails before the heavy work
    skeleton, expected = abstract_params(lambda: family.module(config))
    _check_shapes(config, family, shapes, expected, path)
    params = assign_params(config, family, _read_tensors(files), expected, path, dtype, check_finite=check_finite)
    return Model(skeleton, params, tokenizer=tokenizer, source=str(src))


def _check_dtype(dtype):
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype={dtype!r} is not a dtype; pass a floating type such as jnp.float32 or "
                        "jnp.bfloat16") from err
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"dtype={dt} would destroy the weights; pass a floating type (float32, bfloat16, "
                        "float16, float64)")
    return dt


def _gguf_source(src, gguf_file) -> Path | None:
    """The GGUF file ``src`` (and ``gguf_file``) names, or ``None`` for a Hugging Face directory."""
    s = os.fspath(src)
    p = Path(s).expanduser()
    if gguf_file is not None:
        if Path(gguf_file).name != gguf_file:
            raise ValueError(f"gguf_file={gguf_file!r} must be a file name inside {s}, not a path")
        if p.is_dir():
            if not (p / gguf_file).is_file():
                raise FileNotFoundError(f"{s} holds no {gguf_file}")
            return inside(p, gguf_file)
        if p.exists():
            raise NotADirectoryError(f"{s} is a file; with gguf_file= pass the directory or hub id holding it")
        return _download_file(s, gguf_file)
    if p.is_file():
        if s.endswith(".gguf") or is_gguf(p):
            return p
        return None
    if p.is_dir() and not (p / "config.json").is_file():
        found = sorted(p.glob("*.gguf"))
        if len(found) == 1:
            return inside(p, found[0].name)
        if len(found) > 1:
            raise ValueError(f"{s} holds {len(found)} GGUF files ({', '.join(f.name for f in found)}); "
                             "choose one with gguf_file=NAME")
    return None


def _download_file(repo_id: str, name: str) -> Path:
    if not _HUB_ID.match(repo_id):
        raise FileNotFoundError(f"no such directory: {repo_id}")
    try:
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(repo_id, name))
    except Exception as err:  # network errors, unknown repos or files, gated models
        raise FileNotFoundError(
            f"{repo_id!r} is not a local directory and {name} could not be fetched from the Hugging Face "
            f"hub ({type(err).__name__}: {err}). On an offline machine pass a local file.") from err


# ---------------------------------------------------------------------------------------------

def _resolve(src) -> Path:
    s = os.fspath(src)
    p = Path(s).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise NotADirectoryError(f"{s} is neither a GGUF file nor a directory; from_pretrained expects a "
                                 "GGUF file, a model directory or a hub id")
    looks_local = s.startswith((".", "/", "~")) or os.sep in s.strip("/").replace("/", "", 1) \
        or not _HUB_ID.match(s)
    if looks_local:
        raise FileNotFoundError(f"no such model directory: {s}")
    return _download(s)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(repo_id, allow_patterns=["config.json", *WEIGHT_FILES,
                                                           "model-*.safetensors", *TOKENIZER_FILES])
    except Exception as err:  # network errors, unknown repos, gated models
        raise FileNotFoundError(
            f"{repo_id!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {err}). On an offline machine pass a local directory.") from err
    return Path(local)


def _read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    file = inside(path, "config.json")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return cfg


def _check_config_keys(cfg: dict, family: Family, path: Path) -> None:
    keys = family.config_keys[cfg["model_type"]]
    # keys starting with '_' describe the file (e.g. '_name_or_path' written by converters)
    unknown = sorted(k for k in cfg if k not in keys.known() | METADATA_KEYS and not k.startswith("_"))
    if unknown:
        raise ValueError(
            f"{path / 'config.json'}: unsupported config key(s) for {cfg['model_type']}: {unknown}. "
            "They may change the computation, so jetjax refuses rather than guess.")
    for key, accepted in keys.required.items():
        if key in cfg and cfg[key] not in accepted:
            shown = " or ".join(f"{key}={ok!r}" for ok in accepted)
            raise ValueError(f"{path / 'config.json'}: unsupported feature {key}={cfg[key]!r} for "
                             f"{cfg['model_type']} (jetjax supports only {shown})")


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files holding the weights: ``model.safetensors``, or the shards a
    ``model.safetensors.index.json`` names, each resolved and refused unless it lies inside ``path``."""
    single, index = path / WEIGHT_FILES[0], path / WEIGHT_FILES[1]
    if single.is_file() or single.is_symlink():
        file = inside(path, WEIGHT_FILES[0])
        if not file.is_file():
            raise FileNotFoundError(f"{single} is a symlink to {file}, which is missing")
        return [file]
    if index.is_file() or index.is_symlink():
        index = inside(path, WEIGHT_FILES[1])
        if not index.is_file():
            raise FileNotFoundError(f"{path / WEIGHT_FILES[1]} is a symlink to {index}, which is missing")
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is not a valid safetensors index ({type(err).__name__}: {err})") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: weight_map must be a non-empty object {{tensor name: shard file}}, got "
                             f"{str(weight_map)[:80]}")
        files, seen = [], set()
        for name in weight_map.values():
            if isinstance(name, str) and name in seen:
                continue
            file = inside(path, name, named_by=str(index))
            if file.name == WEIGHT_FILES[1] or file == index:
                raise ValueError(f"{index} names the file {name!r} as a shard: the index itself, not a "
                                 "safetensors file")
            if not file.is_file():
                raise FileNotFoundError(f"{index} names the shard {name!r}, which is missing")
            seen.add(name)
            files.append(file)
        return sorted(set(files))
    pickles = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "tf_model.h5")
               if (path / n).exists()]
    if pickles:
        raise ValueError(
            f"{path} holds only {pickles[0]}: a pickle, which can execute code when loaded, so "
            "jetjax refuses it. Convert it once where you trust it: python -c \"from transformers "
            f"import AutoModelForCausalLM as M; M.from_pretrained('{path}').save_pretrained('{path}')\" "
            "(writes model.safetensors).")
    raise FileNotFoundError(f"{path} has no weights: expected model.safetensors or model.safetensors.index.json")


def _tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` from the files' headers (no tensor data is read); a tensor in two
    shards is refused, naming both."""
    shapes, where = {}, {}
    for f in files:
        for name, (shape, _) in safetensors_shapes(f).items():
            if name in where:
                raise ValueError(f"tensor {name!r} is stored twice, in {where[name]} and in {f}; "
                                 "which one is meant is ambiguous")
            shapes[name], where[name] = shape, f
    return shapes


_LAYER_KEYS = ("n_layer", "num_hidden_layers", "num_layers")


def _check_layer_keys(cfg: dict, shapes: dict, file: Path) -> None:
    """Refuse a declared layer count above the layers the weights hold (before the config parser or
    the model builds anything per layer); other bad values are left to the parser's own messages."""
    from jetjax.models.hf_config import ConfigValueError

    for key in _LAYER_KEYS:
        value = cfg.get(key)
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            continue
        try:
            check_layer_count(key, value, shapes, file)
        except ValueError as err:
            raise ConfigValueError(str(err)) from None


def _check_shapes(config, family: Family, shapes: dict, expected: dict, path: Path) -> None:
    """Every tensor the config needs is present with the config's shape, from the headers alone."""
    stripped, original = {}, {}
    for full, shape in shapes.items():
        name = next((full[len(p):] for p in family.strip_prefixes if full.startswith(p)), full)
        if name in original:
            raise ValueError(f"{path}: the checkpoint holds {original[name]!r} and {full!r}, the same tensor "
                             f"{name!r} twice (with and without the {config.arch} prefix); which one is meant is "
                             "ambiguous")
        stripped[name], original[name] = shape, full
    check_tensor_table(stripped, family.weight_map(config), expected, path,
                       needed_for=f"{config.arch} with {config.n_layers} layers")


def _read_tensors(files: list[Path]) -> dict[str, jax.Array]:
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, jax.Array] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="flax") as handle:
                for name in handle.keys():
                    tensors[name] = handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{f} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    return tensors


def _load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    if (path / "tokenizer.json").is_file():
        file = inside(path, "tokenizer.json")
        try:
            return Tokenizer.from_file(str(file))
        except Exception as err:  # the tokenizers library raises its own untyped Exception
            raise ValueError(f"{path / 'tokenizer.json'} is not a valid tokenizer file ({err}); fix or remove it "
                             "(without a tokenizer the model still loads, and takes token ids)") from None
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if vocab.is_file() and merges.is_file():
        from tokenizers import decoders, models, pre_tokenizers

        vocab, merges = inside(path, "vocab.json"), inside(path, "merges.txt")

        try:
            tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        except Exception as err:
            raise ValueError(f"{vocab} / {merges} are not a valid BPE vocabulary and merge list ({err})") from None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    return None

