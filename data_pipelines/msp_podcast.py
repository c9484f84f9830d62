"""TFDS builder for MSP-Podcast (Lotfian & Busso, IEEE Trans. Affective Computing 2019), from the
corpus as distributed:

  SOURCE/Labels/labels_consensus.csv   FileName, EmoAct, EmoVal, EmoDom, SpkrID, Split_Set
                                       (EmoClass and Gender read when present)
  SOURCE/Audios/<FileName>             the clips (found by name anywhere under SOURCE)
  SOURCE/Transcripts/<stem>.txt        optional, one per clip

  * Dimensional labels: EmoAct → arousal, EmoVal → valence, EmoDom → dominance, on the corpus's
    1-7 scale as given (the consensus of the raters); a row whose rating is not a number in [1, 7]
    is skipped with that reason.
  * Categorical label from EmoClass when the CSV has it (A angry, S sad, H happy, U surprised,
    F fearful, D disgust, C contempt, N neutral, O other), else, and for X (no agreement),
    'unlabeled'.
  * Speaker: SpkrID ('Unknown' → ''); transcript: Transcripts/<stem>.txt when present.
  * Splits as the corpus defines them, speaker-independent: Train → train, Development →
    validation, Test1 → test, Test2 → test2 (a split of its own). Rows of another Split_Set are
    skipped with the reason; clips listed but missing are skipped as 'missing'.

    python -m data_pipelines.msp_podcast SOURCE --out DATA_DIR
"""
from __future__ import annotations

import pathlib

from data_pipelines import audio_folder, common, emotion

LABELS_CSV = 'Labels/labels_consensus.csv'
EMO_CLASSES = {'A': 'angry', 'S': 'sad', 'H': 'happy', 'U': 'surprised', 'F': 'fearful', 'D': 'disgust',
               'C': 'contempt', 'N': 'neutral', 'O': 'other'}
SPLIT_SETS = {'Train': 'train', 'Development': 'validation', 'Test1': 'test', 'Test2': 'test2'}
SCALE = (1.0, 7.0)


def labels_csv(source: pathlib.Path) -> pathlib.Path:
    for candidate in (source / LABELS_CSV, source / 'labels_consensus.csv'):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f'no MSP-Podcast labels in {source}: expected {LABELS_CSV}')


def list_msp_podcast(source: pathlib.Path) -> tuple[list[audio_folder.Entry], list[tuple[str, str]]]:
    path = labels_csv(source)
    rows = audio_folder.read_csv(path, ('FileName', 'EmoAct', 'EmoVal', 'EmoDom', 'SpkrID', 'Split_Set'))
    audio = audio_folder.audio_index(source, key='name')
    entries, skipped = [], []
    for row in rows:
        name = row['FileName'].strip()
        where = f'{path}, line {row["_line"]}'
        clip = audio.get(name, source / 'Audios' / name)
        split = SPLIT_SETS.get(row['Split_Set'].strip())
        if split is None:
            skipped.append((str(clip), f'{where}: Split_Set {row["Split_Set"]!r} is none of {", ".join(SPLIT_SETS)}'))
            continue
        try:
            dims = tuple(emotion.rating(row[c], f'{where}: {c}', *SCALE) for c in ('EmoAct', 'EmoVal', 'EmoDom'))
        except ValueError as e:
            skipped.append((str(clip), str(e)))
            continue
        label = EMO_CLASSES.get((row.get('EmoClass') or '').strip(), emotion.UNLABELED)
        transcript_file = source / 'Transcripts' / f'{pathlib.Path(name).stem}.txt'
        transcript = (transcript_file.read_text(encoding='utf-8', errors='replace').strip()
                      if transcript_file.is_file() else '')
        speaker = row['SpkrID'].strip()
        entries.append(audio_folder.Entry(
            pathlib.Path(name).stem, clip, label, '' if speaker.lower() == 'unknown' else speaker,
            split=split, dims=dims, transcript=transcript, listed_at=where))
    if not entries and not skipped:
        raise ValueError(f'{path} lists no clips')
    return entries, skipped


class MspPodcast(emotion.EmotionCorpus, skip_registration=True):
    """MSP-Podcast (see the module docstring)."""

    CORPUS = 'msp_podcast'
    LABELS = tuple(EMO_CLASSES.values())
    DESCRIPTION = ('MSP-Podcast: podcast speech with consensus arousal/valence/dominance (1-7) and '
                   'categorical emotions, speaker-independent Train/Development/Test1/Test2.')
    HOMEPAGE = 'https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html'
    CITATION = """@article{lotfian2019building,
  title={Building Naturalistic Emotionally Balanced Speech Corpus by Retrieving Emotional Speech from
         Existing Podcast Recordings},
  author={Lotfian, Reza and Busso, Carlos}, journal={IEEE Transactions on Affective Computing},
  volume={10}, number={4}, pages={471--483}, year={2019}}"""

    @classmethod
    def list_entries(cls, source):
        return list_msp_podcast(source)


def build(source: str, out: str, **kwargs) -> common.BuildReport:
    """Builds MSP-Podcast from `source` into DATA_DIR `out`; see the module doc."""
    return audio_folder.build_corpus(MspPodcast, source, out, **kwargs)


if __name__ == '__main__':
    audio_folder.corpus_main(build, 'the MSP-Podcast folder (Labels/, Audios/, Transcripts/)', __doc__)
