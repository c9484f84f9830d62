"""Offline tokenization (`avpretrain data tokenize`): codes equal the tokenizers' own, resume after a
kill, --shard halves equal the whole, skipped examples, bad input."""
import pathlib

import numpy as np
import pytest
from flax import nnx

from avpretrain import cli, config as config_lib, export, sharding
from avpretrain.data import jobs, source, tokenize
from avpretrain.data.frames import decode_frame
from helpers import REPO

SPLITS = ("train", "validation", "test")


def _tiny_export(name, out):
    """A randomly initialised, narrow tokenizer export (the job does not care whether it was trained)."""
    config = config_lib.load_config(str(REPO / f"configs/{name}.py") + ":runlocal",
                                    {"model.hidden": 8, "model.residual_hidden": 4})
    model = export._encoder_model(config, sharding.single_device_mesh())
    return export.write_export(out, config, nnx.to_pure_dict(nnx.state(model)), None)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok_exports")
    return {m: _tiny_export(f"vqvae_{m}", root / m) for m in ("audio", "video")}


@pytest.fixture(scope="module")
def whole(exports, av_data_dir, tmp_path_factory):
    """One uninterrupted run over the 48-clip demo_av corpus (chunks of 8: 7 chunks)."""
    out = tmp_path_factory.mktemp("tok_whole")
    result = tokenize.tokenize(av_data_dir, out, audio_vq=exports["audio"], video_vq=exports["video"],
                               chunk_records=8, progress=False)
    return out, result


def _records(out):
    return {s: [source.data_source(out, s)[i] for i in range(len(source.data_source(out, s)))] for s in SPLITS}


def _assert_same(a, b):
    for split in SPLITS:
        assert len(a[split]) == len(b[split])
        for x, y in zip(a[split], b[split]):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=f"{split} {k}")


