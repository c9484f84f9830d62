"""How well each modality of a built demo_av corpus tells the emotion: linear probes on simple features.

    .venv/bin/python benchmarks/demo_av_separability.py DATA_DIR

Features per clip: audio, the mean and standard deviation over time of each of the 80 log-mel bands
(DESIGN §5 front end, librosa); video, the mean and standard deviation over time of the grayscale
frames downsampled to 24x24 (from the stored JPEGs). A softmax regression (numpy, features
standardised on train, L2 strength chosen on the validation speakers) is trained on the train
speakers and scored on the unseen test speakers, for audio, video and both concatenated. The corpus
is meant to be learnable from either modality but perfect from neither: both well above chance,
both well below 100 %.
"""
from __future__ import annotations

import argparse
import time

import cv2
import librosa
import numpy as np

from avpretrain.data import source

L2_STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)


def audio_features(audio_int16: np.ndarray) -> np.ndarray:
    lms = np.log(librosa.feature.melspectrogram(
        y=audio_int16.astype(np.float32) / 32768, sr=16000, n_fft=400, hop_length=160, win_length=400,
        n_mels=80, fmin=50, fmax=8000, center=True, pad_mode='reflect', power=2.0, htk=False, norm='slaney')
        + np.finfo(np.float32).eps)
    return np.concatenate([lms.mean(1), lms.std(1)])


def video_features(jpegs) -> np.ndarray:
    gray_THW = np.stack([cv2.resize(cv2.cvtColor(source.decode_frame(j), cv2.COLOR_RGB2GRAY), (24, 24),
                                    interpolation=cv2.INTER_AREA) for j in jpegs]).astype(np.float32) / 255
    return np.concatenate([gray_THW.mean(0).ravel(), gray_THW.std(0).ravel()])


def load(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(audio features [N, 160], video features [N, 1152], labels [N]) of a split."""
    ds = source.data_source(data_dir, split)
    audio, video, labels = [], [], []
    for i in range(len(ds)):
        ex = ds[i]
        audio.append(audio_features(ex['audio']))
        video.append(video_features(ex['video']))
        labels.append(int(ex['label']))
    return np.stack(audio), np.stack(video), np.array(labels)


def fit_softmax(x_ND, y_N, num_classes: int, l2: float, steps: int = 500, lr: float = 0.05) -> np.ndarray:
    """Multinomial logistic regression by full-batch Adam; returns weights [D + 1, C] (last row: bias)."""
    x_ND = np.hstack([x_ND, np.ones((len(x_ND), 1))])
    onehot_NC = np.eye(num_classes)[y_N]
    w_DC = np.zeros((x_ND.shape[1], num_classes))
    m, v = np.zeros_like(w_DC), np.zeros_like(w_DC)
    decay = np.ones((x_ND.shape[1], 1))
    decay[-1] = 0  # no decay on the bias
    for t in range(1, steps + 1):
        logits_NC = x_ND @ w_DC
        p_NC = np.exp(logits_NC - logits_NC.max(1, keepdims=True))
        p_NC /= p_NC.sum(1, keepdims=True)
        grad = x_ND.T @ (p_NC - onehot_NC) / len(x_ND) + l2 * decay * w_DC
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad ** 2
        w_DC -= lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return w_DC


def accuracy(w_DC, x_ND, y_N) -> float:
    return float(np.mean((np.hstack([x_ND, np.ones((len(x_ND), 1))]) @ w_DC).argmax(1) == y_N))


def probe(train, validation, test, num_classes: int) -> dict:
    """Train/validation/test accuracy at the L2 strength best on validation."""
    mean, std = train[0].mean(0), train[0].std(0) + 1e-6
    norm = [((x - mean) / std, y) for x, y in (train, validation, test)]
    fits = {l2: fit_softmax(*norm[0], num_classes, l2) for l2 in L2_STRENGTHS}
    l2 = max(fits, key=lambda k: accuracy(fits[k], *norm[1]))
    return {'l2': l2} | dict(zip(('train', 'validation', 'test'), (accuracy(fits[l2], *xy) for xy in norm)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('data', help='DATA_DIR of a built demo_av corpus')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    meta = source.dataset_meta(args.data)
    splits = {s: load(args.data, s) for s in ('train', 'validation', 'test')}
    counts = ', '.join(f'{s} {len(y)}' for s, (_, _, y) in splits.items())
    print(f'{meta.name}: {counts} clips, {len(meta.label_names)} emotions, '
          f'chance {1 / len(meta.label_names):.1%} (features in {time.perf_counter() - start:.0f} s)')
    for name, pick in (('audio', lambda a, v: a), ('video', lambda a, v: v),
                       ('audio+video', lambda a, v: np.hstack([a, v]))):
        data = [(pick(a, v), y) for a, v, y in splits.values()]
        r = probe(*data, len(meta.label_names))
        print(f'{name:>12}: test (unseen speakers) {r["test"]:.1%}  validation {r["validation"]:.1%}  '
              f'train {r["train"]:.1%}  (l2 {r["l2"]:g}, {data[0][0].shape[1]} features)')


if __name__ == '__main__':
    main()
