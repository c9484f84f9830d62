"""TFDS builder for a user's folder of audio files (labelled and/or captioned).

Two layouts of SOURCE:
  * class folders: SOURCE/<class>/**/*.{wav,flac,ogg,mp3}; the folder name is the label;
  * SOURCE/manifest.csv with a `path` column (relative to SOURCE) and optional columns
    label, speaker, split (train/validation/test, or val/valid/dev) and captions:
      - `caption`, and/or `caption_1`, `caption_2`, ... (Clotho style; empty cells are ignored);
      - a path repeated on later rows adds those rows' captions to its first row (the label,
        speaker and split must agree, else ValueError); a repeat that adds no new caption is
        skipped as a duplicate. Identical captions of one clip are kept once.
    `label` is required unless the manifest has a caption column; without one every clip is
    labelled common.NO_LABEL ('unlabeled'). A path that leads outside SOURCE is refused unless
    allow_outside_source=True; two rows that are one file ('..', symbolic or hard links) are refused.

Without a split column the split is a seeded, per-class stratified shuffle (default 80/10/10).
Each file is decoded once, resampled to `sample_rate` mono and validated; unusable files are
skipped and listed with their reason in DATA_DIR/build_report.json.

Subclasses (data_pipelines.audiocaps, data_pipelines.clotho) reuse the decoding, validation and
splitting and only replace `AudioFolder.list_entries` and `_info`; data_pipelines.av_folder (videos)
also replaces `features`, `decode` and `load_example`.

    python -m data_pipelines.audio_folder SOURCE --out DATA_DIR
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import os
import pathlib
import re
import warnings

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import common

MANIFEST = 'manifest.csv'
SPLIT_NAMES = {
    'train': 'train',
    'validation': 'validation', 'val': 'validation', 'valid': 'validation', 'dev': 'validation',
    'test': 'test',
}


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str  # path relative to SOURCE, as listed
    path: pathlib.Path
    label: str
    speaker: str = ''
    captions: tuple[str, ...] = ()
    split: str | None = None  # from the manifest; None: assigned by the seeded split
    # Where the entry was listed, e.g. 'SOURCE/manifest.csv, row 3' (for error messages).
    listed_at: str = dataclasses.field(default='', compare=False)
    # Emotion corpora (data_pipelines.emotion): (arousal, valence, dominance), None when unrated,
    # the transcript ('' when none).
    dims: tuple[float, float, float] | None = None
    transcript: str = ''
    # Multi-label corpora (data_pipelines.audioset): every positive class, by name.
    labels: tuple[str, ...] = ()


def list_class_folders(
    source: pathlib.Path, suffixes: tuple[str, ...] = common.AUDIO_SUFFIXES,
) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Files with `suffixes` under SOURCE/<class>/ (recursively), plus stray ones at the top level."""
    entries, skipped = [], []
    for item in sorted(source.iterdir()):
        if item.name.startswith('.'):
            continue
        if item.is_file() and item.suffix.lower() in suffixes:
            skipped.append((str(item), 'not inside a class folder'))
        elif item.is_dir():
            for path in sorted(item.rglob('*')):
                if path.suffix.lower() in suffixes and not path.is_dir():
                    id_ = common.printable(path.relative_to(source).as_posix())
                    entries.append(Entry(id_, path, item.name))
    return entries, skipped


def unique(captions) -> tuple[str, ...]:
    """Non-empty, stripped captions without repeats, in their first order."""
    return tuple(dict.fromkeys(c for c in (c.strip() for c in captions) if c))


def caption_columns(columns: list[str]) -> list[str]:
    """`caption`, then `caption_1`, `caption_2`, ... in numeric order, of those present."""
    numbered = sorted(
        (int(m.group(1)), c) for c in columns if (m := re.fullmatch(r'caption_(\d+)', c)))
    return [c for c in ['caption'] if c in columns] + [c for _, c in numbered]


