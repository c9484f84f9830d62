"""One generic trainer: config → mesh → data → sharded state → jitted step → metrics + Orbax.

The method (``avpretrain.method``: its model, batch fields, front end, step body, init sources)
owns the path from batch to loss; this loop owns what every method shares: the mesh, the state,
the data iterator, the jitted step (``step.make_train_step``), checkpoints with the grain iterator,
automatic resume (refusing a config that its checkpoints do not fit), SIGTERM / Ctrl-C handling,
stops on a non-finite loss (never checkpointing the bad state) and at the first failed checkpoint
save, and logging (metrics; the method's images, ``Method.images``, every ``image_every`` steps).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import signal
import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

import avpretrain
from avpretrain import frontend, method as method_lib, metrics as metrics_lib, runtime, sharding, step as step_lib
from avpretrain import validation
from avpretrain import workdir as workdir_lib
from avpretrain.data import pipeline
# Orbax, grain and TFDS (checkpoint, data.source) are imported by the functions that use them.


class NonFiniteLossError(RuntimeError):
    pass


def make_mesh(config):
    return sharding.make_mesh(config.mesh)


# -- the loop -----------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    step: int
    losses: dict  # step -> loss, for the steps this run logged
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT": checkpointed at ``step`` on a signal; "early stop"


def train(config, workdir: str, *, stop_at: int | None = None) -> TrainResult:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint if there is one.

    ``stop_at`` ends this run early (checkpointing there) without changing the schedule.
    """
    signals = _StopSignals()  # first: a signal during start-up or compilation is not lost
    try:
        return _train(config, pathlib.Path(workdir), stop_at, signals)
    finally:
        signals.restore()


