"""Orbax checkpoints with two named items: ``state`` (model incl. EMA target, optimizer, step) and
``iter`` (the grain iterator of each process).

Restores always pass the target shardings of the live state, so a checkpoint restores onto a
different mesh or process count. The per-step RNG is ``fold_in(seed, step)``: nothing to store.
"""
from __future__ import annotations

import grain
from absl import logging
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import type_handlers

# Replica-parallel saving (hosts write slices of replicated arrays cooperatively) jit-compiles a
# slice per array per save: worth it for large arrays on pods, pure overhead for small ones.
MIN_BYTES_FOR_REPLICA_PARALLEL = 4 << 20
_verbosity = logging.get_verbosity()
logging.set_verbosity(logging.ERROR)  # Orbax warns about every override
type_handlers.register_type_handler(
    jax.Array, type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_BYTES_FOR_REPLICA_PARALLEL),
    override=True)
logging.set_verbosity(_verbosity)


def manager(directory, *, keep: int = 3, every: int = 1000, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                           enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(epath.Path(directory).absolute(), options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "iter": grain.checkpoint.CheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state: dict, iterator=None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if iterator is not None:
        items["iter"] = grain.checkpoint.CheckpointSave(iterator)
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mngr: ocp.CheckpointManager, step: int, like_state: dict, iterator=None) -> dict:
    """Restores onto the shardings of ``like_state`` (and the iterator in place, when given)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if iterator is not None:
        items["iter"] = grain.checkpoint.CheckpointRestore(iterator)
    return mngr.restore(step, args=ocp.args.Composite(**items))["state"]


def _partial_restore(handler_dir, item_name, like: dict, step):
    """``like``'s subtree of item ``item_name`` (None: a bare PyTree checkpoint) at ``handler_dir``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True)
    if item_name is None:
        return ocp.PyTreeCheckpointer().restore(epath.Path(handler_dir).absolute(), args=args)
    mngr = ocp.CheckpointManager(epath.Path(handler_dir).absolute(),
                                 item_handlers={item_name: ocp.PyTreeCheckpointHandler()})
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {handler_dir}")
    restored = mngr.restore(step, args=ocp.args.Composite(**{item_name: args}))[item_name]
    mngr.close()
    return restored


def restore_params(directory, like_params: dict, step: int | None = None) -> dict:
    """Just the model params of a training checkpoint (export, stage-2 initialisation).

    StandardRestore cannot restore a subtree, so the same files are read with the PyTree handler,
    onto the shardings of ``like_params`` (which may name a subset of the model's attributes).
    """
    return _partial_restore(directory, "state", {"model": like_params}, step)["model"]


def restore_params_from(path, like_params: dict, step: int | None = None) -> dict:
    """``like_params`` (a subset of a model's params) from a training workdir or an export."""
    path = epath.Path(path)
    if (path / "checkpoints").is_dir():
        return restore_params(path / "checkpoints", like_params, step)
    if (path / "params").is_dir():
        return _partial_restore(path / "params", None, like_params, None)
    raise FileNotFoundError(f"{path} is neither a training workdir (checkpoints/) nor an exported model (params/)")
