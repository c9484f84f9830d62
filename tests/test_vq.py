"""VectorQuantizer: assignment, straight-through gradients, EMA statistics, restarts, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from avpretrain.models.vq import Codebook, VectorQuantizer

E = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)


def make_vq(codebook=E, **kw):
    kw.setdefault("dead_after", 0)
    vq = VectorQuantizer(codebook.shape[0], codebook.shape[1], rngs=nnx.Rngs(0), **kw)
    vq.codebook[...] = jnp.asarray(codebook)
    vq.embed_sum[...] = jnp.asarray(codebook)
    return vq


def test_state_is_not_param():
    vq = VectorQuantizer(8, 3, rngs=nnx.Rngs(0))
    assert not nnx.state(vq, nnx.Param)
    state = nnx.state(vq, Codebook)
    assert {str(p[0]) for p, _ in nnx.to_flat_state(state)} == {"codebook", "embed_sum", "cluster_size",
                                                                  "unused_steps"}
    # initial ratio embed_sum / smoothed(cluster_size) is the codebook itself
    np.testing.assert_allclose(vq.embed_sum[...], vq.codebook[...])
    np.testing.assert_allclose(vq.cluster_size[...], 1.0)


def test_nearest_code_and_lookup():
    vq = make_vq()
    z = jnp.array([[[0.1, 0.2], [0.9, -0.3]], [[0.2, 0.8], [1.4, 1.1]], [[0.6, 0.45], [0.4, 0.55]]])
    z_q, codes, aux = vq(z, train=False)
    assert codes.shape == (3, 2) and codes.dtype == jnp.int32
    np.testing.assert_array_equal(codes, [[0, 1], [2, 3], [1, 2]])
    np.testing.assert_allclose(z_q, E[np.asarray(codes)], atol=1e-6)
    np.testing.assert_allclose(vq.lookup(codes), E[np.asarray(codes)])
    assert int(aux["restarted"]) == 0
    # eval mode does not touch the state
    np.testing.assert_array_equal(vq.codebook[...], E)
    np.testing.assert_array_equal(vq.unused_steps[...], 0)


def test_straight_through_and_commitment_gradients():
    vq = make_vq(commitment=0.25)
    z = jnp.array([[0.1, 0.2], [0.9, -0.3], [0.3, 0.8]])
    w = jnp.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]])
    g = jax.grad(lambda z: jnp.sum(vq(z, train=False)[0] * w))(z)
    np.testing.assert_allclose(g, w)

    def commit(z):
        return vq(z, train=False)[2]["commitment_loss"]

    q = E[[0, 1, 2]]
    np.testing.assert_allclose(commit(z), 0.25 * np.mean((np.asarray(z) - q) ** 2), rtol=1e-6)
    gc = jax.grad(commit)(z)
    np.testing.assert_allclose(gc, 0.25 * 2 * (np.asarray(z) - q) / z.size, rtol=1e-6)
    z2 = z - 1.0 * gc  # a gradient step moves z towards its code
    assert np.all(np.linalg.norm(z2 - q, axis=-1) < np.linalg.norm(np.asarray(z) - q, axis=-1))


def test_ema_update_matches_numpy():
    d, eps = 0.9, 1e-5
    vq = make_vq(decay=d, eps=eps)
    z = np.array([[0.1, 0.2], [-0.1, 0.1], [0.9, -0.3], [0.95, 1.2], [1.1, 0.8]], np.float32)
    _, codes, aux = vq(jnp.asarray(z), train=True)
    np.testing.assert_array_equal(codes, [0, 0, 1, 3, 3])
    onehot = np.eye(4, dtype=np.float64)[np.asarray(codes)]
    size = d * 1.0 + (1 - d) * onehot.sum(0)
    esum = d * E.astype(np.float64) + (1 - d) * onehot.T @ z
    n = size.sum()
    smoothed = n * (size + eps) / (n + 4 * eps)
    np.testing.assert_allclose(vq.cluster_size[...], size, rtol=1e-6)
    np.testing.assert_allclose(vq.embed_sum[...], esum, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(vq.codebook[...], esum / smoothed[:, None], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(vq.unused_steps[...], [0, 0, 1, 0])
    assert int(aux["restarted"]) == 0


def test_perplexity_and_usage():
    vq = make_vq()
    _, _, aux = vq(jnp.full((6, 2), 0.05), train=False)  # all on code 0
    np.testing.assert_allclose(aux["perplexity"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(aux["usage"], 1 / 4)
    _, _, aux = vq(jnp.asarray(np.concatenate([E, E]) + 0.01), train=False)  # uniform over 4 codes
    np.testing.assert_allclose(aux["perplexity"], 4.0, rtol=1e-6)
    np.testing.assert_allclose(aux["usage"], 1.0)


def _restart_setup(dead_after):
    book = np.array([[0.0, 0.0], [1.0, 0.0], [100.0, 100.0], [-100.0, 100.0]], np.float32)
    vq = make_vq(book, dead_after=dead_after)
    z = np.random.default_rng(0).normal(0.5, 0.3, (8, 2)).astype(np.float32)
    return vq, z


def test_dead_code_restart():
    vq, z = _restart_setup(dead_after=2)
    step = nnx.jit(lambda vq, z, rng: vq(z, train=True, rng=rng)[2]["restarted"])
    for i in range(2):
        assert int(step(vq, jnp.asarray(z), jax.random.key(i))) == 0
    np.testing.assert_array_equal(vq.unused_steps[...], [0, 0, 2, 2])
    assert int(step(vq, jnp.asarray(z), jax.random.key(7))) == 2
    np.testing.assert_array_equal(vq.unused_steps[...], [0, 0, 0, 0])
    book = np.asarray(vq.codebook[...])
    for k in (2, 3):
        assert np.min(np.abs(z - book[k]).max(-1)) < 1e-6, (k, book[k])  # an encoding of the batch
        np.testing.assert_allclose(vq.embed_sum[...][k], book[k])
        np.testing.assert_allclose(vq.cluster_size[...][k], 1.0)
    assert not np.allclose(book[2], book[3])  # distinct encodings
    # deterministic given rng
    vq2, _ = _restart_setup(dead_after=2)
    for key in (0, 1, 7):
        step(vq2, jnp.asarray(z), jax.random.key(key))
    np.testing.assert_array_equal(vq2.codebook[...], book)


def test_no_restart_when_disabled():
    vq, z = _restart_setup(dead_after=0)
    for _ in range(5):
        assert int(vq(jnp.asarray(z), train=True)[2]["restarted"]) == 0
    np.testing.assert_array_equal(vq.unused_steps[...], [0, 0, 5, 5])
    assert np.all(np.abs(np.asarray(vq.codebook[...])[2:]) > 50)


def test_restart_needs_rng():
    vq, z = _restart_setup(dead_after=3)
    with pytest.raises(ValueError, match="rng"):
        vq(jnp.asarray(z), train=True)


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.enc = nnx.Linear(3, 2, rngs=rngs)
        self.vq = VectorQuantizer(4, 2, dead_after=0, rngs=rngs)

    def loss(self, x):
        z = self.enc(x)
        z_q, _, aux = self.vq(z, train=True)
        return jnp.mean((z_q - x[..., :2]) ** 2) + aux["commitment_loss"]


def test_inside_value_and_grad_under_jit():
    model = Tiny(nnx.Rngs(0))
    before = np.asarray(model.vq.codebook[...]).copy()
    size_before = np.asarray(model.vq.cluster_size[...]).copy()

    @nnx.jit
    def step(model, x):
        return nnx.value_and_grad(lambda m: m.loss(x), argnums=nnx.DiffState(0, nnx.Param))(model)

    x = jax.random.normal(jax.random.key(1), (16, 3))
    loss, grads = step(model, x)
    assert np.isfinite(float(loss))
    paths = {tuple(str(p) for p in path) for path, _ in nnx.to_flat_state(grads)}
    assert paths == {("enc", "kernel"), ("enc", "bias")}
    assert float(jnp.abs(grads["enc"]["kernel"][...]).sum()) > 0
    assert not np.allclose(model.vq.codebook[...], before)  # EMA applied through the transform
    assert not np.allclose(model.vq.cluster_size[...], size_before)


def test_sharded_equals_unsharded():
    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    z = np.random.default_rng(3).normal(size=(64, 5, 4)).astype(np.float32)

    @nnx.jit
    def step(vq, z, rng):
        _, codes, aux = vq(z, train=True, rng=rng)
        return codes, aux

    results = []
    for sharded in (False, True):
        vq = VectorQuantizer(16, 4, dead_after=1, rngs=nnx.Rngs(5))
        for name in ("codebook", "embed_sum"):  # 4 codes far from the data: restarted at step 2
            getattr(vq, name)[...] = getattr(vq, name)[...].at[:4].set(50.0)
        zz = (jax.device_put(z, NamedSharding(mesh, P("data"))) if sharded
              else jax.device_put(z, jax.devices()[0]))
        assert len(zz.sharding.device_set) == (8 if sharded else 1)
        outs = [step(vq, zz, jax.random.key(i)) for i in range(3)]
        results.append((vq, outs))
    (a, oa), (b, ob) = results
    assert sum(int(o[1]["restarted"]) for o in oa) > 0  # the restart path ran too
    for (ca, xa), (cb, xb) in zip(oa, ob):
        np.testing.assert_array_equal(ca, cb)
        for k in xa:
            np.testing.assert_allclose(xa[k], xb[k], rtol=1e-6)
    for name in ("codebook", "embed_sum", "cluster_size", "unused_steps"):
        np.testing.assert_allclose(getattr(a, name)[...], getattr(b, name)[...], rtol=1e-6, atol=1e-7)
