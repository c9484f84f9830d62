"""TFDS builder for AudioSet (Gemmeke et al., ICASSP 2017) from a user's download: multi-label.

SOURCE holds what Google publishes plus the audio the user fetched:
  * any of balanced_train_segments.csv, unbalanced_train_segments.csv, eval_segments.csv
    (lines `YTID, start_seconds, end_seconds, "mid1,mid2,..."`; '#' lines are comments);
  * class_labels_indices.csv (header index,mid,display_name: the 527 classes, in index order);
  * one audio file per segment, anywhere under SOURCE, named by its YouTube id: `<YTID>.<ext>`,
    `Y<YTID>.<ext>` (as the PANNs download scripts name them) or `<YTID>_<start>.<ext>` (start as
    in the CSV, or in whole seconds), looked for in that order, holding the segment itself (the
    download already cut to start..end).

Splits: balanced_train -> train (AS-20K), eval -> test, unbalanced_train -> unbalanced_train, so
the linear probe and zero-shot use train/test as for every dataset, and AS-2M pretraining reads
`--config.data.split=train+unbalanced_train`. Example id = YTID. The `label` feature is
multi-label: a list of the segment's classes (`tfds.features.Sequence(ClassLabel)`, named by
display name; the mids are in the metadata), read as multi-hot by the evaluation.

Skipped, each listed with its reason in DATA_DIR/build_report.json: segments without an audio file
(videos taken down are the usual case), a YTID listed again (in the same or another CSV), and
unusable audio as for audio_folder. A label mid that class_labels_indices.csv lacks is an error
(another ontology version), as is a malformed row.

    python -m data_pipelines.audioset SOURCE --out DATA_DIR
"""
from __future__ import annotations

import csv
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import audio_folder, common

SEGMENT_CSVS = {'balanced_train_segments.csv': 'train', 'eval_segments.csv': 'test',
                'unbalanced_train_segments.csv': 'unbalanced_train'}
CLASS_CSV = 'class_labels_indices.csv'
HOMEPAGE = 'https://research.google.com/audioset/'
CITATION = ('Gemmeke et al., Audio Set: An ontology and human-labeled dataset for audio events, '
            'ICASSP 2017.')


def read_classes(source: pathlib.Path) -> tuple[list[str], list[str]]:
    """(mids, display names) in index order, from SOURCE/class_labels_indices.csv."""
    path = source / CLASS_CSV
    if not path.is_file():
        raise FileNotFoundError(f'{path} not found: AudioSet needs its class list '
                                f'({CLASS_CSV}, columns index,mid,display_name)')
    rows = audio_folder.read_csv(path, ['index', 'mid', 'display_name'])
    try:
        rows.sort(key=lambda row: int(row['index']))
    except ValueError:
        raise ValueError(f'{path}: a non-integer index') from None
    if [int(row['index']) for row in rows] != list(range(len(rows))):
        raise ValueError(f'{path}: indices are not 0..{len(rows) - 1}')
    mids = [row['mid'].strip() for row in rows]
    names = [row['display_name'].strip() for row in rows]
    if len(set(mids)) != len(mids) or not all(mids) or not all(names):
        raise ValueError(f'{path}: empty or repeated mids or names')
    # ClassLabel names must be unique: a repeated display name gets its mid.
    names = [f'{n} ({m})' if names.count(n) > 1 else n for n, m in zip(names, mids)]
    return mids, names


def read_segments(path: pathlib.Path) -> list[tuple[int, str, str, list[str]]]:
    """(line number, YTID, start_seconds as written, label mids) of a segments CSV."""
    rows = []
    with open(path, newline='', encoding='utf-8') as f:
        for line, row in enumerate(csv.reader(f, skipinitialspace=True), start=1):
            if not row or row[0].lstrip().startswith('#'):
                continue
            if len(row) != 4:
                raise ValueError(f'{path}, line {line}: expected YTID, start_seconds, end_seconds, '
                                 f'"labels"; got {len(row)} fields')
            ytid, mids = row[0].strip(), [m.strip() for m in row[3].split(',') if m.strip()]
            if not ytid:
                raise ValueError(f'{path}, line {line}: empty YTID')
            rows.append((line, ytid, row[1].strip(), mids))
    return rows


