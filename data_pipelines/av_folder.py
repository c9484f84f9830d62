"""TFDS builder for a user's folder of talking-face videos (any frame rate and resolution).

SOURCE is laid out as for data_pipelines.audio_folder, with video files (.mp4 .m4v .mov .avi .mkv
.webm .flv) instead of audio: class folders SOURCE/<class>/**/<video>, or SOURCE/manifest.csv with
columns path,label[,speaker,split,caption...]; the same checks apply (paths outside SOURCE refused
unless allowed, one file listed twice refused, a seeded per-class split when none is given).

Each video becomes one example of the audiovisual contract (common.av_features): its audio at
16 kHz mono and 96x96 face crops at 25 fps, aligned (len(audio) == 640 · frames), with the crops'
boxes in the source frame; see data_pipelines.video for the time base, face tracking and crops.
Videos are decoded in threads: FFmpeg and OpenCV release the GIL, and on 2 cores a thread pool
was as fast as a process pool of the same decoding without its start-up (a worker here would
import TFDS, seconds each). Each result waits in scratch space (JPEG frames, int16 audio) so
memory stays flat.

Skipped, each listed with its reason in DATA_DIR/build_report.json: unreadable or truncated
files, no video stream, no audio stream (unless require_audio=False: then the example is
video-only, with 0 audio samples), no face found on more than max_no_face_fraction of the sampled
frames, less than min_seconds of audio and video together, zero-sized frames, silent or
non-finite audio.

    python -m data_pipelines.av_folder SOURCE --out DATA_DIR
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import audio_folder, common, video

VIDEO_SUFFIXES = ('.mp4', '.m4v', '.mov', '.avi', '.mkv', '.webm', '.flv')


def decode_clip(
    path: pathlib.Path, stored: pathlib.Path, *, audio_path: pathlib.Path | None = None,
    need_audio: bool = True, min_seconds: float = 0.5, max_no_face_fraction: float = 0.5,
    detect_every: int = 5,
) -> tuple[str | None, list[str]]:
    """Decodes one video (its audio from `audio_path` when given, e.g. a separate WAV) and stores
    the clip in the scratch file `stored`: (None, warnings) when usable, else (reason, [])."""
    notes, audio = [], None
    if audio_path is not None:
        try:
            audio, notes = common.load_audio(audio_path, common.AV_SAMPLE_RATE)
        except Exception as e:  # a broken separate audio file: the video's own audio, if any
            notes = [f'{common.printable(audio_path)} unreadable ({type(e).__name__}), '
                     'audio taken from the video']
    try:
        clip = video.face_clip(path, need_audio=need_audio, audio=audio, detect_every=detect_every,
                               max_no_face_fraction=max_no_face_fraction, min_seconds=min_seconds)
    except video.VideoProblem as e:
        return str(e), []
    samples = np.zeros(0, np.float32) if clip.audio is None else clip.audio
    if clip.audio is not None:
        if reason := common.audio_problem(clip.audio, common.AV_SAMPLE_RATE, 0.0):
            return f'audio {reason}', []
        if (peak := float(np.max(np.abs(samples)))) > 1:  # e.g. AAC overshoot: scaled, as load_audio does
            samples = samples / peak
            notes.append(f'above full scale: peak {peak:.2f} ({20 * np.log10(peak):+.1f} dBFS), scaled down')
    jpegs = [common.encode_frame(frame) for frame in clip.frames]
    with open(stored, 'wb') as f:  # through a file object: np.savez adds no '.npz' to the name
        np.savez(f, audio=common.to_int16(samples), boxes=clip.boxes,
                 jpeg=np.frombuffer(b''.join(jpegs), np.uint8), ends=np.cumsum([len(j) for j in jpegs]))
    return None, notes


def load_clip(stored: pathlib.Path, entry: audio_folder.Entry) -> dict:
    """The example of `entry` from what `decode_clip` stored."""
    with np.load(stored) as clip:
        jpeg, ends = clip['jpeg'].tobytes(), clip['ends']
        frames = [jpeg[start:end] for start, end in zip([0, *ends[:-1]], ends)]
        return common.av_example(entry.id, clip['audio'], frames, clip['boxes'], entry.label,
                                 entry.speaker, entry.captions)


class AVFolder(audio_folder.AudioFolder, skip_registration=True):
    """A folder of talking-face videos as a TFDS dataset (see the module docstring).

    Corpus builders (data_pipelines.ravdess, data_pipelines.crema_d) override `list_entries`,
    `_info` and, for audio kept apart from the video, `audio_path`.
    """

    VERSION = tfds.core.Version('1.0.0')
    MEDIA = 'video'

    def __init__(
        self, *, sample_rate: int = common.AV_SAMPLE_RATE, require_audio: bool = True,
        max_no_face_fraction: float = 0.5, detect_every: int = 5, **kwargs,
    ):
        if sample_rate != common.AV_SAMPLE_RATE:
            raise ValueError(f'audiovisual datasets are {common.AV_SAMPLE_RATE} Hz (640 samples per '
                             f'frame at {common.VIDEO_FPS} fps), got sample_rate={sample_rate}')
        if not 0 <= max_no_face_fraction <= 1:
            raise ValueError(f'max_no_face_fraction must be in [0, 1], got {max_no_face_fraction}')
        if detect_every < 1:
            raise ValueError(f'detect_every must be >= 1, got {detect_every}')
        self.require_audio, self.detect_every = require_audio, detect_every
        self.max_no_face_fraction = max_no_face_fraction
        super().__init__(sample_rate=sample_rate, **kwargs)

    @classmethod
    def list_entries(cls, source: pathlib.Path):
        return audio_folder.list_source(source, VIDEO_SUFFIXES, 'video')

    def features(self, label_names: list[str]) -> tfds.features.FeaturesDict:
        return common.av_features(label_names)

    def dataset_info(self, description: str, **kwargs) -> tfds.core.DatasetInfo:
        """AudioFolder's, with the audiovisual contract and its settings in the metadata."""
        return super().dataset_info(
            description, fps=common.VIDEO_FPS, frame_size=common.FACE_SIZE, modalities='audio,video',
            require_audio=self.require_audio, max_no_face_fraction=self.max_no_face_fraction,
            detect_every=self.detect_every, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            f'Talking-face videos from {self.source}.', seed=self.seed, val_fraction=self.val_fraction,
            test_fraction=self.test_fraction)

    def audio_path(self, entry: audio_folder.Entry) -> pathlib.Path | None:
        """A separate audio file for `entry`'s video (None: the video's own audio)."""
        return None

    def decode(self, entry: audio_folder.Entry, stored: pathlib.Path) -> tuple[str | None, list[str]]:
        return decode_clip(entry.path, stored, audio_path=self.audio_path(entry),
                           need_audio=self.require_audio, min_seconds=self.min_seconds,
                           max_no_face_fraction=self.max_no_face_fraction, detect_every=self.detect_every)

    def load_example(self, stored: pathlib.Path, entry: audio_folder.Entry) -> dict:
        return load_clip(stored, entry)


