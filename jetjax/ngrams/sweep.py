"""The vocabulary sweep: stream contexts through the path scorer in row blocks, keep top-k on device.

For each row block the device computes ``r = scorer(ctx)`` (``[B, d]``) and then walks the
vocabulary in tiles of ``vocab_tile`` columns: the tile's logits ``r @ W_t + b_t`` (``[B, tile]``, one
GEMM), an online logsumexp (running max and rescaled sum of exponentials) and a running top ``k``
(the previous top ``k`` merged with the tile). Only the top ``k`` and the row's logsumexp come back:
neither the ``R × V`` score matrix nor a block's ``B × V`` logits ever exist, and each tile's logits
stay in cache while they are reduced (``docs/performance.md``: what that gained). The running top-k merges only a
tile's candidates: the columns of the ``k`` column groups with the largest maxima, an exact
superset (:func:`_tile_candidates`), so the one ``top_k`` over a whole tile, the costliest of the
per-tile reductions, runs on ``tile / 16`` group maxima instead. Ties between equal logits go to the
lower token id, as with one ``lax.top_k`` over the whole row. A row's running top keeps
``max(top_k, global_k)`` entries only where the table's global top could need them: a chunk is
swept with each row's ``top_k`` first and kept if its own numbers prove (by the ``1 / rank`` bound
on probabilities) that the entries left out cannot enter its global top, else swept again
(:func:`_rows_suffice`); its file is the same either way. On CPU devices compiled kernels
take over (:mod:`jetjax.ngrams.native`; recorded as ``tile_reduce`` in the settings of the table's
``meta`` and manifest): in float32 one call per block forms every tile's logits with its own GEMM
and reduces them while in cache (``"fused"``: ids the same wherever float32 rounding cannot swap
two logits, exact ties kept), in bfloat16 the same with AMX's bfloat16 dot products where the CPU has
AMX (``"fused"`` too), else XLA's GEMM followed by the kernel's one-pass reduction (``"kernel"``: the
same ids, the logsumexp summed in another order). Rows are split over the devices
of a 1-D mesh (``shard_map``; parameters replicated). One step function is compiled per block
shape; the last block is padded (the fused kernel skips the padding rows). The selected layers'
weights are arguments of the step, so path sets that differ only in which layers they read share it
(``emb>mlp{l}>dec`` for every ``l``: one compilation; local and global attention layers: one per
kind; :func:`jetjax.ngrams.scorer.layer_share`).

With ``out_dir`` the sweep is resumable: rows are grouped into chunks of ``chunk_rows``; each
finished chunk is written as ``chunk-NNNNN.safetensors`` (temp file, fsync, ``os.replace``) and only
then recorded (with its sha256) in ``manifest.json`` (written the same way), which also records the
model and the :class:`~jetjax.ngrams.SweepSettings`. A rerun with the same model and settings skips
the recorded chunks that pass their checksum and recomputes the others; a directory holding
anything else is refused untouched, and one that another sweep is writing is refused at once
(the lock, checks and repairs: :mod:`jetjax.ngrams.store`).

``block_rows`` and ``vocab_tile`` (and the number of devices, which splits a block) only change
speed, but they change float rounding in the last bits: the logsumexp is summed tile by tile, and
a GEMM kernel may block its sums differently for other shapes. So they are part of the recorded
settings and a rerun with other values is refused, naming them, rather than mixing chunks whose
last bits differ: a resumed sweep is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
import weakref
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jetjax._internal.checks import available_memory
from jetjax._internal.compiled import TRACE_COUNTS, per_model
from jetjax.models.model import Model
from jetjax.ngrams import native
from jetjax.ngrams.scorer import layer_share, shared_scorer
from jetjax.ngrams.settings import DEFAULT, SweepSettings, resolve_settings
from jetjax.ngrams.store import FORMAT, ChunkStore
from jetjax.ngrams.table import NGramTable
from jetjax._internal.parallel import fetch, path_mesh

__all__ = ["jet_bigrams", "sweep_contexts", "model_fingerprint"]


def model_fingerprint(model: Model) -> str:
    """sha256 of the model's parameters (paths, dtypes, shapes and bytes): which weights made a table.

    Hashing every weight takes ~1 s per GB, once per set of parameter arrays: the digest is kept
    with weak references to the arrays it was computed from and reused while ``model.params`` holds
    exactly those (immutable) JAX arrays; new params, or any NumPy leaf (mutable in place), rehash.
    """
    leaves = sorted(jax.tree_util.tree_flatten_with_path(model.params)[0], key=lambda kv: jax.tree_util.keystr(kv[0]))
    memo = per_model(model, "ngrams", ("fingerprint",), dict)
    refs = memo.get("refs")
    if refs is not None and len(refs) == len(leaves) and all(r() is leaf for r, (_, leaf) in zip(refs, leaves)):
        return memo["digest"]
    digest = hashlib.sha256()
    for path, leaf in leaves:
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}".encode())
        digest.update(arr.tobytes())
    memo.clear()
    if all(isinstance(leaf, jax.Array) for _, leaf in leaves):
        memo.update(refs=tuple(weakref.ref(leaf) for _, leaf in leaves), digest=digest.hexdigest())
    return digest.hexdigest()


def _tile_unembedding(w, b, tile: int, compute_dtype: str = "float32", nr: int = 0):
    """``W [d, V]``, ``b [V]`` -> ``W_t [n, d, tile]``, ``b_t [n, tile]``; padding columns get logit -inf.

    With ``nr`` (the fused CPU kernel's panel width, :func:`jetjax.ngrams.native.gemm_layout`), each
    tile is packed into panels of ``nr`` columns instead: ``W_t [n, ceil(tile / nr), d, nr]``; in
    bfloat16, any ``nr`` packs for the AMX kernel (:func:`jetjax.ngrams.native.pack_tile_bf16`).

    With ``compute_dtype="bfloat16"``, ``W_t`` is rounded to bfloat16 and handed over as its bit
    pattern, ``uint16`` (``b_t`` is left as it is): XLA:CPU (jaxlib 0.10) widens a bfloat16 array that
    a loop slices to float32 before the loop and narrows every slice back inside it, a conversion of
    the whole tile per step that halved the sweep's GEMM rate on an AMX CPU (``[1024, 768] @
    [768, 4096]`` tiles: 770 GFLOP/s in the scan against 1460 with the bit pattern, measured on a
    2-core Xeon with AMX-BF16). :func:`_step` reinterprets each slice as bfloat16, which costs nothing.
    """
    d, v = w.shape
    n = -(-v // tile)
    w = jnp.pad(w, ((0, 0), (0, n * tile - v))).reshape(d, n, tile).transpose(1, 0, 2)
    if compute_dtype == "bfloat16" and nr:
        w = native.pack_tile_bf16(w)
    elif compute_dtype == "bfloat16":
        w = jax.lax.bitcast_convert_type(w.astype(jnp.bfloat16), jnp.uint16)
    elif nr:
        w = native.pack_tile(w, nr)
    b = jnp.pad(b, (0, n * tile - v), constant_values=-jnp.inf).reshape(n, tile)
    return w, b


GROUP = 16
"""Columns per group in the exact top-k prefilter of a tile (see :func:`_tile_candidates`)."""


def _candidate_group(tile: int, kk: int) -> int:
    """The group size for a tile of ``tile`` columns and a top ``kk``; 0 where the prefilter cannot pay."""
    return GROUP if tile % GROUP == 0 and 4 * kk * GROUP <= tile else 0


def _tile_candidates(logits, kk: int, group: int):
    """``(values, column ids)`` ``[B, kk·group]``: a superset of each row's top ``kk``, in column order.

    The tile's columns are cut into groups of ``group``; the ``kk`` groups with the largest maxima
    (ties: the lower group) hold every entry of the row's top ``kk`` under "larger value first, then
    lower column": an entry outside them has ``kk`` group maxima ranked before it, each one an entry
    ranked before it. Groups are gathered in column order, so ``lax.top_k``'s lower-position-first
    tie rule still means lower id first. One ``top_k`` over ``tile / group`` maxima and one over
    ``kk · group`` candidates replace a ``top_k`` over the whole tile, its most expensive reduction
    (measured on 2 AMD EPYC cores, ``[1024, 768] @ [768, 4096]`` tiles: the sweep step from 65 to
    69 GFLOP/s against 80 for the GEMMs alone).
    """
    rows, tile = logits.shape
    _, best = jax.lax.top_k(logits.reshape(rows, tile // group, group).max(-1), kk)
    best = jnp.sort(best, axis=-1)
    ids = (best[:, :, None] * group + jnp.arange(group, dtype=best.dtype)).reshape(rows, kk * group)
    return _take_rows(logits, ids), ids


def _take_rows(x, idx):
    """``x[i, idx[i, j]]`` for ``x [B, n]`` and in-range ``idx [B, m]``: ``take_along_axis`` made fast.

    Gathered from the flattened ``x`` by flat index: XLA:CPU (jaxlib 0.10) runs a batched
    ``take_along_axis`` more than twice as slowly (a sweep step's candidate sort and gather,
    ``[1024, 4096]`` logits, 160 columns per row, 13 tiles: 58 ms against 22; the whole bfloat16 step
    174 -> 149 ms on a 2-core Xeon with AMX). Falls back to ``take_along_axis`` where a flat index
    would overflow int32.
    """
    rows, n = x.shape
    if rows * n >= 2 ** 31:
        return jnp.take_along_axis(x, idx, axis=1)
    flat = jnp.arange(rows, dtype=jnp.int32)[:, None] * n + idx.astype(jnp.int32)
    return x.reshape(-1).at[flat].get(mode="promise_in_bounds")


TILE_MODES = ("xla", "kernel", "fused")
"""How a sweep step handles a tile: XLA's GEMM and reductions; XLA's GEMM and the CPU kernel's
reduction (:func:`jetjax.ngrams.native.tile_reduce`); the CPU kernel's float32 GEMM and reduction in
one call (:func:`jetjax.ngrams.native.gemm_reduce`)."""


def _step(score_fn: Callable, kk: int, mesh: Mesh, compute_dtype: str = "float32", tiles: str = "xla"):
    """Jitted ``(params, W_t, b_t, ctx, n_valid=None) -> (top probs, top ids, logsumexp)``, rows over the mesh.

    ``n_valid``: how many of ``ctx``'s rows are real (default all); the fused kernel skips the rest,
    a padded last block's padding, whose outputs mean nothing.

    ``W_t, b_t`` come from :func:`_tile_unembedding`; the vocabulary is scanned tile by tile. With
    ``compute_dtype="bfloat16"`` the rows are rounded to bfloat16 (``W_t`` already is, stored as its
    ``uint16`` bit pattern) and each tile's GEMM accumulates in float32. ``tiles`` (CPU only for
    ``"kernel"`` and ``"fused"``; :data:`TILE_MODES`): with ``"kernel"`` (float32 logits) each tile's
    reductions are :func:`jetjax.ngrams.native.tile_reduce`'s one pass instead of XLA's: the same ids
    and top logits, the logsumexp summed in another order. With ``"fused"`` (float32 rows and
    weights; ``W_t`` packed with ``nr``) the kernel forms the tile's logits too
    (:func:`jetjax.ngrams.native.gemm_reduce`): the same ids wherever two logits differ by more than
    float32 rounding (its GEMM sums in its own order, like any other GEMM kernel), exact ties kept;
    in bfloat16 (``W_t`` packed for AMX: any ``nr``) its AMX GEMM
    (:func:`jetjax.ngrams.native.gemm_reduce_bf16`), the same way.
    """
    if tiles not in TILE_MODES:
        raise ValueError(f"tiles must be one of {', '.join(TILE_MODES)}, got {tiles!r}")
    threads = max(1, native.usable_cores() // int(mesh.devices.size))  # each device's share of the cores

    def local(params, w_tiles, b_tiles, ctx, n_valid):
        r = score_fn(params, ctx)
        rows, tile = r.shape[0], b_tiles.shape[-1]
        group = _candidate_group(tile, kk)
        if compute_dtype == "bfloat16":
            r = r.astype(jnp.bfloat16)
        state_rows = rows
        if tiles == "fused" and compute_dtype == "bfloat16":
            packed = native.pack_rows_bf16(r)
            state_rows = packed.shape[0]
        elif tiles == "fused":
            packed = native.pack_rows(r.astype(jnp.float32), native.gemm_layout()[0])
            state_rows = packed.shape[0] * packed.shape[2]

        def merge(carry, xs):
            m, s, top_v, top_i = carry
            w_t, b_t, offset = xs
            if compute_dtype == "bfloat16":
                w_t = jax.lax.bitcast_convert_type(w_t, jnp.bfloat16)
                product = jnp.dot(r, w_t, preferred_element_type=jnp.float32)
            else:
                product = r @ w_t
            if tiles == "kernel":  # the bias is added inside, in float32 as below
                return native.tile_reduce(product, b_t.astype(jnp.float32), offset, m, s, top_v, top_i,
                                          threads=threads), None
            if compute_dtype == "bfloat16":
                logits = product + b_t.astype(jnp.float32)
            else:
                logits = (product + b_t).astype(jnp.float32)
            m_new = jnp.maximum(m, logits.max(-1))
            s = s * jnp.exp(m - m_new) + jnp.exp(logits - m_new[:, None]).sum(-1)
            # The running top-k holds lower token ids than this tile and comes first, so lax.top_k's
            # lower-position-first tie rule keeps "ties go to the lower id" across tiles.
            if group:
                cand, cand_ids = _tile_candidates(logits, kk, group)
                top_v, pos = jax.lax.top_k(jnp.concatenate([top_v, cand], axis=1), kk)
                top_i = _take_rows(jnp.concatenate([top_i, cand_ids + offset], axis=1), pos)
            else:
                top_v, pos = jax.lax.top_k(jnp.concatenate([top_v, logits], axis=1), kk)
                from_old = jnp.take_along_axis(top_i, jnp.minimum(pos, kk - 1), axis=1)
                top_i = jnp.where(pos < kk, from_old, pos - kk + offset)
            return (m_new, s, top_v, top_i), None

        init = (jnp.full((state_rows,), -jnp.inf, jnp.float32), jnp.zeros((state_rows,), jnp.float32),
                jnp.full((state_rows, kk), -jnp.inf, jnp.float32), jnp.zeros((state_rows, kk), jnp.int32))
        if tiles == "fused":  # one call for all tiles: a scan would copy each tile's slice out for it
            valid = jnp.clip(n_valid - jax.lax.axis_index("rows") * rows, 0, rows)  # this device's real rows
            fused = native.gemm_reduce_bf16 if compute_dtype == "bfloat16" else native.gemm_reduce
            m, s, top_v, top_i = fused(packed, w_tiles, b_tiles.astype(jnp.float32), 0, *init, valid=valid,
                                       threads=threads)
        else:
            offsets = jnp.arange(w_tiles.shape[0], dtype=jnp.int32) * tile
            (m, s, top_v, top_i), _ = jax.lax.scan(merge, init, (w_tiles, b_tiles, offsets))
        m, s, top_v, top_i = m[:rows], s[:rows], top_v[:rows], top_i[:rows]  # the fused kernel's padding rows
        lse = m + jnp.log(s)
        return jnp.exp(top_v - lse[:, None]), top_i, lse

    sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P("rows"), P()),
                                    out_specs=P("rows"), check_vma=False))

    def step(params, w_tiles, b_tiles, ctx, n_valid=None):
        """``n_valid``: the block's real rows (the rest is padding; the fused kernel skips it)."""
        return sharded(params, w_tiles, b_tiles, ctx, jnp.int32(ctx.shape[0] if n_valid is None else n_valid))

    return step


