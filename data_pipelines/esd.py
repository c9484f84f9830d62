"""TFDS builder for ESD, the Emotional Speech Dataset (Zhou et al., ICASSP 2021 / Speech
Communication 2022), from the corpus as distributed:

  SOURCE/<speaker>/<Emotion>/{train,evaluation,test}/<speaker>_<NNNNNN>.wav
  SOURCE/<speaker>/<speaker>.txt        <utterance id> TAB <text> TAB <emotion>   (the transcripts)

20 speakers (0001-0010 Mandarin, 0011-0020 English), emotions Angry, Happy, Neutral, Sad,
Surprise → angry, happy, neutral, sad, surprised (from the folder). No dimensional ratings
(stored as NaN). Splits as the corpus's folders: train → train, evaluation → validation,
test → test (each speaker in all three: ESD's splits are per speaker, not speaker-independent,
which is what its few-shot protocol uses). Files in other places or with other names are skipped
with the reason.

    python -m data_pipelines.esd SOURCE --out DATA_DIR
"""
from __future__ import annotations

import pathlib

from data_pipelines import audio_folder, common, emotion

EMOTIONS = {'Angry': 'angry', 'Happy': 'happy', 'Neutral': 'neutral', 'Sad': 'sad', 'Surprise': 'surprised'}
FOLDER_SPLITS = {'train': 'train', 'evaluation': 'validation', 'test': 'test'}


def read_transcripts(path: pathlib.Path) -> dict[str, str]:
    """utterance id -> text from a speaker's transcript file (tab-separated; {} when absent)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding='utf-8', errors='replace').splitlines():
        parts = line.split('\t')
        if len(parts) >= 2 and parts[0].strip():
            out[parts[0].strip()] = parts[1].strip()
    return out


def list_esd(source: pathlib.Path) -> tuple[list[audio_folder.Entry], list[tuple[str, str]]]:
    speakers = sorted(p for p in source.iterdir() if p.is_dir() and p.name.isdigit())
    if not speakers:
        raise ValueError(f'no ESD speakers in {source}: expected <speaker>/<Emotion>/{{train,evaluation,test}}/*.wav')
    entries, skipped = [], []
    for speaker in speakers:
        transcripts = read_transcripts(speaker / f'{speaker.name}.txt')
        for path in sorted(speaker.rglob('*')):
            if path.suffix.lower() not in common.AUDIO_SUFFIXES or not path.is_file():
                continue
            parts = path.relative_to(speaker).parts
            if len(parts) != 3 or parts[0] not in EMOTIONS or parts[1] not in FOLDER_SPLITS:
                skipped.append((str(path), f'not in {speaker.name}/<{"|".join(EMOTIONS)}>/<{"|".join(FOLDER_SPLITS)}>/'))
                continue
            if not path.stem.startswith(f'{speaker.name}_'):
                skipped.append((str(path), f'file name is not {speaker.name}_<NNNNNN>: another speaker\'s file?'))
                continue
            entries.append(audio_folder.Entry(
                path.stem, path, EMOTIONS[parts[0]], speaker.name, split=FOLDER_SPLITS[parts[1]],
                transcript=transcripts.get(path.stem, '')))
    return entries, skipped


class Esd(emotion.EmotionCorpus, skip_registration=True):
    """ESD (see the module docstring)."""

    CORPUS = 'esd'
    LABELS = tuple(EMOTIONS.values())
    DESCRIPTION = ('ESD: 20 speakers (10 Mandarin, 10 English) x 5 emotions x 350 parallel utterances, '
                   'per-speaker train/evaluation/test folders, transcripts.')
    HOMEPAGE = 'https://hltsingapore.github.io/ESD/'
    CITATION = """@article{zhou2022emotional,
  title={Emotional voice conversion: Theory, databases and {ESD}},
  author={Zhou, Kun and Sisman, Berrak and Liu, Rui and Li, Haizhou},
  journal={Speech Communication}, volume={137}, pages={1--18}, year={2022}}"""

    @classmethod
    def list_entries(cls, source):
        return list_esd(source)


def build(source: str, out: str, **kwargs) -> common.BuildReport:
    """Builds ESD from `source` into DATA_DIR `out`; see the module doc."""
    return audio_folder.build_corpus(Esd, source, out, **kwargs)


if __name__ == '__main__':
    audio_folder.corpus_main(build, 'the ESD folder (0001..0020)', __doc__)
