"""Symmetric InfoNCE (M2D-CLAP) and NT-Xent (VQ-MAE-AV): references, clamp, sharding."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avpretrain import sharding
from avpretrain.objectives import contrastive as C


def rand(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def np_l2n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_logsumexp(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_infonce(a, t, logit_scale):
    a, t = np_l2n(a.astype(np.float64)), np_l2n(t.astype(np.float64))
    logits = math.exp(min(logit_scale, math.log(100))) * a @ t.T
    ce = lambda lg: np.mean([np_logsumexp(lg[i], 0) - lg[i, i] for i in range(len(lg))])  # noqa: E731
    return 0.5 * (ce(logits) + ce(logits.T))


def np_nt_xent(a, b, temperature):
    z = np_l2n(np.concatenate([a, b]).astype(np.float64))
    n, B = len(z), len(a)
    losses = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        pos = (i + B) % n
        sims = np.array([z[i] @ z[j] / temperature for j in others])
        losses.append(np_logsumexp(sims, 0) - z[i] @ z[pos] / temperature)
    return np.mean(losses)


def test_constants():
    assert C.LOGIT_SCALE_INIT == pytest.approx(math.log(1 / 0.07))
    assert C.LOGIT_SCALE_MAX == pytest.approx(math.log(100))


def test_infonce_matches_numpy_reference():
    a, t = rand((6, 5), 0), rand((6, 5), 1)
    loss, metrics = C.symmetric_infonce(a, t, C.LOGIT_SCALE_INIT)
    np.testing.assert_allclose(float(loss), np_infonce(a, t, C.LOGIT_SCALE_INIT), rtol=1e-5)
    assert float(metrics["clap_loss"]) == float(loss)
    np.testing.assert_allclose(float(metrics["clap_logit_scale"]), 1 / 0.07, rtol=1e-6)
    logits = np_l2n(a) @ np_l2n(t).T
    assert float(metrics["clap_a2t_acc"]) == pytest.approx(np.mean(logits.argmax(1) == np.arange(6)))


def test_infonce_is_symmetric():
    a, t = rand((8, 4), 2), rand((8, 4), 3)
    l_at, _ = C.symmetric_infonce(a, t, 1.3)
    l_ta, _ = C.symmetric_infonce(t, a, 1.3)
    np.testing.assert_allclose(float(l_at), float(l_ta), rtol=1e-6)


def test_infonce_perfect_alignment_gives_zero_loss():
    x = np.eye(4, 8, dtype=np.float32) * 3.0  # orthogonal, different norm from text
    loss, metrics = C.symmetric_infonce(x, np.eye(4, 8, dtype=np.float32), C.LOGIT_SCALE_MAX)
    assert float(loss) < 1e-6
    assert float(metrics["clap_a2t_acc"]) == 1.0
    np.testing.assert_allclose(float(metrics["clap_logit_scale"]), 100.0, rtol=1e-5)


def test_logit_scale_clamp_blocks_gradient_only_above_max():
    a, t = rand((6, 5), 4), rand((6, 5), 5)
    f = lambda s: C.symmetric_infonce(a, t, s)[0]  # noqa: E731
    above = jnp.float32(C.LOGIT_SCALE_MAX + 1.0)
    np.testing.assert_allclose(float(f(above)), float(f(jnp.float32(C.LOGIT_SCALE_MAX))), rtol=1e-6)
    assert float(C.symmetric_infonce(a, t, above)[1]["clap_logit_scale"]) == pytest.approx(100.0, rel=1e-5)
    assert float(jax.grad(f)(above)) == 0.0
    g_below = float(jax.grad(f)(jnp.float32(C.LOGIT_SCALE_INIT)))
    assert g_below != 0.0 and np.isfinite(g_below)


def test_infonce_bf16_inputs_use_float32_logits():
    a, t = rand((8, 16), 6), rand((8, 16), 7)
    a16, t16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    loss, metrics = C.symmetric_infonce(a16, t16, C.LOGIT_SCALE_INIT)
    assert loss.dtype == jnp.float32 and metrics["clap_logit_scale"].dtype == jnp.float32
    ref = np_infonce(np.asarray(a16.astype(jnp.float32)), np.asarray(t16.astype(jnp.float32)), C.LOGIT_SCALE_INIT)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_infonce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 3\)"):
        C.symmetric_infonce(rand((4, 3), 0), rand((5, 3), 1), 1.0)


def test_infonce_sharded_equals_unsharded():
    mesh = sharding.make_mesh()
    a, t = rand((16, 8), 8), rand((16, 8), 9)
    scale = jnp.float32(C.LOGIT_SCALE_INIT)

    def loss_and_grads(a, t, s):
        (loss, metrics), grads = jax.value_and_grad(C.symmetric_infonce, argnums=(0, 1, 2), has_aux=True)(a, t, s)
        return loss, metrics, grads

    dev0 = jax.devices()[0]
    ref_loss, ref_metrics, ref_grads = jax.jit(loss_and_grads)(
        jax.device_put(a, dev0), jax.device_put(t, dev0), jax.device_put(scale, dev0))

    with sharding.mesh_rules(mesh):
        bs = sharding.batch_sharding(mesh)
        a_s, t_s = jax.device_put(a, bs), jax.device_put(t, bs)
        for x in (a_s, t_s):
            assert len(x.sharding.device_set) == 8
            assert {s.data.shape for s in x.addressable_shards} == {(2, 8)}
        loss, metrics, grads = jax.jit(loss_and_grads)(a_s, t_s, scale)

    np.testing.assert_allclose(float(loss), float(ref_loss), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(float(loss), np_infonce(a, t, C.LOGIT_SCALE_INIT), rtol=1e-5)
    for k in ref_metrics:
        np.testing.assert_allclose(float(metrics[k]), float(ref_metrics[k]), atol=1e-5, rtol=1e-5)
    for g, ref_g in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref_g), atol=1e-5, rtol=1e-5)


def test_nt_xent_matches_numpy_reference():
    a, b = rand((5, 6), 10), rand((5, 6), 11)
    for temperature in (0.5, 0.1):
        np.testing.assert_allclose(float(C.nt_xent(a, b, temperature)), np_nt_xent(a, b, temperature), rtol=1e-5)
    assert float(C.nt_xent(a, b)) == pytest.approx(np_nt_xent(a, b, 0.5), rel=1e-5)
    grads = jax.grad(C.nt_xent, argnums=(0, 1))(a, b)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_nt_xent_squeezes_pooled_tokens():
    a, b = rand((4, 6), 12), rand((4, 6), 13)
    np.testing.assert_allclose(float(C.nt_xent(a[:, None], b[:, None])), float(C.nt_xent(a, b)), rtol=1e-6)
    np.testing.assert_allclose(float(C.nt_xent(a[:, None], b)), float(C.nt_xent(a, b)), rtol=1e-6)


@pytest.mark.parametrize("shape_a,shape_b,pattern", [
    ((4, 2, 6), (4, 2, 6), r"\(4, 2, 6\)"),
    ((4, 6), (3, 6), r"\(4, 6\).*\(3, 6\)"),
    ((6,), (6,), r"\(6,\)"),
])
def test_nt_xent_shape_errors(shape_a, shape_b, pattern):
    with pytest.raises(ValueError, match=pattern):
        C.nt_xent(np.zeros(shape_a, np.float32), np.ones(shape_b, np.float32))


def test_nt_xent_is_symmetric_and_sharper_at_lower_temperature():
    a, b = rand((6, 8), 14), rand((6, 8), 15)
    np.testing.assert_allclose(float(C.nt_xent(a, b)), float(C.nt_xent(b, a)), rtol=1e-6)
    aligned = a + 0.05 * rand((6, 8), 16)  # positives much closer than the negatives
    assert float(C.nt_xent(a, aligned, 0.1)) < float(C.nt_xent(a, aligned, 0.5)) < float(C.nt_xent(a, aligned, 2.0))


def test_nt_xent_batch_of_one_is_handled_as_zero_loss():
    """B = 1: each row's only non-self candidate is its positive, so the loss is 0 (no negatives,
    nothing to learn) with zero gradients, not NaN."""
    a, b = rand((1, 6), 17), rand((1, 6), 18)
    assert float(C.nt_xent(a, b)) == pytest.approx(0.0, abs=1e-6)
    grads = jax.grad(C.nt_xent, argnums=(0, 1))(a, b)
    assert all(np.allclose(np.asarray(g), 0.0, atol=1e-6) for g in grads)