def _global_top(probs, ids, contexts: np.ndarray, g: int):
    """The ``g`` largest entries of a chunk of rows, ties broken by (row of the chunk, next id).

    ``probs``, ``ids``: ``[rows, k]`` arrays, or lists of them for consecutive blocks of the chunk's
    rows (their ``k`` may differ). Only the entries at or above each block's ``g``-th largest value
    are sorted (all of its ties included, so the order is the full sort's): a chunk of 8192 rows ×
    100 took 200 ms to sort whole, the host's time between two chunks while the device waited. With
    a NaN anywhere, every entry is sorted.
    """
    if not isinstance(probs, (list, tuple)):
        probs, ids = [probs], [ids]
    nan = any(np.isnan(p).any() for p in probs)
    vals, rows, nxt, row0 = [], [], [], 0
    for p, i in zip(probs, ids):
        flat = p.reshape(-1)
        cand = np.arange(flat.size)
        if not nan and 0 < g < flat.size // 4:
            kth = np.partition(flat, flat.size - g)[flat.size - g]
            cand = np.flatnonzero(flat >= kth)
        vals.append(flat[cand])
        rows.append(row0 + cand // max(p.shape[1], 1))
        nxt.append(i.reshape(-1)[cand])
        row0 += p.shape[0]
    vals, rows, nxt = np.concatenate(vals), np.concatenate(rows), np.concatenate(nxt)
    order = np.lexsort((nxt, rows, -vals))[:g]
    pairs = np.concatenate([contexts[rows[order]], nxt[order, None]], axis=1)
    return vals[order].astype(np.float32), pairs.astype(np.int32)


_ROWS_FIRST = True
"""Sweep each chunk with its rows' top ``top_k`` first (see :func:`_run_chunks`); tests turn it off to
compare with sweeps that keep ``max(top_k, global_k)`` per row throughout."""

_SHARE_LAYERS = True
"""Share one compiled step between path sets that differ only in which layers' weights they read
(:func:`jetjax.ngrams.scorer.layer_share`); tests turn it off to compare with one step per layer."""

ROW_SLACK = 1.05
"""Safety factor of :func:`_rows_suffice` against float32 rounding of the probabilities (< 1% for
logsumexps below ``1e5``, which it also requires)."""


def _rows_suffice(g_probs: np.ndarray, lse: np.ndarray, n_kept: int, k_rows: int, g: int) -> bool:
    """Whether a chunk's global top ``g``, taken from each row's top ``k_rows`` only (``n_kept`` entries,
    ``g_probs`` its ``g`` largest, descending), is the one the rows' top ``max(top_k, global_k)`` give.

    The ``r``-th most probable next token of a row has probability at most ``1 / r`` (a row's
    probabilities sum to 1): every entry past rank ``k_rows`` is ``<= 1 / (k_rows + 1)``. When the
    ``g``-th largest kept entry is above that bound (by :data:`ROW_SLACK`, for rounding), no
    dropped entry can enter or tie the chunk's top ``g``, so it is the same, entry for entry. Not
    decided (False) with fewer than ``g`` kept entries, a NaN, or a logsumexp that is not finite or
    ``>= 1e5`` in magnitude (where float32 rounding of ``logit - logsumexp`` could pass the slack).
    """
    if n_kept < g or len(g_probs) < g or g < 1:
        return False
    if not (np.isfinite(lse).all() and np.abs(lse).max(initial=0.0) < 1e5) or np.isnan(g_probs).any():
        return False
    return bool(g_probs[g - 1] > ROW_SLACK / (k_rows + 1))


def sweep_contexts(model: Model, contexts, paths: Sequence[str] | str = DEFAULT, top_k: int = DEFAULT, *,
                   order: int = DEFAULT, global_k: int = DEFAULT, block_rows: int = DEFAULT,
                   chunk_rows: int = DEFAULT, out_dir=None, devices=None, progress: bool = True,
                   callback: Callable[[int, int], None] | None = None, kind: str = DEFAULT,
                   vocab_tile: int = DEFAULT, compute_dtype: str = DEFAULT,
                   settings: SweepSettings | None = None) -> NGramTable:
    """Next-token tables of arbitrary contexts (``int [R, T]``) under ``paths``; see :func:`jet_bigrams`.

    ``kind`` (default ``"contexts"``) labels the rows in the table's ``meta`` and the manifest.

    Example:
      >>> from jetjax.models import ModelConfig, random_model
      >>> cfg = ModelConfig(arch="gpt2", n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16,
      ...                   vocab_size=11, n_positions=8, norm_eps=1e-5, activation="gelu_new")
      >>> s = SweepSettings(paths=["emb>dec", "emb>mlp0>dec"], top_k=2, global_k=3)
      >>> t = sweep_contexts(random_model(cfg), [[1, 2], [3, 4]], settings=s, progress=False)
      >>> t.probs.shape, t.meta["paths"], t.meta["kind"], t.meta["block_rows"]
      ((2, 2), ['emb>dec', 'emb>mlp0>dec'], 'contexts', 1024)
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a jetjax Model (jj.from_pretrained(...)), got {type(model).__name__}")
    model.require_affine_unembedding("jet n-gram sweeps (one GEMM against the unembedding matrix)")
    settings = resolve_settings(settings, paths=paths, top_k=top_k, order=order, global_k=global_k,
                                block_rows=block_rows, chunk_rows=chunk_rows, vocab_tile=vocab_tile, kind=kind,
                                compute_dtype=compute_dtype)
    try:
        contexts = np.asarray(contexts)
    except ValueError:
        lengths = [len(c) if hasattr(c, "__len__") else 1 for c in contexts]
        raise ValueError("contexts must be a rectangular int array [rows, tokens] (every context the same "
                         f"length), got contexts of lengths {lengths[:10]}") from None
    if contexts.ndim != 2 or contexts.shape[0] == 0 or contexts.shape[1] == 0:
        raise ValueError(f"contexts must be an int array [rows, tokens] with at least one row, got {contexts.shape}")
    model.check_ids(contexts, check_length=False)
    contexts = contexts.astype(np.int32)
    mesh = path_mesh(devices, axis_name="rows")
    n_dev = int(mesh.devices.size)
    settings = settings.for_model(model, n_dev)
    _check_work_size(settings, contexts.shape, model.config.d_model)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be a function callback(chunk_index, n_chunks) or None, got {callback!r}")
    v = model.config.vocab_size

    tiles = _tile_mode(model, mesh, settings.compute_dtype)
    header = {"format": FORMAT,
              "model": {"fingerprint": model_fingerprint(model), "config": dataclasses.asdict(model.config),
                        "source": model.source},
              "settings": {**settings.to_json(), "devices": n_dev, "n_rows": int(contexts.shape[0]),
                           "context_len": int(contexts.shape[1]),
                           "contexts_sha256": hashlib.sha256(contexts.tobytes()).hexdigest(),
                           # only for a kernel: directories from before the kernels existed still resume
                           **({"tile_reduce": tiles} if tiles != "xla" else {})}}
    header = json.loads(json.dumps(header))  # compare with a manifest in its JSON form (tuples -> lists)
    n_rows = contexts.shape[0]
    n_chunks = -(-n_rows // settings.chunk_rows)
    with ChunkStore(out_dir, header, n_chunks) as store:
        done = store.complete_table()
        if done is not None:
            return done
        todo = [i for i in range(n_chunks) if not store.is_done(i)]
        if todo:
            _run_chunks(model, contexts, settings, mesh, store, todo, progress, callback, tiles)
        parts = [store.read(i) for i in range(n_chunks)]
        cat = {name: np.concatenate([p[name] for p in parts]) for name in ("probs", "ids", "logsumexp")}
        g_probs = np.concatenate([p["global_probs"] for p in parts])
        g_pairs = np.concatenate([p["global_pairs"] for p in parts])
        best = np.lexsort((g_pairs[:, -1], *g_pairs[:, :-1].T[::-1], -g_probs))[:settings.global_k]
        tokens = model.token_strings(np.arange(v)) if model.tokenizer is not None else None
        table = NGramTable(contexts=contexts, **cat, global_probs=g_probs[best], global_pairs=g_pairs[best],
                           meta={**header["settings"], "model": header["model"]}, tokens=tokens)
        store.finish(table)
    _warn_nonfinite(table)
    return table


MAX_CHUNKS = 4096
"""The most chunks a sweep is split into: each is stored on its own (with ``out_dir``: written, fsynced
and recorded in a manifest rewritten each time) and computed as whole blocks of ``block_rows``."""


def _check_work_size(s: SweepSettings, shape: tuple[int, int], d_model: int, available: int | None = None) -> None:
    """Refuse, before any work, a split into more than :data:`MAX_CHUNKS` chunks and a device step (one
    block: its rows' contexts, path outputs, one tile of logits and the running top-k) that cannot fit."""
    n_rows, width = shape
    n_chunks = -(-n_rows // s.chunk_rows)
    if n_chunks > MAX_CHUNKS:
        raise ValueError(f"chunk_rows={s.chunk_rows} splits the {n_rows} rows into {n_chunks} chunks, each stored on "
                         "its own (with out_dir: written, fsynced and recorded in the manifest) and computed as whole "
                         f"blocks of block_rows={s.block_rows}; at most {MAX_CHUNKS} chunks: use chunk_rows >= "
                         f"{-(-n_rows // MAX_CHUNKS)} (default 8192)")
    kk = max(s.top_k, s.global_k)
    need = s.block_rows * (4 * width + 4 * d_model + 3 * 4 * s.vocab_tile + 2 * 8 * kk)
    available = available_memory() if available is None else available
    if available is not None and need > available:
        raise MemoryError(f"block_rows={s.block_rows} needs about {need / 2 ** 30:.1f} GiB per device step (each row: "
                          f"its context, its path output of d={d_model} and a tile of {s.vocab_tile} logits), more "
                          f"than the {available / 2 ** 30:.1f} GiB of memory available; lower block_rows= (default "
                          "1024; it only changes speed)")


def _tile_mode(model: Model, mesh: Mesh, compute_dtype: str) -> str:
    """How the sweep's tiles run (:data:`TILE_MODES`). On CPU devices with the kernel built (on first
    use; :mod:`jetjax.ngrams.native`): ``"fused"`` for float32 weights and compute (the kernel's own
    GEMM) and for bfloat16 compute on a CPU with AMX (its AMX GEMM), ``"kernel"`` for bfloat16 compute
    without AMX (XLA's bfloat16 GEMM and the kernel's reduction) or under ``JETJAX_TILE_REDUCE=reduce``;
    ``"xla"`` otherwise."""
    if native.mode() == "xla" or any(d.platform != "cpu" for d in mesh.devices.flat):
        return "xla"
    w, b = jax.eval_shape(lambda p: model.unembedding_matrix(params=p), model.params)
    if compute_dtype != "bfloat16" and (w.dtype != jnp.float32 or b.dtype != jnp.float32):
        return "xla"  # (r @ W + b) is formed in the parameters' dtype there, then widened
    if not native.available():
        return "xla"
    if native.mode() == "reduce" or (compute_dtype == "bfloat16" and not native.amx()):
        return "kernel"
    return "fused"


def _warn_nonfinite(table: NGramTable) -> None:
    """Say so when rows of a table are NaN (a row's logsumexp is finite iff all its logits are)."""
    bad = ~np.isfinite(table.logsumexp) | ~np.isfinite(table.probs).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        warnings.warn(f"{int(bad.sum())} of {len(bad)} rows of the {table.meta.get('kind', 'n-gram')} table have "
                      f"non-finite logits (first contexts: {table.contexts[rows[:5]].tolist()}); their "
                      "probabilities mean nothing (check the weights for NaN/inf, or lower the order)",
                      RuntimeWarning, stacklevel=3)


def _run_chunks(model: Model, contexts: np.ndarray, settings: SweepSettings, mesh: Mesh, store: ChunkStore,
                todo: list[int], progress: bool, callback, tiles: str = "xla") -> None:
    from tqdm import tqdm

    s = settings
    n_rows, v = contexts.shape[0], model.config.vocab_size
    n_chunks = -(-n_rows // s.chunk_rows)
    kk = min(max(s.top_k, s.global_k), v)  # a row's entries that can matter: its top_k, the global top
    k_rows = min(s.top_k, v)
    replicated = NamedSharding(mesh, P())
    params = jax.device_put(model.params, replicated)
    # Cache keys: fields of validated settings (ints are ints), only those the compiled code depends on.
    nr = (native.AMX_BLOCK if s.compute_dtype == "bfloat16" else native.gemm_layout()[1]) if tiles == "fused" else 0
    unembedding = per_model(model, "ngrams", ("unembedding", s.vocab_tile, s.compute_dtype, nr), lambda: jax.jit(
        lambda p: _tile_unembedding(*model.unembedding_matrix(params=p), s.vocab_tile, s.compute_dtype, nr)))
    # The tiled unembedding (a [d, d] @ [d, V] read-off and a transpose: 0.33 s for GPT-2's) is kept
    # for the next sweep of the same weights, the latest one only, in model_fingerprint's memo: that
    # memo (called just before, in sweep_contexts) holds "refs" only while model.params are the
    # arrays it hashed, and is cleared when they change. All 30 SmolLM2 MLP sweeps read it once.
    memo = per_model(model, "ngrams", ("fingerprint",), dict)
    key = ("unembedding", s.vocab_tile, s.compute_dtype, nr, tuple(mesh.devices.tolist()))
    if key in memo:
        w, b = memo[key]
    else:
        w, b = jax.device_put(unembedding(model.params), replicated)
        if "refs" in memo:
            for old in [k for k in memo if isinstance(k, tuple) and k[0] == "unembedding"]:
                del memo[old]
            memo[key] = (w, b)
    # One compiled step for every path set of the same shape: the layers' weights are arguments, and
    # the key names each layer by its representative (emb>mlp{l}>dec: one step for all l; Gemma's
    # local and global attention layers: one per kind; scorer.layer_share).
    share = layer_share(model, s.paths, contexts.shape[1], share=_SHARE_LAYERS)
    step_key = ("step", share.key, s.order)

    def build(k):
        scorer = shared_scorer(model, share, s.order)

        def traced(args, ctx):  # runs once per trace of the step: what tests count
            TRACE_COUNTS[("ngrams_step", *step_key[1:], k)] += 1
            return scorer(args, ctx)

        return _step(traced, k, mesh, s.compute_dtype, tiles)

    def step(k):
        return per_model(model, "ngrams", (*step_key[:3], k, tuple(mesh.devices.tolist()), s.compute_dtype, tiles),
                         lambda: build(k))

    args = jax.device_put(share.args(params), replicated)

    rows_sharding = NamedSharding(mesh, P("rows"))

    def run(lo, hi, k, bar=None):
        """The chunk's rows [lo, hi) with each row's top ``k``: ``(probs, ids, lse)`` per block, on the host.

        Every block is dispatched first (jit calls return before they finish, and each block's outputs
        are only [rows, k]), then copied to the host in order: the device never waits on the host
        between blocks, and the bar moves as each block completes."""
        dispatched = []
        for start in range(lo, hi, s.block_rows):
            block = contexts[start:min(start + s.block_rows, hi)]
            padded = np.concatenate([block, np.zeros((s.block_rows - len(block), block.shape[1]), np.int32)])
            dispatched.append((step(k)(args, w, b, jax.device_put(padded, rows_sharding), len(block)), len(block)))
        outs = []
        for out, n in dispatched:
            outs.append([fetch(o)[:n] for o in out])
            if bar is not None:
                bar.update(n)
        return outs

    # Most chunks need only each row's top_k, not its top max(top_k, global_k) (100 by default): the
    # global top of a chunk comes from its rows' top_k alone whenever its global_k-th entry beats every
    # entry a row's top_k leaves out (:func:`_rows_suffice`, decided from the chunk's own numbers, so
    # that its file is the same whatever came before). A chunk that fails is swept again with kk, and
    # the next chunks start with kk until one of them would have passed. The running top-k of a row is
    # the costliest part of the fused kernel's reduction at k = 100 (4% of a GPT-2-large step).
    try_rows = _ROWS_FIRST and k_rows < kk
    done_rows = n_rows - sum(min(s.chunk_rows, n_rows - i * s.chunk_rows) for i in todo)
    with tqdm(total=n_rows, initial=done_rows, unit="row", unit_scale=True, disable=not progress,
              desc=f"jet {'/'.join(s.paths)}") as bar:
        for i in todo:
            lo, hi = i * s.chunk_rows, min((i + 1) * s.chunk_rows, n_rows)
            ctx = contexts[lo:hi]
            outs = run(lo, hi, k_rows if try_rows else kk, bar)
            g_probs, g_pairs = _global_top([o[0] for o in outs], [o[1] for o in outs], ctx, s.global_k)
            lse = np.concatenate([o[2] for o in outs])
            if try_rows and not _rows_suffice(g_probs, lse, (hi - lo) * k_rows, k_rows, s.global_k):
                outs = run(lo, hi, kk)
                g_probs, g_pairs = _global_top([o[0] for o in outs], [o[1] for o in outs], ctx, s.global_k)
                lse = np.concatenate([o[2] for o in outs])
                try_rows = False
            elif not try_rows and _ROWS_FIRST and k_rows < kk:  # would the rows' top_k have done here?
                best, _ = _global_top([o[0][:, :k_rows] for o in outs], [o[1][:, :k_rows] for o in outs], ctx,
                                      s.global_k)
                try_rows = _rows_suffice(best, lse, (hi - lo) * k_rows, k_rows, s.global_k)
            probs = np.concatenate([o[0][:, :s.top_k] for o in outs])
            ids = np.concatenate([o[1][:, :s.top_k] for o in outs])
            store.write(i, {"probs": np.ascontiguousarray(probs), "ids": np.ascontiguousarray(ids), "logsumexp": lse,
                            "global_probs": g_probs, "global_pairs": g_pairs})
            if callback is not None:
                callback(i, n_chunks)


def jet_bigrams(model: Model, paths: Sequence[str] | str = DEFAULT, top_k: int = DEFAULT, *, order: int = DEFAULT,
                global_k: int = DEFAULT, block_rows: int = DEFAULT, chunk_rows: int = DEFAULT, out_dir=None,
                devices=None, progress: bool = True, callback: Callable[[int, int], None] | None = None,
                vocab_tile: int = DEFAULT, compute_dtype: str = DEFAULT,
                settings: SweepSettings | None = None) -> NGramTable:
    """The jet bigram table of ``paths``: for every token ``z1`` of the vocabulary, ``P(z2 | z1)``.

    ``P(· | z1) = softmax(s(z1))`` over the output vocabulary, with ``s`` the mean of the selected
    paths' logits on the one-token context ``z1`` (path grammar, order-``k`` jets and the exact
    meaning of each path: :mod:`jetjax.ngrams.scorer`). ``emb>dec`` is ``softmax(U · LN_f(E[z1]))``,
    ``emb>mlp{l}>dec`` is ``softmax(U · LN_f(MLP_l(LN2_l(E[z1]))))``.

    The settings come as keywords or as one :class:`~jetjax.ngrams.SweepSettings` (``settings=``);
    a keyword next to ``settings=`` must agree with it. Every one is checked before any work starts.

    Args:
      model: any :class:`~jetjax.models.model.Model`.
      paths: one path name or several (their logits are averaged); default ``"emb>dec"``.
      top_k: next tokens kept per row (``<= vocab_size``; default 10).
      order: jet order ``k`` (0, the default: plain composition of the path's components).
      global_k: how many of the most probable ``(z1, z2)`` pairs over the whole table to keep (default 100).
      block_rows: rows per device step (default 1024, rounded up to a multiple of the device count); a
        speed knob that can change the last bits of float results, so a resumed sweep keeps its value.
      vocab_tile: vocabulary columns per GEMM tile inside a step (default: at most 4096, the
        vocabulary split evenly into tiles, :func:`~jetjax.ngrams.settings.default_vocab_tile`; a
        given value is capped at ``vocab_size``); a speed knob that keeps each GEMM's output small.
        It changes the order of the logsumexp sums, so a resumed sweep keeps it too (a directory
        started before the default changed recorded 4096: pass ``vocab_tile=4096`` to resume it).
      chunk_rows: rows per output chunk (the unit of resumption; default 8192).
      compute_dtype: ``"float32"`` (default) or ``"bfloat16"``: the precision of the unembedding
        GEMM, the sweep's main cost (the path's output and ``W`` rounded to bfloat16, products
        summed in float32; logsumexp and top-k stay float32). Faster where the CPU or accelerator
        multiplies bfloat16 natively (AVX-512 BF16, AMX, GPUs), slower where it does not (AVX2).
        ``tests/test_compute_dtype.py`` checks a bfloat16 table against that rounded product
        computed exactly; ``benchmarks/ngrams.py`` measures its distance from float32 in the same
        run (top-10 id overlap per row, max |Δ probability|, max |Δ logsumexp|) and its speed,
        written to ``benchmarks/results/ngrams.md``. The table's ``meta["compute_dtype"]`` is
        present for bfloat16 only.
      out_dir: directory for resumable chunked output and the final table (``NGramTable.load``):
        locked while a sweep writes it, checked chunk by chunk when a sweep starts
        (:mod:`jetjax.ngrams.store`); a rerun with other settings (``block_rows``, ``vocab_tile``
        and the device count included) is refused, naming the differences.
      devices: the devices of the 1-D mesh the rows are spread over (default: all of them).
      progress: show a tqdm bar (rows/s).
      callback: ``callback(chunk_index, n_chunks)`` after each chunk is stored.
      settings: all of the above but ``out_dir``, ``devices``, ``progress`` and ``callback`` at once.

    Returns:
      an :class:`~jetjax.ngrams.table.NGramTable` with ``vocab_size`` rows.

    Example:
      >>> from jetjax.models import ModelConfig, random_model
      >>> cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32,
      ...                   vocab_size=23, n_positions=8, norm_eps=1e-5, activation="gelu_new")
      >>> table = jet_bigrams(random_model(cfg), ["emb>dec", "emb>mlp1>dec"], top_k=3, global_k=5,
      ...                     progress=False)
      >>> table.probs.shape, table.ids.shape, table.global_pairs.shape
      ((23, 3), (23, 3), (5, 2))
    """
    if paths is DEFAULT and settings is None:
        paths = ("emb>dec",)
    if not isinstance(model, Model):
        raise TypeError(f"model must be a jetjax Model (jj.from_pretrained(...)), got {type(model).__name__}")
    v = model.config.vocab_size
    return sweep_contexts(model, np.arange(v, dtype=np.int32)[:, None], paths, top_k, order=order,
                          global_k=global_k, block_rows=block_rows, chunk_rows=chunk_rows, out_dir=out_dir,
                          devices=devices, progress=progress, callback=callback, kind="bigrams",
                          vocab_tile=vocab_tile, compute_dtype=compute_dtype, settings=settings)
