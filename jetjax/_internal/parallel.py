"""Spreading a leading axis (paths, vocabulary rows) over the devices of a mesh.

The jet stays innermost: each device runs ``vmap``-batched jets on its slice of the axis, under
``jax.shard_map`` (with ``check_vma=False``, which jet's interpreter needs) or under ``jit`` with
sharding constraints. Results do not depend on the number of devices.

Several hosts: start every process with ``jax.distributed.initialize()`` (coordinator address,
process count and id come from the cluster's environment on TPU pods and SLURM, or pass them),
then build the mesh over ``jax.devices()``, which then lists the devices of all hosts; every
process runs the same program and JAX moves the data. Nothing else in jetjax changes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["path_mesh", "mesh_axis", "constrain_leading", "shard_leading", "pad_leading", "fetch"]

DEFAULT_AXIS = "paths"


def path_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DEFAULT_AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: all of ``jax.devices()``).

    Example:
      >>> from jetjax._internal.parallel import path_mesh
      >>> mesh = path_mesh(jax.devices()[:1])
      >>> mesh.axis_names, mesh.size
      (('paths',), 1)
    """
    if not isinstance(axis_name, str) or not axis_name:
        raise TypeError(f"axis_name must be a non-empty string, got {axis_name!r}")
    if isinstance(devices, (str, bytes)) or isinstance(devices, jax.Device):
        raise TypeError(f"devices must be a list of jax devices (e.g. jax.devices() or jax.devices('cpu')[:2]), "
                        f"got {devices!r}")
    try:
        devices = list(jax.devices() if devices is None else devices)
    except TypeError:
        raise TypeError(f"devices must be a list of jax devices (e.g. jax.devices()), got {devices!r}") from None
    if not devices:
        raise ValueError("devices is empty: pass at least one jax device (e.g. jax.devices()[:1])")
    wrong = [d for d in devices if not isinstance(d, jax.Device)]
    if wrong:
        raise TypeError(f"devices must be jax devices such as jax.devices('cpu')[0], got {wrong[0]!r} "
                        f"({type(wrong[0]).__name__}); a platform name is not a device")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices lists a device more than once: {devices}")
    return Mesh(np.asarray(devices), (axis_name,))


def mesh_axis(mesh: Mesh | None) -> tuple[Mesh | None, str | None, int]:
    """``(mesh, axis name, number of devices along it)`` of a one-axis mesh; ``(None, None, 1)`` for None."""
    if mesh is None:
        return None, None, 1
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see jetjax._internal.parallel.path_mesh), got {type(mesh).__name__}")
    if len(mesh.axis_names) != 1:
        raise ValueError(f"expected a mesh with one axis to spread paths over, got axes {mesh.axis_names}; "
                         "build one with jetjax._internal.parallel.path_mesh(devices)")
    axis = mesh.axis_names[0]
    return mesh, axis, int(mesh.shape[axis])


def constrain_leading(mesh: Mesh | None) -> Callable | None:
    """A function laying the leading axis of its (pytree) input out over ``mesh`` inside ``jit``."""
    mesh, axis, _ = mesh_axis(mesh)
    if mesh is None:
        return None
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return lambda tree: jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def pad_leading(x: jax.Array, multiple: int) -> jax.Array:
    """Pad the leading axis up to a multiple of ``multiple`` by repeating the last row.

    Repeating a real row (rather than zeros) keeps padded rows finite through norms and jets;
    callers mask them out.
    """
    n = x.shape[0]
    extra = (-n) % multiple
    if extra == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)], axis=0)


def shard_leading(fn: Callable, mesh: Mesh | None, *, n_sharded: int, reduced: Sequence[bool]) -> Callable:
    """Run ``fn`` with the leading axis of its first ``n_sharded`` arguments split over ``mesh``.

    Outputs flagged in ``reduced`` are per-device partial sums: they are summed over devices
    (``psum``) and come back whole; the others come back concatenated along their leading axis.
    The remaining arguments are replicated. Without a mesh, ``fn`` is returned unchanged (its
    partial sums are then already complete).
    """
    mesh, axis, _ = mesh_axis(mesh)
    if mesh is None:
        return fn
    P = PartitionSpec

    def body(*args):
        outs = fn(*args)
        return tuple(jax.lax.psum(o, axis) if r else o for o, r in zip(outs, reduced))

    def wrapped(*args):
        in_specs = tuple(P(axis) if i < n_sharded else P() for i in range(len(args)))
        out_specs = tuple(P() if r else P(axis) for r in reduced)
        return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)(*args)

    return wrapped


def fetch(x) -> np.ndarray:
    """``x`` as a numpy array on this host, also when its shards live on other processes' devices.

    Every process must call it on the same array (it is a collective then).
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
