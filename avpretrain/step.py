"""The train state and the jitted step, shared by the trainer (``train.py``) and the bench.

``make_train_step`` wraps a method's step body (``Method.update``, default ``default_update``) with
what every method shares: the front end on device, the step's RNG, the learning-rate metric and the
finiteness flag; the state is donated and keeps its shardings.

The schedules, the seed and the front end's statistics are inputs of the compiled step, not
constants in it (``StepInputs``): runs that differ only in ``total_steps``, the learning rate, its
warm-up, the EMA range, the seed or the dataset's statistics run one compiled program, so a sweep
over them (and a test suite) compiles it once and loads it from the persistent cache after.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avpretrain import frontend, method as method_lib, metrics as metrics_lib, sharding
from avpretrain.models import vit


class TrainState(nnx.Module):
    def __init__(self, model, optimizer):
        self.model, self.opt = model, optimizer


def create_model(config, rngs, encoder_only: bool = False):
    return method_lib.of(config).create(config, rngs, encoder_only)


@dataclasses.dataclass(frozen=True)
class StatePlan:
    """The train state before it is computed, from one trace of its init program: ``graphdef``, the
    ``abstract`` state (``jax.ShapeDtypeStruct`` leaves carrying their shardings, from the params'
    logical axes) and the lowered ``init`` program. The trainer lowers the step and restores a
    checkpoint against ``abstract`` (a resume never runs ``init``) while ``initialize`` loads and
    runs the init program in the background."""
    graphdef: nnx.GraphDef
    abstract: nnx.State
    init: jax.stages.Lowered

    def initialize(self) -> nnx.State:
        """The fresh state (the seed's), computed directly on its shards (no full host copy)."""
        return jax.device_put(self.init.compile()(), jax.tree.map(lambda x: x.sharding, self.abstract))


def plan_train_state(config, mesh) -> StatePlan:
    """``config``'s train state planned on ``mesh`` (``StatePlan``), nothing computed yet."""
    graphdefs = []

    def init():
        model = create_model(config, nnx.Rngs(config.seed))
        graphdef, state = nnx.split(TrainState(model, make_optimizer(config, model)))
        graphdefs.append(graphdef)  # static: known once traced
        return state

    with sharding.mesh_rules(mesh, config.sharding_rules):
        traced = jax.jit(init).trace()
        specs = nnx.get_partition_spec(traced.out_info)  # logical axes through the ambient rules
        abstract = jax.tree.map(  # (a frozen group's optimizer state is optax's empty MaskedNode)
            lambda x, spec: x if isinstance(x, optax.MaskedNode) else
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(mesh, spec)),
            traced.out_info, specs, is_leaf=lambda x: isinstance(x, (jax.sharding.PartitionSpec, optax.MaskedNode)))
        return StatePlan(graphdefs[0], abstract, traced.lower())


def create_train_state(config, mesh) -> TrainState:
    """Model and optimizer, initialised directly on their shards (no full host copy)."""
    plan = plan_train_state(config, mesh)
    return nnx.merge(plan.graphdef, plan.initialize())


def learning_rates(config, steps) -> np.ndarray:
    """The learning rate at ``steps``: linear warm-up from 0 over ``optim.warmup_fraction`` of the
    steps, then cosine to 0 at ``total_steps`` (optax's ``warmup_cosine_decay_schedule``, same
    formula), in numpy on the host (``avpretrain aot`` has no device to run it on)."""
    peak = config.optim.base_lr * config.batch_size / 256
    warmup = max(int(config.optim.warmup_fraction * config.total_steps), 1)
    decay = max(config.total_steps, warmup + 1) - warmup  # at least one decay step, also for a 1-step run
    steps = np.asarray(steps, np.float64)
    rising = peak * np.clip(steps, 0, warmup) / warmup
    falling = peak * 0.5 * (1 + np.cos(np.pi * np.clip(steps - warmup, 0, decay) / decay))
    return np.where(steps < warmup, rising, falling)


def scale_by_lr(scale: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """``optax.scale_by_learning_rate`` with the learning rate given to each update (``lr=``, the
    step's input) instead of a schedule built into the program. Its state is the same as the
    scheduled one's (``ScaleByScheduleState``, the update count), so checkpoints are unchanged."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, lr, **extra):
        del params, extra
        factor = -scale * lr
        updates = jax.tree.map(lambda u: (factor * u).astype(u.dtype), updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


def _decayed(params):
    """Weight decay on the matrices (a block's own ndim > 1: a ``vit.Stack``'s leading layers axis not
    counted), not on biases, norms or other 1-D params."""
    return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim - vit.in_stack(path) > 1, params)


def make_optimizer(config, model):
    """Clip + AdamW (no decay on 1-D params) over the model's trainable params; the learning rate
    is each update's ``lr=`` (``StepInputs``).

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

    def adamw(scale):  # optax.adamw's chain, its learning rate given at each update
        return optax.chain(optax.scale_by_adam(b1=o.b1, b2=o.b2),
                           optax.add_decayed_weights(o.weight_decay, mask=_decayed),
                           scale_by_lr(scale))

    if any(m not in (0, 1) for m in mult.values()):
        def labels(params):
            return jax.tree_util.tree_map_with_path(lambda path, _: group_of((path[0].key,)), params)

        groups = {group_of(path) for path, _ in nnx.to_flat_state(nnx.state(model, wrt))}
        update = optax.multi_transform({g: adamw(mult.get(g, 1.0)) for g in groups}, labels)
    else:
        update = adamw(1.0)
    return nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(o.grad_clip), update), wrt=wrt)


