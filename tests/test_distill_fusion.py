"""Speech emotion I, second part: distilling an exported encoder into a small student (targets from
the chosen teacher layers, the teacher frozen, the student an ordinary M2D export) and audio-text
fusion (transcript embeddings beside the audio; a clear refusal when transcripts are missing; a
local speech recogniser for corpora without them)."""
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from avpretrain import checkpoint, config as config_lib, export, sharding, train
from avpretrain.data import captions, pipeline
from avpretrain.evaluate import supervised
from avpretrain.models import distill, m2d, vit
from helpers import REPO, HashEncoder

pytestmark = pytest.mark.xdist_group("finetune")
DISTILL = str(REPO / "configs/distill.py") + ":runlocal"
FUSION = str(REPO / "configs/finetune.py") + ":runlocal,modalities=audio,task=regress,text=1"


@pytest.fixture(scope="module")
def emotion_text(emotion_data):
    """``emotion_data`` with its transcripts embedded (hash encoder)."""
    captions.embed_captions(emotion_data, encoder=HashEncoder(), field="transcript", progress=False)
    return emotion_data


@pytest.fixture(scope="module")
def teacher(m2d_export):
    """A random-init tiny M2D export (64 wide, 2 blocks): the teacher."""
    return m2d_export


# -- distillation -------------------------------------------------------------------------------
def test_targets_follow_the_layer_analysis_and_the_relative_depth(tmp_path):
    analysis = {"task": "regress", "layers": 12, "best": {"arousal": {"layer": 3}, "valence": {"layer": 12},
                                                          "dominance": {"layer": 7}}}
    path = tmp_path / "layers.json"
    path.write_text(json.dumps(analysis))
    assert distill.layers_from_analysis(path, 12, output=True) == (3, 7)    # the last block: the output target
    assert distill.layers_from_analysis(path, 12, output=False) == (3, 7, 12)
    with pytest.raises(ValueError, match="analysed a 12-block encoder; the teacher has 4"):
        distill.layers_from_analysis(path, 4, output=True)
    assert distill.evenly_spaced(12, output=True) == (4, 8)                 # DistilHuBERT's 4, 8, 12 of 12
    assert distill.evenly_spaced(4, output=False) == (1, 3, 4)
    base = distill.student_size(m2d.SIZES["base"])
    assert base == {"width": 384, "depth": 10, "num_heads": 6}
    cfg = config_lib.load_config(str(REPO / "configs/m2d.py") + ":size=base", {})
    student = config_lib.load_config(str(REPO / "configs/m2d.py") + ":size=base",
                                     {f"model.{k}": v for k, v in base.items()})
    share = distill.encoder_params(student.model) / distill.encoder_params(cfg.model)
    assert 0.18 < share < 0.23   # "about 20 % of the teacher's trainable parameters"


