"""Classification metrics on small cases computed by hand, the text report, the confusion PNG, k-fold summary."""
import json
import re

import numpy as np
import pytest

from avpretrain.evaluate import classify as K


def test_perfect_predictions():
    y = [0, 1, 2, 2, 1, 0]
    m = K.metrics(y, y, 3, ["a", "b", "c"])
    assert m["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    for key in K.SUMMARY_KEYS:
        assert m[key] == 1.0
    assert m["num_examples"] == 6 and m["missing_classes"] == []
    assert [(r["name"], r["support"], r["precision"], r["recall"], r["f1"]) for r in m["per_class"]] == [
        ("a", 2, 1.0, 1.0, 1.0), ("b", 2, 1.0, 1.0, 1.0), ("c", 2, 1.0, 1.0, 1.0)]


# 3 classes, 6 examples.
#   y_true = 0 0 0 1 1 2
#   y_pred = 0 0 1 1 2 2
# confusion (rows true, cols predicted): [[2,1,0],[0,1,1],[0,0,1]]; support 3,2,1; predicted 2,2,2.
#   precision = 2/2, 1/2, 1/2        recall = 2/3, 1/2, 1/1
#   f1 = 2·1·(2/3)/(5/3) = 4/5;  2·.5·.5/1 = 1/2;  2·.5·1/1.5 = 2/3
#   accuracy = war = 4/6 = 2/3;  uar = (2/3 + 1/2 + 1)/3 = 13/18
#   macro-f1 = (4/5 + 1/2 + 2/3)/3 = 59/90;  weighted-f1 = (3·4/5 + 2·1/2 + 1·2/3)/6 = 61/90
def test_known_confusion():
    m = K.metrics(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), 3)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["class_names"] == ["0", "1", "2"] and m["missing_classes"] == []
    assert [r["support"] for r in m["per_class"]] == [3, 2, 1]
    np.testing.assert_allclose([r["precision"] for r in m["per_class"]], [1, 1 / 2, 1 / 2])
    np.testing.assert_allclose([r["recall"] for r in m["per_class"]], [2 / 3, 1 / 2, 1])
    np.testing.assert_allclose([r["f1"] for r in m["per_class"]], [4 / 5, 1 / 2, 2 / 3])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["war"] == m["accuracy"]
    assert m["uar"] == pytest.approx(13 / 18)
    assert m["macro_f1"] == pytest.approx(59 / 90)
    assert m["weighted_f1"] == pytest.approx(61 / 90)
    assert all(type(m[k]) is float for k in K.SUMMARY_KEYS)


# 4 classes; "bird" (2) never occurs in y_true but is predicted once; "car" (3) is never predicted.
#   y_true = 0 0 1 1 1 3
#   y_pred = 0 2 1 1 0 0
# confusion: [[1,0,1,0],[1,2,0,0],[0,0,0,0],[1,0,0,0]]; support 2,3,0,1; predicted 3,2,1,0.
#   precision = 1/3, 2/2, 0/1, 0 (never predicted)      recall = 1/2, 2/3, n/a, 0/1
#   f1 = 2·(1/3)(1/2)/(5/6) = 2/5;  2·1·(2/3)/(5/3) = 4/5;  n/a;  0
#   accuracy = 3/6;  uar = (1/2 + 2/3 + 0)/3 = 7/18 (not /4);  macro-f1 = (2/5 + 4/5 + 0)/3 = 2/5
#   weighted-f1 = (2·2/5 + 3·4/5 + 1·0)/6 = 8/15
ABSENT_TRUE, ABSENT_PRED = [0, 0, 1, 1, 1, 3], [0, 2, 1, 1, 0, 0]
NAMES = ["dog", "cat", "bird", "car"]


