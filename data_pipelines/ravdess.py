"""TFDS builder for RAVDESS (Livingstone & Russo, PLoS ONE 2018), audiovisual, from the files as
distributed: SOURCE/**/Actor_NN/MM-VV-EE-II-SS-RR-AA.mp4 (the Video_Speech_Actor_NN and
Video_Song_Actor_NN archives, extracted anywhere under SOURCE).

File names: MM modality (01 audio-video, 02 video-only, 03 audio-only), VV vocal channel (01 speech,
02 song), EE emotion (01-08), II intensity (01 normal, 02 strong), SS statement (01 "Kids are
talking by the door", 02 "Dogs are sitting by the door"), RR repetition, AA actor (01-24, odd male,
even female).

  * Examples: the 01- (audio-video) files, as the audiovisual contract (common.av_features; faces
    and alignment as in data_pipelines.video). The 02- files are the same recordings without
    their audio: skipped ('video-only (no audio)') unless require_audio=False, which keeps them as
    video-only examples (0 audio samples). The 03- audio-only WAVs are data_pipelines.ravdess_audio.
  * Labels: the emotion, 0-based in the corpus's order: neutral, calm, happy, sad, angry, fearful,
    disgust, surprised (EE 01 -> 0; the VQ-MAE-AV reference used 1-8). Speaker 'Actor_NN'; the
    caption is the statement spoken; id the file name's stem.
  * Splits, speaker-independent and fixed: validation actors 21-22, test 23-24, train 01-20 (each
    split has men and women).
  * Skipped with a reason: names that do not parse, modalities not built here, song files when
    vocal_channels=('speech',), a second copy of a recording, and what av_folder skips.

    python -m data_pipelines.ravdess SOURCE --out DATA_DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re

import tensorflow_datasets as tfds

from data_pipelines import audio_folder, av_folder, common

EMOTIONS = ('neutral', 'calm', 'happy', 'sad', 'angry', 'fearful', 'disgust', 'surprised')
MODALITIES = {'01': 'audio-video', '02': 'video-only', '03': 'audio-only'}
VOCAL_CHANNELS = {'01': 'speech', '02': 'song'}
STATEMENTS = {'01': 'Kids are talking by the door', '02': 'Dogs are sitting by the door'}
SPLIT_ACTORS = {'validation': (21, 22), 'test': (23, 24)}  # the other actors (01-20): train
NAME = re.compile(r'(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)')
HOMEPAGE = 'https://zenodo.org/record/1188976'
CITATION = """@article{livingstone2018ravdess,
  title={The Ryerson Audio-Visual Database of Emotional Speech and Song (RAVDESS)},
  author={Livingstone, Steven R. and Russo, Frank A.},
  journal={PLoS ONE}, volume={13}, number={5}, pages={e0196391}, year={2018}}"""


@dataclasses.dataclass(frozen=True)
class Recording:
    """What a RAVDESS file name says."""

    modality: str  # audio-video, video-only, audio-only
    vocal_channel: str  # speech, song
    emotion: str
    intensity: str  # normal, strong
    statement: str
    repetition: int
    actor: int

    @property
    def split(self) -> str:
        return next((s for s, actors in SPLIT_ACTORS.items() if self.actor in actors), 'train')


def parse_name(stem: str) -> Recording:
    """The fields of a file name's stem 'MM-VV-EE-II-SS-RR-AA'; ValueError saying what is wrong."""
    m = NAME.fullmatch(stem)
    if not m:
        raise ValueError('file name is not RAVDESS MM-VV-EE-II-SS-RR-AA')
    mm, vv, ee, ii, ss, rr, aa = m.groups()
    for value, valid, field in ((mm, MODALITIES, 'modality'), (vv, VOCAL_CHANNELS, 'vocal channel'),
                                (ss, STATEMENTS, 'statement'), (ii, ('01', '02'), 'intensity'),
                                (rr, ('01', '02'), 'repetition')):
        if value not in valid:
            raise ValueError(f'file name has an unknown {field} {value!r}')
    if not 1 <= int(ee) <= len(EMOTIONS):
        raise ValueError(f'file name has an unknown emotion {ee!r} (01-08)')
    if not 1 <= int(aa) <= 24:
        raise ValueError(f'file name has an unknown actor {aa!r} (01-24)')
    return Recording(MODALITIES[mm], VOCAL_CHANNELS[vv], EMOTIONS[int(ee) - 1],
                     ('normal', 'strong')[int(ii) - 1], STATEMENTS[ss], int(rr), int(aa))


