"""Multi-label datasets (``label`` a ``Sequence(ClassLabel)``, as AudioSet's): the metadata, multi-hot
batches, the mAP (against hand-computed values and sklearn), the linear probe scored by mAP, the
zero-shot and linear-probe commands end to end, and the single-label consumers refusing them."""
import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from avpretrain import cli, export
from avpretrain.data import folds as folds_lib, pipeline, source
from avpretrain.evaluate import few_shot, retrieval, supervised
from avpretrain.evaluate.linear_probe import ProbeResult, train_linear_probe
from avpretrain.method import Field
from data_pipelines import common
from helpers import REPO, tiny_config

SR = 16000
CLASSES = ["bark", "rain", "siren", "speech"]
FREQS = [440.0, 1000.0, 2200.0, 3600.0]  # one tone per class: a clip sounds all of its classes
SPLIT_OF = {**{i: "train" for i in range(24)}, **{i: "validation" for i in range(24, 32)},
            **{i: "test" for i in range(32, 40)}}


def classes_of(i: int) -> list[int]:
    """Clip i's classes: the bits of i % 8 over the first three; 'speech' on every third train or
    validation clip and never in test (so the test mAP leaves one class out)."""
    out = [c for c in range(3) if (i % 8) >> c & 1]
    return out + [3] if SPLIT_OF[i] != "test" and i % 3 == 0 else out


def clip(i: int) -> np.ndarray:
    t = np.arange(int(SR * (0.4 + 0.05 * (i % 5)))) / SR
    x = 0.01 * np.random.default_rng(i).standard_normal(len(t))
    for c in classes_of(i):
        x += 0.2 * np.sin(2 * np.pi * FREQS[c] * t)
    return common.to_int16(x)


class MultiLabelSounds(common.AudioBuilder, skip_registration=True):
    """40 tone mixtures, 4 classes, several (or no) classes per clip; ids 'ml-000'."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, **kwargs):
        self.skipped = []
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding="bytes"),
                "label": tfds.features.Sequence(tfds.features.ClassLabel(names=CLASSES)),
                "speaker": tfds.features.Text(),
                "captions": tfds.features.Sequence(tfds.features.Text()),
            }),
            metadata=tfds.core.MetadataDict(sample_rate=SR))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples([i for i, s in SPLIT_OF.items() if s == split])
                for split in common.SPLITS}

    def _generate_examples(self, indices):
        for i in indices:
            yield f"ml-{i:03d}", {"id": f"ml-{i:03d}", "audio": clip(i), "label": [CLASSES[c] for c in classes_of(i)],
                                  "speaker": f"spk{i % 4}", "captions": []}


def multi_hot(i: int) -> np.ndarray:
    out = np.zeros(len(CLASSES), np.float32)
    out[classes_of(i)] = 1
    return out


@pytest.fixture(scope="module")
def ml_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("multilabel") / "data"
    common.prepare_dataset(MultiLabelSounds, out)
    return str(out)


def test_dataset_meta_and_records(ml_data, data_dir):
    meta = source.dataset_meta(ml_data)
    assert meta.multi_label and meta.label_names == CLASSES and meta.sample_rate == SR
    assert meta.num_examples == {"train": 24, "validation": 8, "test": 8}
    src = source.data_source(ml_data, "train")
    for ex in (src[r] for r in range(len(src))):
        # TFDS 4.9 reads a Sequence back as a list (of int64 here); the readers take any 1-d sequence
        assert all(isinstance(c, np.int64) for c in ex["label"])
        assert sorted(int(c) for c in ex["label"]) == classes_of(int(ex["id"].decode()[3:]))
    assert not source.dataset_meta(data_dir).multi_label  # a ClassLabel: single-label


def test_eval_batches_give_multi_hot_rows(ml_data):
    rows = {}
    for batch in pipeline.eval_batches(ml_data, "train", batch_size=5):
        assert batch["label"].dtype == np.float32 and batch["label"].shape == (len(batch["id"]), len(CLASSES))
        rows.update(zip(batch["id"], batch["label"]))
    assert len(rows) == 24
    for id_, row in rows.items():
        np.testing.assert_array_equal(row, multi_hot(int(id_[3:])))
    assert not rows["ml-008"].any()  # a clip without classes: an all-zero row
    np.testing.assert_array_equal(rows["ml-003"], [1, 1, 0, 1])


def test_training_crops_give_multi_hot_when_the_method_declares_label_c(ml_data):
    src = source.data_source(ml_data, "train")
    ex = src[0]
    i = int(ex["id"].decode()[3:])
    out = pipeline.Crop({"audio": Field((1600,)), "label": Field((len(CLASSES),))})(ex, np.random.default_rng(0))
    assert out["label"].dtype == np.float32
    np.testing.assert_array_equal(out["label"], multi_hot(i))
    np.testing.assert_array_equal(pipeline.batch_label(np.int64(2), 4), [0, 0, 1, 0])  # a single-label record
    assert pipeline.batch_label(np.int64(2)) == 2 and pipeline.batch_label(np.int64(2)).dtype == np.int32
    with pytest.raises(ValueError, match="multi-label record"):
        pipeline.Crop({"audio": Field((1600,)), "label": Field((), "int32")})(ex, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"outside the 4 classes"):
        pipeline.batch_label(np.array([1, 4]), 4)


# -- mAP ------------------------------------------------------------------------------------------
def test_mean_average_precision_by_hand():
    scores = np.array([[0.9, 0.2, 0.5],
                       [0.8, 0.7, 0.1],
                       [0.3, 0.6, 0.4],
                       [0.1, 0.4, 0.3]])
    labels = np.array([[1, 0, 0],
                       [0, 0, 0],
                       [1, 1, 0],
                       [0, 1, 0]])  # class 2 has no positive
    # class 0 ranks 0 1 2 3, positives at ranks 1, 3: (1 + 2/3) / 2; class 1 ranks 1 2 3 0, positives at
    # ranks 2, 3: (1/2 + 2/3) / 2
    ap = retrieval.average_precision(scores, labels)
    np.testing.assert_allclose(ap[:2], [5 / 6, 7 / 12])
    assert np.isnan(ap[2])
    assert retrieval.mean_average_precision(scores, labels) == pytest.approx(17 / 24)
    assert retrieval.mean_average_precision(scores, labels.astype(np.float32)) == pytest.approx(17 / 24)
    # ties keep the lower index first
    assert retrieval.mean_average_precision(np.zeros((2, 1)), [[0], [1]]) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="no positive in any class"):
        retrieval.mean_average_precision(scores, np.zeros_like(labels))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        retrieval.mean_average_precision(scores, labels[:, :2])


def test_mean_average_precision_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.random((60, 7)) < 0.25
    labels[:, 6] = False  # no positive: left out
    scores = rng.standard_normal((60, 7)) + labels
    ref = np.mean([sklearn_metrics.average_precision_score(labels[:, c], scores[:, c]) for c in range(6)])
    assert retrieval.mean_average_precision(scores, labels) == pytest.approx(ref, rel=1e-12)


# -- the linear probe -----------------------------------------------------------------------------
DIM, C = 12, 5


def multi_label_blobs(n, seed, random_labels=False):
    """Features [n, DIM]; each class a half-space through a random direction (margin > 0.3), or
    labels drawn independently of the features (positive rate 0.3)."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).standard_normal((DIM, C))
    w /= np.linalg.norm(w, axis=0)
    x = rng.standard_normal((n * 8, DIM))
    margin = x @ w - 0.4
    x, margin = x[(np.abs(margin) > 0.3).all(1)][:n], margin[(np.abs(margin) > 0.3).all(1)][:n]
    y = rng.random((len(x), C)) < 0.3 if random_labels else margin > 0
    return (x * 4 + 2).astype(np.float32), y.astype(np.float32)


