"""One generic trainer: config → mesh → data → sharded model → jitted step → metrics + Orbax.

The method lives in the model: ``model.loss(batch, rng) -> (loss, metrics)``, the class-level
``TRAINABLE`` filter, ``param_group`` (per-group learning rates / freezing) and, with ``EMA = True``,
``model.ema_update(decay)``. Everything else is shared:
log-mel front end on device, AdamW (no decay on 1-D params) with warmup + cosine, gradient
clipping, EMA schedule, checkpoints with the grain iterator, automatic resume (refusing a config
that its checkpoints do not fit), SIGTERM / Ctrl-C handling, and stops on a non-finite loss (never
checkpointing the bad state) and at the first failed checkpoint save.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

import avpretrain
from avpretrain import audio, metrics as metrics_lib, models, runtime, sharding
from avpretrain import workdir as workdir_lib
from avpretrain.data import pipeline
# Orbax, grain and TFDS (checkpoint, data.source) are imported by the functions that use them, so
# that `avpretrain bench` and the export/eval paths, which build models and steps, load none of them.


class NonFiniteLossError(RuntimeError):
    pass


class TrainState(nnx.Module):
    def __init__(self, model, optimizer):
        self.model, self.opt = model, optimizer


# -- pieces shared with export, bench and evaluation ------------------------------------------
def make_mesh(config):
    return sharding.make_mesh(config.mesh)


def create_train_state(config, mesh) -> TrainState:
    """Model and optimizer, initialised directly on their shards (no full host copy)."""

    def init():
        model = models.create(config, nnx.Rngs(config.seed))
        return TrainState(model, make_optimizer(config, model))

    with sharding.mesh_rules(mesh, config.sharding_rules):
        return nnx.jit(init)()


def learning_rate(config):
    peak = config.optim.base_lr * config.batch_size / 256
    warmup = max(int(config.optim.warmup_fraction * config.total_steps), 1)
    # at least one decay step after the warm-up (optax refuses zero), also for a 1-step run
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(config.total_steps, warmup + 1), 0.0)


def make_optimizer(config, model):
    """Clip + AdamW (no decay on 1-D params) over the model's trainable params.

    ``optim.lr_mult.<group>`` scales the learning rate of a parameter group (``model.param_group``,
    e.g. "encoder" / "head"); a multiplier of 0 freezes the group: no gradient, no optimizer state.
    """
    o = config.optim
    mult = {g: float(m) for g, m in dict(o.get("lr_mult", {})).items()}
    group_of = getattr(type(model), "param_group", None)
    wrt = getattr(type(model), "TRAINABLE", nnx.Param)
    if any(m < 0 for m in mult.values()):
        raise ValueError(f"optim.lr_mult={mult}: multipliers must be >= 0 (0 freezes a group)")
    if group_of is None and any(m != 1 for m in mult.values()):
        raise ValueError(f"optim.lr_mult={mult}: {type(model).__name__} has no parameter groups")
    frozen = {g for g, m in mult.items() if m == 0}
    if frozen:
        wrt = nnx.All(wrt, lambda path, _: group_of(path) not in frozen)
    schedule = learning_rate(config)

    def adamw(scale):
        lr = schedule if scale == 1 else (lambda step: scale * schedule(step))
        return optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                           mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params))

    if any(m not in (0, 1) for m in mult.values()):
        def labels(params):
            return jax.tree_util.tree_map_with_path(lambda path, _: group_of((path[0].key,)), params)

        groups = {group_of(path) for path, _ in nnx.to_flat_state(nnx.state(model, wrt))}
        update = optax.multi_transform({g: adamw(mult.get(g, 1.0)) for g in groups}, labels)
    else:
        update = adamw(1.0)
    return nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(o.grad_clip), update), wrt=wrt)


def ema_decay(config, step):
    """Linear from ``ema.start`` to ``ema.end`` over training (M2D)."""
    frac = jnp.clip(step / max(config.total_steps, 1), 0.0, 1.0)
    return config.ema.start + (config.ema.end - config.ema.start) * frac


def frontend(audio_BS, norm_stats):
    """float waveforms [B, S] → normalised log-mel [B, 1, 80, T], on device."""
    lms = audio.log_mel(audio_BS)
    return audio.normalize(lms, *norm_stats)[:, None]


def load_or_compute_norm_stats(config, workdir) -> tuple[float, float]:
    """The stored statistics (see ``workdir.stored_norm_stats``), else those of ``config.init.path`` (a model
    keeps the statistics it was trained with), else computed from random crops; saved in the workdir."""
    stored = workdir_lib.stored_norm_stats(config, workdir)
    if stored is not None:
        return stored
    if config.init.path:
        (mean, std), origin = workdir_lib.model_norm_stats(config.init.path), f"those of {config.init.path}"
    else:
        (mean, std), origin = compute_norm_stats(config), "random crops"
    path = pathlib.Path(workdir) / workdir_lib.NORM_STATS_NAME
    if jax.process_index() == 0:
        workdir_lib.write_norm_stats(workdir, mean, std, config.data.dir)
    metrics_lib.log(f"normalisation statistics ({origin}): mean={mean:.4f} std={std:.4f} -> {path}")
    return mean, std


def resolve_text_targets(config) -> None:
    """With ``data.use_captions``: fills ``data.text_model`` and ``model.text_dim`` from the stored
    caption embeddings of the training split (before config.json is written, so exports know them)."""
    if not config.data.use_captions:
        return
    from avpretrain.data import captions

    store = captions.CaptionEmbeddings.open(config.data.dir, config.data.split, config.data.text_model or None)
    if config.model.get("text_dim") and config.model.text_dim != store.dim:
        raise ValueError(f"config.model.text_dim={config.model.text_dim} but the caption embeddings of "
                         f"{store.model!r} in {config.data.dir} are {store.dim}-d")
    config.data.text_model, config.model.text_dim = store.model, store.dim


def initialize_from(config, state) -> None:
    """Replaces ``config.init.params`` (top-level model attributes) in ``state`` by those of the
    model at ``config.init.path`` (latest checkpoint of a training workdir, or an export)."""
    model = nnx.to_pure_dict(state)["model"]
    names = tuple(config.init.params)
    missing = [n for n in names if n not in model]
    if missing:
        raise KeyError(f"config.init.params: {missing} are not attributes of this model; it has {sorted(model)}")
    try:
        from avpretrain import checkpoint

        restored = checkpoint.restore_params_from(config.init.path, {n: model[n] for n in names})
    except ValueError as e:
        raise ValueError(f"config.init.path={config.init.path}: cannot restore {names} into this model "
                         f"(do the architectures match?): {e}") from e
    nnx.replace_by_pure_dict(state, {"model": restored})
    metrics_lib.log(f"initialised {', '.join(names)} from {config.init.path}")


def compute_norm_stats(config, num_batches: int | None = None) -> tuple[float, float]:
    """Mean/std of the log-mel over random training crops (all processes contribute)."""
    num_batches = num_batches or config.data.stats_batches
    it = iter(pipeline.train_dataset(config, seed=config.seed + 7919))
    lms_fn = jax.jit(lambda x: (audio.log_mel(x).mean(), (audio.log_mel(x) ** 2).mean()))
    sums = np.zeros(2)
    for _ in range(num_batches):
        sums += np.array(jax.device_get(lms_fn(next(it)["audio"])))
    sums = multihost_utils.process_allgather(sums).reshape(-1, 2).mean(0) / num_batches
    return float(sums[0]), float(np.sqrt(max(sums[1] - sums[0] ** 2, 1e-12)))


def make_train_step(config, mesh, graphdef, state, norm_stats):
    """The jitted step ``(state, {'audio': [B, S]}, step) -> (state, metrics)`` and its shardings.

    Front end → ``model.loss`` → grads of the trainable params → AdamW → EMA update, on device;
    the state is donated and keeps its shardings.
    """
    rules = config.sharding_rules
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    schedule = learning_rate(config)
    base_key = jax.random.key(config.seed)

    def step_fn(state, batch, step):
        ts = nnx.merge(graphdef, state)
        rng = jax.random.fold_in(base_key, step)
        batch = dict(batch, lms=frontend(batch["audio"], norm_stats))

        def loss_fn(model):
            return model.loss(batch, rng)

        (loss, aux), grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, ts.opt.wrt), has_aux=True)(ts.model)
        ts.opt.update(ts.model, grads)
        if getattr(type(ts.model), "EMA", False):
            ts.model.ema_update(ema_decay(config, step))
        grad_norm = optax.tree.norm(grads)
        out = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(step), **aux,
               "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
        return nnx.state(ts), out

    with sharding.mesh_rules(mesh, rules):
        jitted = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding, None),
                         out_shardings=(state_sharding, None), donate_argnums=0)
    return jitted, state_sharding, batch_sharding


# -- the loop -----------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    step: int
    losses: dict  # step -> loss, for the steps this run logged
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT": checkpointed at ``step`` on a signal


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
    source_lib.find_dataset_dir(config.data.dir)  # a clear error before anything is written
    resolve_text_targets(config)
    changes = workdir_lib.config_changes(workdir, config)  # refuses an incompatible resume, writes nothing
    if changes:
        metrics_lib.log(workdir_lib.describe_changes(workdir, changes, workdir_lib.stored_norm_stats(config, workdir)))
    norm_stats = load_or_compute_norm_stats(config, workdir)

    train_state = create_train_state(config, mesh)
    graphdef, state = nnx.split(train_state)
    train_step, _, batch_sharding = make_train_step(config, mesh, graphdef, state, norm_stats)
    clip_seconds = pipeline.clip_samples(config) / config.data.sample_rate

    data = pipeline.train_dataset(config)
    iterator = iter(data)
    mngr = checkpoint.manager(workdir / workdir_lib.CHECKPOINTS_NAME, keep=config.keep_checkpoints,
                              every=config.checkpoint_every)
    start = mngr.latest_step() or 0
    if start:
        restored = checkpoint.restore(mngr, start, nnx.to_pure_dict(state), iterator)
        nnx.replace_by_pure_dict(state, restored)
        metrics_lib.log(f"resumed from {workdir / workdir_lib.CHECKPOINTS_NAME} at step {start}")
    elif config.init.path:
        initialize_from(config, state)
    if jax.process_index() == 0:  # only now: a resume that fails to restore leaves the workdir as it was
        workdir_lib.write_config(workdir, config, changes, start)

    stop = stop_at if stop_at is not None else config.total_steps
    writer = metrics_lib.MetricWriter(workdir, config.total_steps, resumed_step=start)
    saver = checkpoint.Saver(mngr)
    losses, pending, flags = {}, [], []
    step, t_last, steps_timed = start, None, 0

    def checkpoint_now(step, force):
        _check_finite(flags, step)
        saver.save(step, nnx.to_pure_dict(state), iterator, force=force)

    compiled = None
    try:
        while step < stop:
            batch = pipeline.to_global(next(iterator), batch_sharding)
            with sharding.mesh_rules(mesh, rules):
                if compiled is None:  # ahead of time, so that the compile's freed memory goes back first
                    t0 = time.time()
                    compiled = train_step.lower(state, batch, jnp.asarray(step, jnp.int32)).compile()
                    compile_s = time.time() - t0
                    runtime.release_host_memory()
                state, out = compiled(state, batch, jnp.asarray(step, jnp.int32))
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
            steps_timed += 1
            saver.check()
            if signals.synced(step):
                metrics_lib.log(f"{signals.name}: saving a checkpoint at step {step} and exiting")
                checkpoint_now(step, force=True)
                saver.check(wait=True)
                return TrainResult(step, losses, stopped_by=signals.name)
            if step % config.checkpoint_every == 0 or step == stop:
                checkpoint_now(step, force=step == stop)
        saver.check(wait=True)
    finally:
        writer.close()
        saver.close()
    return TrainResult(step, losses)


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
