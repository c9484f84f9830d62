"""Orbax checkpoints with named items: ``state`` (model incl. EMA target, optimizer, step), ``data``
(the input position: examples consumed, see ``data.order``) and, for methods with their own
streams, ``iter`` (the grain iterator of each process).

Restores always pass the target shardings of the live state, so a checkpoint restores onto a
different mesh or process count. The per-step RNG is ``fold_in(seed, step)``: nothing to store.
Saves are asynchronous; ``Saver`` turns a failed one into one ``SaveFailedError``.
"""
from __future__ import annotations

import json
import os
import re

from absl import logging
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import type_handlers

from avpretrain import runtime

# Replica-parallel saving (hosts write slices of replicated arrays cooperatively) jit-compiles a
# slice per array per save: worth it for large arrays on pods, pure overhead for small ones.
MIN_BYTES_FOR_REPLICA_PARALLEL = 4 << 20
_verbosity = logging.get_verbosity()
logging.set_verbosity(logging.ERROR)  # Orbax warns about every override
type_handlers.register_type_handler(
    jax.Array, type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_BYTES_FOR_REPLICA_PARALLEL),
    override=True)
logging.set_verbosity(_verbosity)


class _QuietOrbaxErrors:
    """Orbax logs an error with its traceback from every background thread a failed save passes
    through (hundreds of lines for a full disk) and then raises it, which ``Saver`` turns into one
    line. Its ERROR records are dropped (``AVP_DEBUG=1`` keeps them)."""

    def filter(self, record) -> bool:
        return record.levelno < logging.ERROR or "/orbax/" not in record.pathname.replace("\\", "/")


class _QuietOrbaxFutures:
    """asyncio's "exception was never retrieved" for a checkpoint write that failed (the failure
    itself is reported once, by ``Saver``)."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        if "never retrieved" not in message:
            return True
        if "Error writing" in message or "OCDBT" in message:  # TensorStore's write errors
            return False
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if "/orbax/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
                return False
            tb = tb.tb_next
        return True


if not os.environ.get("AVP_DEBUG"):
    import logging as _std_logging

    logging.get_absl_logger().addFilter(_QuietOrbaxErrors())
    _std_logging.getLogger("asyncio").addFilter(_QuietOrbaxFutures())


def _grain():
    """grain, imported by the training paths only (exported models and params load without it)."""
    import grain

    return grain


def manager(directory, *, keep: int = 3, every: int = 1000, async_save: bool = True) -> ocp.CheckpointManager:
    """Also removes the unfinished saves (temporary directories) a killed run left behind."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                           enable_async_checkpointing=async_save, create=True,
                                           cleanup_tmp_directories=True)
    if jax.process_count() > 1:  # a save that fails on one process ends on all (``_abortable_barrier``)
        options.async_options = ocp.options.AsyncOptions(barrier_sync_fn=_abortable_barrier)
    return ocp.CheckpointManager(epath.Path(directory).absolute(), options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "data": ocp.JsonCheckpointHandler(),
                                                "iter": _grain().checkpoint.CheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state: dict, iterator=None, *, data: dict | None = None,
         force: bool = False) -> bool:
    """``state``; ``data``: the input position (``{"examples": N, ...}``, see ``data.order``);
    ``iterator``: a grain iterator whose state is per process (methods with their own streams)."""
    items = {"state": ocp.args.StandardSave(state)}
    if data is not None:
        items["data"] = ocp.args.JsonSave(data)
    if iterator is not None:
        items["iter"] = _grain().checkpoint.CheckpointSave(iterator)
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


class SaveFailedError(RuntimeError):
    pass


def _cause(error: Exception) -> str:
    """A failed save's error, its operating-system cause first: TensorStore reports a full disk as
    ``RESOURCE_EXHAUSTED: Error writing "<array>" ... <path>: ... No space left on device
    [os_error_code='28']``, hundreds of characters before the point."""
    text = str(error)
    found = re.search(r"([A-Z][A-Za-z ,'-]+?) \[os_error_code='(\d+)'\]", text)
    if found:
        return f"{found.group(1)} (errno {found.group(2)}; {type(error).__name__}: {text.splitlines()[0][:100]}…)"
    return f"{type(error).__name__}: {text}"


