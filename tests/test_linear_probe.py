"""The linear-probe classifier core on synthetic features."""
import numpy as np
import pytest

from avpretrain.evaluate.linear_probe import ProbeResult, train_linear_probe

NUM_CLASSES = 4
DIM = 16


def blobs(n, seed, separation=4.0, offset=3.0, scale=5.0):
    """Gaussian blobs, one per class, on an offset and scaled feature space."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).standard_normal((NUM_CLASSES, DIM)) * separation
    y = rng.integers(0, NUM_CLASSES, n)
    x = (centres[y] + rng.standard_normal((n, DIM))) * scale + offset
    return x.astype(np.float32), y


def splits(label_noise=False):
    (tx, ty), (vx, vy), (sx, sy) = blobs(600, 1), blobs(200, 2), blobs(300, 3)
    if label_noise:
        rng = np.random.default_rng(4)
        ty, vy, sy = (rng.integers(0, NUM_CLASSES, len(y)) for y in (ty, vy, sy))
    return tx, ty, vx, vy, sx, sy


def test_separable_blobs_are_learned_and_stop_early():
    result = train_linear_probe(*splits(), num_classes=NUM_CLASSES, max_epochs=200,
                                patience=5)
    assert isinstance(result, ProbeResult)
    assert result.test_accuracy >= 0.95 and result.valid_accuracy >= 0.95
    assert result.epochs_run < 200  # validation saturates, so patience ends training
    assert 1 <= result.best_epoch <= result.epochs_run
    assert not result.valid_from_train


def test_noise_labels_stay_near_chance():
    result = train_linear_probe(*splits(label_noise=True), num_classes=NUM_CLASSES,
                                max_epochs=30, patience=5)
    assert abs(result.test_accuracy - 1 / NUM_CLASSES) < 0.12


def test_deterministic_by_seed():
    kwargs = dict(num_classes=NUM_CLASSES, max_epochs=8, patience=3, learning_rate=1e-2)
    data = splits(label_noise=True)
    first = train_linear_probe(*data, seed=7, **kwargs)
    assert train_linear_probe(*data, seed=7, **kwargs) == first


def test_empty_validation_falls_back_to_train_split():
    tx, ty, _, _, sx, sy = splits()
    result = train_linear_probe(tx, ty, np.zeros((0, DIM), np.float32), np.zeros(0, int),
                                sx, sy, num_classes=NUM_CLASSES, max_epochs=20, patience=3,
                                weight_decay=1e-4)
    assert result.valid_from_train
    assert result.test_accuracy >= 0.95
    assert train_linear_probe(tx, ty, None, None, sx, sy, num_classes=NUM_CLASSES,
                              max_epochs=20, patience=3, weight_decay=1e-4) == result


@pytest.mark.parametrize("change, message", [
    (lambda d: {**d, "train_x": d["train_x"][:, :, None]}, r"train_x must be \[N, D\]"),
    (lambda d: {**d, "train_y": d["train_y"][:-1]}, "train_y must be"),
    (lambda d: {**d, "test_x": d["test_x"][:, :-1]}, "feature dimensions differ"),
    (lambda d: {**d, "valid_y": d["valid_y"] + NUM_CLASSES}, r"labels must lie in \[0, 4\)"),
    (lambda d: {**d, "test_y": d["test_y"] - 5}, r"labels must lie in \[0, 4\)"),
    (lambda d: {**d, "train_y": d["train_y"].astype(float)}, "integer labels"),
    (lambda d: {**d, "train_x": d["train_x"][:0], "train_y": d["train_y"][:0]},
     "train split is empty"),
    (lambda d: {**d, "test_x": d["test_x"][:0], "test_y": d["test_y"][:0]},
     "test split is empty"),
    (lambda d: {**d, "num_classes": 1}, "num_classes"),
])
def test_errors(change, message):
    tx, ty, vx, vy, sx, sy = splits()
    data = dict(train_x=tx, train_y=ty, valid_x=vx, valid_y=vy, test_x=sx, test_y=sy,
                num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=message):
        train_linear_probe(**change(data))