def multi_label_splits(random_labels=False):
    return [a for n, seed in ((500, 1), (150, 2), (300, 3)) for a in multi_label_blobs(n, seed, random_labels)]


def test_probe_learns_separable_multi_label_data():
    data = multi_label_splits()
    assert len(data[0]) == 500 and (data[1].mean(0) > 0.05).all()
    result = train_linear_probe(*data, num_classes=C, max_epochs=100, patience=10, learning_rate=1e-2)
    assert isinstance(result, ProbeResult) and result.metric == "mAP"
    assert result.test_score > 0.9 and result.valid_score > 0.9
    assert result.test_classes_without_positives == 0 and not result.valid_from_train
    with pytest.raises(AttributeError, match="scored by mAP"):
        result.test_accuracy
    d = result.as_dict()
    assert d["test_mAP"] == d["test_score"] and "test_accuracy" not in d and d["metric"] == "mAP"


def test_probe_on_random_labels_scores_about_the_positive_rate():
    tx, ty, vx, vy, sx, sy = multi_label_splits(random_labels=True)
    result = train_linear_probe(tx, ty, vx, vy, sx, sy, num_classes=C, max_epochs=30, patience=5)
    rate = sy.mean()
    assert abs(rate - 0.3) < 0.05 and abs(result.test_score - rate) < 0.08
    # 0/1 integers are the same labels as floats
    kwargs = dict(num_classes=C, max_epochs=3, patience=2, seed=1)
    assert train_linear_probe(tx, ty.astype(int), vx, vy.astype(int), sx, sy.astype(int), **kwargs) == \
        train_linear_probe(tx, ty, vx, vy, sx, sy, **kwargs)


@pytest.mark.parametrize("change, message", [
    (lambda d: {**d, "test_y": d["test_y"][:, :-1]}, r"test_y must be multi-hot \[N, C\]"),
    (lambda d: {**d, "valid_y": d["valid_y"] * 2}, "every entry 0 or 1"),
    (lambda d: {**d, "test_y": d["test_y"] * 0}, "test_y has no positive in any class"),
    (lambda d: {**d, "num_classes": C + 1}, r"train_y must be multi-hot \[N, C\]"),
])
def test_probe_multi_label_errors(change, message):
    tx, ty, vx, vy, sx, sy = multi_label_splits()
    data = dict(train_x=tx, train_y=ty, valid_x=vx, valid_y=vy, test_x=sx, test_y=sy, num_classes=C)
    with pytest.raises(ValueError, match=message):
        train_linear_probe(**change(data))


