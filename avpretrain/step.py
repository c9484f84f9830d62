"""The train state and the jitted step, shared by the trainer (``train.py``) and the bench.

``make_train_step`` wraps a method's step body (``Method.update``, default ``default_update``) with
what every method shares: the front end on device, the step's RNG, the learning-rate metric and the
finiteness flag; the state is donated and keeps its shardings.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from avpretrain import frontend, method as method_lib, metrics as metrics_lib, sharding


class TrainState(nnx.Module):
    def __init__(self, model, optimizer):
        self.model, self.opt = model, optimizer


def create_model(config, rngs, encoder_only: bool = False):
    return method_lib.of(config).create(config, rngs, encoder_only)


def create_train_state(config, mesh) -> TrainState:
    """Model and optimizer, initialised directly on their shards (no full host copy)."""

    def init():
        model = create_model(config, nnx.Rngs(config.seed))
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


def default_update(ts: TrainState, batch, rng, step, config) -> dict:
    """Gradients of ``model.loss`` w.r.t. the optimizer's params → optimizer update → EMA (models with
    ``EMA = True``). Other state the loss mutates (e.g. codebook statistics) is kept as mutated."""

    def loss_fn(model):
        return model.loss(batch, rng)

    (loss, aux), grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, ts.opt.wrt), has_aux=True)(ts.model)
    ts.opt.update(ts.model, grads)
    if getattr(type(ts.model), "EMA", False):
        ts.model.ema_update(ema_decay(config, step))
    return {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}


def make_train_step(config, mesh, graphdef, state, norm_stats):
    """The jitted step ``(state, batch, step) -> (state, metrics)`` and its shardings (state, batch).

    Front end → the method's step body → metrics with ``lr`` and ``finite`` (loss and gradient norm
    finite); ``norm_stats`` is what the front end's statistics ops use (None when it has none).
    """
    method = method_lib.of(config)
    update = method.update or default_update
    rules = config.sharding_rules
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    schedule = learning_rate(config)

    def step_fn(state, batch, step):
        ts = nnx.merge(graphdef, state)
        # the key made in the trace: nothing runs eagerly here (``avpretrain aot`` has no devices to run on)
        rng = jax.random.fold_in(jax.random.key(config.seed), step)
        out = update(ts, frontend.apply(method.frontend, batch, norm_stats), rng, step, config)
        finite = jnp.isfinite(out["loss"])
        if "grad_norm" in out:
            finite &= jnp.isfinite(out["grad_norm"])
        return nnx.state(ts), {"lr": schedule(step), **out, "finite": finite}

    with sharding.mesh_rules(mesh, rules):
        jitted = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding, None),
                         out_shardings=(state_sharding, None), donate_argnums=0)
    return jitted, state_sharding, batch_sharding


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
            from avpretrain import checkpoint

            restored = checkpoint.restore_params_from(src.path, {n: node[n] for n in src.params})
        except ValueError as e:
            raise ValueError(f"init source {src.path}: cannot restore {src.params} into this model "
                             f"(do the architectures match?): {e}") from e
        node.update(restored)
        metrics_lib.log(f"initialised {', '.join(src.params)}"
                        f"{' of ' + '.'.join(src.into) if src.into else ''} from {src.path}")
    nnx.replace_by_pure_dict(state, {"model": model})
