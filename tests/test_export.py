"""Export of a tiny trained M2D run, the downstream embedding API and the HEAR API."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from avpretrain import checkpoint, export, hear, train
from helpers import tiny_config

pytestmark = pytest.mark.xdist_group("tiny_m2d_export")
SR = 16000
ENCODER_ONLY = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """(config, workdir, exported dir, encoder) of a 4-step tiny M2D run."""
    tmp = tmp_path_factory.mktemp("export")
    config = tiny_config(data_dir)
    train.train(config, str(tmp / "work"))
    out = export.export(str(tmp / "work"), str(tmp / "encoder"))
    return config, tmp / "work", out, export.load_pretrained(str(out))


def _flat(tree) -> dict:
    """{'blocks/0/attn/qkv/kernel': leaf, ...} (integer and string keys alike)."""
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_same_arrays(a: dict, b: dict):
    a, b = _flat(a), _flat(b)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_export_holds_only_the_online_encoder_with_the_trained_weights(run):
    config, workdir, out, encoder = run
    stored = ocp.StandardCheckpointer().metadata((out / "params").absolute()).item_metadata
    assert set(stored) == set(ENCODER_ONLY)
    assert not any(k in p for p in _flat(stored) for k in ("target", "decoder", "mask_token", "opt"))

    loaded = nnx.to_pure_dict(nnx.state(encoder.model))
    last = workdir / "checkpoints" / str(config.total_steps) / "state"
    trained = ocp.StandardCheckpointer().restore(last.absolute())  # the whole training state
    assert {"opt", "model"} <= set(trained) and {"target_blocks", "decoder_blocks"} <= set(trained["model"])
    _assert_same_arrays(loaded, {k: trained["model"][k] for k in loaded})
    _assert_same_arrays(loaded, checkpoint.restore_params(workdir / "checkpoints", loaded))


def _tone(seconds, sr=SR, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_frame_embeddings_shapes_timestamps_and_chunking(run):
    _, _, _, encoder = run
    chunk = encoder.input_frames * 160  # samples of one training-length chunk (96 frames)
    rng = np.random.default_rng(0)
    long = (0.1 * rng.standard_normal(int(2.5 * SR))).astype(np.float32)
    for boundary in (chunk, 2 * chunk):  # silence at the chunk boundaries: reflect padding = context
        long[boundary - 400:boundary + 400] = 0
    clips = [_tone(0.5), _tone(1.0), long]
    emb, times, valid = encoder.frame_embeddings(clips)

    assert emb.shape == (3, 251 // 16, 5 * 64) and emb.dtype == np.float32
    np.testing.assert_array_equal(valid.sum(1), [51 // 16, 101 // 16, 251 // 16])
    np.testing.assert_allclose(np.diff(times), 0.16, rtol=1e-6)
    assert times[0] == pytest.approx(0.08)
    assert np.all(emb[~valid] == 0) and np.all(np.abs(emb[valid]).sum(-1) > 0)

    # The long clip spans 3 chunks; each equals embedding that chunk's audio on its own.
    pieces = [long[:chunk], long[chunk:2 * chunk], long[2 * chunk:]]
    separate = np.concatenate([encoder.frame_embeddings([p])[0][0] for p in pieces], axis=0)
    np.testing.assert_allclose(separate[:emb.shape[1]], emb[2], atol=1e-4)

    scene = encoder.scene_embeddings(clips)
    expected = np.stack([emb[i][valid[i]].mean(0) for i in range(3)])
    np.testing.assert_allclose(scene, expected, rtol=1e-5, atol=1e-6)


def test_resampled_input_matches_native_rate(run):
    _, _, _, encoder = run
    native = encoder.scene_embeddings([_tone(1.0)])[0]
    resampled = encoder.scene_embeddings([_tone(1.0, sr=44100)], sample_rate=44100)[0]
    cosine = native @ resampled / np.linalg.norm(native) / np.linalg.norm(resampled)
    assert cosine > 0.99


def test_random_init_has_the_same_shapes_and_different_weights(run):
    _, _, out, encoder = run
    fresh = export.load_pretrained(str(out), random_init=True, seed=123)
    a, b = nnx.to_pure_dict(nnx.state(encoder.model)), nnx.to_pure_dict(nnx.state(fresh.model))
    assert jax.tree.map(np.shape, a) == jax.tree.map(np.shape, b)
    assert not np.allclose(a["blocks"][0]["attn"]["qkv"]["kernel"], b["blocks"][0]["attn"]["qkv"]["kernel"])


def test_hear_api(run):
    _, _, out, _ = run
    model = hear.load_model(str(out))
    assert model.sample_rate == SR and model.scene_embedding_size == model.timestamp_embedding_size == 5 * 64
    audio = np.stack([_tone(1.0), _tone(1.0, freq=880.0)])
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    emb, ts = np.asarray(emb), np.asarray(ts)
    assert emb.shape == (2, 101 // 16, 320) and ts.shape == (2, 101 // 16)
    np.testing.assert_allclose(ts[0], 80 + 160 * np.arange(101 // 16), rtol=1e-6)
    scene = np.asarray(hear.get_scene_embeddings(audio, model))
    assert scene.shape == (2, 320)
    np.testing.assert_allclose(scene, emb.mean(1), rtol=1e-5, atol=1e-6)


def test_bad_path_names_it(tmp_path):
    missing = tmp_path / "no_such_encoder"
    with pytest.raises(FileNotFoundError, match="no_such_encoder"):
        export.load_pretrained(str(missing))
    with pytest.raises(FileNotFoundError, match="no_such_encoder"):
        hear.load_model(str(missing))