# -- the commands ---------------------------------------------------------------------------------
def test_eval_linear_probe_reports_map(ml_data, m2d_export, tmp_path, capsys):
    assert cli.main(["eval", "linear-probe", f"--model={m2d_export}", f"--data={ml_data}",
                     f"--json-out={tmp_path / 'r.json'}"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2] == "multi-label: 1 of 4 classes have no positive in test and are left out of its mAP"
    assert re.fullmatch(r"linear-probe mAP=\d\.\d{4}", out[-1])
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["multi_label"] and result["metric"] == "mAP" and result["num_classes"] == 4
    assert 0 < result["test_mAP"] == result["test_score"] <= 1 and "test_accuracy" not in result
    assert result["test_classes_without_positives"] == 1 and result["valid_classes_without_positives"] == 0
    assert result["num_examples"] == {"train": 24, "validation": 8, "test": 8}


class ToneEncoder:
    """A stand-in audio-language model: a clip's embedding is its spectrum's magnitude at the class
    tones; a prompt's, the one-hot of the class it names."""

    is_audio_language, sample_rate = True, SR

    def embed_audio(self, waves, batch_size=64):
        out = []
        for w in waves:
            spectrum = np.abs(np.fft.rfft(w))
            freqs = np.fft.rfftfreq(len(w), 1 / SR)
            out.append([spectrum[np.abs(freqs - f) < 30].max() for f in FREQS])
        out = np.asarray(out, np.float32) + 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_text(self, prompts):
        return np.asarray([[float(name in p) for name in CLASSES] for p in prompts], np.float32)


def test_eval_zero_shot_reports_map_and_top1_hit(ml_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export, "load_pretrained", lambda path, **kw: ToneEncoder())
    assert cli.main(["eval", "zero-shot", "--model=tones", f"--data={ml_data}", "--split=validation",
                     f"--json-out={tmp_path / 'zs.json'}"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "zero-shot mAP=1.0000"  # the tones give each class a perfect ranking
    assert out[-2].startswith("zero-shot multi-label over 8 validation clips, 4 classes: top-1 prompt is one of "
                              "the clip's classes for 1.0000 of the clips")
    zs = json.loads((tmp_path / "zs.json").read_text())
    assert zs["multi_label"] and "accuracy" not in zs and "chance" not in zs
    assert zs["top1_hit"] == 1.0 and zs["clips_without_classes"] == 0 and zs["classes_without_positives"] == 0
    labels = np.stack([multi_hot(i) for i in range(24, 32)])
    assert zs["prevalence"] == pytest.approx(labels.mean(0).mean())
    # test: 'speech' has no positive (left out of the mAP), clip 32 no class (left out of top1_hit)
    assert cli.main(["eval", "zero-shot", "--model=tones", f"--data={ml_data}",
                     f"--json-out={tmp_path / 't.json'}"]) == 0
    assert "4 classes (1 without a positive, left out of the mAP)" in capsys.readouterr().out
    zs = json.loads((tmp_path / "t.json").read_text())
    assert (zs["classes_without_positives"], zs["clips_without_classes"], zs["mAP"]) == (1, 1, 1.0)


# -- single-label consumers refuse ----------------------------------------------------------------
def test_single_label_consumers_refuse_a_multi_label_dataset(ml_data, tmp_path, capsys):
    refused = f"{ml_data} is a multi-label dataset (a list of classes per clip); "
    for call, what in ((lambda: folds_lib.make_folds(ml_data, 3), "folds (avpretrain kfold)"),
                       (lambda: folds_lib.dataset_class_names(ml_data), "fine-tuning, validation and config.data"),
                       (lambda: few_shot.dataset_clips(ml_data), "eval few-shot"),
                       (lambda: supervised.classify("no-model", ml_data), "eval classify")):
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value).startswith(refused + what) and "`avpretrain eval linear-probe`" in str(e.value)
    # a training stream: a method reading one class index is refused, one declaring label [C] gets multi-hot
    config = tiny_config(ml_data)
    with pytest.raises(ValueError, match=re.escape(refused + "method 'm2d': single-label datasets only")):
        pipeline.training_source(config, {"audio": Field((1600,)), "label": Field((), "int32")})
    assert len(pipeline.training_source(config, {"audio": Field((1600,)), "label": Field((len(CLASSES),))})) == 24
    assert cli.main(["eval", "classify", "--model=no-model", f"--data={ml_data}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {refused}eval classify: single-label datasets only")
    # fine-tuning: refused while the classes are read, before anything is built
    assert cli.main(["train", f"--config={REPO / 'configs/finetune.py:modalities=audio,runlocal'}",
                     f"--config.data.dir={ml_data}", f"--workdir={tmp_path / 'ft'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {refused}fine-tuning, validation and config.data.classes")
