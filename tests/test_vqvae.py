"""VQ-MAE-AV tokenizers: shapes, the Itakura–Saito loss, training through the trainer, export round trip."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import avpretrain.models.vqvae as vqvae  # registers vqvae_audio / vqvae_video
from avpretrain import config as config_lib, export, train
from helpers import REPO


def _config(name, data_dir, **extra):
    overrides = {"data.dir": str(data_dir), "total_steps": 4, "log_every": 1, "checkpoint_every": 4, **extra}
    return config_lib.load_config(str(REPO / f"configs/{name}.py") + ":runlocal", overrides)


def test_itakura_saito_matches_numpy_and_is_zero_at_the_target():
    rng = np.random.default_rng(0)
    x, x_hat = np.exp(rng.normal(size=(6, 513))), np.exp(rng.normal(size=(6, 513)))
    reference = np.mean(x / x_hat - np.log(x / x_hat) - 1)
    got = float(vqvae.itakura_saito(jnp.log(x), jnp.log(x_hat)))
    np.testing.assert_allclose(got, reference, rtol=1e-5)
    assert float(vqvae.itakura_saito(jnp.log(x), jnp.log(x))) == 0.0


def test_shapes_of_codes_and_reconstructions():
    audio = vqvae.AudioVQVAE(rngs=nnx.Rngs(0))
    spec = jnp.exp(jax.random.normal(jax.random.key(0), (2, 3, 513)))
    codes = audio.encode(spec)
    assert codes.shape == (2, 3, vqvae.AUDIO_CODES) and codes.dtype == jnp.int32
    power = audio.decode(codes)
    assert power.shape == (2, 3, 513) and bool((power > 0).all())

    video = vqvae.VideoVQVAE(rngs=nnx.Rngs(0))
    frames = jax.random.uniform(jax.random.key(1), (2, 3, 96, 96, 3)) - 0.5
    codes = video.encode(frames)
    assert codes.shape == (2, 3, 24, 24) and codes.dtype == jnp.int32 and int(codes.max()) < 512
    recon = video.decode(codes)
    assert recon.shape == (2, 3, 96, 96, 3) and float(recon.min()) >= 0 and float(recon.max()) <= 1


@pytest.mark.parametrize("name", ["vqvae_audio", "vqvae_video"])
def test_trains_exports_and_tokenizes(name, av_data_dir, tmp_path):
    config = _config(name, av_data_dir)
    result = train.train(config, tmp_path / "run")
    assert result.step == 4 and len(result.losses) == 4 and all(np.isfinite(list(result.losses.values())))

    tok = export.load_pretrained(export.export(tmp_path / "run", tmp_path / "export"))
    assert isinstance(tok, vqvae.Tokenizer)
    fresh = export.load_pretrained(tmp_path / "export", random_init=True, seed=config.seed)  # = the step-0 model
    assert not np.allclose(np.asarray(tok.model.vq.codebook[...]), np.asarray(fresh.model.vq.codebook[...]))
    assert not np.array_equal(np.asarray(tok.model.vq.cluster_size[...]), np.asarray(fresh.model.vq.cluster_size[...]))

    rng = np.random.default_rng(0)
    if name == "vqvae_audio":
        # the BN running statistics were trained too (kept by the default step)
        assert not np.allclose(np.asarray(tok.model.enc1_bn.mean[...]), 0.0)
        waves = (0.1 * rng.standard_normal((2, 10 * vqvae.HOP))).astype(np.float32)
        codes = tok.encode(waves)
        assert codes.shape == (2, 10, 64) and codes.dtype == jnp.int32
        power = np.asarray(tok.decode(codes))
        assert power.shape == (2, 10, 513) and (power > 0).all() and np.isfinite(power).all()
    else:
        frames = rng.integers(0, 256, (2, 3, 96, 96, 3)).astype(np.uint8)
        codes = tok.encode(frames)
        assert codes.shape == (2, 3, 24, 24) and codes.dtype == jnp.int32
        recon = np.asarray(tok.decode(codes))
        assert recon.shape == (2, 3, 96, 96, 3) and recon.min() >= 0 and recon.max() <= 1
        with pytest.raises(ValueError, match="uint8"):
            tok.encode(frames.astype(np.float32))


def test_reconstruction_images_in_tensorboard_and_png(av_data_dir, tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing import event_accumulator

    config = _config("vqvae_video", av_data_dir, total_steps=2, checkpoint_every=2, image_every=1)
    train.train(config, tmp_path / "run")
    images = tmp_path / "run" / "images"
    n, t = min(4, config.batch_size), min(8, config.model.frames)
    shape = (2 * n * 96 + (2 * n - 1) * 2, t * 96 + (t - 1) * 2, 3)
    for name in ("reconstruction-0000001.png", "reconstruction-0000002.png", "reconstruction-latest.png"):
        png = np.asarray(Image.open(images / name))
        assert png.shape == shape and png.dtype == np.uint8 and png.min() < png.max(), name
    np.testing.assert_array_equal(np.asarray(Image.open(images / "reconstruction-latest.png")),
                                  np.asarray(Image.open(images / "reconstruction-0000002.png")))
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Images("reconstruction")] == [1, 2]

    # audio: called directly on a small model, eval mode, a synthetic batch of 5 crops of 3 frames
    audio = vqvae.AudioVQVAE(rngs=nnx.Rngs(0), hidden=8, residual_hidden=8, residual_blocks=1)
    spec = jnp.exp(jax.random.normal(jax.random.key(0), (5, 3, 513)))
    image = np.asarray(jax.jit(vqvae.AUDIO_METHOD.images)(audio, {"spec": spec})["reconstruction"])
    width = -(-128 // 3) * 3  # time repeated to at least 128 px
    assert image.shape == (2 * 513 + 2, 4 * width + 3 * 2, 3) and image.dtype == np.uint8
    assert image.min() < image.max()


def test_audio_eight_devices_equal_one_device(av_data_dir, tmp_path, monkeypatch):
    """BatchNorm's batch statistics and the EMA codebook see the global batch: 8-way data-parallel
    training gives the single-device losses, parameters, BN running statistics and codebook. (The video
    tokenizer shares the EMA codebook code path and has no BatchNorm: one test is enough.)"""
    from avpretrain import sharding

    cfg8 = _config("vqvae_audio", av_data_dir, total_steps=3, checkpoint_every=3, batch_size=8)
    cfg1 = _config("vqvae_audio", av_data_dir, total_steps=3, checkpoint_every=3, batch_size=8,
                   mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)))
    losses8 = train.train(cfg8, tmp_path / "eight").losses
    monkeypatch.setattr(train, "make_mesh", lambda c: sharding.make_mesh(c.mesh, devices=jax.devices()[:1]))
    losses1 = train.train(cfg1, tmp_path / "one").losses
    assert sorted(losses8) == sorted(losses1) == [1, 2, 3]
    np.testing.assert_allclose([losses8[s] for s in (1, 2, 3)], [losses1[s] for s in (1, 2, 3)], rtol=1e-4)

    models = [export.load_pretrained(export.export(tmp_path / run, tmp_path / f"{run}_export")).model
              for run in ("eight", "one")]
    state8, state1 = (nnx.to_pure_dict(nnx.state(m)) for m in models)
    leaves8, leaves1 = jax.tree.leaves_with_path(state8), jax.tree.leaves(state1)
    assert len(leaves8) == len(leaves1)
    # Differences in the reduction order (BN statistics, gradients all-reduced over 8 devices) leave
    # rounding-level differences, amplified in two known places, given loose tolerances:
    # * the biases of the convolutions followed by BatchNorm have a zero gradient in exact arithmetic
    #   (BN subtracts the batch mean); Adam turns their rounding-noise gradients into ±lr steps (lr ≤ 1e-3
    #   here), and those BNs' running means carry 0.1 × the bias;
    # * a near-tie in the codebook argmin can flip an encoding to another code: the EMA statistics of the
    #   (few) codes involved then differ by (1 − decay) × a count, and the small parameter differences
    #   this causes perturb the encodings' sums of the other codes (relative 1e-3).
    before_bn = {"enc1", "enc2", "enc3", "dec1", "dec2"}
    size8, size1 = np.asarray(models[0].vq.cluster_size[...]), np.asarray(models[1].vq.cluster_size[...])
    flipped = np.abs(size8 - size1) > 1e-6
    assert flipped.sum() <= 4, f"{flipped.sum()} codes' EMA counts differ"
    bad = []
    for (path, a), b in zip(leaves8, leaves1):
        keys = [getattr(k, "key", None) for k in path]
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if keys[0] == "vq" and keys[1] in ("cluster_size", "embed_sum", "codebook"):
            a, b = a[~flipped], b[~flipped]
        atol = (3e-3 if keys[0] in before_bn and keys[-1] == "bias" else
                5e-4 if keys[0].removesuffix("_bn") in before_bn and keys[-1] == "mean" else 5e-5)
        if keys[0] == "vq" and keys[1] in ("embed_sum", "codebook"):   # sums over the encodings
            atol = 1e-4 + 1e-3 * np.abs(b)                             # that the flips perturbed
        excess = float(np.max(np.abs(a - b) - atol))
        if not excess <= 0:
            bad.append(f"{jax.tree_util.keystr(path)}: |diff| exceeds the tolerance by {excess:.3g}")
    assert not bad, "\n".join(bad)
    fresh = export.load_pretrained(tmp_path / "one_export", random_init=True, seed=cfg1.seed).model  # step 0
    assert not np.allclose(np.asarray(models[1].vq.codebook[...]), np.asarray(fresh.vq.codebook[...]))


@pytest.mark.parametrize("cls, frames, field", [(vqvae.AudioVQVAE, 4, "spec"), (vqvae.VideoVQVAE, 1, "frames")])
def test_flops_per_example_agrees_with_xla(cls, frames, field):
    """The analytic count is within [0.5, 2]× XLA's cost analysis of the loss's forward + backward
    (XLA also counts the elementwise work: BatchNorm, activations, the loss)."""
    model = cls(frames=frames, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    B = 2
    shape = (B, frames, 513) if field == "spec" else (B, frames, 96, 96, 3)
    x = jnp.exp(jax.random.normal(jax.random.key(0), shape)) if field == "spec" else jax.random.uniform(
        jax.random.key(0), shape) - 0.5

    def grads(state, x):  # as step.default_update: the codebook's EMA update is kept (returned)
        model = nnx.merge(graphdef, state)
        g = nnx.grad(lambda m: m.loss({field: x}, jax.random.key(1))[0])(model)
        return g, nnx.state(model)

    args = jax.device_put((state, x), jax.devices()[0])
    cost = jax.jit(grads).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ratio = B * model.flops_per_example() / float(cost["flops"])
    assert 0.5 < ratio < 2.0, ratio
