"""Supervised fine-tuning with honest evaluation: the classifier method over a VQ-MAE-AV encoder,
validation-based step selection that never reads the test split, early stopping, export of the
selected step, `eval classify`, speaker-independent folds and `avpretrain kfold` (resumable).

One synthetic token dataset (tests/token_helpers.py: codes that carry the class, 6 speakers × 3
classes × 2) and one tiny config serve every run, so the step compiles once per process.
"""
import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avpretrain import cli, config as config_lib, export, sharding, train, validation
from avpretrain.data import folds as folds_lib, pipeline, source
from avpretrain.evaluate import kfold, supervised
from avpretrain.models import classifier
from helpers import REPO
from token_helpers import CLASSES, write_token_dataset

pytestmark = pytest.mark.xdist_group("finetune")
CONFIG = str(REPO / "configs/finetune.py") + ":runlocal"
KFOLD_LINE = re.compile(r"^kfold folds=3 accuracy=\d\.\d{4}±\d\.\d{4} uar=\d\.\d{4}±\d\.\d{4} macro-f1=\d\.\d{4}±\d\.\d{4}$")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return write_token_dataset(tmp_path_factory.mktemp("ft_tokens"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tokens):
    """A (randomly initialised) VQ-MAE-AV runlocal export: the encoder the classifier starts from."""
    config = config_lib.load_config(str(REPO / "configs/vq_mae_av.py") + ":runlocal", {"data.dir": str(tokens)})
    model = export._encoder_model(config, sharding.single_device_mesh())
    return export.write_export(tmp_path_factory.mktemp("ft_pre") / "e", config, nnx.to_pure_dict(nnx.state(model)), None)


def overrides(tokens, **extra):
    return {"data.dir": str(tokens), "total_steps": 40, "eval_every": 20, "checkpoint_every": 20, **extra}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokens, pretrained):
    """A fine-tuning run from the export, encoder frozen, with validation; the test split poisoned:
    any read of it during training raises."""
    workdir = tmp_path_factory.mktemp("ft_run") / "run"
    config = config_lib.load_config(CONFIG, overrides(tokens, **{"init.path": str(pretrained),
                                                                 "optim.lr_mult.encoder": 0.0}))
    real = source.data_source
    reads = []

    def poisoned(data_dir, split):
        reads.append(split)
        if split == "test":
            raise AssertionError("the test split was read during training")
        return real(data_dir, split)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(source, "data_source", poisoned)
        result = train.train(config, workdir)
    return workdir, result, reads


# -- pieces ----------------------------------------------------------------------------------------
def test_classification_loss_smoothing_and_focal():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    for ls, gamma in ((0.0, 0.0), (0.1, 0.0), (0.0, 2.0), (0.2, 1.5)):
        q = np.eye(4)[labels] * (1 - ls) + ls / 4
        want = -(q * (1 - np.exp(logp)) ** gamma * logp).sum(1).mean()
        got = float(classifier.classification_loss(jnp.asarray(logits), jnp.asarray(labels), 4, ls, gamma))
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"smoothing {ls} gamma {gamma}")
    plain = float(classifier.classification_loss(jnp.asarray(logits), jnp.asarray(labels), 4))
    np.testing.assert_allclose(plain, -logp[np.arange(5), labels].mean(), rtol=1e-5)


def test_eval_windows_cover_every_frame_of_the_clip():
    crop = pipeline.Crop({"audio_codes": classifier.method.Field((20, 64), "int32"),
                          "video_codes": classifier.method.Field((10, 24, 24), "int32")})
    for frames, starts in ((23, [0, 10, 13]), (20, [0, 10]), (10, [0]), (6, [0])):
        video = np.arange(frames)[:, None, None] * np.ones((1, 24, 24), np.int16)
        audio = np.arange(2 * frames)[:, None] * np.ones((1, 64), np.int16)
        windows = crop.eval_windows({"video_codes": video, "audio_codes": audio})
        assert [int(w["video_codes"][0, 0, 0]) for w in windows] == starts
        for w in windows:
            assert w["video_codes"].shape == (10, 24, 24) and w["audio_codes"].shape == (20, 64)
            np.testing.assert_array_equal(w["audio_codes"][::2, 0], 2 * w["video_codes"][:, 0, 0])  # aligned
        if frames > 10:
            covered = {int(f) for w in windows for f in w["video_codes"][:, 0, 0]}
            assert covered == set(range(frames))


