"""The precision of vocabulary-sized GEMMs: ``compute_dtype`` for sweeps, lenses and path reductions.

Most of jetjax's arithmetic at scale is one product: vectors in the residual space times the
unembedding, ``n W + b`` with ``W`` of shape ``[d, V]``. ``compute_dtype`` chooses its precision:

* ``"float32"`` (the default): the model's own ``unembed``, exactly as everywhere else.
* ``"bfloat16"``: ``n`` and ``W`` are rounded to bfloat16 (8 significant bits), their products are
  accumulated in float32 (``preferred_element_type``), the bias is added in float32, and everything
  after the product (softmax, logsumexp, top-k, metrics) stays float32. Each logit then carries the
  rounding error of its operands, at most about ``2 · 2⁻⁹ · Σ_i |n_i W_ij|`` (one relative
  half-ulp per operand), not a bfloat16 rounding of the result.

bfloat16 pays where the hardware multiplies bfloat16 faster than float32 (AMX and AVX-512 BF16 CPUs,
GPUs, TPUs); on a CPU without such instructions it is slower (``benchmarks/results/ngrams.md``
records both, and their fidelity, on the machine that ran them).

Example:
  >>> import jax.numpy as jnp
  >>> from jetjax.testing import tiny_model
  >>> model = tiny_model(n_layers=1, d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
  >>> x = jnp.ones((3, 8))
  >>> w, b = unembedding_operands(model, "bfloat16")
  >>> w.dtype, b.dtype, unembed(x, w, b).dtype, unembed(x, w, b).shape
  (dtype(bfloat16), dtype('float32'), dtype('float32'), (3, 11))
  >>> bool(jnp.allclose(unembed(x, w, b), model.unembed(x), atol=0.05))
  True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.compiled import per_model

__all__ = ["COMPUTE_DTYPES", "AFFINE_TOL", "check_compute_dtype", "affine_read", "unembedding_operands", "unembed"]

COMPUTE_DTYPES = ("float32", "bfloat16")
"""Precisions of a vocabulary-sized GEMM (``compute_dtype``); accumulation, logsumexp, top-k and
metrics are float32 under both."""


def check_compute_dtype(value) -> str:
    """``value`` (a name, a NumPy/JAX dtype or scalar type) as one of :data:`COMPUTE_DTYPES`, by name.

    Example:
      >>> import jax.numpy as jnp
      >>> check_compute_dtype("bfloat16"), check_compute_dtype(jnp.bfloat16), check_compute_dtype("float32")
      ('bfloat16', 'bfloat16', 'float32')
      >>> check_compute_dtype("float16")
      Traceback (most recent call last):
      ...
      ValueError: compute_dtype must be one of float32, bfloat16, got 'float16'
    """
    name = value if isinstance(value, str) else None
    if name is None and not isinstance(value, bool):
        try:
            name = np.dtype(value).name
        except TypeError:
            name = None
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {value!r}")
    return name


AFFINE_TOL = 1e-4
"""Largest relative error (against ``1 + max |logit|``) at which a unembedding counts as affine."""


def affine_read(model, params, dtype):
    """``(W [d, V], b [V], error)`` in ``dtype``: the unembedding read as ``x W + b``, and how far that
    read is from the model's own unembedding on two random vectors (relative to ``1 + max |logit|``).

    Every family jetjax ships has an affine unembedding (error at rounding level); one with logit
    soft-capping would not. Callers compare ``error`` with :data:`AFFINE_TOL`.
    """
    if not model.config.unembedding_is_affine:   # soft-capped logits: known not to be affine
        return None, None, float("inf")
    w, b = model.unembedding_matrix(params=params)
    w, b = w.astype(dtype), b.astype(dtype)
    probe = jax.random.normal(jax.random.key(0), (2, w.shape[0]), dtype)
    ref = model.unembed(probe, params=params).astype(dtype)
    err = float(jnp.max(jnp.abs(probe @ w + b - ref))) / (1.0 + float(jnp.max(jnp.abs(ref))))
    return w, b, err


def unembedding_operands(model, compute_dtype: str, params=None):
    """``(W [d, V] in compute_dtype, b [V] float32)`` with ``model.unembed(x) == x W + b``.

    ``W`` is read off the model's own (affine) unembedding, once per model and precision when
    ``params`` is the model's own (the read is a ``d × d × V`` product; later calls reuse it).
    The read assumes an affine unembedding (every family jetjax ships has one); it is checked on
    two random vectors (:func:`affine_read`), and a model whose unembedding is not affine (e.g. with
    logit soft-capping) is refused with a ``ValueError`` rather than given wrong logits.
    """
    compute_dtype = check_compute_dtype(compute_dtype)
    model.require_affine_unembedding(f"compute_dtype={compute_dtype!r}")

    def checked(p):
        w, b, err = affine_read(model, p, jnp.float32)
        if not err <= AFFINE_TOL:
            raise ValueError(f"compute_dtype={compute_dtype!r} needs an affine unembedding (x W + b); this model's "
                             f"differs from its affine read by {err:.3g} (relative): use compute_dtype='float32'")
        return w.astype(compute_dtype), b

    if params is None or params is model.params:
        return per_model(model, "precision", ("unembedding", compute_dtype), lambda: checked(model.params))
    return checked(params)


def unembed(x, w, b):
    """``x W + b`` with ``x`` rounded to ``W``'s dtype and the products accumulated in float32."""
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32) + b
