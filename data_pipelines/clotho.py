"""TFDS builder for Clotho v2 (Drossos et al., ICASSP 2020) from a folder the user downloaded.

SOURCE is the unpacked Clotho v2 release:
  * SOURCE/clotho_captions_{development,validation,evaluation}.csv (any subset, at least one),
    header file_name,caption_1,...,caption_5;
  * audio in SOURCE/development/<file_name>, SOURCE/validation/..., SOURCE/evaluation/...
    (a file not there is also looked for anywhere under SOURCE, by name).

development -> train, validation -> validation, evaluation -> test; example id = file_name;
label common.NO_LABEL. The 44.1 kHz files are resampled to `sample_rate`. Missing or unusable
audio is skipped and listed in build_report.json.

    python -m data_pipelines.clotho SOURCE --out DATA_DIR
"""
from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

from data_pipelines import audio_folder, common

SPLIT_FOLDERS = {'development': 'train', 'validation': 'validation', 'evaluation': 'test'}


def csv_name(folder: str) -> str:
    return f'clotho_captions_{folder}.csv'


def list_clotho(source: pathlib.Path):
    """(entries, skipped): one entry per file_name with an audio file, in CSV order."""
    csvs = audio_folder.caption_csvs(source, [csv_name(f) for f in SPLIT_FOLDERS])
    by_name = None  # file name -> path anywhere under SOURCE; only built when needed
    entries, skipped, seen = [], [], {}
    for path in csvs:
        folder = path.stem.removeprefix('clotho_captions_')
        rows = audio_folder.read_csv(path, ['file_name', 'caption_1'])
        columns = audio_folder.caption_columns(list(rows[0]) if rows else [])
        for row in rows:
            name = (row['file_name'] or '').strip()
            if not name:
                raise ValueError(f'{path}, row {row["_line"]}: empty file_name')
            if name in seen:
                skipped.append((name, f'listed in {path.name} and already in {seen[name]}'))
                continue
            seen[name] = path.name
            audio = source / folder / name
            if not audio.is_file():
                by_name = audio_folder.audio_index(source, 'name') if by_name is None else by_name
                audio = by_name.get(name)
            if audio is None:
                skipped.append((name, f'missing audio (looked for {folder}/{name}, '
                                      f'and for {name} anywhere under {source})'))
                continue
            entries.append(audio_folder.Entry(
                name, audio, common.NO_LABEL,
                captions=audio_folder.unique(row[c] or '' for c in columns),
                split=SPLIT_FOLDERS[folder], listed_at=f'{path}, row {row["_line"]}'))
    if not entries:
        raise ValueError(f'no audio for any of the {len(skipped)} files listed in {source}')
    return entries, skipped


class Clotho(audio_folder.AudioFolder, skip_registration=True):
    """Clotho v2 captions + audio as a TFDS dataset (see the module docstring)."""

    name = 'clotho'
    VERSION = tfds.core.Version('2.0.0')

    @classmethod
    def list_entries(cls, source):
        return list_clotho(source)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            'Clotho v2: 15-30 s Freesound clips with 5 human-written captions each.',
            homepage='https://zenodo.org/records/4783391',
            citation='Drossos et al., Clotho: an Audio Captioning Dataset, ICASSP 2020.',
        )


def build(source: str, out: str, **kwargs) -> common.BuildReport:
    """Builds Clotho from `source` (CSVs + audio folders) into a TFDS dataset in DATA_DIR `out`
    (keyword arguments: see `audio_folder.build_corpus`)."""
    return audio_folder.build_corpus(Clotho, source, out, **kwargs)


def main(argv=None) -> None:
    audio_folder.corpus_main(build, 'the unpacked Clotho v2 folder (CSVs + audio folders)', __doc__, argv)


if __name__ == '__main__':
    main()