def test_folds_are_speaker_disjoint_and_test_every_speaker_once(tokens):
    records = folds_lib.dataset_records(tokens)
    speaker_of = {(r["split"], r["index"]): r["speaker"] for r in records}
    for kwargs in ({"folds": 3}, {"folds": 5, "loso": True}):
        made = folds_lib.make_folds(tokens, kwargs["folds"], loso=kwargs.get("loso", False))
        tested = []
        for fold in made["folds"]:
            spk = {s: {speaker_of[tuple(r)] for r in fold["records"][s]} for s in folds_lib.SPLITS}
            assert spk == {s: set(fold["speakers"][s]) for s in folds_lib.SPLITS}
            assert not (spk["train"] & spk["validation"] or spk["train"] & spk["test"] or spk["validation"] & spk["test"])
            assert spk["train"] | spk["validation"] | spk["test"] == {r["speaker"] for r in records}
            tested += fold["speakers"]["test"]
        assert sorted(tested) == sorted({r["speaker"] for r in records})  # each speaker tested exactly once
    assert len(folds_lib.make_folds(tokens, 3, loso=True)["folds"]) == 6
    assert [len(f["speakers"]["test"]) for f in folds_lib.make_folds(tokens, 3)["folds"]] == [2, 2, 2]  # balanced


def test_folds_refuse_empty_speakers_missing_classes_and_too_few_folds(tmp_path, tokens):
    empty = write_token_dataset(tmp_path / "empty", speakers=4, per_class=1, empty_speaker=True)
    with pytest.raises(ValueError, match=r"3 of 12 examples have an empty speaker .*record 0 of split 'train'"):
        folds_lib.make_folds(empty, 3)
    with pytest.raises(ValueError, match="need at least 3"):
        folds_lib.make_folds(tokens, 2)
    with pytest.raises(ValueError, match="only 6 speakers"):
        folds_lib.make_folds(tokens, 7)
    one_class = write_token_dataset(tmp_path / "one", speakers=1, per_class=1, classes=("a", "b"),
                                    splits={"train": ["spk00"]})
    with pytest.raises(ValueError, match="at least 3 speakers"):
        folds_lib.make_folds(one_class, 3, loso=True)


def test_folds_refuse_a_fold_whose_training_speakers_miss_a_class(tokens, monkeypatch):
    records = [{"split": "train", "index": i, "id": f"x{i}", "speaker": f"spk0{i % 3}",
                "label": 2 if i == 0 else i % 2} for i in range(12)]  # only spk00 ever says 'sad'
    monkeypatch.setattr(folds_lib, "dataset_records", lambda data_dir: records)
    with pytest.raises(ValueError, match=r"fold \d: its training speakers \['spk0[12]'\] have no example of class "
                                         r"'sad' \(label 2\)"):
        folds_lib.make_folds(tokens, 3)


# -- a run ----------------------------------------------------------------------------------------
def test_validation_selects_a_step_without_reading_the_test_split(trained):
    workdir, result, reads = trained
    assert result.step == 40 and result.stopped_by is None
    assert "test" not in reads and "validation" in reads
    sel = json.loads((workdir / "selected.json").read_text())
    assert [h["step"] for h in sel["history"]] == [20, 40]
    assert sel["metric"] == "uar" and sel["split"] == "validation"
    best = max(sel["history"], key=lambda h: (h["uar"], -h["loss"]))
    assert sel["selected"]["step"] == best["step"]
    assert sorted(p.name for p in (workdir / "best").iterdir()) == [f"step-{best['step']:07d}"]
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "val_uar" in r] == [20, 40]