# -- integrity: what a crash, a torn copy or a cleanup can leave behind --------------------------------
# Orbax writes a step into a temporary directory and renames it when complete, so a killed save leaves
# no step behind. What it cannot see is a finished step damaged afterwards: files truncated or deleted
# (a crash of the file system, a partial copy, a cleanup). After each save completes, process 0
# records every file of the step with its size; a restore checks the record (and that the metadata
# parses) before reading, identically on every process (they read the same shared directory), so
# all processes agree on the step to restore without a collective. Flipped bits inside a file of the
# right size are not detected here: TensorStore does not checksum the arrays' chunks.
FILES_NAME = "avpretrain_files.json"
REJECTED_NAME = "rejected_checkpoints"  # beside checkpoints/: steps moved aside, never deleted


class CheckpointUnusableError(ValueError):
    """No checkpoint of a workdir that has some can be restored (each step's problem in the message)."""


def record_files(step_dir) -> None:
    """Writes ``FILES_NAME`` into a finished step: every file's path (relative) and size."""
    step_dir = epath.Path(step_dir)
    files = {str(f.relative_to(step_dir)): f.stat().length for f in _files(step_dir) if f.name != FILES_NAME}
    tmp = step_dir / (FILES_NAME + ".tmp")
    tmp.write_text(json.dumps(files, indent=0, sort_keys=True))
    tmp.rename(step_dir / FILES_NAME)


def _files(directory: epath.Path):
    """Every file under ``directory`` (epath has no recursive glob on all its backends)."""
    for entry in directory.iterdir():
        if entry.is_dir():
            yield from _files(entry)
        else:
            yield entry


def step_problem(step_dir) -> str | None:
    """Why the finished step ``step_dir`` cannot be restored, or None when it looks whole: a file
    recorded at save time that is missing or has another size, metadata that does not parse."""
    step_dir = epath.Path(step_dir)
    record = step_dir / FILES_NAME
    if record.exists():
        try:
            files = json.loads(record.read_text())
        except ValueError:
            return f"{FILES_NAME} does not parse"
        for name, size in sorted(files.items()):
            f = step_dir / name
            if not f.exists():
                return f"{name} is missing"
            if f.stat().length != size:
                return f"{name} is {f.stat().length} bytes, {size} when saved (truncated?)"
    for name in ("_CHECKPOINT_METADATA", "state/_METADATA"):
        f = step_dir / name
        if not f.exists():
            return f"{name} is missing"
        try:
            json.loads(f.read_text())
        except ValueError:
            return f"{name} does not parse"
    for f in sorted((step_dir / "iter").glob("*.json")) if (step_dir / "iter").exists() else ():
        try:
            json.loads(f.read_text())
        except ValueError:
            return f"iter/{f.name} does not parse"
    return None


# -- multi-process saves: one outcome on every process ------------------------------------------------
# Orbax's save threads meet at barriers (the write is complete everywhere; the save is finalized). A
# process whose write fails skips the first of them, so with plain barriers the others wait there
# until Orbax's timeout (20 min) and the failure surfaces on each process at a different step. Here
# the barriers are the coordination service's key-value store: a failing process publishes its
# cause, every waiting process then stops waiting, and ``Saver`` decides at steps that every process
# reaches (``sync_every``) from what each process reported there, so all stop at the same step.
_FAILED_PREFIX = "avpretrain/save_failed/"


class PeerSaveFailedError(RuntimeError):
    """This process's part of a save was abandoned because another process's part failed."""


