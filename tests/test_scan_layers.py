"""``model.scan_layers``: the blocks' parameters stacked and run as one scan compute what the block
list computes, shard like it, decay like it, train, and export in the per-block layout."""
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from avpretrain import export, sharding, step as step_lib, train
from avpretrain.models import m2d, vit
from helpers import tiny_config

DIMS = dict(input_frames=64, width=64, depth=3, num_heads=2, pred_width=32, pred_depth=2, pred_heads=2)


def _pair(**extra):
    """(block-list M2D, scanned M2D holding the same parameters)."""
    with sharding.mesh_rules(sharding.single_device_mesh()):
        listed = m2d.M2D(rngs=nnx.Rngs(0), **DIMS, **extra)
        scanned = m2d.M2D(rngs=nnx.Rngs(1), scan_layers=True, **DIMS, **extra)
    paths = vit.stacks_in(nnx.to_pure_dict(nnx.state(scanned)))
    assert sorted(paths) == [("blocks",), ("decoder_blocks",), ("target_blocks",)]
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, vit.stack_params(nnx.to_pure_dict(nnx.state(listed)), paths))
    nnx.update(scanned, state)
    return listed, scanned


def _loss_and_grads(model, lms):
    def f(m):
        return m.loss({"lms": lms}, jax.random.key(3))[0]

    loss, grads = nnx.value_and_grad(f, argnums=nnx.DiffState(0, m2d.TRAINABLE))(model)
    return loss, nnx.to_pure_dict(grads)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_a_scanned_stack_computes_what_the_block_list_computes(remat):
    listed, scanned = _pair(remat=remat)
    lms = jax.random.normal(jax.random.key(2), (4, 1, 80, 64))
    loss_l, grads_l = _loss_and_grads(listed, lms)
    loss_s, grads_s = _loss_and_grads(scanned, lms)
    assert np.isfinite(float(loss_l))
    np.testing.assert_allclose(float(loss_s), float(loss_l), rtol=1e-6)
    grads_s = vit.unstack_params(grads_s, vit.stacks_in(grads_s))
    assert jax.tree.structure(grads_s) == jax.tree.structure(grads_l)
    assert float(jnp.abs(grads_l["blocks"][2]["mlp"]["fc1"]["kernel"]).max()) > 0
    for a, b in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads_l)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # every block's output (layer analysis, distillation): the scan's stacked outputs
    np.testing.assert_allclose(scanned.layer_columns(lms), listed.layer_columns(lms), rtol=1e-5, atol=1e-6)


def test_a_scanned_stack_honours_the_attention_mask():
    with sharding.mesh_rules(sharding.single_device_mesh()):
        listed = vit.blocks(2, 32, 4, 2.0, nnx.Rngs(0))
        scanned = vit.blocks(2, 32, 4, 2.0, nnx.Rngs(0), scan=True)
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, vit.stack_params({"s": nnx.to_pure_dict(nnx.state(listed))}, [("s",)])["s"])
    nnx.update(scanned, state)
    x = jax.random.normal(jax.random.key(0), (2, 5, 32))
    valid = jnp.array([[True] * 5, [True, True, True, False, False]])
    out = vit.apply_blocks(scanned, x, valid)
    np.testing.assert_allclose(out, vit.apply_blocks(listed, x, valid), rtol=1e-5, atol=1e-6)
    # padding keys are ignored: changing them changes nothing for the second clip
    x2 = x.at[1, 3:].set(100.0)
    np.testing.assert_allclose(vit.apply_blocks(scanned, x2, valid)[1, :3], out[1, :3], rtol=1e-5, atol=1e-5)