def read_manifest(source: pathlib.Path) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Rows of SOURCE/manifest.csv, repeated paths merged (see the module doc).

    Malformed rows, and repeats that disagree with their first row, raise ValueError.
    """
    manifest = source / MANIFEST
    entries: dict[str, Entry] = {}
    skipped, first_row = [], {}
    with open(manifest, newline='', encoding='utf-8-sig') as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        captioned = caption_columns(columns)
        missing = ({'path'} if captioned else {'path', 'label'}) - set(columns)
        if missing:
            raise ValueError(
                f'{manifest}: missing required column(s) {sorted(missing)}; has {columns}'
            )
        reader.fieldnames = columns
        has_label, has_split = 'label' in columns, 'split' in columns
        for row in reader:
            where = f'{manifest}, row {reader.line_num}'
            rel = (row['path'] or '').strip()
            label = (row['label'] or '').strip() if has_label else common.NO_LABEL
            if not rel or not label:
                raise ValueError(f'{where}: empty path or label ({row})')
            split = None
            if has_split:
                value = (row['split'] or '').strip()
                split = SPLIT_NAMES.get(value.lower())
                if split is None:
                    raise ValueError(
                        f'{where}: unknown split value {value!r}; use one of {sorted(SPLIT_NAMES)}'
                    )
            entry = Entry(rel, source / rel, label, (row.get('speaker') or '').strip(),
                          unique(row[c] or '' for c in captioned), split, where)
            first = entries.get(rel)
            if first is None:
                first_row[rel] = reader.line_num
                entries[rel] = entry
                continue
            for field in ('label', 'speaker', 'split'):
                if getattr(entry, field) != getattr(first, field):
                    raise ValueError(
                        f'{where}: {rel!r} repeats row {first_row[rel]} with a different {field}: '
                        f'{getattr(first, field)!r} (row {first_row[rel]}) vs '
                        f'{getattr(entry, field)!r} (row {reader.line_num})'
                    )
            captions = unique(first.captions + entry.captions)
            if captions == first.captions:
                reason = f'duplicate manifest entry (first at row {first_row[rel]})'
                skipped.append((str(source / rel), reason))
            else:
                entries[rel] = dataclasses.replace(first, captions=captions)
    return list(entries.values()), skipped


def check_entries(entries: list[Entry], source: pathlib.Path, allow_outside_source: bool) -> None:
    """ValueError, before anything is decoded, for an entry outside `source` (unless allowed;
    symbolic links inside it are followed) and for two entries that are one file (reached
    through '..', an absolute path, a symbolic or a hard link) or share an id."""
    root = os.path.abspath(source)
    first_of: dict = {}
    for entry in entries:
        where = f'{entry.listed_at}: ' if entry.listed_at else ''
        path = os.path.abspath(entry.path)
        if not allow_outside_source and os.path.commonpath([root, path]) != root:
            raise ValueError(
                f'{where}{entry.id!r} is outside the source folder {root}; '
                'pass --allow-outside-source (allow_outside_source=True) to use it'
            )
        try:
            stat = os.stat(path)
            file_key = (stat.st_dev, stat.st_ino)
        except OSError:  # missing: skipped later, unless listed twice
            file_key = os.path.realpath(path)
        for key, what in (
            (('file', file_key), 'same file as'), (('id', entry.id), f'same id {entry.id!r} as'),
        ):
            first = first_of.setdefault(key, entry)
            if first is not entry:
                first_where = f' ({first.listed_at})' if first.listed_at else ''
                raise ValueError(
                    f'{where}{common.printable(entry.path)}: {what} '
                    f'{common.printable(first.path)}{first_where}; a file can be one example only'
                )


def list_source(
    source: str | pathlib.Path, suffixes: tuple[str, ...] = common.AUDIO_SUFFIXES, what: str = 'audio',
) -> tuple[list[Entry], list[tuple[str, str]]]:
    """SOURCE/manifest.csv's entries, else those of the class folders (files with `suffixes`)."""
    source = pathlib.Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f'{what} source folder not found: {source}')
    if (source / MANIFEST).is_file():
        entries, skipped = read_manifest(source)
    else:
        entries, skipped = list_class_folders(source, suffixes)
    if not entries:
        raise ValueError(
            f'no {what} files in {source}: expected {MANIFEST} or class sub-folders holding '
            f'{"/".join(suffixes)} files'
        )
    return entries, skipped


def audio_index(source: pathlib.Path, key: str = 'stem') -> dict[str, pathlib.Path]:
    """File stem (or `key='name'`) -> path of the audio files under `source`, hidden folders
    left out. The first in sorted path order wins when two files share a stem.
    """
    index = {}
    for path in sorted(source.rglob('*')):
        if path.suffix.lower() in common.AUDIO_SUFFIXES and path.is_file() and not any(
            part.startswith('.') for part in path.relative_to(source).parts
        ):
            index.setdefault(getattr(path, key), path)
    return index


