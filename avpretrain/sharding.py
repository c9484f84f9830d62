"""Mesh, logical-axis rules and multi-process start-up.

Parameters carry logical axis names (``nnx.with_partitioning``); a config maps them to mesh axes,
big_vision style::

    config.mesh = (('data', -1), ('fsdp', 1), ('tensor', 1))   # -1 takes the remaining devices
    config.sharding_rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('mlp', 'tensor'), ...)

Models are built inside :func:`mesh_rules` under ``nnx.jit`` so every parameter is created
directly on its shards (no full-size host copy).
"""
from __future__ import annotations

import contextlib
import logging
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# Logical names used by the models: batch (examples), embed (model width), mlp (hidden of the MLP),
# qkv (attention projections), length (tokens), norm (LayerNorm scale/bias), layers (the stacked
# blocks of ``model.scan_layers``: never split, each device holds every layer of its shard).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("qkv", "tensor"),
    ("length", None),
    ("norm", None),
    ("layers", None),
)
DEFAULT_MESH = (("data", -1), ("fsdp", 1), ("tensor", 1))


def make_mesh(mesh_spec=DEFAULT_MESH, devices=None) -> Mesh:
    """A mesh from ``((name, size), ...)``; one size may be -1 (the remaining devices)."""
    devices = jax.devices() if devices is None else devices
    names = tuple(name for name, _ in mesh_spec)
    sizes = [int(size) for _, size in mesh_spec]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh {mesh_spec!r}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if len(devices) % known:
        raise ValueError(f"config.mesh {mesh_spec!r} does not divide {len(devices)} devices")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"config.mesh {mesh_spec!r} has {int(np.prod(sizes))} slots for {len(devices)} devices")
    return jax.make_mesh(tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def single_device_mesh() -> Mesh:
    """Every axis of size 1 on the first device (export, downstream use, interop)."""
    return make_mesh(tuple((name, 1) for name, _ in DEFAULT_MESH), devices=jax.devices()[:1])


@contextlib.contextmanager
def mesh_rules(mesh: Mesh, rules=DEFAULT_RULES):
    """The mesh and the logical-axis rules as the ambient context (model creation, jitted steps)."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(tuple(rules)):
        yield


def logical_to_mesh(logical: tuple, rules=DEFAULT_RULES) -> P:
    table = dict(rules)
    return P(*(table.get(name, name) if name is not None else None for name in logical))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Sharding of a global batch: leading axis over the data-parallel mesh axes."""
    return NamedSharding(mesh, logical_to_mesh(("batch",), rules))


def data_parallel_size(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    axes = dict(rules)["batch"]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[a] for a in axes]))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_count: int | None = None) -> None:
    """Starts multi-process JAX when the environment asks for it.

    Explicit arguments (or AVP_COORDINATOR / AVP_NUM_PROCESSES / AVP_PROCESS_ID) win; otherwise
    TPU pods and SLURM jobs are auto-detected by ``jax.distributed.initialize()``. A plain single
    process does nothing. ``local_device_count`` forces that many CPU devices (tests, CPU clusters).
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("AVP_COORDINATOR")
    num_processes = num_processes or (int(env["AVP_NUM_PROCESSES"]) if "AVP_NUM_PROCESSES" in env else None)
    if process_id is None and "AVP_PROCESS_ID" in env:
        process_id = int(env["AVP_PROCESS_ID"])
    if local_device_count:
        jax.config.update("jax_num_cpu_devices", int(local_device_count))
    if jax.distributed.is_initialized():
        return
    # A process that stops sending heartbeats for this long is declared dead, and every other process
    # then exits with an error naming it instead of waiting in a collective (JAX's default: 100 s).
    timeouts = {"heartbeat_timeout_seconds": int(env.get("AVP_HEARTBEAT_TIMEOUT", "100"))}
    if coordinator_address:
        logging.info("jax.distributed: coordinator %s, process %s of %s", coordinator_address, process_id, num_processes)
        host = coordinator_address.rsplit(":", 1)[0]
        bind = coordinator_address if host in ("127.0.0.1", "localhost") else None
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, coordinator_bind_address=bind, **timeouts)
    elif "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize(**timeouts)
    elif env.get("TPU_WORKER_HOSTNAMES") or env.get("CLOUD_TPU_TASK_ID") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(**timeouts)
