"""TFDS builder for CREMA-D (Cao et al., IEEE Trans. Affective Computing 2014), audiovisual, from
the corpus as distributed: SOURCE/VideoFlash/<actor>_<sentence>_<emotion>_<level>.flv and
SOURCE/AudioWAV/<same stem>.wav.

Names: actor 1001-1091 (the speaker), sentence one of the 12 codes (IEO, TIE, ...), emotion ANG DIS
FEA HAP NEU SAD, level LO MD HI XX (unspecified).

  * Examples: one per FLV, as the audiovisual contract (common.av_features; faces and alignment
    as in data_pipelines.video). The audio is the matching AudioWAV file (the studio recording,
    resampled to 16 kHz) when there is one and it decodes, else the FLV's own audio track (a
    warning says so when the WAV is unreadable); without either the FLV is skipped. WAVs without
    an FLV are listed as skipped.
  * Labels, 0-based in the corpus's order ANG DIS FEA HAP NEU SAD, named as in RAVDESS: angry,
    disgust, fearful, happy, neutral, sad. Speaker: the actor id; caption: the sentence spoken;
    id: the stem.
  * Splits, speaker-independent and fixed: validation actors 1074-1082, test 1083-1091, train
    1001-1073 (80/10/10 of the 91 actors).
  * Skipped with a reason: names that do not parse, and what av_folder skips.

    python -m data_pipelines.crema_d SOURCE --out DATA_DIR
"""
from __future__ import annotations

import argparse
import pathlib
import re

import tensorflow_datasets as tfds

from data_pipelines import audio_folder, av_folder, common

EMOTIONS = {'ANG': 'angry', 'DIS': 'disgust', 'FEA': 'fearful', 'HAP': 'happy', 'NEU': 'neutral', 'SAD': 'sad'}
LEVELS = ('LO', 'MD', 'HI', 'XX')
SENTENCES = {
    'IEO': "It's eleven o'clock.", 'TIE': 'That is exactly what happened.',
    'IOM': "I'm on my way to the meeting.", 'IWW': 'I wonder what this is about.',
    'TAI': 'The airplane is almost full.', 'MTI': 'Maybe tomorrow it will be cold.',
    'IWL': 'I would like a new alarm clock.', 'ITH': 'I think I have a doctor\'s appointment.',
    'DFA': "Don't forget a jacket.", 'ITS': "I think I've seen this before.",
    'TSI': 'The surface is slick.', 'WSI': "We'll stop in a couple of minutes.",
}
SPLIT_ACTORS = {'validation': range(1074, 1083), 'test': range(1083, 1092)}  # train: 1001-1073
NAME = re.compile(r'(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})')
VIDEO_DIR, AUDIO_DIR = 'VideoFlash', 'AudioWAV'
HOMEPAGE = 'https://github.com/CheyneyComputerScience/CREMA-D'
CITATION = """@article{cao2014crema,
  title={CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset},
  author={Cao, Houwei and Cooper, David G. and Keutmann, Michael K. and Gur, Ruben C. and
          Nenkova, Ani and Verma, Ragini},
  journal={IEEE Transactions on Affective Computing}, volume={5}, number={4}, pages={377--390},
  year={2014}}"""


def parse_name(stem: str) -> tuple[int, str, str, str]:
    """(actor, sentence, emotion name, level) of a stem like '1001_DFA_ANG_XX'; ValueError saying
    what is wrong."""
    m = NAME.fullmatch(stem)
    if not m:
        raise ValueError('file name is not CREMA-D <actor>_<sentence>_<emotion>_<level>')
    actor, sentence, emotion, level = m.groups()
    if not 1001 <= int(actor) <= 1091:
        raise ValueError(f'file name has an unknown actor {actor} (1001-1091)')
    for value, valid, field in ((sentence, SENTENCES, 'sentence'), (emotion, EMOTIONS, 'emotion'),
                                (level, LEVELS, 'level')):
        if value not in valid:
            raise ValueError(f'file name has an unknown {field} {value!r} ({" ".join(valid)})')
    return int(actor), sentence, EMOTIONS[emotion], level


def split_of(actor: int) -> str:
    return next((s for s, actors in SPLIT_ACTORS.items() if actor in actors), 'train')


def list_crema_d(source: pathlib.Path) -> tuple[list[audio_folder.Entry], list[tuple[str, str]]]:
    """One entry per VideoFlash/*.flv, with label, speaker, caption and split; names that do not
    parse and WAVs without a video skipped with a reason."""
    videos = sorted(p for p in (source / VIDEO_DIR).glob('*') if p.suffix.lower() == '.flv' and p.is_file())
    if not videos:
        raise ValueError(f'no CREMA-D videos in {source}: expected {VIDEO_DIR}/<actor>_<sentence>_'
                         f'<emotion>_<level>.flv (and {AUDIO_DIR}/*.wav)')
    entries, skipped = [], []
    for path in videos:
        try:
            actor, sentence, emotion, _ = parse_name(path.stem)
        except ValueError as e:
            skipped.append((str(path), str(e)))
            continue
        entries.append(audio_folder.Entry(
            path.stem, path, emotion, str(actor), (SENTENCES[sentence],), split_of(actor)))
    stems = {p.stem for p in videos}
    skipped += [(str(p), f'no video: {VIDEO_DIR}/{p.stem}.flv is missing')
                for p in sorted((source / AUDIO_DIR).glob('*.wav')) if p.stem not in stems]
    return entries, skipped


class CremaD(av_folder.AVFolder, skip_registration=True):
    """CREMA-D audiovisual (see the module docstring)."""

    VERSION = tfds.core.Version('1.0.0')

    @classmethod
    def list_entries(cls, source: pathlib.Path):
        return list_crema_d(source)

    def audio_path(self, entry: audio_folder.Entry) -> pathlib.Path | None:
        wav = self.source / AUDIO_DIR / f'{entry.id}.wav'
        return wav if wav.is_file() else None

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            'CREMA-D: 91 actors, 6 emotions, 12 sentences; face crops at 25 fps from the FLV videos '
            'with the 16 kHz audio of the WAV recordings.', homepage=HOMEPAGE, citation=CITATION,
            label_names=list(EMOTIONS.values()),
            split_actors={s: list(a) for s, a in SPLIT_ACTORS.items()})


def build(
    source: str, out: str, *, sample_rate: int = common.AV_SAMPLE_RATE, min_seconds: float = 0.5,
    allow_outside_source: bool = False, max_no_face_fraction: float = 0.5, num_workers: int | None = None,
    detect_every: int = 5, beam_options: str | None = None,
) -> common.BuildReport:
    """Builds CREMA-D from `source` into DATA_DIR `out`; see the module doc."""
    return common.prepare_dataset(
        CremaD, out, source=source, sample_rate=sample_rate, min_seconds=min_seconds,
        allow_outside_source=allow_outside_source, max_no_face_fraction=max_no_face_fraction,
        num_workers=num_workers, detect_every=detect_every, beam_options=beam_options,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', help=f'folder holding {VIDEO_DIR}/ and {AUDIO_DIR}/')
    parser.add_argument('--out', required=True, help='DATA_DIR to write the dataset into')
    parser.add_argument('--min_seconds', type=float, default=0.5)
    parser.add_argument('--max_no_face_fraction', type=float, default=0.5)
    parser.add_argument('--num_workers', type=int, default=None)
    parser.add_argument('--allow_outside_source', action='store_true')
    build(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    main()