def _publish_failure(error: BaseException) -> None:
    if not isinstance(error, PeerSaveFailedError):
        runtime.coordination_client().key_value_set(f"{_FAILED_PREFIX}{jax.process_index()}", _cause(error),
                                                    allow_overwrite=True)


def _peer_failures() -> dict[int, str]:
    entries = runtime.coordination_client().key_value_dir_get(_FAILED_PREFIX)
    return {int(k.rsplit("/", 1)[1]): v for k, v in entries}


def _abortable_barrier(*, key: str, timeout_ms: int) -> None:
    """Orbax's ``barrier_sync_fn``: waits until every process has arrived at ``key``, or raises
    PeerSaveFailedError as soon as a process has published a failure.

    Called while an exception propagates (Orbax reaches its barriers in ``finally`` clauses after a
    failed write), it publishes that failure and returns without waiting: the peers may never come.
    Polls with a growing interval (10 ms to 1 s): a handful of barriers per save."""
    import sys
    import time

    failing = sys.exc_info()[1]
    if failing is not None:
        _publish_failure(failing)
        return
    client, count = runtime.coordination_client(), jax.process_count()
    client.key_value_set(f"avpretrain/barrier/{key}/{jax.process_index()}", "1", allow_overwrite=True)
    deadline, pause = time.monotonic() + timeout_ms / 1000, 0.01
    while len(client.key_value_dir_get(f"avpretrain/barrier/{key}/")) < count:
        failures = _peer_failures()
        if failures:
            first = min(failures)
            raise PeerSaveFailedError(f"process {first} failed: {failures[first]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"checkpoint barrier {key!r}: not every process arrived in {timeout_ms / 1000:.0f} s")
        time.sleep(pause)
        pause = min(1.0, pause * 1.5)


class Saver:
    """Saves through ``mngr`` and stops at the first failed save, at the same step on every process.

    Orbax writes a checkpoint into a temporary directory in the background and renames it when
    done, so a failure (e.g. a full disk) surfaces later. ``check(step)`` (cheap: call it every
    step) raises SaveFailedError once the save in flight has failed, after removing its temporary
    directory; the previous checkpoint stays the latest.

    Several processes: the outcome is decided at steps that are multiples of ``sync_every`` and at
    every ``check(wait=True)`` (which all processes reach at the same steps): each process reports
    what it knows (still saving / done / failed and why) at the coordination service, and all
    decide from the same reports. A failure anywhere stops every process at the same step with the
    same message (the cause of the first failing process): the first agreed step after the failure
    surfaced on some process.
    """

    def __init__(self, mngr: ocp.CheckpointManager, *, sync_every: int = 1):
        self.mngr, self.in_flight, self.failed = mngr, None, False
        self.save_error = None  # a save that raised at once (several processes: decided at the next agreed step)
        self.sync_every = sync_every
        self.rounds = 0  # exchanges so far: the same sequence on every process

    def save(self, step: int, state: dict, iterator=None, *, data: dict | None = None, force: bool = False) -> None:
        self.check(step, wait=True)
        try:
            started = save(self.mngr, step, state, iterator, data=data, force=force)
        except Exception as e:
            self.in_flight = step
            if jax.process_count() == 1:
                self._decide(step, ("failed", _cause(e)), e)
            _publish_failure(e)  # the peers' save threads stop waiting for this process...
            self.save_error = e  # ...and all decide at the next agreed step
            return
        if started:
            self.in_flight = step

    def check(self, step: int | None = None, *, wait: bool = False) -> None:
        """Raises SaveFailedError if the save in flight failed; ``wait``: block until it is done.
        A save that completed gets its file record (``record_files``). ``step``: the training step
        (several processes decide at multiples of ``sync_every`` only; ``wait`` always decides)."""
        if self.in_flight is None:
            return
        several = jax.process_count() > 1
        if not wait and (step % self.sync_every if several else self.mngr.is_saving_in_progress()):
            return
        error = self.save_error
        if error is not None:
            local = ("failed", _cause(error))
        elif not wait and self.mngr.is_saving_in_progress():
            local = ("saving", "")
        else:
            try:
                self.mngr.wait_until_finished()
                local = ("done", "")
            except Exception as e:
                error, local = e, ("failed", _cause(e))
                if several:
                    _publish_failure(e)
        self._decide(step, local, error)

    def _decide(self, step, local: tuple[str, str], error: Exception | None) -> None:
        reports = self._exchange(local)
        failed = {i: cause for i, (state, cause) in reports.items() if state == "failed"}
        if failed:
            self._fail(self.in_flight, failed, error, step)
        if all(state == "done" for state, _ in reports.values()):
            done, self.in_flight = self.in_flight, None
            if jax.process_index() == 0:
                record_files(self.mngr.directory / str(done))

    def _exchange(self, local: tuple[str, str]) -> dict[int, tuple[str, str]]:
        """Every process's report, the same on every process (a barrier between writing and reading)."""
        if jax.process_count() == 1:
            return {0: local}
        self.rounds += 1
        prefix = f"avpretrain/save_reports/{self.rounds}/"
        client = runtime.coordination_client()
        client.key_value_set(f"{prefix}{jax.process_index()}", json.dumps(local))
        runtime.barrier(f"avpretrain-save-report-{self.rounds}")
        return {int(k.rsplit("/", 1)[1]): tuple(json.loads(v)) for k, v in client.key_value_dir_get(prefix)}

    def _fail(self, step: int, failed: dict[int, str], error: Exception | None, now: int | None):
        self.failed = True
        several = jax.process_count() > 1
        if several:
            try:  # every process's save threads end (their barriers give up), before the clean-up
                self.mngr.wait_until_finished()
            except Exception:
                pass
            runtime.barrier(f"avpretrain-save-failed-{self.rounds}")
            # after the barrier every root cause is published (no save thread runs any more), so all
            # processes read the same ones; not the processes that gave up because of them
            causes = _peer_failures() or failed
            first = min(causes)
            cause = f"{causes[first]} (process {first} of {jax.process_count()})"
        else:
            cause = failed[0]
        if jax.process_index() == 0:
            for tmp in ocp.path.step.all_temporary_paths(self.mngr.directory):
                tmp.get().rmtree()
        if several:
            runtime.barrier(f"avpretrain-save-cleaned-{self.rounds}")
        self.mngr.reload()
        latest = self.mngr.latest_step()
        raise SaveFailedError(f"checkpoint save at step {step} failed: {cause}; "
                              + (f"stopped at step {now}; " if now is not None else "") + "the latest "
                              f"good checkpoint is " + (f"step {latest}" if latest is not None else "none")
                              + f" ({self.mngr.directory})") from error

    def close(self) -> None:
        if not self.failed:  # a failed manager raises the error again on close (its threads have ended)
            self.mngr.close()


def restore_latest(mngr: ocp.CheckpointManager, like_state: dict, iterator=None, *,
                   log=print) -> tuple[int, dict | None]:
    """(step, state) of the latest usable checkpoint, (0, None) when there is none
    (``saved_data(mngr, step)`` then reads its input position).

    A damaged later step (``step_problem``) is passed over with a warning and moved aside into
    ``<workdir>/rejected_checkpoints/<step>`` once an earlier one has restored, so that the run can
    save that step again. When every step is damaged, nothing is moved and CheckpointUnusableError
    names each one's problem: a run never starts from scratch over checkpoints it could not read.
    A step that looks whole but fails to restore raises with the step and the fix.
    """
    directory = epath.Path(mngr.directory)
    rejected = []
    for step in sorted(mngr.all_steps(), reverse=True):
        problem = step_problem(directory / str(step))
        if problem:
            log(f"warning: checkpoint step {step} is damaged ({directory / str(step)}: {problem}); "
                "trying the one before")
            rejected.append((step, problem))
            continue
        try:
            state = restore(mngr, step, like_state, iterator)
        except Exception as e:
            raise CheckpointUnusableError(
                f"checkpoint step {step} in {directory} looks whole but does not restore "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); move {directory / str(step)} "
                "aside to resume from the one before") from e
        if rejected:
            _move_aside(mngr, rejected)
            log(f"resuming from step {step}; damaged later steps moved to {directory.parent / REJECTED_NAME}")
        return step, state
    if rejected:
        raise CheckpointUnusableError(
            f"no usable checkpoint in {directory}: " + "; ".join(f"step {s}: {p}" for s, p in rejected)
            + ". Nothing was changed; move the checkpoints directory away to start from scratch")
    return 0, None