def read_csv(path: pathlib.Path, required) -> list[dict]:
    """Rows of a CSV (header names stripped, row['_line'] its line number); a ValueError that
    names the file and its columns when a `required` column is missing."""
    with open(path, newline='', encoding='utf-8-sig') as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f'{path}: missing column(s) {missing}; has {columns}')
        reader.fieldnames = columns
        return [dict(row, _line=reader.line_num) for row in reader]


def caption_csvs(source: pathlib.Path, names) -> list[pathlib.Path]:
    """The files `names` present in `source` (at least one, else FileNotFoundError)."""
    found = [source / name for name in names if (source / name).is_file()]
    if not found:
        raise FileNotFoundError(f'no caption CSV in {source}: expected any of {", ".join(names)}')
    return found


class AudioFolder(common.AudioBuilder, skip_registration=True):
    """A folder of labelled and/or captioned audio as a TFDS dataset (see the module docstring).

    Subclasses for other layouts override `list_entries` (and `_info`); an entry's own split is
    kept, the others get the seeded stratified split.
    """

    VERSION = tfds.core.Version('2.0.0')  # 2.0.0: 'caption' became 'captions' (a list)
    MEDIA = 'audio'  # what the files are, in messages

    def __init__(
        self, *, source: str, sample_rate: int = 16000, seed: int = 0, val_fraction: float = 0.1,
        test_fraction: float = 0.1, min_seconds: float = 0.5, num_workers: int | None = None,
        allow_outside_source: bool = False, **kwargs,
    ):
        self.source = pathlib.Path(source)
        self.sample_rate, self.seed, self.min_seconds = sample_rate, seed, min_seconds
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_workers = num_workers or os.cpu_count()
        if not self.source.exists():
            raise FileNotFoundError(f'{self.name} source {self.source} does not exist')
        if not self.source.is_dir():
            raise ValueError(f'{self.name} source {self.source} is not a directory')
        self.entries, self.skipped = self.list_entries(self.source)
        check_entries(self.entries, self.source, allow_outside_source)
        self.warnings = []
        super().__init__(**kwargs)

    @classmethod
    def list_entries(cls, source: pathlib.Path) -> tuple[list[Entry], list[tuple[str, str]]]:
        """What to build from `source`: (entries, skipped (path, reason)); raises when none."""
        return list_source(source)

    def features(self, label_names: list[str]) -> tfds.features.FeaturesDict:
        """The stored features (subclasses with another storage contract replace it)."""
        return common.audio_features(label_names)

    def dataset_info(
        self, description: str, *, homepage: str | None = None, citation: str | None = None,
        label_names: list[str] | None = None, **metadata,
    ) -> tfds.core.DatasetInfo:
        """DatasetInfo with the shared features (labels: `label_names`, else the entries' sorted)
        and metadata (sample_rate, source, min_seconds)."""
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=self.features(label_names or sorted({e.label for e in self.entries})),
            metadata=tfds.core.MetadataDict(
                sample_rate=self.sample_rate, source=str(self.source.resolve()),
                min_seconds=self.min_seconds, **metadata,
            ),
            homepage=homepage,
            citation=citation,
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            f'Audio files from {self.source}.', seed=self.seed, val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
        )

    def decode(self, entry: Entry, stored: pathlib.Path) -> tuple[str | None, list[str]]:
        """Decodes and validates `entry` into the scratch file `stored`: (None, warnings) when it is
        usable, else (reason, []). Runs in the threads of `_split_generators`."""
        x, reason, notes = common.read_checked(entry.path, self.sample_rate, self.min_seconds)
        if reason is None:
            np.save(stored, common.to_int16(x))
        return reason, notes

    def load_example(self, stored: pathlib.Path, entry: Entry) -> dict:
        """The example of `entry` from what `decode` stored."""
        return common.example(entry.id, np.load(stored), entry.label, entry.speaker, entry.captions)

    def _split_generators(self, dl_manager):
        # Decode every file once and keep the result in scratch space so memory stays flat (in
        # threads: libsndfile, soxr, FFmpeg and OpenCV release the GIL; or, with --beam, in the
        # workers of a Beam pipeline), then split the usable ones.
        scratch = pathlib.Path(dl_manager.download_dir) / 'decoded'
        scratch.mkdir(parents=True, exist_ok=True)
        stored = [scratch / f'{i}.npy' for i in range(len(self.entries))]
        if self.beam_options is not None:
            from data_pipelines import beam_build

            decoded = beam_build.decode_all(self, stored)
        else:
            # load_audio silences librosa's warnings, but catch_warnings is not thread-safe:
            # silence them here, for all the threads.
            with warnings.catch_warnings(), concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
                warnings.simplefilter('ignore')
                decoded = list(tfds.core.utils.tqdm(
                    pool.map(self.decode, self.entries, stored),
                    total=len(self.entries), desc='Decoding', unit=' files', leave=False,
                ))
        usable = []
        for i, (entry, (reason, notes)) in enumerate(zip(self.entries, decoded)):
            if reason is None:
                usable.append((stored[i], entry))
                self.warnings += [(str(entry.path), note) for note in notes]
            else:
                self.skipped.append((str(entry.path), reason))
        if not usable:
            raise common.NoUsableAudio(
                f'no usable {self.MEDIA} in {self.source}: all {len(self.skipped)} files skipped',
                self.skipped,
            )

        usable.sort(key=lambda item: item[1].id)
        seeded = common.stratified_split(
            [e.label for _, e in usable], self.seed, self.val_fraction, self.test_fraction
        )
        by_split = {s: [] for s in common.SPLITS}
        for item, split in zip(usable, seeded):
            by_split.setdefault(item[1].split or split, []).append(item)
        if self.beam_options is not None:
            return {s: beam_build.LoadExamples(self, s, items, scratch) for s, items in by_split.items() if items}
        return {s: self._generate_examples(items) for s, items in by_split.items() if items}

    def _generate_examples(self, items):
        for stored, entry in items:
            yield entry.id, self.load_example(stored, entry)

    # With Beam (data_pipelines.beam_build), prepare_dataset sets `beam_options`.
    SUPPORTS_BEAM = True


