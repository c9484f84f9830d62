"""TFDS builder for RAVDESS audio-only: the 03- WAVs of Audio_Speech_Actors_01-24 and
Audio_Song_Actors_01-24 (SOURCE/**/Actor_NN/03-VV-EE-II-SS-RR-AA.wav), as examples of the emotion
contract (data_pipelines.emotion: corpus 'ravdess', the statement as transcript and caption, no
dimensional ratings: NaN), decoded and validated as data_pipelines.audio_folder does.

Labels, speakers, captions, ids and the speaker-independent splits are those of
data_pipelines.ravdess (emotions 0-based: neutral, calm, happy, sad, angry, fearful, disgust,
surprised; validation actors 21-22, test 23-24). Names that do not parse, and WAVs of other
modalities, are skipped with a reason.

    python -m data_pipelines.ravdess_audio SOURCE --out DATA_DIR
"""
from __future__ import annotations

import argparse
import pathlib

import tensorflow_datasets as tfds

from data_pipelines import common, emotion, ravdess


class RavdessAudio(emotion.EmotionCorpus, skip_registration=True):
    """RAVDESS audio-only recordings (see the module docstring)."""

    VERSION = tfds.core.Version('2.0.0')  # 2.0.0: the emotion contract (ratings, corpus, transcript)
    CORPUS = 'ravdess'

    def __init__(self, *, vocal_channels: tuple[str, ...] = ('speech', 'song'), **kwargs):
        self.vocal_channels = tuple(vocal_channels)
        super().__init__(**kwargs)

    def list_entries(self, source: pathlib.Path):
        return ravdess.list_recordings(source, '.wav', ('audio-only',), self.vocal_channels)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            'RAVDESS audio-only recordings: 24 actors, 8 emotions, speech and song.',
            homepage=ravdess.HOMEPAGE, citation=ravdess.CITATION, label_names=list(ravdess.EMOTIONS),
            modalities='audio', **ravdess.ravdess_metadata(self.vocal_channels))


def build(
    source: str, out: str, *, sample_rate: int = 16000, min_seconds: float = 0.5,
    allow_outside_source: bool = False, max_no_face_fraction: float | None = None,
    num_workers: int | None = None, vocal_channels: tuple[str, ...] = ('speech', 'song'),
    beam_options: str | None = None,
) -> common.BuildReport:
    """Builds RAVDESS audio-only from `source` into DATA_DIR `out`; see the module doc.
    `max_no_face_fraction` is accepted for the command line's sake and unused (no video)."""
    del max_no_face_fraction
    return common.prepare_dataset(
        RavdessAudio, out, source=source, sample_rate=sample_rate, min_seconds=min_seconds,
        allow_outside_source=allow_outside_source, num_workers=num_workers,
        vocal_channels=vocal_channels, beam_options=beam_options,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', help='folder holding the extracted Actor_NN folders')
    parser.add_argument('--out', required=True, help='DATA_DIR to write the dataset into')
    parser.add_argument('--sample_rate', type=int, default=16000)
    parser.add_argument('--min_seconds', type=float, default=0.5)
    parser.add_argument('--num_workers', type=int, default=None)
    parser.add_argument('--allow_outside_source', action='store_true')
    parser.add_argument('--speech_only', dest='vocal_channels', action='store_const',
                        const=('speech',), default=('speech', 'song'))
    build(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    main()