def test_absent_class_and_never_predicted_class():
    m = K.metrics(ABSENT_TRUE, ABSENT_PRED, 4, NAMES)
    assert m["confusion"] == [[1, 0, 1, 0], [1, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert m["missing_classes"] == ["bird"]
    bird, car = m["per_class"][2], m["per_class"][3]
    assert bird == {"name": "bird", "support": 0, "precision": 0.0, "recall": None, "f1": None}
    assert car == {"name": "car", "support": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    np.testing.assert_allclose([r["precision"] for r in m["per_class"][:2]], [1 / 3, 1])
    np.testing.assert_allclose([r["f1"] for r in m["per_class"][:2]], [2 / 5, 4 / 5])
    assert m["accuracy"] == pytest.approx(0.5) and m["war"] == pytest.approx(0.5)
    assert m["uar"] == pytest.approx(7 / 18)
    assert m["macro_f1"] == pytest.approx(2 / 5)
    assert m["weighted_f1"] == pytest.approx(8 / 15)
    json.dumps(m, allow_nan=False)  # None, not NaN: strict JSON


def test_missing_classes_named_by_index_without_names():
    # y_true = 0 0 2, y_pred = 0 1 2: class 0 P = 1/1, R = 1/2, f1 = 2/3; class 2 P = R = f1 = 1;
    # classes 1 (predicted once, never true) and 3 are absent: uar = (1/2 + 1)/2, macro-f1 = (2/3 + 1)/2.
    m = K.metrics([0, 0, 2], [0, 1, 2], 4)
    assert m["missing_classes"] == ["1", "3"]
    assert m["uar"] == pytest.approx(3 / 4)
    assert m["macro_f1"] == pytest.approx(5 / 6)
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 1) / 3)


@pytest.mark.parametrize("y_true, y_pred, pattern", [
    ([0, 1, 2], [0, 1], r"differ in length: 3 labels vs 2 predictions"),
    ([], [], r"empty"),
    ([0, 1, 2, 3, 9, 1], [0] * 6, r"^label 9 at position 4 is outside the 6 classes \[0, 6\)$"),
    ([0, 1, 2], [0, -1, 2], r"^prediction -1 at position 1 is outside the 6 classes \[0, 6\)$"),
    ([0.0, 1.0], [0, 1], r"y_true must hold integer class indices, got dtype float64"),
    ([[0, 1]], [[0, 1]], r"y_true must be 1-D"),
])
def test_bad_inputs(y_true, y_pred, pattern):
    with pytest.raises(ValueError, match=pattern):
        K.metrics(y_true, y_pred, 6)


def test_bad_class_names():
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        K.metrics([0], [0], 3, ["a", "b"])


def test_war_is_support_weighted_recall_on_random_labels():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 7, 200), rng.integers(0, 7, 200)
    m = K.metrics(y_true, y_pred, 7)
    support = np.array([r["support"] for r in m["per_class"]])
    recall = np.array([r["recall"] for r in m["per_class"]])
    assert m["war"] == pytest.approx((support * recall).sum() / 200)
    assert m["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert np.array(m["confusion"]).sum() == 200 and support.sum() == 200


def test_format_report():
    lines = K.format_report(K.metrics(ABSENT_TRUE, ABSENT_PRED, 4, NAMES))
    assert lines[-1] == ("classify accuracy=0.5000 uar=0.3889 war=0.5000 macro-f1=0.4000 weighted-f1=0.5333")
    assert re.fullmatch(r"classify accuracy=\d\.\d{4} uar=\d\.\d{4} war=\d\.\d{4} macro-f1=\d\.\d{4} "
                        r"weighted-f1=\d\.\d{4}", lines[-1])
    bird = next(line for line in lines if line.startswith("bird"))
    assert bird.split() == ["bird", "0", "0.0000", "n/a", "n/a"]
    car = next(line for line in lines if line.startswith("car"))
    assert car.split() == ["car", "1", "0.0000", "0.0000", "0.0000"]
    assert any("bird" in line and "absent" in line for line in lines[:-1])


def test_confusion_png(tmp_path):
    import matplotlib.image

    m = K.metrics(ABSENT_TRUE, ABSENT_PRED, 4, NAMES)
    path = K.confusion_png(m["confusion"], m["class_names"], tmp_path / "sub" / "dir" / "confusion.png", title="t")
    assert path == tmp_path / "sub" / "dir" / "confusion.png" and path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_confusion_on_given_axes():
    import matplotlib.pyplot as plt

    fig, (_, ax) = plt.subplots(1, 2)
    try:
        K.plot_confusion(ax, [[3, 1], [0, 0]], ["x", "y"], title="probe")
        texts = [t.get_text() for t in ax.texts]
        assert texts == ["3\n75%", "1\n25%", "0\n0%", "0\n0%"]
        assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true" and ax.get_title() == "probe"
        assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y"]
    finally:
        plt.close(fig)


def test_summarize_folds_matches_numpy():
    rng = np.random.default_rng(1)
    folds = [K.metrics(rng.integers(0, 3, 30), rng.integers(0, 3, 30), 3) for _ in range(5)]
    s = K.summarize_folds(folds)
    assert s["folds"] == 5
    for key in K.SUMMARY_KEYS:
        values = np.array([f[key] for f in folds])
        assert s[key]["mean"] == pytest.approx(values.mean())
        assert s[key]["std"] == pytest.approx(values.std(ddof=0))
    assert s["uar"]["std"] > 0
    with pytest.raises(ValueError):
        K.summarize_folds([])


def test_format_kfold_line_exact():
    folds = [{"accuracy": a, "war": a, "uar": u, "macro_f1": f, "weighted_f1": f}
             for a, u, f in [(0.5, 0.25, 0.4), (0.7, 0.75, 0.6)]]
    s = K.summarize_folds(folds)
    assert K.format_kfold_line(s) == "kfold folds=2 accuracy=0.6000±0.1000 uar=0.5000±0.2500 macro-f1=0.5000±0.1000"