def file_stems(ytid: str, start: str) -> list[str]:
    """The names (without suffix) a segment's audio file may have, in the order they are tried."""
    try:
        whole = [str(int(float(start)))] if float(start).is_integer() else []
    except ValueError:
        whole = []
    return list(dict.fromkeys([ytid, f'Y{ytid}', f'{ytid}_{start}', *(f'{ytid}_{w}' for w in whole)]))


def list_audioset(source: pathlib.Path):
    """(entries, skipped): one entry per listed segment with an audio file."""
    csvs = [source / name for name in SEGMENT_CSVS if (source / name).is_file()]
    if not csvs:
        raise FileNotFoundError(f'no AudioSet segments CSV in {source}: expected any of {", ".join(SEGMENT_CSVS)}')
    mids, names = read_classes(source)
    name_of = dict(zip(mids, names))
    audio = audio_folder.audio_index(source)  # file stem -> path
    entries, skipped, seen = [], [], {}
    for path in csvs:
        for line, ytid, start, labels in read_segments(path):
            where = f'{path}, line {line}'
            unknown = [m for m in labels if m not in name_of]
            if unknown:
                raise ValueError(f'{where}: label(s) {unknown} not in {CLASS_CSV} '
                                 '(a segments CSV and a class list of different AudioSet versions?)')
            if ytid in seen:
                skipped.append((ytid, f'listed again at {where} (first at {seen[ytid]})'))
                continue
            seen[ytid] = where
            stems = file_stems(ytid, start)
            found = next((audio[stem] for stem in stems if stem in audio), None)
            if found is None:
                skipped.append((ytid, f'missing: no audio file named {".*, ".join(stems)}.* under {source}'))
                continue
            entries.append(audio_folder.Entry(
                ytid, found, '', split=SEGMENT_CSVS[path.name], listed_at=where,
                labels=tuple(name_of[m] for m in labels)))
    if not entries:
        raise ValueError(f'no audio for any of the {len(skipped)} segments listed in {source}')
    return entries, skipped


def features(label_names) -> tfds.features.FeaturesDict:
    """audio_features with `label` a list of classes (multi-label)."""
    return tfds.features.FeaturesDict({
        **common.audio_features(label_names),
        'label': tfds.features.Sequence(tfds.features.ClassLabel(names=list(label_names))),
    })


class AudioSet(audio_folder.AudioFolder, skip_registration=True):
    """AudioSet segments + audio as a multi-label TFDS dataset (see the module docstring)."""

    name = 'audioset'
    VERSION = tfds.core.Version('1.0.0')

    @classmethod
    def list_entries(cls, source):
        return list_audioset(source)

    def features(self, label_names):
        return features(label_names)

    def load_example(self, stored: pathlib.Path, entry: audio_folder.Entry) -> dict:
        return common.example(entry.id, np.load(stored), '') | {'label': list(entry.labels)}

    def _info(self) -> tfds.core.DatasetInfo:
        mids, names = read_classes(self.source)
        return self.dataset_info(
            'AudioSet: 10 s YouTube segments with weak multi-label annotations over the 527-class '
            'ontology.', homepage=HOMEPAGE, citation=CITATION, label_names=names, label_mids=mids,
            multi_label=True, splits={csv_name.removesuffix('.csv'): split for csv_name, split in SEGMENT_CSVS.items()})


def build(source: str, out: str, **kwargs) -> common.BuildReport:
    """Builds AudioSet from `source` (segments CSVs, class list, audio) into DATA_DIR `out`
    (keyword arguments: see `audio_folder.build_corpus`)."""
    return audio_folder.build_corpus(AudioSet, source, out, **kwargs)


def main(argv=None) -> None:
    audio_folder.corpus_main(build, 'the AudioSet folder (segments CSVs, class_labels_indices.csv, audio)',
                             __doc__, argv)


if __name__ == '__main__':
    main()