def test_scanned_params_shard_like_the_block_list_with_an_unsplit_layers_axis(data_dir):
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    plans = {scan: step_lib.plan_train_state(tiny_config(data_dir, **{"model.scan_layers": scan}), mesh)
             for scan in (False, True)}
    listed = nnx.to_pure_dict(plans[False].abstract)["model"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    stacked = nnx.to_pure_dict(plans[True].abstract)["model"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"]
    assert stacked.shape == (2, *listed.shape)
    assert tuple(listed.sharding.spec) == ("fsdp", "tensor")
    assert tuple(stacked.sharding.spec) == (None, "fsdp", "tensor")
    # the optimizer's moments follow the params
    mu = nnx.to_pure_dict(plans[True].abstract)["opt"]["opt_state"][1][0]["mu"]["blocks"]["layers"]["mlp"]["fc1"]
    assert tuple(mu["kernel"].sharding.spec) == (None, "fsdp", "tensor")


def test_weight_decay_skips_the_stacked_biases_and_norms():
    listed, scanned = _pair()
    mask_l = step_lib._decayed(nnx.to_pure_dict(nnx.state(listed, nnx.Param)))
    mask_s = step_lib._decayed(nnx.to_pure_dict(nnx.state(scanned, nnx.Param)))
    assert mask_s["blocks"]["layers"]["attn"]["qkv"]["kernel"] is True
    assert mask_s["blocks"]["layers"]["attn"]["qkv"]["bias"] is False
    assert mask_s["blocks"]["layers"]["norm1"]["scale"] is False
    for (name,) in vit.stacks_in(nnx.to_pure_dict(nnx.state(scanned))):
        assert mask_s.pop(name)["layers"] == mask_l.pop(name)[0]
    assert mask_s == mask_l and mask_s["decoder_embed"]["kernel"] is True


def test_a_scanned_run_trains_resumes_and_exports_per_block(tmp_path, data_dir):
    """4 steps in the stacked layout, then 2 more resumed from its checkpoint; the export is in the
    per-block layout (flag cleared) and its encoder gives what the trained scanned encoder gives."""
    config = tiny_config(data_dir, **{"model.scan_layers": True})
    result = train.train(config, str(tmp_path / "work"))
    assert result.step == 4 and all(np.isfinite(v) for v in result.losses.values())
    resumed = train.train(tiny_config(data_dir, **{"model.scan_layers": True, "total_steps": 6}),
                          str(tmp_path / "work"))
    assert resumed.step == 6
    trained = ocp.StandardCheckpointer().restore((tmp_path / "work" / "checkpoints" / "6" / "state").absolute())
    assert set(trained["model"]["blocks"]) == {"layers"}

    out = export.export(str(tmp_path / "work"), str(tmp_path / "encoder"))
    encoder = export.load_pretrained(str(out))
    assert encoder.config.model.scan_layers is False
    loaded = nnx.to_pure_dict(nnx.state(encoder.model))
    assert sorted(loaded["blocks"]) == [0, 1]
    np.testing.assert_array_equal(loaded["blocks"][1]["mlp"]["fc2"]["kernel"],
                                  trained["model"]["blocks"]["layers"]["mlp"]["fc2"]["kernel"][1])

    with sharding.mesh_rules(sharding.single_device_mesh()):
        scanned = export._encoder_model(tiny_config(data_dir, **{"model.scan_layers": True}),
                                        sharding.single_device_mesh())
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, {k: trained["model"][k] for k in nnx.to_pure_dict(state)})
    nnx.update(scanned, state)
    lms = jax.random.normal(jax.random.key(0), (2, 1, 80, config.model.input_frames))
    np.testing.assert_allclose(encoder.model.encode(lms), scanned.encode(lms), rtol=1e-5, atol=1e-5)


def test_vq_mae_av_scanned_equals_its_block_list():
    """VQ-MAE-AV's encoder (attention-masked: ``dirichlet`` masking) and decoder stacks."""
    from avpretrain import config as config_lib, method as method_lib
    from avpretrain.models import vq_mae_av

    config = config_lib.load_config("configs/vq_mae_av.py:runlocal", {"model.mask_mode": "dirichlet"})
    kwargs = vq_mae_av.kwargs_from_config(config.model)
    with sharding.mesh_rules(sharding.single_device_mesh()):
        listed = vq_mae_av.VQMAEAV(rngs=nnx.Rngs(0), **kwargs)
        scanned = vq_mae_av.VQMAEAV(rngs=nnx.Rngs(1), **{**kwargs, "scan_layers": True})
    paths = vit.stacks_in(nnx.to_pure_dict(nnx.state(scanned)))
    assert sorted(paths) == [("blocks",), ("decoder_blocks",)]
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, vit.stack_params(nnx.to_pure_dict(nnx.state(listed)), paths))
    nnx.update(scanned, state)
    batch = method_lib.of(config).synthetic_batch(config, 4, np.random.default_rng(0))
    batch = jax.tree.map(jnp.asarray, batch)

    @nnx.jit
    def loss_and_grads(model):
        return nnx.value_and_grad(lambda m: m.loss(batch, jax.random.key(5))[0])(model)

    (loss_l, grads_l), (loss_s, grads_s) = loss_and_grads(listed), loss_and_grads(scanned)
    np.testing.assert_allclose(float(loss_s), float(loss_l), rtol=1e-5)
    grads_s = vit.unstack_params(nnx.to_pure_dict(grads_s), paths)
    for a, b in zip(jax.tree.leaves(grads_s), jax.tree.leaves(nnx.to_pure_dict(grads_l))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_scanned_model_initialises_from_a_per_block_export(tmp_path, data_dir):
    """``config.init`` from an export (always per block) into a scanned model: read per block, stacked."""
    from helpers import random_m2d_export

    source = random_m2d_export(tmp_path / "export", data_dir)
    config = tiny_config(data_dir, **{"model.scan_layers": True, "init.path": str(source)})
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    state = step_lib.plan_train_state(config, mesh).initialize()
    before = np.asarray(nnx.to_pure_dict(state)["model"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"])
    step_lib.initialize_from(config, state)
    stacked = nnx.to_pure_dict(state)["model"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"]
    assert tuple(stacked.sharding.spec) == (None, "fsdp", "tensor")
    per_block = ocp.StandardCheckpointer().restore((source / "params").absolute())["blocks"]
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(stacked[i]), np.asarray(per_block[str(i)]["mlp"]["fc1"]["kernel"]))
    assert not np.array_equal(before, np.asarray(stacked))
