"""The residual-model interface every architecture implements, and the :class:`Model` facade.

A model is ``f = Dec ∘ Π_l (id + γ_l) ∘ Enc``. Architectures are Flax NNX modules (one file per
family) that define the *branches*:

* ``embed(ids)``: ``h_0``; ``token_embed(ids)``: the token embedding alone (no positions);
* ``attn(l, h)`` and ``mlp(l, h)``: the delta each residual branch of layer ``l`` adds to the
  stream, with its own pre-norm (never ``h + delta``);
* ``final_norm(h)`` and ``unembed(x)``.

:class:`Model` wraps such a module as a parameter pytree plus pure functions of arrays, and
derives the rest of the interface (``block``, ``decode``, ``logits``, ``residual_stream``) once
for all architectures, so a new family only writes its branches and its
:class:`~jetjax.models.family.Family` record (config parser, weight map, allowlist).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jetjax.models.config import ModelConfig

Array = jax.Array


class ResidualModule(nnx.Module):
    """What an architecture module provides. Subclasses define these five branch functions."""

    config: ModelConfig

    def embed(self, ids: Array) -> Array:  # h_0: [..., T, d]
        raise NotImplementedError

    def token_embed(self, ids: Array) -> Array:
        raise NotImplementedError

    def attn(self, layer: int, h: Array) -> Array:
        raise NotImplementedError

    def mlp(self, layer: int, h: Array) -> Array:
        raise NotImplementedError

    def final_norm(self, h: Array) -> Array:
        raise NotImplementedError

    def unembed(self, x: Array) -> Array:
        raise NotImplementedError



class Model:
    """A residual language model: config, parameter pytree, tokenizer and pure residual functions.

    Every residual function takes an optional ``params=`` (a pytree shaped like
    :attr:`params`); without it the model's own parameters are used. Pass ``params``
    explicitly inside your own ``jax.jit`` so weights are arguments, not compiled-in constants.

    Shapes: ``ids`` is ``int [..., T]``; streams are ``[..., T, d_model]``; logits
    ``[..., T, vocab]``. Layer indices are 0-based: ``attn(0, h)`` is the first layer's
    attention branch, ``residual_stream(ids)[l]`` is ``h_l`` (``h_0`` = embedding).

    Example:
      >>> import jetjax as jj                                  # doctest: +SKIP
      >>> model = jj.from_pretrained("path/to/hf_dir")         # doctest: +SKIP
      >>> ids = model.tokenize("To be, or not to be")          # doctest: +SKIP
      >>> streams = model.residual_stream(ids)                 # [L+1, T, d]   # doctest: +SKIP
      >>> logits = model.decode(streams[-1])                   # == model.logits(ids)  # doctest: +SKIP
    """

    def __init__(self, module: ResidualModule, params: Any, *, tokenizer=None, source: str | None = None):
        self.config: ModelConfig = module.config
        self.graphdef, _ = nnx.split(module)
        self.params = params
        self.tokenizer = tokenizer
        self.source = source
        self._logits_jit = jax.jit(lambda p, ids: self.logits(ids, params=p, _checked=True))
        self._stream_jit = jax.jit(
            lambda p, ids, mid: self.residual_stream(ids, params=p, mid=mid, _checked=True),
            static_argnums=2,
        )

    def __repr__(self) -> str:
        c = self.config
        return (f"Model(arch={c.arch!r}, n_layers={c.n_layers}, d_model={c.d_model}, "
                f"n_heads={c.n_heads}, vocab_size={c.vocab_size}, source={self.source!r})")

    # -- module binding -----------------------------------------------------------------------
    def module(self, params=None) -> ResidualModule:
        """The NNX module bound to ``params`` (default: the model's own)."""
        if params is None:
            return nnx.merge(self.graphdef, self.params)
        if params is not self.params:
            mine, theirs = jax.tree_util.tree_structure(self.params), jax.tree_util.tree_structure(params)
            if mine != theirs:
                raise ValueError(f"params= must be a pytree shaped like model.params ({mine.num_leaves} arrays in "
                                 f"the same nesting), got {theirs.num_leaves} leaves in another structure")
        return nnx.merge(self.graphdef, params)

    def _h(self, h) -> Array:
        if isinstance(h, jax.core.Tracer):
            arr = h
        else:
            if h is None or isinstance(h, (str, bytes, dict)):
                raise TypeError(f"expected a residual stream (a floating array [..., T, {self.config.d_model}]), "
                                f"got {type(h).__name__}")
            try:
                arr = jnp.asarray(h)
            except (TypeError, ValueError) as err:
                raise TypeError(f"expected a residual stream (a floating array [..., T, {self.config.d_model}]), "
                                f"got {type(h).__name__} ({err})") from None
        if not jnp.issubdtype(arr.dtype, jnp.inexact):
            raise TypeError(f"residual streams must be floating arrays, got dtype {arr.dtype}")
        if arr.ndim < 1 or arr.shape[-1] != self.config.d_model:
            raise ValueError(f"residual streams have shape [..., T, d_model={self.config.d_model}], got "
                             f"{tuple(arr.shape)}")
        return arr

    # -- the residual interface ---------------------------------------------------------------
    def embed(self, ids, *, params=None) -> Array:
        """``h_0 = Enc(ids)``: token embedding plus absolute positions where the model has them."""
        ids = self.check_ids(ids)
        return self.module(params).embed(ids)

    def token_embed(self, ids, *, params=None) -> Array:
        """The token embedding alone (positions dropped, as jet n-grams need)."""
        ids = self.check_ids(ids, check_length=False)
        return self.module(params).token_embed(ids)

    def attn(self, layer: int, h, *, params=None) -> Array:
        """γ of layer ``layer``'s attention branch: the delta it adds (pre-norm included)."""
        return self.module(params).attn(self.check_layer(layer), self._h(h))

    def mlp(self, layer: int, h, *, params=None) -> Array:
        """γ of layer ``layer``'s MLP branch: the delta it adds (pre-norm included)."""
        return self.module(params).mlp(self.check_layer(layer), self._h(h))

    def block(self, layer: int, h, *, params=None) -> Array:
        """The whole-block γ: ``h_{l+1} − h_l`` as a function of ``h_l`` (``l`` = ``layer``)."""
        return self._block_delta(self.module(params), self.check_layer(layer), self._h(h))[0]

    def final_norm(self, h, *, params=None) -> Array:
        return self.module(params).final_norm(self._h(h))

    def unembed(self, x, *, params=None) -> Array:
        return self.module(params).unembed(self._h(x))

    def decode(self, h, *, params=None) -> Array:
        """``Dec(h) = unembed(final_norm(h))``: logits from a residual stream."""
        m = self.module(params)
        return m.unembed(m.final_norm(self._h(h)))

    def logits(self, ids, *, params=None, _checked: bool = False) -> Array:
        """The model's logits ``[..., T, vocab]`` (float32 unless the params are float64)."""
        if not _checked:
            ids = self.check_ids(ids)
            if params is None:
                return self._logits_jit(self.params, ids)
        m = self.module(params)
        h = m.embed(ids)
        for layer in range(self.config.n_layers):
            h = h + self._block_delta(m, layer, h)[0]
        return m.unembed(m.final_norm(h))

    def residual_stream(self, ids, *, params=None, mid: bool = False, _checked: bool = False):
        """``h_0..h_L`` stacked: ``[L+1, ..., T, d]``, from one forward pass.

        With ``mid=True`` returns ``(streams, mids)`` where ``mids[l] = h_l + attn_l(h_l)`` is the
        stream between layer ``l``'s attention and MLP (``[L, ..., T, d]``; for parallel-residual
        models it is the same quantity, though the MLP does not read it).
        """
        if not _checked:
            ids = self.check_ids(ids)
            if params is None:
                return self._stream_jit(self.params, ids, mid)
        return self.streams_from(self.module(params).embed(ids), params=params, mid=mid)

    def streams_from(self, h0, *, params=None, mid: bool = False):
        """The residual streams the model computes from the stream ``h0`` (``[..., T, d]``), as
        :meth:`residual_stream` does from ``embed(ids)``; e.g. from ``token_embed(ids)`` (no positions)
        for jet n-grams. Same return values as :meth:`residual_stream`."""
        m = self.module(params)
        h = self._h(h0)
        streams, mids = [h], []
        for layer in range(self.config.n_layers):
            delta, attn_out = self._block_delta(m, layer, h)
            mids.append(h + attn_out)
            h = h + delta
            streams.append(h)
        streams = jnp.stack(streams)
        return (streams, jnp.stack(mids)) if mid else streams

    def unembedding_matrix(self, *, params=None) -> tuple[Array, Array]:
        """``(W [d, V], b [V])`` with ``unembed(x) == x @ W + b``, read off the model's own unembed.
        Unembedding the identity gives ``W + b`` row by row, each entry one product, so the read is
        exact. A model whose logits are soft-capped (Gemma 2) has no such ``W``: ``ValueError``."""
        self.require_affine_unembedding("unembedding_matrix")
        d = self.config.d_model
        dtype = self.token_embed(jnp.zeros((1,), jnp.int32), params=params).dtype
        bias = self.unembed(jnp.zeros((1, d), dtype), params=params)[0]
        return self.unembed(jnp.eye(d, dtype=dtype), params=params) - bias, bias

    def require_affine_unembedding(self, what: str) -> None:
        """A ``ValueError`` naming ``what`` when the unembedding is not ``x @ W + b`` (soft-capped logits)."""
        if not self.config.unembedding_is_affine:
            raise ValueError(f"{what} needs an affine unembedding (logits = x @ W + b), but this {self.config.arch} "
                             f"model soft-caps its logits (final_logit_softcapping={self.config.final_softcap}). "
                             "Lenses, expansions and path attribution take the cap into account; this does not.")

    def _block_delta(self, m: ResidualModule, layer: int, h: Array):
        """(whole-block delta, attention delta) of layer ``layer`` at stream ``h``."""
        a = m.attn(layer, h)
        if self.config.parallel_residual:
            return a + m.mlp(layer, h), a
        return a + m.mlp(layer, h + a), a

    # -- tokens -------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special_tokens: bool = True) -> np.ndarray:
        """Token ids (``int32 [T]``) of ``text`` with the checkpoint's tokenizer.

        ``special_tokens``: add what the tokenizer adds to every text, as the model was trained to see
        it: a GGUF file's ``add_bos_token`` (Gemma: ``<bos>`` first, without which its predictions
        fall apart), a ``tokenizer.json``'s post-processor; GPT-2 and SmolLM2 add nothing.
        ``False``: the text's own tokens only.
        """
        if self.tokenizer is None:
            raise ValueError(f"{self._no_tokenizer()}; pass token ids instead of text")
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=bool(special_tokens)).ids
        if not ids:
            raise ValueError("tokenize: the text produced no tokens")
        return np.asarray(ids, dtype=np.int32)

    def detokenize(self, ids) -> str:
        """The text of token ids (a sequence or a 1-D array)."""
        if self.tokenizer is None:
            raise ValueError(self._no_tokenizer())
        return self.tokenizer.decode(self._id_list(ids), skip_special_tokens=False)

    def token_strings(self, ids) -> list[str]:
        """One string per token id (for tables and pictures)."""
        if self.tokenizer is None:
            raise ValueError(self._no_tokenizer())
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in self._id_list(ids)]

    def _no_tokenizer(self) -> str:
        """Why there is no tokenizer, in the words of where the model came from."""
        if str(self.source or "").lower().endswith(".gguf"):
            return f"{self.source}: its GGUF metadata has no tokenizer.ggml.* vocabulary"
        return f"{self.source or 'this model'} has no tokenizer files (tokenizer.json or vocab.json + merges.txt)"

    def _id_list(self, ids) -> list[int]:
        """Token ids as a flat list of ints, each checked against the vocabulary (empty is fine)."""
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"expected token ids, got a {type(ids).__name__}: {ids!r:.40}")
        arr = np.asarray(ids)
        if arr.size and (arr.dtype == object or not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}: {arr.reshape(-1)[:5].tolist()}")
        flat = arr.reshape(-1).astype(np.int64)
        # ids the tokenizer knows are readable even where its vocabulary outgrows the embedding's
        v = max(self.config.vocab_size, int(getattr(self.tokenizer, "get_vocab_size", lambda: 0)()))
        if flat.size:
            _check_id_range(flat, v)
        return flat.tolist()

    # -- validation ---------------------------------------------------------------------------
    def check_ids(self, ids, *, check_length: bool = True):
        """Validate token ids: integer dtype, rectangular, at least one token, within vocab and position table.

        Under ``jax.jit`` ids are tracers and only their dtype can be checked; there an out-of-range
        id gives a NaN embedding row (never a clamped, plausible one; see
        :func:`jetjax.models.layers.embedding_lookup`), so the results show it.
        """
        if isinstance(ids, str):
            raise TypeError("expected token ids, got a str: use model.tokenize(text) first")
        if ids is None or isinstance(ids, (dict, set, bytes)):
            raise TypeError(f"expected token ids (ints, shape [..., T]), got {type(ids).__name__}")
        if isinstance(ids, jax.core.Tracer):
            if not jnp.issubdtype(ids.dtype, jnp.integer):
                raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
            return ids
        try:
            arr = np.asarray(ids)
        except ValueError:   # numpy refuses ragged nested lists
            lengths = [len(row) if hasattr(row, "__len__") else 1 for row in ids]
            raise ValueError(f"token ids must form a rectangular array [..., T] (every sequence the same "
                             f"length; pad or batch them separately), got sequences of lengths {lengths}") from None
        if arr.size == 0:
            raise ValueError(f"token ids must have shape [..., T] with T >= 1 and at least one sequence, "
                             f"got an empty array of shape {arr.shape}")
        if arr.dtype == object:
            raise ValueError("token ids must form a rectangular array of ints [..., T] (every sequence the same "
                             "length), got a ragged or mixed nesting")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        if arr.ndim == 0 or arr.shape[-1] == 0:
            raise ValueError(f"token ids must have shape [..., T] with T >= 1, got shape {arr.shape}")
        _check_id_range(arr, self.config.vocab_size)
        n_pos = self.config.n_positions
        if check_length and n_pos is not None and arr.shape[-1] > n_pos:
            raise ValueError(f"sequence of {arr.shape[-1]} tokens is longer than the model's position "
                             f"table ({n_pos}); truncate the input to at most {n_pos} tokens")
        return jnp.asarray(arr, dtype=jnp.int32)

    def check_layer(self, layer) -> int:
        """``layer`` as an int in ``0..n_layers-1``, or a ``TypeError``/``IndexError`` naming it."""
        n = self.config.n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer index must be an int, got {layer!r}")
        if not 0 <= layer < n:
            raise IndexError(f"layer {layer} is out of range for a model with {n} layers (valid: 0..{n - 1})")
        return int(layer)


def _check_id_range(ids: np.ndarray, v: int) -> None:
    """``ValueError`` naming the first offending id when a (non-empty) id array leaves ``0..v-1``."""
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= v:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is out of range for a vocabulary of {v} (valid: 0..{v - 1})")


def abstract_params(module_fn: Callable[[], ResidualModule]):
    """``(graph-free module skeleton, {path: ShapeDtypeStruct})`` without allocating weights."""
    abstract = nnx.eval_shape(module_fn)
    _, state = nnx.split(abstract)
    flat = {tuple(path): var for path, var in nnx.to_flat_state(state)}
    return abstract, {p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in flat.items()}


def nest(flat: dict[tuple, Any]) -> dict:
    """``{(a, b, c): x}`` -> ``{a: {b: {c: x}}}`` (the pure-dict form NNX merges)."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


__all__ = ["ResidualModule", "Model", "abstract_params", "nest"]
