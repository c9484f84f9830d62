"""M2D semantics: masking, shapes, loss, target encoder, EMA, trainable set."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avpretrain import sharding
from avpretrain.models import m2d, vit

DIMS = dict(input_frames=64, width=64, depth=2, num_heads=4, pred_width=32, pred_depth=1, pred_heads=2)


@pytest.fixture(scope="module")
def model():
    mesh = sharding.make_mesh()
    with sharding.mesh_rules(mesh):
        return nnx.jit(lambda: m2d.M2D(**DIMS, rngs=nnx.Rngs(0)))()


def lms(batch=8, frames=64, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, 1, 80, frames))


def test_random_masking_is_a_per_sample_permutation():
    ids_shuffle, ids_restore, len_keep = m2d.random_masking(jax.random.key(0), 4, 20, 0.7)
    assert len_keep == 6
    for row_s, row_r in zip(np.asarray(ids_shuffle), np.asarray(ids_restore)):
        assert sorted(row_s) == list(range(20))
        np.testing.assert_array_equal(row_s[row_r], np.arange(20))
    assert not np.array_equal(np.asarray(ids_shuffle)[0], np.asarray(ids_shuffle)[1])


def test_patchify_is_frequency_major_and_matches_a_strided_conv():
    x = jnp.arange(2 * 80 * 32, dtype=jnp.float32).reshape(2, 1, 80, 32)
    p = vit.patchify(x, 16)
    assert p.shape == (2, 5 * 2, 256)
    # token index f·T_grid + t holds rows 16f.., columns 16t.., (kh, kw) row-major inside.
    np.testing.assert_array_equal(p[1, 1 * 2 + 1].reshape(16, 16), x[1, 0, 16:32, 16:32])
    with pytest.raises(ValueError, match="multiples of 16"):
        vit.patchify(jnp.zeros((1, 1, 80, 30)), 16)


def test_sincos_positions_match_mae_layout():
    pos = vit.sincos_pos_embed(8, 2, 3)
    assert pos.shape == (1 + 6, 8)
    np.testing.assert_array_equal(pos[0], 0)
    # token (f=1, t=2): first half encodes t, second half encodes f; sin then cos.
    token = pos[1 + 1 * 3 + 2]
    np.testing.assert_allclose(token[:2], np.sin([2.0, 2.0 / 100]), rtol=1e-6)
    np.testing.assert_allclose(token[4:6], np.sin([1.0, 1.0 / 100]), rtol=1e-6)


def test_norm_mse_loss_range_and_extremes():
    t = jax.random.normal(jax.random.key(0), (2, 5, 16))
    standardised = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(t.var(-1, keepdims=True, ddof=1) + 1e-6)
    assert float(m2d.norm_mse_loss(standardised * 3.0, t)) == pytest.approx(0.0, abs=1e-5)
    assert float(m2d.norm_mse_loss(-standardised, t)) == pytest.approx(4.0, abs=1e-5)
    r = float(m2d.norm_mse_loss(jax.random.normal(jax.random.key(1), (2, 5, 16)), t))
    assert 0.0 < r < 4.0


def test_shapes_and_loss(model):
    x = lms()
    ids_shuffle, ids_restore, k = m2d.random_masking(jax.random.key(3), 8, 20, 0.7)

    def shapes(m):
        online = m.encode(x, ids_shuffle[:, :k])
        return (m.encode(x), online, m.encode_target(x, ids_shuffle[:, k:]), m.predict(online, ids_restore, k),
                m.frame_embeddings(x), m.frame_embeddings(x[..., :32]))

    out = [o.shape for o in nnx.eval_shape(shapes, model)]
    assert model.num_patches == 5 * 4
    assert out == [(8, 21, 64), (8, 1 + k, 64), (8, 20 - k, 64), (8, 20, 64), (8, 4, 5 * 64), (8, 2, 5 * 64)]
    loss, metrics = nnx.jit(lambda m: m.loss({"lms": x}, jax.random.key(3)))(model)
    assert loss.shape == () and 0.0 < float(loss) < 4.0 and "loss_m2d" in metrics
    assert model.flops_per_example() > 0


def test_target_starts_as_online_copy_and_gets_no_gradient(model):
    for online, target in zip(jax.tree.leaves(nnx.state(model.blocks, nnx.Param)),
                              jax.tree.leaves(nnx.state(model.target_blocks, nnx.Param))):
        np.testing.assert_array_equal(online, target)
    x = lms()
    grads = nnx.jit(nnx.grad(lambda m: m.loss({"lms": x}, jax.random.key(0))[0],
                             argnums=nnx.DiffState(0, nnx.Param)))(model)
    target_grads = jax.tree.leaves(grads["target_blocks"])
    assert target_grads and all(float(jnp.abs(g).max()) == 0.0 for g in target_grads)
    assert float(jnp.abs(grads["blocks"][0]["mlp"]["fc1"]["kernel"][...]).max()) > 0.0
    trainable_paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, m2d.TRAINABLE))}
    assert not any(p.startswith("target_") for p in trainable_paths)
    assert any(p.startswith("blocks/") for p in trainable_paths) and "cls_token" in trainable_paths
    assert not any("pos_embed" in p for p in trainable_paths)  # fixed sin-cos buffers


def test_ema_update_moves_target_towards_online():
    mesh = sharding.make_mesh()
    with sharding.mesh_rules(mesh):
        model = nnx.jit(lambda: m2d.M2D(**DIMS, rngs=nnx.Rngs(1)))()
    online = model.blocks[0].mlp.fc1.kernel
    target = model.target_blocks[0].mlp.fc1.kernel
    before = np.asarray(target[...])
    online[...] = online[...] + 1.0
    nnx.jit(lambda m: m.ema_update(0.9))(model)
    np.testing.assert_allclose(np.asarray(target[...]), before + 0.1, atol=1e-6)
