"""VQ-MAE-AV: token layout, masking (fixed and Dirichlet), the masked CE, the NT-Xent branch,
sharded = single-device loss, learning on a fixed batch, the export adapter, the config.

Models here get numpy-filled parameters (``nnx.eval_shape`` + host random values): no compiled
initialisation, so the whole file compiles only the few programs it tests.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from avpretrain import config as config_lib, method, sharding
from avpretrain.models import vq_mae_av as V
from helpers import REPO

LAYOUT = V.TokenLayout(frames=10)   # 2·6·6 = 72 video tokens of 80 codes, 4·16 = 64 audio tokens of 20
TINY = dict(layout=LAYOUT, width=80, depth=1, num_heads=2, mlp_ratio=2.0, dec_width=32, dec_depth=1, dec_heads=2,
            mask_ratio_video=0.75, mask_ratio_audio=0.6, attention="plain")
B = 8
CONFIG = str(REPO / "configs/vq_mae_av.py")


def numpy_model(seed=0, **overrides):
    """A VQMAEAV with host-random parameters (LayerNorm scale 1, biases 0, kernels 1/√fan_in, others 0.02)."""
    with sharding.mesh_rules(sharding.single_device_mesh()):
        abstract = nnx.eval_shape(lambda: V.VQMAEAV(rngs=nnx.Rngs(0), **{**TINY, **overrides}))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = str(path[-1].key)
        if name == "scale":
            return np.ones(x.shape, np.float32)
        if name == "bias" or name.endswith("_bias"):
            return np.zeros(x.shape, np.float32)
        std = 1 / np.sqrt(x.shape[-2]) if name in ("kernel",) or name.endswith("_head") else 0.02
        return (std * rng.standard_normal(x.shape)).astype(np.float32)

    pure = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return nnx.merge(graphdef, state)


def codes(seed=0, batch=B, frames=10):
    rng = np.random.default_rng(seed)
    return {"video_codes": rng.integers(0, 512, (batch, frames, 24, 24)).astype(np.int32),
            "audio_codes": rng.integers(0, 256, (batch, 2 * frames, 64)).astype(np.int32)}


@pytest.fixture(scope="module")
def model():
    return numpy_model()


# -- layout ---------------------------------------------------------------------------------------
def test_layout_round_trip_and_shapes():
    c = codes(1)
    v, a = LAYOUT.video_to_tokens(c["video_codes"]), LAYOUT.audio_to_tokens(c["audio_codes"])
    assert v.shape == (B, 72, 80) and a.shape == (B, 64, 20)
    assert (LAYOUT.num_tokens("video"), LAYOUT.num_tokens("audio")) == (72, 64)
    np.testing.assert_array_equal(LAYOUT.tokens_to_video(v), c["video_codes"])
    np.testing.assert_array_equal(LAYOUT.tokens_to_audio(a), c["audio_codes"])
    # token order: time-major; inside a token (frame, row, col) / (frame, frequency)
    np.testing.assert_array_equal(v[:, 0], c["video_codes"][:, :5, :4, :4].reshape(B, 80))
    np.testing.assert_array_equal(v[:, 7], c["video_codes"][:, :5, 4:8, 4:8].reshape(B, 80))   # row 1, col 1
    np.testing.assert_array_equal(v[:, 36], c["video_codes"][:, 5:10, :4, :4].reshape(B, 80))  # second tube
    np.testing.assert_array_equal(a[:, 17], c["audio_codes"][:, 5:10, 4:8].reshape(B, 20))     # time 1, freq 1
    full = V.TokenLayout()   # the reference's: 360 video tokens of 80 codes, 320 audio tokens of 20
    assert [(full.num_tokens(m), full.codes_per_token(m)) for m in ("video", "audio")] == [(360, 80), (320, 20)]


@pytest.mark.parametrize("kwargs, key", [
    (dict(frames=12), "model.tube"), (dict(patch=5), "model.patch"), (dict(freq_group=3), "model.freq_group"),
    (dict(frames=10, t_audio=3), "model.t_audio"), (dict(tube=0), "model.tube"),
])
def test_layout_rejects_bad_divisibility(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        V.TokenLayout(**kwargs)


def test_model_rejects_bad_settings():
    for overrides, key in [(dict(width=96), "model.width"), (dict(mask_ratio_audio=1.0), "model.mask_ratio_audio"),
                           (dict(mask_mode="dirichlet", modalities=("audio",)), "model.mask_mode"),
                           (dict(mask_mode="block"), "model.mask_mode")]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            numpy_model(**overrides)


# -- masking and the masked CE --------------------------------------------------------------------
def _abstract_graphdef(**overrides):
    with sharding.mesh_rules(sharding.single_device_mesh()):
        return nnx.split(nnx.eval_shape(lambda: V.VQMAEAV(rngs=nnx.Rngs(0), **{**TINY, **overrides})))[0]


def test_fixed_and_dirichlet_masks(model):
    state = nnx.state(model)
    def draw(gd, st, r):   # one jit per graphdef (graphdefs with dict attributes do not hash)
        return jax.jit(lambda st, r: nnx.merge(gd, st).draw_masks(r, B)[::2])(st, r)

    masked, ratios = draw(nnx.graphdef(model), state, jax.random.key(0))
    for m, n in (("video", 72), ("audio", 64)):
        assert masked[m].shape == (B, n)
        np.testing.assert_array_equal(np.asarray(masked[m]).sum(1), round(TINY[f"mask_ratio_{m}"] * n))
    assert not np.all(np.asarray(masked["video"])[0] == np.asarray(masked["video"])[1])   # per example
    gd_dir = _abstract_graphdef(mask_mode="dirichlet")
    draw_dir = jax.jit(lambda st, r: nnx.merge(gd_dir, st).draw_masks(r, B)[::2])
    seen = []
    for seed in range(3):
        masked, ratios = draw_dir(state, jax.random.key(seed))
        r_v, r_a = float(ratios["video"]), float(ratios["audio"])
        assert r_v + r_a == pytest.approx(1.0, abs=1e-6) and 0 < r_v < 1
        for m, n in (("video", 72), ("audio", 64)):   # the same count for every example of the step
            np.testing.assert_array_equal(np.asarray(masked[m]).sum(1), V.num_masked(float(ratios[m]), n))
        seen.append(r_v)
    assert len(set(np.round(seen, 4))) == 3   # drawn per step


@pytest.fixture(scope="module")
def forward(model):
    """jitted (metrics, logits per modality) of ``loss_with_masks`` for given masks, either layout."""

    def run(state, tokens, masked, ids, counts, gather):
        mdl, counts = nnx.merge(nnx.graphdef(model), state), dict(counts)
        _, metrics = mdl.loss_with_masks(tokens, masked, ids, counts, gather)
        _, _, feats, _, _ = mdl.forward_masked(tokens, masked, ids, counts, gather)
        return metrics, {m: mdl.logits(m, feats[m]) for m in mdl.modalities}

    jitted = jax.jit(run, static_argnums=(4, 5))

    def call(tokens, masked, ids, gather):
        counts = tuple(sorted((m, int(np.asarray(masked[m])[0].sum())) for m in masked))
        return jitted(nnx.state(model), tokens, masked, ids, counts, gather)

    return call


def _tokens_and_masks(model, seed=0):
    c = codes(seed)
    tokens = {m: jnp.asarray(LAYOUT.to_tokens(m, c[V.FIELD[m]])) for m in ("video", "audio")}
    masked, ids, _, _ = model.draw_masks(jax.random.key(seed), B)
    return tokens, masked, ids


def test_gather_layout_equals_attention_mask_layout(model, forward):
    """Same masks: visible tokens gathered (fixed mode) = all tokens with masked keys (Dirichlet mode)."""
    tokens, masked, ids = _tokens_and_masks(model)
    m_gather, _ = forward(tokens, masked, ids, True)
    m_mask, _ = forward(tokens, masked, ids, False)
    for key in ("loss", "ce_video", "ce_audio", "nt_xent", "acc_video", "perplexity_audio"):
        np.testing.assert_allclose(float(m_gather[key]), float(m_mask[key]), rtol=2e-5, err_msg=key)


def test_ce_is_the_mean_over_masked_codes_only(model, forward):
    tokens, masked, ids = _tokens_and_masks(model)
    metrics, logits = forward(tokens, masked, ids, False)   # logits at every token
    for m in ("video", "audio"):
        lg = np.asarray(logits[m], np.float64)
        logp = lg - lg.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, np.asarray(tokens[m])[..., None], -1)[..., 0]   # [B, N, P]
        mk = np.asarray(masked[m])
        np.testing.assert_allclose(float(metrics[f"ce_{m}"]), nll[mk].mean(), rtol=1e-5)
        acc = (lg.argmax(-1) == np.asarray(tokens[m]))[mk].mean()
        assert float(metrics[f"acc_{m}"]) == pytest.approx(acc, abs=1e-6)
        mean_p = np.exp(logp)[mk].reshape(-1, lg.shape[-1]).mean(0)
        assert float(metrics[f"perplexity_{m}"]) == pytest.approx(np.exp(-(mean_p * np.log(mean_p)).sum()), rel=1e-4)

    # The model never sees masked codes: changing them leaves every prediction unchanged (and the CE
    # changes, its targets did); changing visible codes changes the predictions.
    m0, lg0 = forward(tokens, masked, ids, True)
    changed = {m: jnp.where(masked[m][..., None], (tokens[m] + 1) % (512 if m == "video" else 256), tokens[m])
               for m in tokens}
    m1, lg1 = forward(changed, masked, ids, True)
    for m in ("video", "audio"):
        np.testing.assert_allclose(np.asarray(lg1[m]), np.asarray(lg0[m]), atol=1e-5)
        assert abs(float(m1[f"ce_{m}"]) - float(m0[f"ce_{m}"])) > 1e-4
    visible = {m: jnp.where(masked[m][..., None], tokens[m], (tokens[m] + 1) % 256) for m in tokens}
    _, lg2 = forward(visible, masked, ids, True)
    assert not np.allclose(np.asarray(lg2["video"]), np.asarray(lg0["video"]), atol=1e-5)


# -- contrastive branch, sharding -----------------------------------------------------------------
def test_no_contrastive_variant_and_pooled_shapes(model):
    """contrastive_weight = 0: no pools, no NT-Xent, loss = the CE sum; pools give [B, D]."""
    no_pool = nnx.state(model, nnx.Not(nnx.Any(nnx.PathContains("pool_video"), nnx.PathContains("pool_audio"))))
    gd0 = _abstract_graphdef(contrastive_weight=0.0)
    total0, metrics0 = jax.jit(lambda st, b, r: nnx.merge(gd0, st).loss(b, r))(no_pool, codes(2), jax.random.key(3))
    assert "nt_xent" not in metrics0
    assert float(total0) == pytest.approx(float(metrics0["ce_video"] + metrics0["ce_audio"]), rel=1e-6)
    # pooled clip embeddings are [B, D] (not the reference's [1, B, D])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, 7, 80)), jnp.float32)
    assert model.pool("audio", x).shape == (B, 80)
    assert model.pool("video", x, jnp.arange(7)[None].repeat(B, 0) < 3).shape == (B, 80)


def test_sharded_dirichlet_loss_equals_single_device(model):
    """Dirichlet masking; the batch sharded over 8 devices (NT-Xent negatives and the masked CE means
    across shards) gives the loss of the same global batch on one device."""
    batch = codes(4)
    gd_dir = _abstract_graphdef(mask_mode="dirichlet")
    loss = jax.jit(lambda st, b, r: nnx.merge(gd_dir, st).loss(b, r))
    state = nnx.state(model)
    total, single = loss(jax.device_put(state, jax.devices()[0]), jax.device_put(batch, jax.devices()[0]),
                         jax.random.key(5))
    assert np.isfinite(float(total))
    assert float(single["mask_ratio_video"]) + float(single["mask_ratio_audio"]) == pytest.approx(1.0, abs=1e-6)
    assert float(total) == pytest.approx(float(single["ce_video"] + single["ce_audio"] + single["nt_xent"]), rel=1e-6)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded_batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    assert len(sharded_batch["audio_codes"].sharding.device_set) == 8
    _, sharded = loss(jax.device_put(state, NamedSharding(mesh, P())), sharded_batch, jax.random.key(5))
    for key in ("loss", "ce_video", "ce_audio", "nt_xent", "perplexity_video", "mask_ratio_video"):
        np.testing.assert_allclose(float(sharded[key]), float(single[key]), rtol=1e-5, err_msg=key)


def test_learns_a_fixed_batch():
    mdl = numpy_model(seed=1)
    mesh = sharding.single_device_mesh()
    with sharding.mesh_rules(mesh):
        opt = nnx.Optimizer(mdl, optax.adam(3e-3), wrt=nnx.Param)
    # one placement for every input and output: the step compiles once
    nnx.update((mdl, opt), jax.device_put(nnx.state((mdl, opt)), NamedSharding(mesh, P())))
    batch = codes(6, batch=4)

    @nnx.jit
    def step(mdl, opt, batch, r):
        (_, metrics), grads = nnx.value_and_grad(lambda m: m.loss(batch, r), has_aux=True)(mdl)
        opt.update(mdl, grads)
        return metrics

    history = [step(mdl, opt, batch, jax.random.key(i)) for i in range(20)]
    first, last = history[0], history[-1]
    assert float(last["loss"]) < float(first["loss"]) - 1.0
    assert float(last["ce_video"]) < float(first["ce_video"]) and float(last["ce_audio"]) < float(first["ce_audio"])


# -- export, method, config -----------------------------------------------------------------------
def test_export_adapter_and_encoder_only(model):
    with sharding.mesh_rules(sharding.single_device_mesh()):
        enc_only = nnx.eval_shape(lambda: V.VQMAEAV(rngs=nnx.Rngs(0), encoder_only=True, **TINY))
    full_keys = {p for p, _ in nnx.to_flat_state(nnx.state(model))}
    enc_keys = {p for p, _ in nnx.to_flat_state(nnx.state(enc_only))}
    assert enc_keys < full_keys and {p[0] for p in enc_keys} == {n for n in V.VQMAEAV.ENCODER}
    emb = V.Embedder(model, None, {})
    c = codes(7, batch=3)
    out = emb.embed(**c)
    assert {k: v.shape for k, v in out.items()} == {
        "video_tokens": (3, 72, 80), "audio_tokens": (3, 64, 80), "video": (3, 80), "audio": (3, 80), "clip": (3, 160)}
    assert all(np.isfinite(v).all() for v in out.values())
    audio_only = emb.embed(audio_codes=c["audio_codes"])
    assert set(audio_only) == {"audio_tokens", "audio", "clip"} and audio_only["clip"].shape == (3, 80)
    with pytest.raises(ValueError, match="audio_codes"):
        emb.embed()


def test_config_method_and_audio_variant():
    av = config_lib.load_config(CONFIG)
    assert av.method == "vq_mae_av" and av.model.modalities == ("video", "audio")
    assert (av.model.width, av.model.depth, av.model.num_heads, av.model.dec_depth) == (320, 6, 4, 3)
    assert av.optim.base_lr * av.batch_size / 256 == pytest.approx(1e-3)
    meth = method.get("vq_mae_av")
    assert meth.frontend == () and meth.pretrained is V.Embedder
    fields = meth.inputs(av)
    assert fields == {"video_codes": method.Field((50, 24, 24), "int32", 512),
                      "audio_codes": method.Field((100, 64), "int32", 256)}
    with sharding.mesh_rules(sharding.single_device_mesh()):
        full = nnx.eval_shape(lambda: V.create(av, nnx.Rngs(0)))
    assert full.video_embed.shape == (80, 512, 4) and full.audio_embed.shape == (20, 256, 16)
    assert full.video_head.shape == (80, 320, 512) and full.audio_head.shape == (20, 320, 256)
    assert full.video_head_bias.ndim == 1    # biases stay out of AdamW's decay (ndim > 1)
    assert full.flops_per_example() > 0
    assert all(hasattr(full, name) for name in av.init.params)   # a later run can take the encoder

    local = config_lib.load_config(f"{CONFIG}:runlocal")
    assert (local.total_steps, local.batch_size, local.model.frames) == (20, 8, 10)
    audio = config_lib.load_config(f"{CONFIG}:variant=audio,runlocal")
    assert list(meth.inputs(audio)) == ["audio_codes"]
    with pytest.raises(ValueError, match="variant"):
        config_lib.load_config(f"{CONFIG}:variant=video")

    # the audio-only model (VQ-MAE-S): no video parameters, no contrastive branch
    kwargs = {**TINY, "modalities": ("audio",)}
    mdl = numpy_model(**{k: v for k, v in kwargs.items() if k not in TINY or k == "modalities"})
    assert not hasattr(mdl, "video_embed") and not mdl.contrastive
    loss, metrics = nnx.jit(lambda m, b, r: m.loss(b, r))(mdl, {"audio_codes": codes(8)["audio_codes"]},
                                                          jax.random.key(0))
    assert set(metrics) == {"loss", "ce_audio", "acc_audio", "perplexity_audio", "mask_ratio_audio"}
    assert float(loss) == pytest.approx(float(metrics["ce_audio"]))
