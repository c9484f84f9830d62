"""Pieces shared by the dataset builders: decoding, validation, splits, features, build report.

Every builder writes one TFDS dataset (ArrayRecord files) into DATA_DIR with the features of
`audio_features` and a `sample_rate` entry in its metadata, plus `DATA_DIR/build_report.json`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import io
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds
from etils import epath

from avpretrain import audio

SPLITS = ('train', 'validation', 'test')
AUDIO_SUFFIXES = ('.wav', '.flac', '.ogg', '.mp3')
REPORT_NAME = 'build_report.json'
NO_LABEL = 'unlabeled'  # the one class of datasets that only have captions (AudioCaps, Clotho, ...)


# ----------------------------------------------------------------------------- audio

def load_audio(path: str | pathlib.Path, target_sr: int) -> tuple[np.ndarray, list[str]]:
    """Decodes WAV/FLAC/OGG/MP3 to float32 mono at `target_sr` (channels averaged, soxr HQ).

    Returns the audio and warnings about what is kept although it is off: a WAV shorter than
    its header says, and a peak above full scale (a float file), which is scaled down to full
    scale, since clipping it to int16 would distort the waveform.
    """
    try:  # the path's bytes: a file name that is not valid UTF-8 is a surrogate-escaped str
        x_TC, sr = sf.read(os.fsencode(path), dtype='float32', always_2d=True)
    except Exception as sf_error:  # libsndfile could not decode it: let librosa/audioread try.
        import librosa

        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                x, sr = librosa.load(path, sr=None, mono=False, dtype=np.float32)
        except Exception:
            raise sf_error from None
        x_TC = np.atleast_2d(x).T
    x = x_TC.mean(axis=1, dtype=np.float32)
    notes = [note] if (note := wav_truncation(path)) else []
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if 1.0 < peak < np.inf:
        x /= peak
        db = 20 * np.log10(peak)
        notes.append(f'above full scale: peak {peak:.2f} ({db:+.1f} dBFS), '
                     f'scaled down by {db:.1f} dB instead of clipping')
    return (audio.resample(x, sr, target_sr).astype(np.float32) if x.size else x), notes


def wav_truncation(path: str | pathlib.Path) -> str | None:
    """'truncated: header says X s, file holds Y s' for a RIFF WAV whose data chunk runs past
    the end of the file (libsndfile reads what is there), else None."""
    with open(path, 'rb') as f:
        riff = f.read(12)
        if riff[:4] != b'RIFF' or riff[8:12] != b'WAVE':
            return None
        bytes_per_second = 0
        while len(header := f.read(8)) == 8:
            chunk, size = header[:4], int.from_bytes(header[4:], 'little')
            if chunk == b'fmt ':
                bytes_per_second = int.from_bytes(f.read(size + size % 2)[8:12], 'little')
            elif chunk == b'data':
                held = os.fstat(f.fileno()).st_size - f.tell()
                # 0 and 0xFFFFFFFF: a streamed WAV whose writer did not know the length.
                if size <= held or size == 0xFFFFFFFF or not bytes_per_second:
                    return None
                return (f'truncated: header says {size / bytes_per_second:.2f} s, '
                        f'file holds {held / bytes_per_second:.2f} s')
            else:
                f.seek(size + size % 2, os.SEEK_CUR)
    return None


def audio_problem(x: np.ndarray, sample_rate: int, min_seconds: float) -> str | None:
    """Why decoded audio `x` is unusable, or None when it is fine."""
    if x.size == 0:
        return 'empty: no samples'
    if not np.all(np.isfinite(x)):
        return 'non-finite samples (NaN or inf)'
    if x.size < min_seconds * sample_rate:
        return f'too short: {x.size / sample_rate:.2f} s < {min_seconds} s'
    if np.max(np.abs(x)) < 1 / 32768:
        return 'silent: all samples round to zero'
    return None


def read_checked(
    path: pathlib.Path, sample_rate: int, min_seconds: float
) -> tuple[np.ndarray | None, str | None, list[str]]:
    """Decodes and validates one file: (audio, None, warnings) when usable, else
    (None, reason, [])."""
    if not path.is_file():
        return None, 'missing', []
    if path.stat().st_size == 0:
        return None, 'empty: 0-byte file', []
    try:
        x, notes = load_audio(path, sample_rate)
    except Exception as e:
        detail = e.error_string if isinstance(e, sf.LibsndfileError) else e  # without the path
        return None, f'unreadable: {type(e).__name__}: {detail}', []
    reason = audio_problem(x, sample_rate, min_seconds)
    return (None, reason, []) if reason else (x, None, notes)


def printable(path: str | os.PathLike) -> str:
    """`path` as valid UTF-8 text: bytes of a file name that are not UTF-8 become \\xNN."""
    return os.fsencode(path).decode('utf-8', 'backslashreplace')


def to_int16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 PCM; out-of-range samples are clipped."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


# ----------------------------------------------------------------------------- splits

def stratified_split(
    labels: Sequence[str], seed: int, val_fraction: float, test_fraction: float
) -> list[str]:
    """Split name for each item: a seeded shuffle per label, then validation, test, rest train.

    Depends only on (seed, the labels, the items' order), so pass items in a canonical
    order (e.g. sorted ids). A label with >= 3 items gets at least one item in each split
    whose fraction is > 0.
    """
    splits = ['train'] * len(labels)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for label, items in by_label.items():
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        order = [items[j] for j in rng.permutation(len(items))]
        n = len(order)
        n_val, n_test = (
            max(int(n >= 3 and f > 0), round(n * f)) for f in (val_fraction, test_fraction)
        )
        for i in order[:n_val]:
            splits[i] = 'validation'
        for i in order[n_val:n_val + n_test]:
            splits[i] = 'test'
    return splits


# ----------------------------------------------------------------------------- TFDS

def audio_features(label_names: Sequence[str]) -> tfds.features.FeaturesDict:
    """The storage contract shared by all builders."""
    return tfds.features.FeaturesDict({
        'id': tfds.features.Text(),
        # Raw little-endian bytes on disk: the default encoding widens int16 to int64 varints
        # (3x larger, 8x slower to write). Reads back as an int16 array all the same.
        'audio': tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding='bytes'),
        'label': tfds.features.ClassLabel(names=list(label_names)),
        'speaker': tfds.features.Text(),
        # 0..N free-text descriptions (audio-language pretraining, retrieval); [] when none.
        'captions': tfds.features.Sequence(tfds.features.Text()),
    })


def example(id_: str, audio: np.ndarray, label: str, speaker: str = '', captions: Sequence[str] = ()):
    return {'id': id_, 'audio': audio, 'label': label, 'speaker': speaker, 'captions': list(captions)}


# ----------------------------------------------------------------------------- audiovisual

# The audiovisual storage contract (av_folder, ravdess, crema_d, demo_av): 16 kHz mono int16 audio
# and face crops at 25 fps (the constants and the frame codec live with the reader,
# avpretrain.data.frames).
from avpretrain.data.frames import (  # noqa: E402,F401  (re-exported for the builders)
    AV_SAMPLE_RATE, FACE_SIZE, JPEG_QUALITY, SAMPLES_PER_FRAME, VIDEO_FPS, decode_frame, encode_frame)


def av_features(label_names: Sequence[str]) -> tfds.features.FeaturesDict:
    """`audio_features` plus the face track. Audio-only examples have no frames ([] and [0, 4]);
    video-only examples have no samples ([]). With both, len(audio) == len(video) · 640."""
    return tfds.features.FeaturesDict({
        **audio_features(label_names),
        # One JPEG (RGB, FACE_SIZE x FACE_SIZE) per frame at VIDEO_FPS: ~10x smaller than raw
        # uint8, decoded in the input pipeline (`decode_frame`).
        'video': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
        # Per stored frame, the face crop taken from the source frame: x0, y0, x1, y1 as fractions of
        # the source width/height (may reach past [0, 1] when the margin leaves the frame: padded).
        'face_boxes': tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
    })


def av_example(id_: str, audio: np.ndarray, frames: Sequence[bytes], face_boxes: np.ndarray, label: str,
               speaker: str = '', captions: Sequence[str] = ()):
    return example(id_, audio, label, speaker, captions) | {
        'video': list(frames), 'face_boxes': np.asarray(face_boxes, np.float32).reshape(-1, 4)}


class NoUsableAudio(ValueError):
    """Every file listed for a build was skipped; `skipped` says why (path, reason)."""

    def __init__(self, message: str, skipped: Sequence[tuple[str, str]]):
        super().__init__(message)
        self.skipped = list(skipped)


class AudioBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the builders here; each lists what it skipped in `self.skipped` (path, reason)
    and what it kept despite a problem in `self.warnings` (path, what)."""

    skipped: list[tuple[str, str]]
    warnings: Sequence[tuple[str, str]] = ()

    # TFDS 4.9.10 looks a builder's source file up through `importlib_resources`, a package it
    # only installs on Python < 3.9; this is the path TFDS falls back to anyway.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... Subsequent calls
    # will reuse this data." around a build; prepare_dataset prints the report instead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    # Builders that can run as Apache Beam pipelines (audio_folder.AudioFolder and its subclasses)
    # set SUPPORTS_BEAM; prepare_dataset then sets `beam_options` (PipelineOptions) for a Beam build.
    SUPPORTS_BEAM = False
    beam_options = None


@dataclasses.dataclass
class BuildReport:
    """What a build produced, what it skipped and what it kept with a warning (never silently)."""

    dataset_dir: str = ''
    sample_rate: int = 0
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    warnings: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def num_built(self) -> int:
        return sum(self.counts.values())

    def file_lines(self) -> list[str]:
        """One line per skipped file and per file kept with a warning."""
        return ([f'skipped {path}: {reason}' for path, reason in self.skipped]
                + [f'warning {path}: {what}' for path, what in self.warnings])

    def summary_lines(self) -> list[str]:
        lines = self.file_lines()
        lines.append(f'dataset {self.dataset_dir} ({self.sample_rate} Hz), built in {self.seconds:.1f} s')
        lines += [f'  {split}: {n} examples' for split, n in self.counts.items()]
        lines += [f'warning: split {split} has 0 examples' for split, n in self.counts.items() if not n]
        lines.append(f'built {self.num_built} examples, skipped {len(self.skipped)}')
        return lines

    def write(self, path: str | pathlib.Path) -> None:
        report = dataclasses.asdict(self) | {'num_built': self.num_built}
        report['skipped'] = [{'path': p, 'reason': r} for p, r in self.skipped]
        report['warnings'] = [{'path': p, 'what': w} for p, w in self.warnings]
        pathlib.Path(path).write_text(json.dumps(report, indent=2) + '\n')

    @classmethod
    def read(cls, path: str | pathlib.Path) -> BuildReport:
        report = json.loads(pathlib.Path(path).read_text())
        del report['num_built']
        report['skipped'] = [(s['path'], s['reason']) for s in report['skipped']]
        report['warnings'] = [(w['path'], w['what']) for w in report.get('warnings', [])]
        return cls(**report)


def beam_pipeline_options(text: str):
    """`--beam-options` text, 'key=value,key=value' (a value may hold commas: a new option starts at
    `,key=`), as Beam PipelineOptions; '' is Beam's defaults (the DirectRunner, in process).

    An option Beam does not know (Beam itself would drop it with a log line) is a ValueError.
    """
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise ValueError('--beam needs Apache Beam: pip install "avpretrain[beam]" '
                         '(make venv installs it)') from None
    items = [item.strip() for item in re.split(r',(?=\s*[A-Za-z_][\w-]*=)', text) if item.strip()]
    known = PipelineOptions([]).get_all_options()
    flags = []
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip().lstrip('-').replace('-', '_')
        if not sep or not key:
            raise ValueError(f'--beam-options: {item!r} is not key=value '
                             '(e.g. runner=DirectRunner,direct_num_workers=4)')
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            raise ValueError(f'--beam-options: unknown Beam option {key!r}'
                             + (f' (did you mean {", ".join(close)}?)' if close else ''))
        flags.append(f'--{key}={value.strip()}')
    if not any(f.startswith('--default_sdk_harness_log_level=') for f in flags):
        flags.append('--default_sdk_harness_log_level=WARNING')  # workers log every bundle at INFO
    said = io.StringIO()
    try:
        options = PipelineOptions(flags)
        with contextlib.redirect_stderr(said):  # argparse prints its usage, then exits
            options.get_all_options()  # parses: a bad value (direct_num_workers=x) fails here
    except (SystemExit, ValueError) as e:
        why = said.getvalue().strip().splitlines()[-1:] or [str(e)]
        raise ValueError(f'--beam-options {text!r}: a value Beam cannot parse ({why[0]})') from None
    return options


def prepare_dataset(
    builder_cls: type[AudioBuilder], out: str | pathlib.Path, *, beam_options: str | None = None,
    **builder_kwargs,
) -> BuildReport:
    """Builds `builder_cls(file_format='array_record', **builder_kwargs)` into DATA_DIR `out`,
    writes `out/build_report.json` and prints the report's lines.

    With `beam_options` (a string for `beam_pipeline_options`, '' for the defaults) the examples are
    decoded and written by an Apache Beam pipeline (builders with SUPPORTS_BEAM): the same records
    as the plain build, with what the workers skipped reported the same way. The scratch space under
    `out` must then be reachable from every worker (a shared file system on Flink/Spark clusters).

    The dataset is generated in scratch space under `out` and moved into place when complete,
    replacing an earlier build of the same dataset; a second, different dataset next to an
    existing one is refused (readers expect one per DATA_DIR). A failed build leaves `out` as it
    was (removed if the build created it), except that when every file was skipped the reasons
    are printed and written to `out/build_report.json` before NoUsableAudio is raised.
    """
    start = time.perf_counter()
    out = pathlib.Path(out)
    dataset_root = out / builder_cls.name
    others = [p.parent for p in out.rglob('dataset_info.json') if dataset_root not in p.parents]
    if others:
        raise ValueError(
            f'{out} already holds another dataset ({", ".join(map(str, others))}); '
            'build into an empty directory.'
        )
    download_config = None
    if beam_options is not None:
        if not builder_cls.SUPPORTS_BEAM:
            raise ValueError(f'{builder_cls.name} does not build with Beam (--beam is for audio_folder, '
                             'av_folder, audioset and the other folder and corpus builders)')
        download_config = tfds.download.DownloadConfig(beam_options=beam_pipeline_options(beam_options))
    created = next((p for p in reversed([out, *out.absolute().parents]) if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    tfds.display_progress_bar(sys.stderr.isatty())  # nested bars leave control codes in logs
    try:
        # Scratch space (the dataset being written, TFDS's download dir, decoded audio) lives
        # under `out`, not in /tmp, and goes away after the build.
        with tempfile.TemporaryDirectory(dir=out, prefix='.build-') as scratch:
            staging = pathlib.Path(scratch, 'data')
            builder = builder_cls(data_dir=str(staging), file_format='array_record', **builder_kwargs)
            if download_config is not None:
                builder.beam_options = download_config.beam_options
            builder.download_and_prepare(download_dir=str(pathlib.Path(scratch, 'download')),
                                         download_config=download_config)
            dataset_dir = out / pathlib.Path(builder.data_dir).relative_to(staging)
            if dataset_root.exists():
                shutil.rmtree(dataset_root)
            (staging / builder_cls.name).rename(dataset_root)
    except NoUsableAudio as e:
        report = BuildReport(skipped=printable_paths(e.skipped), seconds=time.perf_counter() - start)
        report.write(out / REPORT_NAME)
        print('\n'.join(report.file_lines()))
        raise NoUsableAudio(f'{e} (reasons above and in {out / REPORT_NAME})', e.skipped) from None
    except BaseException:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    splits = builder.info.splits
    report = BuildReport(
        dataset_dir=str(dataset_dir),
        sample_rate=int(builder.info.metadata['sample_rate']),
        # the three usual splits always (0 when empty: warned), then a corpus's own (MSP-Podcast's test2)
        counts={s: splits[s].num_examples if s in splits else 0
                for s in (*SPLITS, *sorted(set(splits) - set(SPLITS)))},
        skipped=printable_paths(builder.skipped),
        warnings=printable_paths(builder.warnings),
        seconds=time.perf_counter() - start,
    )
    report.write(out / REPORT_NAME)
    print('\n'.join(report.summary_lines()))
    return report


def printable_paths(items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(printable(path), text) for path, text in items]