def test_the_loss_reads_the_paired_blocks_of_student_and_teacher():
    teacher = dict(input_frames=32, width=32, depth=3, num_heads=2, pred_width=16, pred_depth=1, pred_heads=2)
    student = dict(input_frames=32, width=16, depth=2, num_heads=2, pred_width=16, pred_depth=1, pred_heads=2)
    with sharding.mesh_rules(sharding.single_device_mesh()):
        model = distill.Distill(teacher=teacher, pairs=((1, 3), (distill.OUTPUT, distill.OUTPUT)), rngs=nnx.Rngs(0),
                                **student)
    lms = jax.random.normal(jax.random.key(1), (2, 1, 80, 32))
    loss, metrics = model.loss({"lms": lms}, jax.random.key(0))
    # by hand: student block 1 → teacher block 3 (pre-norm), student output → teacher output
    t_outs = vit.block_outputs(model.teacher.blocks, model.teacher._with_cls(model.teacher._patch_tokens(lms)))
    s_outs = vit.block_outputs(model.blocks, model._with_cls(model._patch_tokens(lms)))
    want_t3, _ = distill.target_loss(model.heads[0](s_outs[0][:, 1:]), distill.standardize(t_outs[2][:, 1:]))
    want_out, _ = distill.target_loss(model.heads[1](model.norm(s_outs[-1])[:, 1:]),
                                      distill.standardize(model.teacher.norm(t_outs[-1])[:, 1:]))
    np.testing.assert_allclose(float(metrics["loss_t3"]), float(want_t3), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss_out"]), float(want_out), rtol=1e-5)
    np.testing.assert_allclose(float(loss), (float(want_t3) + float(want_out)) / 2, rtol=1e-5)
    # a perfect prediction of a standardised target: L1 0, cos 1 → −log σ(1)
    t = distill.standardize(t_outs[2][:, 1:])
    assert float(distill.target_loss(t, t)[0]) == pytest.approx(float(-jax.nn.log_sigmoid(1.0)), rel=1e-5)
    # the teacher is outside what the optimizer trains
    trained = nnx.state(model, distill.TRAINABLE)
    assert "teacher" not in trained and "heads" in trained and "blocks" in trained
    with pytest.raises(ValueError, match="1-based"):
        distill.Distill(teacher=teacher, pairs=((3, 1),), rngs=nnx.Rngs(0), **student)


def test_a_distilled_student_trains_on_unlabeled_audio_and_exports_as_an_m2d_encoder(teacher, data_dir, emotion_data,
                                                                                         tmp_path, capsys):
    config = config_lib.load_config(DISTILL, {"teacher.path": str(teacher), "data.dir": str(data_dir),
                                              "total_steps": 4, "checkpoint_every": 4})
    result = train.train(config, tmp_path / "student")
    assert result.step == 4
    assert tuple(config.distill.teacher_layers) == (1,) and tuple(config.distill.student_layers) == (1,)
    assert (config.model.width, config.model.depth, config.model.num_heads) == (32, 2, 2)
    assert tuple(config.data.norm_stats) == (-7.0, 4.0)  # the teacher's input statistics
    log = capsys.readouterr()
    assert re.search(r"distill: student 32×2 \([\d,]+ encoder params, \d+\.\d % of the teacher's", log.out + log.err)
    # the teacher stayed what it was: frozen
    restored = checkpoint.restore_params_from(tmp_path / "student", {"teacher": _like(teacher, "blocks")})
    original = checkpoint.restore_params_from(teacher, {"blocks": _like(teacher, "blocks")["blocks"]})
    for a, b in zip(jax.tree.leaves(restored["teacher"]["blocks"]), jax.tree.leaves(original["blocks"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the student exports as an M2D encoder of its own width and fine-tunes like one
    out = export.export(tmp_path / "student", tmp_path / "student_export")
    encoder = export.load_pretrained(str(out))
    assert encoder.embedding_dim == 5 * 32 and not hasattr(encoder.model, "teacher")
    assert encoder.scene_embeddings(np.zeros((2, 16000), np.float32)).shape == (2, 160)
    assert encoder.layer_embeddings([np.zeros(16000, np.float32)]).shape == (1, 2, 32)
    ft = config_lib.load_config(str(REPO / "configs/finetune.py") + ":runlocal,modalities=audio,task=regress",
                                {"init.path": str(out), "data.dir": str(emotion_data), "total_steps": 2,
                                 "eval_every": 0, "checkpoint_every": 2})
    assert train.train(ft, tmp_path / "ft").step == 2
    assert ft.encoder.method == "distill" and ft.encoder.model.width == 32
    # the demo's report reads the distillation run, the layer analysis and the three test scores
    from avpretrain import report

    (tmp_path / "layers_teacher.json").write_text(json.dumps(
        {"layers": 2, "per_layer": {"arousal": [0.5, 0.4], "valence": [0.2, 0.1]}}))
    for i, m in enumerate(("teacher", "student", "student+text")):
        (tmp_path / f"regress_{m}.json").write_text(json.dumps(
            {"dimensions": ["arousal", "valence", "dominance"], "clips": 100, "ccc_arousal": 0.7 - i / 10,
             "ccc_valence": 0.2 + i / 5, "ccc_dominance": 0.5}))
    line = report.emotion_report(str(tmp_path))
    assert line == ("demo-emotion: ccc valence teacher=0.2000 student=0.4000 student+text=0.6000 "
                    "arousal teacher=0.7000 student=0.6000 student+text=0.5000")
    assert (tmp_path / "demo_emotion_report.png").stat().st_size > 10_000


def _like(export_dir, name):
    """The shapes of one top-level attribute of an export's params (for a partial restore)."""
    model = export.load_pretrained(str(export_dir)).model
    return {name: nnx.to_pure_dict(nnx.state(getattr(model, name)))}


def test_distillation_refuses_a_missing_or_unsuitable_teacher(data_dir, teacher, tmp_path):
    with pytest.raises(ValueError, match="config.teacher.path is empty"):
        train.train(config_lib.load_config(DISTILL, {"data.dir": str(data_dir)}), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="neither an export nor a training workdir"):
        train.train(config_lib.load_config(DISTILL, {"data.dir": str(data_dir), "teacher.path": str(tmp_path)}),
                    tmp_path / "b")
    with pytest.raises(ValueError, match="must lie in 1..2"):
        train.train(config_lib.load_config(DISTILL, {"data.dir": str(data_dir), "teacher.path": str(teacher),
                                                     "distill.teacher_layers": (5,)}), tmp_path / "c")
    with pytest.raises(ValueError, match="the student sees the teacher's input"):
        train.train(config_lib.load_config(DISTILL, {"data.dir": str(data_dir), "teacher.path": str(teacher),
                                                     "model.input_frames": 64}), tmp_path / "d")


# -- audio-text fusion ---------------------------------------------------------------------------
def test_fusion_reads_the_transcript_embeddings_in_training_validation_and_evaluation(emotion_text, teacher, tmp_path,
                                                                                       monkeypatch):
    emotion_data = emotion_text
    store = captions.CaptionEmbeddings.open(emotion_data, "train", field="transcript")
    assert len(store) == store.num_captions   # one transcript each
    config = config_lib.load_config(FUSION, {"init.path": str(teacher), "data.dir": str(emotion_data),
                                             "total_steps": 4, "eval_every": 2, "checkpoint_every": 2})
    train.train(config, tmp_path / "run")
    assert config.model.text_dim == HashEncoder.dim and config.data.text_model == HashEncoder.name
    model = export.load_pretrained(str(export.export(tmp_path / "run", tmp_path / "e")))
    assert model.reads_text and model.inputs["text_emb"].shape == (HashEncoder.dim,)
    result = supervised.regress(tmp_path / "e", emotion_data, split="test")
    assert set(result) >= {"ccc_arousal", "ccc_valence", "ccc_dominance"}
    # the prediction moves with the transcript: the text is read
    src = supervised.model_source(model, emotion_data, "test")
    window = pipeline.Crop({k: v for k, v in model.inputs.items()}).eval_windows(src[0])[0]
    batch = {k: np.stack([v] * 8) for k, v in window.items()}
    other = dict(batch, text_emb=np.roll(batch["text_emb"], 1, axis=-1))
    assert not np.allclose(model.predict(batch), model.predict(other))
    # downstream: embed_text gives a transcript the row training read for it (the model's text model)
    monkeypatch.setattr(captions, "SentenceEncoder", lambda name: HashEncoder() if name == HashEncoder.name else None)
    transcript = src[0]["transcript"].decode()
    np.testing.assert_allclose(model.embed_text([transcript])[0].astype(np.float32),
                               src[0]["caption_embeddings"][0].astype(np.float32), atol=1e-3)


def test_fusion_without_transcripts_is_one_clear_error(tmp_path, teacher):
    from test_emotion_datasets import build, msp_replica

    msp_replica(tmp_path / "msp")
    code, _, _ = build("msp_podcast", tmp_path / "msp", tmp_path / "data")
    assert code == 0
    overrides = {"init.path": str(teacher), "data.dir": str(tmp_path / "data"), "eval_every": 0}
    with pytest.raises(FileNotFoundError, match=r"no transcript embeddings .* --field transcript"):
        train.train(config_lib.load_config(FUSION, overrides), tmp_path / "a")
    captions.embed_captions(tmp_path / "data", encoder=HashEncoder(), field="transcript", progress=False)
    with pytest.raises(ValueError, match=r"1 of 2 records have no transcript .* --asr-model DIR"):
        train.train(config_lib.load_config(FUSION, overrides), tmp_path / "b")


class FakeRecognizer:
    name = "fake-asr"

    def __init__(self):
        self.calls = 0

    def transcribe(self, waves, sample_rate):
        self.calls += len(waves)
        assert sample_rate == 16000 and all(w.dtype == np.float32 and np.abs(w).max() <= 1 for w in waves)
        return [f"heard {len(w)} samples" for w in waves]


def test_a_speech_recogniser_fills_the_missing_transcripts(tmp_path):
    from test_emotion_datasets import build, msp_replica

    msp_replica(tmp_path / "msp")
    assert build("msp_podcast", tmp_path / "msp", tmp_path / "data")[0] == 0
    asr = FakeRecognizer()
    result = captions.embed_captions(tmp_path / "data", encoder=HashEncoder(), field="transcript", transcriber=asr,
                                     progress=False)
    meta = json.loads((result.directory / "metadata.json").read_text())
    assert meta["asr"] == "fake-asr" and meta["field"] == "transcript"
    assert sum(s["transcribed"] for s in meta["splits"].values()) == asr.calls == 4   # all but the transcribed one
    train_store = captions.CaptionEmbeddings.open(tmp_path / "data", "train", field="transcript")
    texts = train_store.texts()
    assert "what a lovely day" in texts and sum(t.startswith("heard ") for t in texts) == 1
    assert train_store.num_captions == len(train_store)   # every clip has its text now
    with pytest.raises(ValueError, match="--asr-model transcribes speech for --field transcript"):
        captions.embed_captions(tmp_path / "data", encoder=HashEncoder(), transcriber=asr, progress=False)


def test_a_local_transformers_recogniser_directory_transcribes(tmp_path):
    """A tiny randomly initialised wav2vec 2.0 CTC model saved here stands in for a user's ASR directory."""
    transformers = pytest.importorskip("transformers")
    import torch

    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tok = transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                            word_delimiter_token="|")
    fe = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0)
    transformers.Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(tmp_path / "asr")
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
                                      num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, pad_token_id=0)
    transformers.Wav2Vec2ForCTC(cfg).save_pretrained(tmp_path / "asr")
    asr = captions.Transcriber(tmp_path / "asr")
    texts = asr.transcribe([0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)], 8000)
    assert len(texts) == 1 and isinstance(texts[0], str)
    with pytest.raises(FileNotFoundError, match="not a saved transformers model directory"):
        captions.Transcriber(tmp_path)