def _train(config, workdir, stop_at, signals) -> TrainResult:
    from avpretrain import checkpoint
    from avpretrain.data import source as source_lib

    mesh = make_mesh(config)
    rules = config.sharding_rules
    if config.batch_size % sharding.data_parallel_size(mesh, rules):
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the "
                         f"{sharding.data_parallel_size(mesh, rules)} data-parallel devices of {config.mesh}")
    method = method_lib.of(config)
    if method.train_data is None:  # a method with its own stream checks its datasets in prepare
        source_lib.find_dataset_dir(config.data.dir)  # a clear error before anything is written
    if method.prepare:
        method.prepare(config)
    validation.check_config(config)
    changes = workdir_lib.config_changes(workdir, config)  # refuses an incompatible resume, writes nothing
    if changes:
        metrics_lib.log(workdir_lib.describe_changes(workdir, changes, workdir_lib.stored_norm_stats(config, workdir)))
    stop = stop_at if stop_at is not None else config.total_steps
    saved_steps = workdir_lib.checkpointed_steps(workdir)  # a damaged one too: then init and compile come later
    # Start-up overlaps XLA's work, which runs without Python's lock, with the Python work: the init
    # program loads and runs (a fresh run only) while the data streams are opened and the step is
    # traced against the abstract state, and the step compiles (or loads from the cache) while the
    # statistics are computed and a resume restores. (XLA's compile itself keeps ~1.7 of 2 CPU
    # cores busy; loading from the cache, one.)
    plan = step_lib.plan_train_state(config, mesh)
    graphdef = plan.graphdef
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="avpretrain-start") as background:
        initializing = None if saved_steps else background.submit(plan.initialize)
        # A method with its own streams checkpoints their grain iterators (per process); the shared
        # pipeline is positioned by the examples consumed (data.order), on any process count. Both are
        # opened before the step is traced and anything is written (a dataset that lacks a field is a
        # clear error).
        own_stream = iter(method.train_data(config)) if method.train_data else None
        stream = None if own_stream else pipeline.global_stream(config)
        train_step, state_sharding, batch_sharding = step_lib.make_train_step(config, mesh, graphdef, plan.abstract)
        compiling = None
        if max(saved_steps, default=0) < stop:  # else nothing to train (unless the latest step is damaged)
            metrics_lib.log("compiling the train step (or loading it from the compilation cache)")
            compiling = background.submit(_compile, _lower(train_step, plan.abstract, config, batch_sharding, mesh))
        # the init program's device work ends before the statistics' (one order on every process)
        fresh = initializing.result() if initializing else None
        norm_stats = frontend.load_or_compute_norm_stats(config, workdir) if method.needs_stats else None
        step_inputs = step_lib.StepInputs(config, norm_stats)
        images_fn = (make_images_fn(config, mesh, graphdef, state_sharding, batch_sharding, norm_stats)
                     if method.images else None)
        validator = (validation.Validator(config, workdir, mesh, graphdef, state_sharding, batch_sharding, norm_stats)
                     if config.get("eval_every", 0) else None)
        clip_seconds = method_lib.clip_seconds(config)

        mngr = checkpoint.manager(workdir / workdir_lib.CHECKPOINTS_NAME, keep=config.keep_checkpoints,
                                  every=config.checkpoint_every)
        # restored onto the abstract state's shardings: a resume never computes a fresh state
        start, restored = checkpoint.restore_latest(mngr, nnx.to_pure_dict(plan.abstract), own_stream,
                                                    log=metrics_lib.log)
        examples = 0
        if start:
            state = jax.tree.map(lambda x: x, plan.abstract)
            nnx.replace_by_pure_dict(state, restored)
            position = checkpoint.saved_data(mngr, start)  # None: saved before positions were (constant batch assumed)
            examples = int(position["examples"]) if position else start * config.batch_size
            moved = (f"; saved by {position['process_count']} processes, now {jax.process_count()}"
                     if position and position["process_count"] != jax.process_count() else "")
            metrics_lib.log(f"resumed from {workdir / workdir_lib.CHECKPOINTS_NAME} at step {start}"
                            + ("" if own_stream else f" (after {examples} examples{moved})"))
        else:
            state = fresh if fresh is not None else plan.initialize()
            step_lib.initialize_from(config, state)
        compiled, compile_s = compiling.result() if compiling else (None, None)
    iterator = own_stream or iter(pipeline.batched(stream, config, start=examples))
    if jax.process_index() == 0:  # only now: a resume that fails to restore leaves the workdir as it was
        workdir_lib.write_config(workdir, config, changes, start)

    if validator is not None:
        if validator.stopped_early(start):
            metrics_lib.log(f"{workdir}: stopped early at step {start} ({validation.summary(workdir)}); nothing to do")
            return TrainResult(start, {}, stopped_by="early stop")
        validator.resume(start)
        if start and validator.due(start, stop) and not validator.evaluated(start):  # its record was lost
            validator.evaluate(start, state)
            validator.commit()
    writer = metrics_lib.MetricWriter(workdir, config.total_steps, resumed_step=start)
    saver = checkpoint.Saver(mngr, sync_every=config.log_every)
    losses, pending, flags = {}, [], []
    step, t_last, steps_timed = start, None, 0

    saved = [start]

    def checkpoint_now(step, force):
        _check_finite(flags, step)
        if saved[0] != step:
            position = {"examples": examples + (step - start) * config.batch_size, "batch_size": config.batch_size,
                        "process_count": jax.process_count()}
            saver.save(step, nnx.to_pure_dict(state), own_stream, data=position, force=force)
            saved[0] = step

    synced = False
    try:
        while step < stop:
            batch = pipeline.to_global(next(iterator), batch_sharding)
            with sharding.mesh_rules(mesh, rules):
                if compiled is None:  # a damaged latest checkpoint put the start before it
                    metrics_lib.log("compiling the train step (or loading it from the compilation cache)")
                    compiled, compile_s = _compile(_lower(train_step, state, config, batch_sharding, mesh))
                if not synced:
                    runtime.release_host_memory()  # the compile's freed heap, before the first step's buffers
                    # Processes finish compiling minutes apart on a loaded host; CPU collectives (gloo)
                    # connect at the first step with a fixed timeout, so they start it together.
                    runtime.barrier("avpretrain-step-compiled")
                    synced = True
                state, out = compiled(state, batch, step_inputs(step))
            if step == start:
                jax.block_until_ready(out)
                metrics_lib.log(f"first step done {time.time() - avpretrain.STARTED:.1f} s after start "
                                f"(step compiled or loaded from the cache in {compile_s:.1f} s)")
            step += 1
            flags.append(out.pop("finite"))
            pending.append((step, out))
            if step % config.log_every == 0 or step == stop:
                fetched = jax.device_get(pending)
                _check_finite(flags, step)
                now = time.time()
                for s, m in fetched:
                    losses[s] = float(m["loss"])
                record = {k: float(v) for k, v in fetched[-1][1].items()}
                if t_last is not None:
                    dt = (now - t_last) / steps_timed
                    record.update(step_time=dt, examples_per_s=config.batch_size / dt,
                                  audio_hours_per_s=config.batch_size * clip_seconds / 3600 / dt)
                writer.write(step, record)
                pending.clear()
                t_last, steps_timed = now, 0
            if images_fn is not None and _images_due(config, step, stop):  # this step's batch, the state after it
                with sharding.mesh_rules(mesh, rules):
                    writer.write_images(step, jax.device_get(images_fn(state, batch)))
            steps_timed += 1
            saver.check(step)
            if signals.synced(step):
                metrics_lib.log(f"{signals.name}: saving a checkpoint at step {step} and exiting")
                checkpoint_now(step, force=True)
                saver.check(step, wait=True)
                return TrainResult(step, losses, stopped_by=signals.name)
            if validator is not None and validator.due(step, stop):
                # the training checkpoint of this step first: selected.json never names a step beyond it
                checkpoint_now(step, force=True)
                with sharding.mesh_rules(mesh, rules):
                    entry = validator.evaluate(step, state)
                writer.write_scalars(step, {f"val_{k}": v for k, v in entry.items() if k not in ("step", "path")})
                saver.check(step, wait=True)
                validator.commit()
                if validator.stop_now:
                    metrics_lib.log(f"early stop at step {step}: {validation.summary(workdir)}")
                    return TrainResult(step, losses, stopped_by="early stop")
            if step % config.checkpoint_every == 0 or step == stop:
                checkpoint_now(step, force=step == stop)
        saver.check(step, wait=True)
    finally:
        writer.close()
        saver.close()
    return TrainResult(step, losses)


