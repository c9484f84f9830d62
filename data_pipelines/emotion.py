"""The emotional-speech storage contract and the base of the emotion corpus builders.

An example of an emotion corpus is `common.audio_features` plus

  * `arousal`, `valence`, `dominance`: float32 ratings on the corpus's own scale (MSP-Podcast and
    IEMOCAP: 1-7 and 1-5, as distributed; nothing is rescaled), NaN when the corpus or the clip has
    none (ESD, RAVDESS);
  * `corpus`: the corpus's name (e.g. 'msp_podcast'), so that examples of several corpora can be
    told apart after they are mixed;
  * `transcript`: what is said, '' when unknown.

`label` is the categorical emotion (`UNLABELED` when a clip has none: MSP-Podcast without
consensus, say), `speaker` the speaker id. Builders (data_pipelines.msp_podcast, .iemocap, .esd)
list `audio_folder.Entry`s with `dims` and `transcript`; decoding, validation, skipping with a
reason and the build report are audio_folder's.
"""
from __future__ import annotations

import math
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import audio_folder, common

DIMENSIONS = ('arousal', 'valence', 'dominance')
UNLABELED = common.NO_LABEL


def features(label_names) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        **common.audio_features(label_names),
        **{d: tfds.features.Scalar(dtype=np.float32) for d in DIMENSIONS},
        'corpus': tfds.features.Text(),
        'transcript': tfds.features.Text(),
    })


def example(entry: audio_folder.Entry, audio: np.ndarray, corpus: str) -> dict:
    dims = entry.dims or (math.nan,) * 3
    return common.example(entry.id, audio, entry.label, entry.speaker, entry.captions) | {
        **{d: np.float32(v) for d, v in zip(DIMENSIONS, dims)}, 'corpus': corpus, 'transcript': entry.transcript}


def rating(text: str, what: str, low: float, high: float) -> float:
    """A rating cell as a float in [low, high]; ValueError naming `what` otherwise."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f'{what} {text!r} is not a number') from None
    if not (low <= value <= high):
        raise ValueError(f'{what} {value} is outside the corpus scale [{low:g}, {high:g}]')
    return value


class EmotionCorpus(audio_folder.AudioFolder, skip_registration=True):
    """An AudioFolder storing the emotion contract; subclasses set `CORPUS`, `LABELS`, and list entries."""

    VERSION = tfds.core.Version('1.0.0')
    CORPUS = ''
    LABELS: tuple[str, ...] = ()
    DESCRIPTION = ''
    HOMEPAGE = CITATION = None

    def features(self, label_names):
        return features(label_names)

    def load_example(self, stored: pathlib.Path, entry: audio_folder.Entry) -> dict:
        return example(entry, np.load(stored), self.CORPUS)

    def label_names(self) -> list[str]:
        """The corpus's classes, plus UNLABELED when some listed clip has no category."""
        extra = [UNLABELED] if any(e.label == UNLABELED for e in self.entries) else []
        return [*self.LABELS, *extra]

    def extra_metadata(self) -> dict:
        """What a corpus adds to the dataset's metadata (its options, its split rule)."""
        return {}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(self.DESCRIPTION, homepage=self.HOMEPAGE, citation=self.CITATION,
                                 label_names=self.label_names(), corpus=self.CORPUS, **self.extra_metadata())
