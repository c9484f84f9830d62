"""`avpretrain data show`: a contact sheet PNG of a few examples of a built dataset.

One row per example: a strip of face frames over time (evenly spaced, decoded from the stored
JPEGs; audiovisual datasets only), the log-mel of the audio (`avpretrain.audio.log_mel` with 25 ms
windows and 10 ms hops: the M2D front end at 16 kHz), and a line with the id, label, speaker,
duration and frame count.
Audio-only datasets get log-mels only; an example without samples (video only) or without
frames says so in its row.
"""
from __future__ import annotations

import pathlib

import numpy as np

from avpretrain.data import source

FRAMES_PER_ROW = 8
MAX_SECONDS = 20.0  # longer examples show their first MAX_SECONDS
DYNAMIC_RANGE = 13.8  # of a log-mel image: ln(1e6), 60 dB below its loudest bin
_DPI = 100


def _log_mels(waves: list[np.ndarray], sample_rate: int) -> list[np.ndarray | None]:
    """Log-mel [80, frames] of each int16 waveform (None for an empty one), computed as one batch
    padded to the longest (one compilation), each then cut to its own length."""
    from avpretrain import audio

    lengths = [len(w) for w in waves]
    if not any(lengths):
        return [None] * len(waves)
    batch = np.zeros((len(waves), max(lengths)), np.float32)
    for row, w in zip(batch, waves):
        row[:len(w)] = w / 32768
    hop, window = round(0.01 * sample_rate), round(0.025 * sample_rate)
    lms = np.asarray(audio.log_mel(batch, sample_rate=sample_rate, n_fft=window, win_length=window,
                                   hop_length=hop, fmax=min(8000.0, sample_rate / 2)))
    return [lm[:, :audio.num_frames(n, hop)] if n else None for lm, n in zip(lms, lengths)]


def _frame_strip(jpegs: list[bytes], num_shown: int) -> np.ndarray | None:
    """FRAMES_PER_ROW frames evenly spaced over the first `num_shown`, side by side [H, k·W, 3]."""
    if not jpegs:
        return None
    picks = np.unique(np.linspace(0, num_shown - 1, FRAMES_PER_ROW).round().astype(int))
    return np.concatenate([source.decode_frame(jpegs[i]) for i in picks], axis=1)


def _empty(ax, text: str):
    ax.text(0.5, 0.5, text, ha='center', va='center', fontsize=12, color='0.4', transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def contact_sheet(data_dir, out, *, split: str | None = None, n: int = 8, seed: int = 0) -> pathlib.Path:
    """Writes a PNG contact sheet of `n` examples of `split` drawn with a seeded rng (default split:
    'train' if present, else the first); a split with fewer than `n` examples is shown whole, with a
    note. Raises ValueError for an unknown or empty split or n < 1."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    if n < 1:
        raise ValueError(f'n must be at least 1, got {n}')
    meta = source.dataset_meta(data_dir)
    splits = list(meta.num_examples)
    split = split or ('train' if 'train' in splits else splits[0])
    if split not in splits:
        raise ValueError(f'unknown split {split!r}: {data_dir} has splits {", ".join(splits)}')
    ds = source.data_source(data_dir, split)
    total = len(ds)
    if total == 0:
        raise ValueError(f'split {split!r} of {data_dir} has no examples')
    picks = sorted(np.random.default_rng(seed).choice(total, min(n, total), replace=False).tolist())
    examples = [ds[i] for i in picks]
    has_video = 'video' in source.open_builder(data_dir).info.features

    sr, fps = meta.sample_rate, source.VIDEO_FPS
    waves = [ex['audio'][:int(MAX_SECONDS * sr)] for ex in examples]
    log_mels = _log_mels(waves, sr)

    fig = Figure(figsize=(16, 1.9 * len(examples) + 0.8), dpi=_DPI, layout='constrained')
    axes = fig.subplots(len(examples), 2 if has_video else 1, squeeze=False)
    title = f'{meta.name} · split {split} · {len(examples)} of {total} examples (seed {seed})'
    if n > total:
        title += f'\nasked for {n}, the split holds {total}: showing all'
    fig.suptitle(title, fontsize=14)
    for row, ex, log_mel in zip(axes, examples, log_mels):
        jpegs = list(ex['video']) if has_video else []
        seconds = len(ex['audio']) / sr if len(ex['audio']) else len(jpegs) / fps
        label = ', '.join(meta.label_names[int(c)] for c in np.atleast_1d(ex['label'])) or '-'  # multi-label: a list
        text = (f"{ex['id'].decode()}   label{'s' if meta.multi_label else ''}: {label}   "
                f"speaker: {ex['speaker'].decode() or '-'}   {seconds:.2f} s"
                + (f'   {len(jpegs)} frames' if has_video else '')
                + (f'   (first {MAX_SECONDS:g} s shown)' if seconds > MAX_SECONDS else ''))
        shown = min(seconds, MAX_SECONDS)
        if has_video:
            strip = _frame_strip(jpegs, min(len(jpegs), max(1, round(shown * fps))))
            if strip is None:
                _empty(row[0], 'no video (audio only)')
            else:
                row[0].imshow(strip)
                row[0].set_xticks([])
                row[0].set_yticks([])
        ax = row[-1]
        if log_mel is None:
            _empty(ax, 'no audio (video only)')
        else:
            ax.imshow(log_mel, origin='lower', aspect='auto', cmap='magma', interpolation='nearest',
                      vmin=log_mel.max() - DYNAMIC_RANGE, extent=(0, shown, 0, log_mel.shape[0]))
            ax.set_ylabel('mel bin', fontsize=10)
            ax.set_xlabel('s', fontsize=10, labelpad=0)
            ax.tick_params(labelsize=9)
        row[0].set_title(text, loc='left', fontsize=12)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI)
    return out
