"""The step's inputs (``step.StepInputs``): the schedules, seed and statistics are arguments of the
compiled step, so runs that differ only in them share one program; the optimizer is optax's AdamW
with its state unchanged (checkpoints of earlier versions restore)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from avpretrain import step as step_lib, train
from helpers import tiny_config


@pytest.mark.parametrize("total_steps,warmup_fraction", [(1, 0.05), (10, 0.3), (1000, 0.05)])
def test_learning_rates_are_optaxs_warmup_cosine_schedule(data_dir, total_steps, warmup_fraction):
    config = tiny_config(data_dir, total_steps=total_steps, **{"optim.warmup_fraction": warmup_fraction})
    peak = config.optim.base_lr * config.batch_size / 256
    warmup = max(int(warmup_fraction * total_steps), 1)
    reference = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), 0.0)
    steps = np.arange(total_steps + 1)
    np.testing.assert_allclose(step_lib.learning_rates(config, steps), np.asarray(reference(steps)),
                               rtol=1e-6, atol=1e-12)
    inputs = step_lib.StepInputs(config, (-7.0, 4.0))
    assert [inputs(s)["lr"] for s in steps] == list(step_lib.learning_rates(config, steps).astype(np.float32))


def test_ema_decay_runs_from_start_to_end(data_dir):
    config = tiny_config(data_dir, total_steps=10)
    inputs = step_lib.StepInputs(config)
    np.testing.assert_allclose([inputs(s)["ema_decay"] for s in (0, 5, 10)],
                               [config.ema.start, (config.ema.start + config.ema.end) / 2, config.ema.end], rtol=1e-7)
    assert "norm_stats" not in inputs(0) and list(step_lib.StepInputs(config, (1, 2))(0)["norm_stats"]) == [1, 2]


def _lowered_text(config, stats):
    mesh = train.make_mesh(config)
    graphdef, state = nnx.split(step_lib.create_train_state(config, mesh))
    fn, _, batch_sharding = step_lib.make_train_step(config, mesh, graphdef, state)
    return fn.lower(state, step_lib.batch_shapes(config, batch_sharding),
                    step_lib.StepInputs(config, stats).shapes(mesh)).as_text()


def test_schedules_seed_and_statistics_are_not_compiled_into_the_step(data_dir):
    """A sweep over them runs one program (and the suite compiles it once)."""
    a = _lowered_text(tiny_config(data_dir, total_steps=4), (-7.0, 4.0))
    b = _lowered_text(tiny_config(data_dir, total_steps=100, seed=3, **{
        "optim.base_lr": 1e-3, "optim.warmup_fraction": 0.5, "ema.start": 0.9, "ema.end": 0.95}), (-8.0, 3.6))
    assert a == b
    c = _lowered_text(tiny_config(data_dir, total_steps=4, **{"model.depth": 1}), (-7.0, 4.0))
    assert a != c  # the comparison can fail: the architecture is in the program


def _adamw_reference(config, model, schedule):
    o = config.optim
    return optax.chain(optax.clip_by_global_norm(o.grad_clip),
                       optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                                   mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)))


def test_the_optimizer_is_optax_adamw_with_the_same_state(data_dir):
    """Same state structure as ``optax.adamw`` with a schedule (checkpoints are unchanged) and the
    same updates when given the schedule's learning rate at each step."""
    config = tiny_config(data_dir, total_steps=10)
    ts = step_lib.create_train_state(config, train.make_mesh(config))
    model = ts.model
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, ts.opt.wrt)))  # one device
    lrs = np.asarray([step_lib.StepInputs(config)(s)["lr"] for s in range(3)])
    ours = ts.opt.tx
    theirs = _adamw_reference(config, model, lambda count: jnp.asarray(lrs)[count])
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
    rng = np.random.default_rng(0)
    for step in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        u_ours, s_ours = jax.jit(ours.update)(grads, s_ours, params, lr=lrs[step])
        u_theirs, s_theirs = jax.jit(theirs.update)(grads, s_theirs, params)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    assert int(s_ours[1][2].count) == 3


def test_the_planned_state_is_the_initialized_one_on_a_data_fsdp_tensor_mesh(data_dir):
    """``plan_train_state``'s abstract state (what a resume restores onto and the step is lowered
    for) has the shapes, dtypes and shardings of the state its init program computes."""
    config = tiny_config(data_dir, mesh=(("data", 2), ("fsdp", 2), ("tensor", 2)))
    plan = step_lib.plan_train_state(config, train.make_mesh(config))
    state = plan.initialize()
    abstract, real = jax.tree.leaves(plan.abstract), jax.tree.leaves(state)
    assert len(abstract) == len(real) > 100
    split = 0
    for a, r in zip(abstract, real, strict=True):
        assert (a.shape, a.dtype) == (r.shape, r.dtype)
        assert a.sharding.is_equivalent_to(r.sharding, r.ndim), (a.sharding, r.sharding)
        split += not r.sharding.is_fully_replicated
    assert split > 10  # the kernels are split over fsdp and tensor: the comparison is not of replicas
    # the seed's state: the same values from a second plan
    again = jax.tree.leaves(step_lib.plan_train_state(config, train.make_mesh(config)).initialize())
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(real, again))