def _lower(train_step, state, config, batch_sharding, mesh) -> jax.stages.Lowered:
    """The step traced for ``state``'s shapes and the method's declared batch fields. The inputs'
    values are not in the program (``StepInputs``): placeholder statistics lower the same step."""
    inputs = step_lib.StepInputs(config, (0.0, 1.0) if method_lib.of(config).needs_stats else None)(0)
    with sharding.mesh_rules(mesh, config.sharding_rules):
        return train_step.lower(state, step_lib.batch_shapes(config, batch_sharding), inputs)


def _compile(lowered: jax.stages.Lowered):
    """(the step compiled, or loaded from the persistent cache, seconds taken)."""
    t0 = time.time()
    return lowered.compile(), time.time() - t0


def make_images_fn(config, mesh, graphdef, state_sharding, batch_sharding, norm_stats):
    """The jitted ``(state, batch) -> Method.images(model, front end(batch))``, its outputs replicated
    so that every process can fetch them; compiled at its first call."""
    method = method_lib.of(config)

    def images(state, batch):
        model = nnx.merge(graphdef, state).model
        return method.images(model, frontend.apply(method.frontend, batch, norm_stats))

    with sharding.mesh_rules(mesh, config.sharding_rules):
        return jax.jit(images, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _images_due(config, step, stop) -> bool:
    """``image_every`` N > 0: every N steps; 0: at each checkpoint save (every ``checkpoint_every`` steps and the last)."""
    every = config.get("image_every", 0)
    if every:
        return step % every == 0
    return step % config.checkpoint_every == 0 or step == stop


def _check_finite(flags, step):
    """Raises if any step since the last check had a non-finite loss or gradient; clears ``flags``."""
    ok = not flags or bool(np.all(jax.device_get(flags)))
    flags.clear()
    if not ok:
        raise NonFiniteLossError(f"non-finite loss or gradient by step {step}: stopping without "
                                 "checkpointing this state (lower optim.base_lr, check the data, or "
                                 "resume from the last good checkpoint)")


class _StopSignals:
    """SIGTERM and SIGINT (Ctrl-C): every process saves the same step and exits; a second SIGINT
    raises KeyboardInterrupt at once (Python's own handler is back after the first).

    Single process: Python handlers record the signal. Multi-process: ``jax.distributed.initialize()``
    installed JAX's SIGTERM notifier, whose coordination service agrees on a step (no device
    collective, no host sync per step); a SIGINT is passed to it as a SIGTERM of this process, so a
    Ctrl-C that reaches only some processes stops all of them at one step. An ignored SIGINT (a
    background job; launch/cpu_multiprocess.sh forwards Ctrl-C as SIGTERM) stays ignored.
    """

    def __init__(self):
        self.distributed = jax.distributed.is_initialized()
        self.received = None
        self.previous = {}
        for signum in (signal.SIGINT,) if self.distributed else (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(signum) not in (signal.SIG_IGN, None):  # None: a handler not set from Python
                self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, _):
        self.received = self.received or signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self.previous.pop(signal.SIGINT))
            if self.distributed:
                os.kill(os.getpid(), signal.SIGTERM)

    @property
    def name(self) -> str:
        return self.received or "SIGTERM"  # multi-process: the notice may come from another process

    def synced(self, step) -> bool:
        if self.distributed:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    def restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