def test_a_regression_kfold_reads_each_folds_transcripts(emotion_text, teacher, tmp_path, capsys):
    """Folds map records across the dataset's splits: their transcript embeddings must follow."""
    from avpretrain import cli

    assert cli.main(["kfold", f"--config={FUSION}", "--folds=3", f"--workdir={tmp_path / 'k'}",
                     f"--config.data.dir={emotion_text}", f"--config.init.path={teacher}",
                     "--config.total_steps=2", "--config.eval_every=2", "--config.checkpoint_every=2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(r"^kfold folds=3 ccc arousal=-?\d\.\d{4}±\d\.\d{4} valence=-?\d\.\d{4}±\d\.\d{4} "
                    r"dominance=-?\d\.\d{4}±\d\.\d{4}$", last), last
    summary = json.loads((tmp_path / "k" / "kfold.json").read_text())
    assert summary["task"] == "regress" and len(summary["per_fold"]) == 3
    assert sum(f["clips"] for f in summary["per_fold"]) == 36     # every clip tested once
    assert set(summary["pooled"]) >= {"ccc_arousal", "ccc_valence", "ccc_dominance"}


def test_bench_runs_the_regression_fine_tuning_with_and_without_text(emotion_text, teacher):
    """Without text=1 the bench reads no text store; with it, the stored transcripts' width."""
    from avpretrain import bench

    base = str(REPO / "configs/finetune.py") + ":runlocal,modalities=audio,task=regress"
    for spec in (base, base + ",text=1"):
        cfg = config_lib.load_config(spec, {"init.path": str(teacher), "data.dir": str(emotion_text)})
        r = bench.run(cfg, steps=1, warmup=1, data_batches=2, quiet=True)
        assert r["step_time_s"] > 0 and r["pipeline_clips_per_s"] > 0
        assert cfg.model.text_dim == (HashEncoder.dim if spec.endswith("text=1") else 0)
