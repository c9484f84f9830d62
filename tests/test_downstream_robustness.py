"""The downstream API on awkward inputs: clips of very different lengths (chunk batching instead of
padding to the longest), datasets without a validation or test split, bad exports and bad waveforms."""
import json
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile as sf
from flax import nnx

from avpretrain import audio, cli, config as config_lib, export, sharding
from avpretrain.data import pipeline, source
from avpretrain.models.m2d import M2D
from helpers import REPO, tiny_config, tiny_overrides

pytestmark = pytest.mark.xdist_group("downstream_robustness")
SR = 16000
NORM_STATS = (-7.0, 4.0)


def _encoder(config, seed=0):
    """A random-init PretrainedEncoder of ``config`` (no training needed for what is tested here)."""
    model = export._encoder_model(config, sharding.single_device_mesh(), seed=seed)
    return export.PretrainedEncoder(model, config, NORM_STATS, SR)


def _write_export(out, encoder):
    """``out/config.json`` + ``out/params`` in the format `avpretrain export` writes."""
    out.mkdir(parents=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((out / "params").absolute(), nnx.to_pure_dict(nnx.state(encoder.model)))
    meta = {"config": json.loads(config_lib.to_json(encoder.config)), "norm_stats": list(NORM_STATS),
            "sample_rate": SR, "format": "avpretrain-encoder-v1"}
    (out / "config.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def encoder(data_dir):
    return _encoder(tiny_config(data_dir))


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    return _write_export(tmp_path_factory.mktemp("export") / "e", encoder)


def _noise(seconds, seed):
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


# Mixed lengths, none a whole number of chunks; the last clip spans 21 chunks of 96 frames.
CLIP_SECONDS = (0.3, 1.7, 0.9, 2.4, 1.1, 20.0)


def _padded_reference(encoder, clips):
    """The padding-based computation that chunk batching replaces: every clip zero-padded to the
    longest clip's whole chunks, the log-mel of that batch cut into chunks → encoder tokens [B, n·N, D],
    columns [n·gF·gT] (chunk-major, then frequency, then time, as the tokens), valid columns [B]."""
    chunk = encoder.input_frames * 160
    n = max(-(-len(c) // chunk) for c in clips)
    batch = np.zeros((len(clips), n * chunk), np.float32)
    for row, c in enumerate(clips):
        batch[row, :len(c)] = c
    lms = audio.normalize(audio.log_mel(batch), *NORM_STATS)[:, :, :n * encoder.input_frames]
    B, F, _ = lms.shape
    chunks = lms.reshape(B, F, n, encoder.input_frames).transpose(0, 2, 1, 3).reshape(B * n, 1, F, -1)
    tokens = nnx.jit(lambda m, x: m.encode(x))(encoder.model, chunks)[:, 1:]
    (gF, gT), D = encoder.model.grid, tokens.shape[-1]
    column = (np.arange(n)[:, None, None] * gT + np.arange(gT)[None, None, :]).repeat(gF, axis=1).reshape(-1)
    cols = np.asarray([max(1, audio.num_frames(len(c)) // encoder.patch) for c in clips])
    return np.asarray(tokens).reshape(B, n * gF * gT, D), column, cols


@pytest.fixture
def traced_chunk_batches(monkeypatch):
    """The leading dimension of every input the encoder is traced with (the chunks per call)."""
    shapes = []
    encode = M2D.encode

    def spy(self, lms, *args, **kwargs):
        shapes.append(lms.shape[0])
        return encode(self, lms, *args, **kwargs)

    monkeypatch.setattr(M2D, "encode", spy)
    return shapes


def test_frame_and_scene_embeddings_batch_chunks_not_padded_clips(encoder, traced_chunk_batches):
    clips = [_noise(s, seed) for seed, s in enumerate(CLIP_SECONDS)]
    fresh = export.PretrainedEncoder(encoder.model, encoder.config, NORM_STATS, SR)  # new jit: traced here
    emb, _, valid = fresh.frame_embeddings(clips, batch_size=4)
    scene = fresh.scene_embeddings(clips, batch_size=4)
    # One compiled shape of 4 chunks, not 4 clips × the longest clip's 21 chunks.
    assert set(traced_chunk_batches) == {4}

    tokens, column, cols = _padded_reference(encoder, clips)
    gF, gT = encoder.model.grid
    B, _, D = tokens.shape
    frames = tokens.reshape(B, -1, gF, gT, D).transpose(0, 1, 3, 2, 4).reshape(B, -1, gF * D)
    np.testing.assert_array_equal(valid.sum(1), cols)
    for i in range(B):
        np.testing.assert_allclose(emb[i, :cols[i]], frames[i, :cols[i]], atol=1e-4)
        np.testing.assert_allclose(scene[i], frames[i, :cols[i]].mean(0), atol=1e-5)
    assert np.all(emb[~valid] == 0)


@pytest.mark.parametrize("stage", [1, 2])
def test_embed_audio_bounds_chunks_and_equals_padded_result(data_dir, stage, traced_chunk_batches):
    spec = str(REPO / f"configs/m2d_clap.py:stage={stage},size=tiny,runlocal")
    config = config_lib.load_config(spec, tiny_overrides(data_dir, **{"model.text_dim": 24}))
    enc = _encoder(config, seed=stage)
    clips = [_noise(s, 10 + seed) for seed, s in enumerate(CLIP_SECONDS)]
    got = enc.embed_audio(clips, batch_size=4)
    assert set(traced_chunk_batches) == {4}

    tokens, column, cols = _padded_reference(enc, clips)
    expected = nnx.jit(lambda m, t, v: m.embed_tokens(t, v))(enc.model, tokens, column[None] < cols[:, None])
    expected = np.asarray(expected) / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_eval_batches_keep_each_clip_at_its_length(data_dir):
    src = source.data_source(data_dir, "train")
    batches = list(pipeline.eval_batches(data_dir, "train", batch_size=8))
    records = [r for b in batches for r in b["record"]]
    assert records == list(range(len(src)))
    lengths = [len(a) for b in batches for a in b["audio"]]
    assert lengths == [len(src[i]["audio"]) for i in records] and len(set(lengths)) > 1
    first = src[0]
    np.testing.assert_allclose(batches[0]["audio"][0], first["audio"] / 32768.0)
    assert batches[0]["label"].dtype == np.int32 and batches[0]["label"][0] == first["label"]


def _folder_dataset(tmp_path, name, **split_fractions):
    """3 classes × 8 one-second clips built with audio_folder and the given val/test fractions."""
    from data_pipelines import audio_folder

    src = tmp_path / f"{name}_src"
    for c, freq in enumerate((300, 700, 1500)):
        (src / f"class{c}").mkdir(parents=True)
        for i in range(8):
            t = np.arange(SR) / SR
            sf.write(src / f"class{c}" / f"{i}.wav", 0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t), SR)
    out = tmp_path / name
    audio_folder.build(str(src), str(out), **split_fractions)
    return out


def test_linear_probe_without_validation_split_holds_out_train(exported, tmp_path, capsys):
    data = _folder_dataset(tmp_path, "no_valid", val_fraction=0.0)
    capsys.readouterr()
    assert "validation" not in source.dataset_meta(data).num_examples
    assert cli.main(["eval", "linear-probe", f"--model={exported}", f"--data={data}",
                     f"--json-out={tmp_path / 'r.json'}"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2] == f"no validation split in {data}: holding out 10% of train for early stopping"
    assert out[-1].startswith("linear-probe accuracy=")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["valid_from_train"] and set(result["num_examples"]) == {"train", "test"}


def test_linear_probe_without_test_split_names_the_splits(exported, tmp_path, capsys):
    data = _folder_dataset(tmp_path, "no_test", test_fraction=0.0)
    capsys.readouterr()
    assert cli.main(["eval", "linear-probe", f"--model={exported}", f"--data={data}"]) == 2
    err = capsys.readouterr().err.splitlines()[0]
    assert err.startswith(f"error: {data} has no 'test' examples (splits: ") and "'train'" in err


def test_load_pretrained_of_a_training_workdir_says_export_first(encoder, data_dir, tmp_path, capsys):
    workdir = tmp_path / "w"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(config_lib.to_json(encoder.config))
    hint = f"{workdir} is a training workdir: export it first with `avpretrain export --workdir={workdir} --out=E`"
    with pytest.raises(ValueError) as e:
        export.load_pretrained(str(workdir))
    assert str(e.value) == hint
    assert cli.main(["eval", "linear-probe", f"--model={workdir}", f"--data={data_dir}"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == f"error: {hint}"


def test_corrupt_config_json_names_the_file(exported, tmp_path):
    bad = tmp_path / "bad"
    (bad / "params").mkdir(parents=True)
    (bad / "config.json").write_text((exported / "config.json").read_text()[:50])
    with pytest.raises(ValueError, match=f"{bad / 'config.json'}: corrupt JSON"):
        export.load_pretrained(str(bad))


def _truncate_largest_array(params):
    largest = max((p for p in (params / "ocdbt.process_0" / "d").iterdir()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:1000])


def _corrupt_index(params):
    (params / "manifest.ocdbt").write_bytes(b"not a manifest")


@pytest.mark.parametrize("damage", [_truncate_largest_array, _corrupt_index])
def test_unreadable_params_are_one_line_without_event_loop_noise(exported, tmp_path, monkeypatch, damage):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    damage(broken / "params")
    reports = []  # what TensorStore's callbacks would print to stderr
    monkeypatch.setattr(sys, "unraisablehook", lambda report: reports.append(repr(report.exc_value)))
    for _ in range(2):
        with pytest.raises(ValueError) as e:
            export.load_pretrained(str(broken))
        message = str(e.value)
        assert message.startswith(f"{broken / 'params'}: cannot restore the parameters (truncated or corrupt "
                                  "export?): ") and "\n" not in message
    time.sleep(0.5)  # TensorStore reports late reads from its own threads
    assert reports == []


def test_waveform_checks(encoder):
    D = encoder.embedding_dim
    assert encoder.scene_embeddings([]).shape == (0, D)
    emb, times, valid = encoder.frame_embeddings([])
    assert emb.shape == (0, 0, D) and times.shape == (0,) and valid.shape == (0, 0)

    clips = [_noise(0.5, 0), _noise(0.5, 1)]
    clips[1][100] = np.nan
    with pytest.raises(ValueError, match="clip 1 contains NaN or inf"):
        encoder.scene_embeddings(clips)
    stereo = np.stack([_noise(1.0, 2)] * 2, axis=1)  # [samples, 2]
    with pytest.raises(ValueError, match=r"look like \[samples, channels\].*x\.mean\(axis=1\)"):
        encoder.scene_embeddings(stereo)
    with pytest.raises(ValueError, match=r"clip 0 has shape \(16000, 2\)"):
        encoder.scene_embeddings([stereo])
    batch = np.stack([_noise(1.0, 3), _noise(1.0, 4)])  # [clips, samples] stays the batch form
    np.testing.assert_allclose(encoder.scene_embeddings(batch), encoder.scene_embeddings(list(batch)), atol=1e-6)