def build(
    source: str, out: str, *, sample_rate: int = common.AV_SAMPLE_RATE, seed: int = 0,
    val_fraction: float = 0.1, test_fraction: float = 0.1, min_seconds: float = 0.5,
    num_workers: int | None = None, allow_outside_source: bool = False, require_audio: bool = True,
    max_no_face_fraction: float = 0.5, detect_every: int = 5, beam_options: str | None = None,
) -> common.BuildReport:
    """Builds the videos in `source` into a TFDS dataset in DATA_DIR `out`; see the module doc."""
    return common.prepare_dataset(
        AVFolder, out, source=source, sample_rate=sample_rate, seed=seed, val_fraction=val_fraction,
        test_fraction=test_fraction, min_seconds=min_seconds, num_workers=num_workers,
        allow_outside_source=allow_outside_source, require_audio=require_audio,
        max_no_face_fraction=max_no_face_fraction, detect_every=detect_every, beam_options=beam_options,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', help='folder of class sub-folders, or holding manifest.csv')
    parser.add_argument('--out', required=True, help='DATA_DIR to write the dataset into')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--val_fraction', type=float, default=0.1)
    parser.add_argument('--test_fraction', type=float, default=0.1)
    parser.add_argument('--min_seconds', type=float, default=0.5)
    parser.add_argument('--num_workers', type=int, default=None)
    parser.add_argument('--allow_outside_source', action='store_true')
    parser.add_argument('--audio_optional', dest='require_audio', action='store_false',
                        help='keep videos without an audio stream (video-only examples)')
    parser.add_argument('--max_no_face_fraction', type=float, default=0.5)
    parser.add_argument('--detect_every', type=int, default=5)
    build(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    main()