def test_codes_are_the_tokenizers_own_and_aligned(whole, exports, av_data_dir):
    out, r = whole
    assert r.complete and r.examples == 48 and r.tokenized == 48 and not r.skipped
    assert r.audio_frames == 2 * r.video_frames
    meta = source.dataset_meta(out)
    src_meta = source.dataset_meta(av_data_dir)
    assert meta.name == "demo_av_tokens" and meta.label_names == src_meta.label_names
    assert meta.num_examples == src_meta.num_examples and meta.sample_rate == 16000
    info = source.open_builder(out).info
    assert info.metadata["video_frame_rate"] == 25 and info.metadata["audio_frame_rate"] == 50
    assert info.metadata["audio_vq"]["path"] == str(pathlib.Path(exports["audio"]).absolute())

    tok_a, tok_v = (export.load_pretrained(exports[m]) for m in ("audio", "video"))
    src = source.data_source(av_data_dir, "test")
    tokens = source.data_source(out, "test")
    assert len(tokens) == len(src)
    for i in range(3):
        ex, s = tokens[i], src[i]
        assert ex["id"] == s["id"] and ex["label"] == s["label"] and ex["speaker"] == s["speaker"]
        frames = min(len(s["video"]), len(s["audio"]) // 640)
        assert ex["video_codes"].shape == (frames, 24, 24) and ex["video_codes"].dtype == np.int16
        assert ex["audio_codes"].shape == (2 * frames, 64)
        wave = s["audio"][None, :640 * frames].astype(np.float32) / 32768
        np.testing.assert_array_equal(ex["audio_codes"], np.asarray(tok_a.encode(wave))[0])
        video = np.stack([decode_frame(j) for j in s["video"][:frames]])[None]
        np.testing.assert_array_equal(ex["video_codes"], np.asarray(tok_v.encode(video))[0])


def test_cli_line_and_rerun_of_a_complete_job_does_nothing(whole, exports, av_data_dir, capsys):
    out, r = whole
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code = cli.main(["data", "tokenize", f"--audio-vq={exports['audio']}", f"--video-vq={exports['video']}",
                     f"--data={av_data_dir}", f"--out={out}", "--chunk=8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[-1] == f"tokenized 48 examples audio={r.audio_frames}x64 video={r.video_frames}x24x24"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_resumes_after_a_kill(whole, exports, av_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "tokens"
    real, calls = jobs.atomic_file, []

    def killed_during_third_shard(path, write_path):
        if ".array_record-" in path.name:
            calls.append(path)
        if len(calls) == 3:
            write_path(path.with_name(f".{path.name}.killed.tmp"))  # a kill leaves its temporary file
            raise KeyboardInterrupt
        return real(path, write_path)

    monkeypatch.setattr(jobs, "atomic_file", killed_during_third_shard)
    with pytest.raises(KeyboardInterrupt):
        tokenize.tokenize(av_data_dir, out, audio_vq=exports["audio"], video_vq=exports["video"],
                          chunk_records=8, progress=False)
    monkeypatch.setattr(jobs, "atomic_file", real)
    version_dir = next(out.glob("*/1.0.0"))
    assert len(list(version_dir.glob("demo_av_tokens-*"))) == 2 and not (version_dir / "dataset_info.json").exists()

    r = tokenize.tokenize(av_data_dir, out, audio_vq=exports["audio"], video_vq=exports["video"],
                          chunk_records=8, progress=False)
    assert r.complete and r.tokenized == 48 - 16 and r.examples == 48
    _assert_same(_records(out), _records(whole[0]))

    with pytest.raises(ValueError, match="other settings.*chunk_records"):
        tokenize.tokenize(av_data_dir, out, audio_vq=exports["audio"], video_vq=exports["video"],
                          chunk_records=4, progress=False)


def test_shard_halves_equal_the_whole(whole, exports, av_data_dir, tmp_path):
    out = tmp_path / "tokens"
    kw = dict(audio_vq=exports["audio"], video_vq=exports["video"], chunk_records=8, progress=False)
    first = tokenize.tokenize(av_data_dir, out, shard=(0, 2), **kw)
    assert not first.complete and (first.chunks_done, first.chunks_total) == (4, 7)
    second = tokenize.tokenize(av_data_dir, out, shard=(1, 2), **kw)
    assert second.complete and first.tokenized + second.tokenized == 48
    _assert_same(_records(out), _records(whole[0]))
    name = lambda p: p.name  # noqa: E731
    for mine, theirs in zip(sorted(next(out.glob("*/1.0.0")).glob("demo_av_tokens-*"), key=name),
                            sorted(next(whole[0].glob("*/1.0.0")).glob("demo_av_tokens-*"), key=name)):
        assert mine.name == theirs.name and mine.read_bytes() == theirs.read_bytes()


def test_an_undecodable_frame_skips_its_example_and_is_reported(exports, av_data_dir, tmp_path, monkeypatch):
    victim = bytes(source.data_source(av_data_dir, "validation")[2]["video"][5])

    def decode(jpeg):
        if bytes(jpeg) == victim:
            raise ValueError(f"cannot decode a stored frame ({len(jpeg)} bytes)")
        return decode_frame(jpeg)

    monkeypatch.setattr(tokenize, "decode_frame", decode)
    r = tokenize.tokenize(av_data_dir, tmp_path / "t", video_vq=exports["video"], chunk_records=16, progress=False)
    assert r.complete and r.examples == 47 and len(r.skipped) == 1 and r.audio_frames == 0
    assert r.skipped[0][0] == "validation" and "cannot decode" in r.skipped[0][2]
    assert source.dataset_meta(tmp_path / "t").num_examples["validation"] == 9
    report = jobs.read_json(tmp_path / "t" / tokenize.REPORT_NAME)
    assert report["counts"]["validation"] == 9 and len(report["skipped"]) == 1
    assert "audio_codes" not in source.data_source(tmp_path / "t", "train")[0]


@pytest.mark.parametrize("case", ["wrong_kind", "workdir", "no_video", "nothing"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, exports, av_data_dir, data_dir, tmp_path, capsys):
    data, args = av_data_dir, [f"--audio-vq={exports['audio']}"]
    expected = {"wrong_kind": "is an export of method 'vqvae_video', not the audio tokenizer",
                "workdir": "is a training workdir", "no_video": "has no video",
                "nothing": "give --audio-vq and/or --video-vq"}[case]
    if case == "wrong_kind":
        args = [f"--audio-vq={exports['video']}"]
    elif case == "workdir":
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        (tmp_path / "run" / "config.json").write_text("{}")
        args = [f"--video-vq={tmp_path / 'run'}"]
    elif case == "no_video":
        data, args = data_dir, [f"--video-vq={exports['video']}"]
    elif case == "nothing":
        args = []
    out = tmp_path / "tokens"
    code = cli.main(["data", "tokenize", *args, f"--data={data}", f"--out={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not out.exists()


def test_bench_tokenize_reports_host_device_and_end_to_end_rates(exports, av_data_dir, capsys):
    code = cli.main(["bench", "--tokenize", f"--audio-vq={exports['audio']}", f"--video-vq={exports['video']}",
                     f"--data={av_data_dir}", "--examples=4"])
    out = capsys.readouterr().out
    assert code == 0, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("bench-tokenize: clips_per_s=") and "video_seconds_per_s=" in last
    values = dict(kv.split("=") for kv in last.split()[1:])
    assert all(float(v) > 0 for v in values.values())
    assert "host alone" in out and "device alone" in out and "end to end" in out


def test_crop_takes_aligned_code_windows_and_repeats_short_clips():
    from avpretrain.data import pipeline
    from avpretrain.method import Field

    crop = pipeline.Crop({"audio_codes": Field((8, 64), "int32"), "video_codes": Field((4, 24, 24), "int32"),
                          "label": Field((), "int32")})
    audio = np.arange(20 * 64).reshape(20, 64).astype(np.int16)          # 10 video frames' worth
    video = np.arange(10 * 576).reshape(10, 24, 24).astype(np.int16)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        out = crop({"audio_codes": audio, "video_codes": video, "label": 3}, rng)
        f = int(out["video_codes"][0, 0, 0]) // 576
        starts.add(f)
        np.testing.assert_array_equal(out["video_codes"], video[f:f + 4])
        np.testing.assert_array_equal(out["audio_codes"], audio[2 * f:2 * f + 8])
        assert out["audio_codes"].dtype == np.int32 and out["label"] == 3
    assert len(starts) > 1
    short = crop({"audio_codes": audio[:6], "video_codes": video[:3], "label": 0}, rng)
    np.testing.assert_array_equal(short["video_codes"], video[[0, 1, 2, 0]])
    np.testing.assert_array_equal(short["audio_codes"], audio[[0, 1, 2, 3, 4, 5, 0, 1]])
    no_video = crop({"audio_codes": audio, "video_codes": video[:0], "label": 0}, rng)
    assert not no_video["video_codes"].any()
    with pytest.raises(ValueError, match="must be 2 x"):
        pipeline.Crop({"audio_codes": Field((6, 64), "int32"), "video_codes": Field((4, 24, 24), "int32")})
    with pytest.raises(ValueError, match="both raw signals and codes"):
        pipeline.Crop({"audio": Field((640,)), "video_codes": Field((1, 24, 24), "int32")})


def test_training_batches_from_a_token_dataset(whole, av_data_dir):
    from avpretrain.data import pipeline
    from avpretrain.method import Field

    out, _ = whole
    config = config_lib.load_config(str(REPO / "configs/vqvae_audio.py") + ":runlocal",
                                    {"data.dir": str(out), "batch_size": 8})
    inputs = {"audio_codes": Field((20, 64), "int32"), "video_codes": Field((10, 24, 24), "int32")}
    batch = next(iter(pipeline.train_dataset(config, inputs=inputs)))
    assert batch["audio_codes"].shape == (8, 20, 64) and batch["video_codes"].shape == (8, 10, 24, 24)
    config.data.dir = str(av_data_dir)
    with pytest.raises(ValueError, match="codes need a token dataset"):
        pipeline.train_dataset(config, inputs=inputs)


def test_fingerprint_is_of_the_weights_not_the_files(exports, tmp_path):
    """An export written again (new Orbax file names) keeps its fingerprint, so a rerun of a pipeline that
    re-exports (make demo-av) resumes its tokenization; other weights change it."""
    tok = export.load_pretrained(exports["audio"])
    params = nnx.to_pure_dict(nnx.state(tok.model))
    again = export.write_export(tmp_path / "again", tok.config, params, None)
    assert tokenize.fingerprint(again, export.load_pretrained(again).model) == tokenize.fingerprint(exports["audio"], tok.model)
    import jax

    other = export.write_export(tmp_path / "other", tok.config, jax.tree.map(lambda x: x * 1.01, params), None)
    assert tokenize.fingerprint(other, export.load_pretrained(other).model) != tokenize.fingerprint(exports["audio"], tok.model)