def list_recordings(
    source: pathlib.Path, suffix: str, modalities: tuple[str, ...], vocal_channels: tuple[str, ...],
) -> tuple[list[audio_folder.Entry], list[tuple[str, str]]]:
    """Entries for the `suffix` files under `source` (hidden folders left out) of the given
    modalities and vocal channels, with label, speaker, caption and split; the rest skipped with
    a reason. ValueError when there is no such file at all."""
    entries, skipped, first = [], [], {}
    for path in sorted(source.rglob('*')):
        if path.suffix.lower() != suffix or not path.is_file() or any(
                part.startswith('.') for part in path.relative_to(source).parts):
            continue
        try:
            rec = parse_name(path.stem)
        except ValueError as e:
            skipped.append((str(path), str(e)))
            continue
        if rec.modality not in modalities:
            reason = 'video-only (no audio)' if rec.modality == 'video-only' else rec.modality
            skipped.append((str(path), f'{reason}: not built here (modalities {", ".join(modalities)})'))
        elif rec.vocal_channel not in vocal_channels:
            skipped.append((str(path), f'{rec.vocal_channel}: not built here '
                                       f'(vocal_channels {", ".join(vocal_channels)})'))
        elif path.stem in first:
            skipped.append((str(path), f'another copy of {common.printable(first[path.stem])}'))
        else:
            first[path.stem] = path
            entries.append(audio_folder.Entry(
                path.stem, path, rec.emotion, f'Actor_{rec.actor:02d}', (rec.statement,), rec.split,
                transcript=rec.statement))
    if not entries and not skipped:
        raise ValueError(f'no RAVDESS files in {source}: expected Actor_NN/MM-VV-EE-II-SS-RR-AA{suffix}')
    return entries, skipped


def ravdess_metadata(vocal_channels) -> dict:
    return dict(split_actors={s: list(a) for s, a in SPLIT_ACTORS.items()},
                vocal_channels=','.join(vocal_channels))


class Ravdess(av_folder.AVFolder, skip_registration=True):
    """RAVDESS audiovisual (see the module docstring)."""

    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, *, vocal_channels: tuple[str, ...] = ('speech', 'song'), **kwargs):
        self.vocal_channels = tuple(vocal_channels)
        super().__init__(**kwargs)

    def list_entries(self, source: pathlib.Path):
        modalities = ('audio-video',) if self.require_audio else ('audio-video', 'video-only')
        return list_recordings(source, '.mp4', modalities, self.vocal_channels)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            'RAVDESS audio-video recordings: 24 actors, 8 emotions, speech and song; face crops '
            'at 25 fps with 16 kHz audio.', homepage=HOMEPAGE, citation=CITATION,
            label_names=list(EMOTIONS), **ravdess_metadata(self.vocal_channels))


def build(
    source: str, out: str, *, sample_rate: int = common.AV_SAMPLE_RATE, min_seconds: float = 0.5,
    allow_outside_source: bool = False, max_no_face_fraction: float = 0.5, num_workers: int | None = None,
    require_audio: bool = True, detect_every: int = 5, vocal_channels: tuple[str, ...] = ('speech', 'song'),
    beam_options: str | None = None,
) -> common.BuildReport:
    """Builds RAVDESS (audio-video files) from `source` into DATA_DIR `out`; see the module doc."""
    return common.prepare_dataset(
        Ravdess, out, source=source, sample_rate=sample_rate, min_seconds=min_seconds,
        allow_outside_source=allow_outside_source, max_no_face_fraction=max_no_face_fraction,
        num_workers=num_workers, require_audio=require_audio, detect_every=detect_every,
        vocal_channels=vocal_channels, beam_options=beam_options,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', help='folder holding the extracted Actor_NN folders')
    parser.add_argument('--out', required=True, help='DATA_DIR to write the dataset into')
    parser.add_argument('--min_seconds', type=float, default=0.5)
    parser.add_argument('--max_no_face_fraction', type=float, default=0.5)
    parser.add_argument('--num_workers', type=int, default=None)
    parser.add_argument('--allow_outside_source', action='store_true')
    parser.add_argument('--include_video_only', dest='require_audio', action='store_false',
                        help='keep the 02- video-only files (as examples without audio)')
    parser.add_argument('--speech_only', dest='vocal_channels', action='store_const',
                        const=('speech',), default=('speech', 'song'))
    build(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    main()