def ema_decay(config, step) -> float:
    """Linear from ``ema.start`` to ``ema.end`` over training (M2D); 0 for a config without ``ema``."""
    ema = config.get("ema")
    if ema is None:
        return 0.0
    return ema.start + (ema.end - ema.start) * min(max(step / max(config.total_steps, 1), 0.0), 1.0)


class StepInputs:
    """What the compiled step takes besides the state and the batch, computed on the host for each
    step: ``step``, ``lr`` (``learning_rates``), ``ema_decay``, ``seed`` and the front end's
    ``norm_stats`` (mean, std; absent for a method without statistics)."""

    def __init__(self, config, norm_stats=None):
        self.config = config
        self.norm_stats = None if norm_stats is None else np.asarray(norm_stats, np.float32).reshape(2)

    def __call__(self, step: int) -> dict:
        inputs = {"step": np.int32(step), "lr": np.float32(learning_rates(self.config, step)),
                  "ema_decay": np.float32(ema_decay(self.config, step)), "seed": np.int32(self.config.seed)}
        if self.norm_stats is not None:
            inputs["norm_stats"] = self.norm_stats
        return inputs

    def shapes(self, mesh) -> dict:
        """The inputs as ``jax.ShapeDtypeStruct``, replicated over ``mesh`` (ahead-of-time lowering)."""
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=replicated),
                            self(0))


def batch_shapes(config, batch_sharding) -> dict:
    """The global batch the step takes (the method's declared fields), as shapes."""
    return {name: jax.ShapeDtypeStruct((config.batch_size, *f.shape), jnp.dtype(f.dtype), sharding=batch_sharding)
            for name, f in method_lib.of(config).inputs(config).items()}


def default_update(ts: TrainState, batch, rng, inputs, config) -> dict:
    """Gradients of ``model.loss`` w.r.t. the optimizer's params → optimizer update at the step's
    ``lr`` → EMA at its ``ema_decay`` (models with ``EMA = True``). Other state the loss mutates (e.g.
    codebook statistics) is kept as mutated."""
    del config

    def loss_fn(model):
        return model.loss(batch, rng)

    (loss, aux), grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, ts.opt.wrt), has_aux=True)(ts.model)
    ts.opt.update(ts.model, grads, lr=inputs["lr"])
    if getattr(type(ts.model), "EMA", False):
        ts.model.ema_update(inputs["ema_decay"])
    return {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}


def make_train_step(config, mesh, graphdef, state):
    """The jitted step ``(state, batch, inputs) -> (state, metrics)`` and its shardings (state, batch).

    ``inputs`` is ``StepInputs(config, norm_stats)(step)``. Front end → the method's step body →
    metrics with ``lr`` and ``finite`` (loss and gradient norm finite).
    """
    method = method_lib.of(config)
    update = method.update or default_update
    rules = config.sharding_rules
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = sharding.batch_sharding(mesh, rules)

    def step_fn(state, batch, inputs):
        ts = nnx.merge(graphdef, state)
        # the key made in the trace: nothing runs eagerly here (``avpretrain aot`` has no devices to run on)
        rng = jax.random.fold_in(jax.random.key(inputs["seed"]), inputs["step"])
        stats = (inputs["norm_stats"][0], inputs["norm_stats"][1]) if "norm_stats" in inputs else None
        out = update(ts, frontend.apply(method.frontend, batch, stats), rng, inputs, config)
        finite = jnp.isfinite(out["loss"])
        if "grad_norm" in out:
            finite &= jnp.isfinite(out["grad_norm"])
        return nnx.state(ts), {"lr": inputs["lr"], **out, "finite": finite}

    with sharding.mesh_rules(mesh, rules):
        jitted = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding, None),
                         out_shardings=(state_sharding, None), donate_argnums=0)
    return jitted, state_sharding, batch_sharding


def _restore_either_layout(path, like: dict) -> dict:
    """``like``'s params from ``path``; a ``model.scan_layers`` model's stacks also from a source in
    the per-block layout (every export, a workdir trained without it), stacked after reading."""
    from avpretrain import checkpoint

    try:
        return checkpoint.restore_params_from(path, like)
    except ValueError:
        paths = vit.stacks_in(like)
        if not paths:
            raise

    def layer(x, i):  # layer i of a stacked leaf, as the shape and sharding to read it onto
        spec = x.sharding.spec
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=jax.sharding.NamedSharding(
            x.sharding.mesh, jax.sharding.PartitionSpec(*spec[1:])))

    per_block = checkpoint.restore_params_from(path, vit.unstack_params(like, paths, take=layer))
    return jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                        vit.stack_params(per_block, paths), like)


def initialize_from(config, state) -> None:
    """Loads each of the method's init sources (``Method.init_sources``) into ``state``."""
    model = nnx.to_pure_dict(state)["model"]
    for src in method_lib.of(config).init_sources(config):
        node = model
        for part in src.into:
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"init source {src.path}: {'.'.join(src.into)} is not a part of this model")
            node = node[part]
        missing = [n for n in src.params if n not in node]
        if missing:
            where = "this model" if not src.into else f"model.{'.'.join(src.into)}"
            raise KeyError(f"config.init.params: {missing} are not attributes of {where}; it has {sorted(node)}")
        try:
            restored = _restore_either_layout(src.path, {n: node[n] for n in src.params})
        except ValueError as e:
            raise ValueError(f"init source {src.path}: cannot restore {src.params} into this model "
                             f"(do the architectures match?): {e}") from e
        node.update(restored)
        metrics_lib.log(f"initialised {', '.join(src.params)}"
                        f"{' of ' + '.'.join(src.into) if src.into else ''} from {src.path}")
    nnx.replace_by_pure_dict(state, {"model": model})