def build(
    source: str, out: str, *, sample_rate: int = 16000, seed: int = 0, val_fraction: float = 0.1,
    test_fraction: float = 0.1, min_seconds: float = 0.5, num_workers: int | None = None,
    allow_outside_source: bool = False, beam_options: str | None = None,
) -> common.BuildReport:
    """Builds the audio in `source` into a TFDS dataset in DATA_DIR `out`; see the module doc."""
    return common.prepare_dataset(
        AudioFolder, out, source=source, sample_rate=sample_rate, seed=seed,
        val_fraction=val_fraction, test_fraction=test_fraction, min_seconds=min_seconds,
        num_workers=num_workers, allow_outside_source=allow_outside_source, beam_options=beam_options,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', help='folder of class sub-folders, or holding manifest.csv')
    parser.add_argument('--out', required=True, help='DATA_DIR to write the dataset into')
    parser.add_argument('--sample_rate', type=int, default=16000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--val_fraction', type=float, default=0.1)
    parser.add_argument('--test_fraction', type=float, default=0.1)
    parser.add_argument('--min_seconds', type=float, default=0.5)
    parser.add_argument('--num_workers', type=int, default=None)
    parser.add_argument('--allow_outside_source', action='store_true')
    build(**vars(parser.parse_args(argv)))


def build_corpus(
    builder_cls: type[AudioFolder], source: str, out: str, *, sample_rate: int = 16000,
    min_seconds: float = 0.5, num_workers: int | None = None, allow_outside_source: bool = False,
    beam_options: str | None = None,
) -> common.BuildReport:
    """Builds a corpus with its own splits (an AudioFolder subclass) from `source` into `out`."""
    return common.prepare_dataset(
        builder_cls, out, source=source, sample_rate=sample_rate, min_seconds=min_seconds,
        num_workers=num_workers, allow_outside_source=allow_outside_source, beam_options=beam_options,
    )


def corpus_main(build_fn, source_help: str, doc: str, argv=None) -> None:
    """The command line of a corpus module: `python -m data_pipelines.<corpus> SOURCE --out DATA_DIR`."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0])
    parser.add_argument('source', help=source_help)
    parser.add_argument('--out', required=True, help='DATA_DIR to write the dataset into')
    parser.add_argument('--sample_rate', type=int, default=16000)
    parser.add_argument('--min_seconds', type=float, default=0.5)
    parser.add_argument('--num_workers', type=int, default=None)
    parser.add_argument('--allow_outside_source', action='store_true')
    build_fn(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    main()