def test_encoder_is_the_pretrained_one_with_the_same_token_layout(trained, pretrained, tmp_path):
    """Frozen encoder (lr_mult 0): the fine-tuned model's encoder gives the pretrained export's tokens."""
    workdir, _, _ = trained
    out = export.export(workdir, tmp_path / "e")
    model = export.load_pretrained(out).model
    pre = export.load_pretrained(pretrained)
    rng = np.random.default_rng(1)
    codes = {"video_codes": rng.integers(0, 512, (2, 10, 24, 24)).astype(np.int32),
             "audio_codes": rng.integers(0, 256, (2, 20, 64)).astype(np.int32)}
    want = pre.embed(**{k: v for k, v in codes.items()})
    got = classifier.BACKBONES["vq_mae_av"].tokens(model.encoder, {k: jnp.asarray(v) for k, v in codes.items()},
                                                  ("video", "audio"))
    for m in ("video", "audio"):
        np.testing.assert_allclose(np.asarray(got[m]), want[f"{m}_tokens"], atol=1e-5)


def test_export_takes_the_selected_step_and_classify_reports(trained, tokens, tmp_path, capsys):
    workdir, _, _ = trained
    sel = validation.selected(workdir)["selected"]
    assert cli.main(["export", f"--workdir={workdir}", f"--out={tmp_path / 'e'}"]) == 0
    assert f"selected step {sel['step']}" in capsys.readouterr().out
    meta = json.loads((tmp_path / "e" / "config.json").read_text())
    assert meta["selected"]["step"] == sel["step"]
    assert cli.main(["eval", "classify", f"--model={tmp_path / 'e'}", f"--data={tokens}",
                     f"--json-out={tmp_path / 'r.json'}", f"--png={tmp_path / 'c.png'}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"classify accuracy=\d\.\d{4} uar=\d\.\d{4} war=\d\.\d{4} macro-f1=\d\.\d{4} "
                        r"weighted-f1=\d\.\d{4}", lines[-1])
    assert all(any(line.startswith(name) for line in lines) for name in CLASSES)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_examples"] == 6 and np.asarray(report["confusion"]).sum() == 6
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_classify_on_a_dataset_with_other_classes_scores_the_models_classes_by_name(trained, tmp_path, capsys):
    """Another corpus (here: one more class): its clips of the model's classes are scored, matched by
    name, and the others are left out and counted, never scored against a class the head lacks."""
    workdir, _, _ = trained
    more = write_token_dataset(tmp_path / "more", speakers=3, classes=(*CLASSES, "fearful"))
    assert cli.main(["eval", "classify", f"--model={validation.selected_export(workdir)}", f"--data={more}",
                     f"--json-out={tmp_path / 'r.json'}"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert f"left out: {report['left_out']['clips']} clips of ['fearful'] classes" in out
    assert report["left_out"]["clips"] > 0 and [c["name"] for c in report["per_class"]] == list(CLASSES)
    missing = write_token_dataset(tmp_path / "fewer", speakers=3, classes=CLASSES[:2])
    assert cli.main(["eval", "classify", f"--model={validation.selected_export(workdir)}", f"--data={missing}"]) == 2
    assert f"it has no ['{CLASSES[2]}']" in capsys.readouterr().err


def test_early_stopping_and_its_resume(tokens, tmp_path):
    """lr 0: every validation equals the first, so patience 1 stops at the second evaluation."""
    config = config_lib.load_config(CONFIG, overrides(tokens, **{"optim.base_lr": 0.0, "eval.patience": 1,
                                                                 "eval_every": 10, "checkpoint_every": 10}))
    result = train.train(config, tmp_path / "run")
    assert (result.step, result.stopped_by) == (20, "early stop")
    sel = validation.selected(tmp_path / "run")
    assert sel["stopped_early_at"] == 20 and sel["selected"]["step"] == 10
    again = train.train(config, tmp_path / "run")
    assert (again.step, again.stopped_by) == (20, "early stop")


def test_validation_settings_are_checked_before_training(tokens, tmp_path):
    with pytest.raises(ValueError, match="test split is never read"):
        train.train(config_lib.load_config(CONFIG, overrides(tokens, **{"eval.split": "test"})), tmp_path / "a")
    with pytest.raises(ValueError, match="eval.metric='auc'"):
        train.train(config_lib.load_config(CONFIG, overrides(tokens, **{"eval.metric": "auc"})), tmp_path / "b")
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_training_split_without_a_class_is_refused(tmp_path):
    data = write_token_dataset(tmp_path / "d", speakers=3, per_class=1)  # validation: spk01 saying each class once
    config = config_lib.load_config(CONFIG, overrides(data))
    src = source.data_source(data, "validation")
    with pytest.MonkeyPatch.context() as mp:  # a training split that lacks 'sad'
        mp.setattr(folds_lib, "split_source", lambda data_cfg, split: [src[0], src[1]])
        with pytest.raises(ValueError, match=r"has no example of class 'sad' \(label 2\): the head cannot learn it"):
            classifier.prepare(config)


# -- k-fold ---------------------------------------------------------------------------------------
def test_kfold_runs_resumes_an_interrupted_fold_and_prints_the_summary(tokens, tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "kf"
    args = ["kfold", f"--config={CONFIG}", "--folds=3", "--by=speaker", f"--workdir={workdir}",
            f"--config.data.dir={tokens}", "--config.total_steps=40", "--config.eval_every=20",
            "--config.checkpoint_every=20", "--config.model.head=query"]
    real = train.train

    def interrupted(config, wd, stop_at=None):  # fold 1 is stopped at step 20, as a SIGTERM would
        if config.data.fold == 1:
            import dataclasses

            return dataclasses.replace(real(config, wd, stop_at=20), stopped_by="SIGTERM")
        return real(config, wd, stop_at=stop_at)

    monkeypatch.setattr(train, "train", interrupted)
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "kfold stopped (SIGTERM) in fold 1 at step 20" in out and "kfold folds=" not in out
    assert (workdir / "fold-0" / "result.json").is_file() and not (workdir / "fold-1" / "result.json").exists()
    done0 = (workdir / "fold-0" / "result.json").stat().st_mtime_ns

    monkeypatch.setattr(train, "train", real)
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert KFOLD_LINE.fullmatch(lines[-1]), lines[-1]
    assert any(line.startswith("fold 0:") and line.endswith("(done before)") for line in lines)
    assert "resumed from" in captured.out + captured.err and f"fold-1" in captured.out + captured.err
    assert (workdir / "fold-0" / "result.json").stat().st_mtime_ns == done0
    summary = json.loads((workdir / "kfold.json").read_text())
    assert summary["folds"] == 3 and len(summary["per_fold"]) == 3
    assert np.asarray(summary["confusion"]).sum() == 36  # every example tested once
    tested = [s for f in summary["per_fold"] for s in f["speakers"]["test"]]
    assert sorted(tested) == [f"spk{i:02d}" for i in range(6)]
    mean = np.mean([f["accuracy"] for f in summary["per_fold"]])
    assert summary["accuracy"]["mean"] == pytest.approx(mean)

    # other settings in the same workdir are refused
    assert cli.main([*args[:2], "--folds=4", *args[3:]]) == 2
    assert "holds a k-fold with other settings" in capsys.readouterr().err


def test_kfold_refuses_a_config_without_validation_and_empty_speakers(tokens, tmp_path, capsys):
    assert cli.main(["kfold", f"--config={CONFIG}", f"--workdir={tmp_path / 'a'}", f"--config.data.dir={tokens}",
                     "--config.eval_every=0"]) == 2
    assert "must validate" in capsys.readouterr().err
    empty = write_token_dataset(tmp_path / "empty", speakers=4, per_class=1, empty_speaker=True)
    assert cli.main(["kfold", f"--config={CONFIG}", "--folds=3", f"--workdir={tmp_path / 'b'}",
                     f"--config.data.dir={empty}"]) == 2
    assert "have an empty speaker" in capsys.readouterr().err


def test_finetune_config_variants_share_the_pretraining_architecture():
    pre = config_lib.load_config(str(REPO / "configs/vq_mae_av.py"))
    pre_local = config_lib.load_config(str(REPO / "configs/vq_mae_av.py") + ":runlocal")
    full = config_lib.load_config(str(REPO / "configs/finetune.py"))
    assert full.encoder.model.to_dict() == pre.model.to_dict()  # random init = the pretrained architecture
    assert config_lib.load_config(CONFIG).encoder.model.to_dict() == pre_local.model.to_dict()
    assert (full.method, full.model.modalities, full.model.head) == ("classifier", ("video", "audio"), "attention")
    for arg, mods in (("modalities=audio", ("audio",)), ("modalities=video", ("video",))):
        assert config_lib.load_config(str(REPO / "configs/finetune.py") + f":{arg}").model.modalities == mods
    assert config_lib.load_config(str(REPO / "configs/finetune.py") + ":head=query").model.head == "query"
    with pytest.raises(ValueError, match="unknown modalities 'text'"):
        config_lib.load_config(str(REPO / "configs/finetune.py") + ":modalities=text")


def test_av_report_line_and_png(tmp_path, capsys):
    from avpretrain import report

    run = tmp_path / "run"
    (run / "pretrain").mkdir(parents=True)
    (run / "pretrain" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "ce_video": 6 - s / 100, "ce_audio": 5 - s / 100, "nt_xent": 2.0, "acc_video": 0.01,
                    "acc_audio": 0.02}) + "\n" for s in (25, 50)))
    for i, (c, _) in enumerate(report.AV_CONDITIONS):
        per_fold = [{"fold": f, "accuracy": 0.3 + 0.1 * i + 0.01 * f} for f in range(5)]
        (run / f"kfold_{c}").mkdir()
        (run / f"kfold_{c}" / "kfold.json").write_text(json.dumps({
            "folds": 5, "class_names": list(CLASSES), "per_fold": per_fold, "confusion": np.eye(3, dtype=int).tolist(),
            **{k: {"mean": 0.3 + 0.1 * i, "std": 0.01} for k in ("accuracy", "uar", "macro_f1")}}))
    line = report.av_report(str(run))
    assert line == "demo-av: kfold accuracy av=0.3000 audio=0.4000 video=0.5000 random-init=0.6000"
    assert capsys.readouterr().out.strip().splitlines()[-1] == line
    assert (run / "demo_av_report.png").read_bytes()[:4] == b"\x89PNG"


def test_an_m2d_export_fine_tunes_on_waveforms(data_dir, tmp_path, capsys):
    """The same classifier over an M2D encoder: waveform windows, the export's log-mel statistics."""
    from helpers import tiny_config

    m2d_config = tiny_config(data_dir)
    m2d = export._encoder_model(m2d_config, sharding.single_device_mesh())
    pre = export.write_export(tmp_path / "m2d", m2d_config, nnx.to_pure_dict(nnx.state(m2d)), (-7.0, 4.0))
    config = config_lib.load_config(str(REPO / "configs/finetune.py") + ":runlocal,modalities=audio", {
        "data.dir": str(data_dir), "init.path": str(pre), "total_steps": 10, "eval_every": 5, "checkpoint_every": 5})
    result = train.train(config, tmp_path / "run")
    assert result.step == 10
    assert config.encoder.method == "m2d" and tuple(config.encoder.norm_stats) == (-7.0, 4.0)
    assert [h["step"] for h in validation.selected(tmp_path / "run")["history"]] == [5, 10]
    out = export.export(tmp_path / "run", tmp_path / "e")
    assert cli.main(["eval", "classify", f"--model={out}", f"--data={data_dir}", f"--png={tmp_path / 'c.png'}"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("classify accuracy=")
    with pytest.raises(ValueError, match=r"model.modalities=\('video', 'audio'\): the m2d encoder has \('audio',\)"):
        train.train(config_lib.load_config(str(REPO / "configs/finetune.py") + ":runlocal", {
            "data.dir": str(data_dir), "init.path": str(pre)}), tmp_path / "av")


def test_eval_windows_of_a_waveform():
    crop = pipeline.Crop({"audio": classifier.method.Field((100,))})
    wave = np.arange(250, dtype=np.int16)
    windows = crop.eval_windows({"audio": wave})
    assert [round(float(w["audio"][0]) * 32768) for w in windows] == [0, 100, 150]
    short = crop.eval_windows({"audio": wave[:40]})
    assert len(short) == 1 and np.count_nonzero(short[0]["audio"][40:]) == 0


def test_kfold_refuses_a_dataset_without_the_inputs_before_making_folds(data_dir, tmp_path, capsys):
    assert cli.main(["kfold", f"--config={CONFIG}", "--folds=3", f"--workdir={tmp_path / 'k'}",
                     f"--config.data.dir={data_dir}"]) == 2
    assert "codes need a token dataset" in capsys.readouterr().err
    assert not (tmp_path / "k" / "folds.json").exists()
