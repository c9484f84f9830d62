"""TFDS builder for CREMA-D audio-only: SOURCE/AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav, as
examples of the emotion contract (data_pipelines.emotion: corpus 'crema_d', the sentence as
transcript and caption, no dimensional ratings: NaN).

Labels, speakers and the speaker-independent splits are data_pipelines.crema_d's (labels angry,
disgust, fearful, happy, neutral, sad; validation actors 1074-1082, test 1083-1091). Names that do
not parse are skipped with the reason; decoding and validation are data_pipelines.audio_folder's.

    python -m data_pipelines.crema_d_audio SOURCE --out DATA_DIR
"""
from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

from data_pipelines import audio_folder, common, crema_d, emotion


def list_crema_d_audio(source: pathlib.Path) -> tuple[list[audio_folder.Entry], list[tuple[str, str]]]:
    wavs = sorted(p for p in (source / crema_d.AUDIO_DIR).glob('*') if p.suffix.lower() == '.wav' and p.is_file())
    if not wavs:
        raise ValueError(f'no CREMA-D audio in {source}: expected {crema_d.AUDIO_DIR}/<actor>_<sentence>_<emotion>_'
                         f'<level>.wav')
    entries, skipped = [], []
    for path in wavs:
        try:
            actor, sentence, label, _ = crema_d.parse_name(path.stem)
        except ValueError as e:
            skipped.append((str(path), str(e)))
            continue
        text = crema_d.SENTENCES[sentence]
        entries.append(audio_folder.Entry(path.stem, path, label, str(actor), (text,), crema_d.split_of(actor),
                                          transcript=text))
    return entries, skipped


class CremaDAudio(emotion.EmotionCorpus, skip_registration=True):
    """CREMA-D audio-only (see the module docstring)."""

    VERSION = tfds.core.Version('1.0.0')
    CORPUS = 'crema_d'
    LABELS = tuple(crema_d.EMOTIONS.values())
    DESCRIPTION = 'CREMA-D audio: 91 actors, 6 emotions, 12 sentences (the AudioWAV recordings).'
    HOMEPAGE, CITATION = crema_d.HOMEPAGE, crema_d.CITATION

    @classmethod
    def list_entries(cls, source):
        return list_crema_d_audio(source)

    def extra_metadata(self) -> dict:
        return {'split_actors': {s: list(a) for s, a in crema_d.SPLIT_ACTORS.items()}, 'modalities': 'audio'}


def build(source: str, out: str, *, max_no_face_fraction: float | None = None, **kwargs) -> common.BuildReport:
    """Builds CREMA-D audio-only from `source` into DATA_DIR `out`; see the module doc.
    `max_no_face_fraction` is accepted for the command line's sake and unused (no video)."""
    del max_no_face_fraction
    return audio_folder.build_corpus(CremaDAudio, source, out, **kwargs)


if __name__ == '__main__':
    audio_folder.corpus_main(build, f'the CREMA-D folder (holding {crema_d.AUDIO_DIR}/)', __doc__)
