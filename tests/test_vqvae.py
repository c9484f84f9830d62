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