def _move_aside(mngr: ocp.CheckpointManager, rejected) -> None:
    directory = epath.Path(mngr.directory)
    if jax.process_index() == 0:
        aside = directory.parent / REJECTED_NAME
        aside.mkdir(parents=True, exist_ok=True)
        for step, problem in rejected:
            target = aside / str(step)
            n = 1
            while target.exists():  # a step rejected again in a later run
                target, n = aside / f"{step}.{n}", n + 1
            (directory / str(step)).rename(target)
            (target / "REJECTED.txt").write_text(problem + "\n")
    runtime.barrier("avpretrain-damaged-checkpoints-moved")  # the coordination service: no device collective yet
    mngr.reload()


def restore(mngr: ocp.CheckpointManager, step: int, like_state: dict, iterator=None) -> dict:
    """Restores onto the shardings of ``like_state`` (and the iterator in place, when given: it must
    have been saved by as many processes as there are now)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if iterator is not None:
        saved = saved_process_count(mngr, step)
        if saved is not None and saved != jax.process_count():
            raise ValueError(f"checkpoint step {step} ({mngr.directory}) holds the input iterators of {saved} "
                             f"processes and this run has {jax.process_count()}: a method that reads several "
                             f"datasets resumes on {saved} processes only")
        items["iter"] = _grain().checkpoint.CheckpointRestore(iterator)
    return mngr.restore(step, args=ocp.args.Composite(**items))["state"]


def saved_data(mngr: ocp.CheckpointManager, step: int) -> dict | None:
    """The input position saved with ``step`` (``{"examples": N, "batch_size": B, "process_count": P}``),
    None for a checkpoint without one (saved before positions were)."""
    if not (epath.Path(mngr.directory) / str(step) / "data").exists():
        return None
    return dict(mngr.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"])


def saved_process_count(mngr: ocp.CheckpointManager, step: int) -> int | None:
    """How many processes saved the grain iterator states of ``step`` (None: none saved)."""
    names = [f.name for f in (epath.Path(mngr.directory) / str(step) / "iter").glob("process_*-of-*.json")]
    return int(names[0].rsplit("-of-", 1)[1].removesuffix(".json")) if names else None


def _partial_restore(handler_dir, item_name, like: dict, step):
    """``like``'s subtree of item ``item_name`` (None: a bare PyTree checkpoint) at ``handler_dir``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True)
    if item_name is None:
        restored = ocp.PyTreeCheckpointer().restore(epath.Path(handler_dir).absolute(), args=args)
    else:
        mngr = ocp.CheckpointManager(epath.Path(handler_dir).absolute(),
                                     item_handlers={item_name: ocp.PyTreeCheckpointHandler()})
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {handler_dir}")
        restored = mngr.restore(step, args=ocp.args.Composite(**{item_name: args}))[item_name]
        mngr.close()
    # a partial restore hands back what it did not find as it was asked for (shapes, no values)
    unread = ["/".join(str(getattr(k, "key", k)) for k in path)
              for path, leaf in jax.tree_util.tree_leaves_with_path(restored) if isinstance(leaf, jax.ShapeDtypeStruct)]
    if unread:
        raise ValueError(f"{handler_dir} does not hold {len(unread)} of the arrays asked for, e.g. "
                         f"{', '.join(unread[:3])}")
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
