"""Dataset builds as Apache Beam pipelines (`avpretrain data build NAME --beam`).

An `audio_folder.AudioFolder` builder (audio_folder, av_folder, audioset and the corpus builders)
builds in the same steps with or without Beam; with Beam, the two expensive ones run in workers:

1. `decode_all`: a pipeline of our own decodes and validates every listed file (the builder's
   `decode`) into the build's scratch space and returns each file's (reason, warnings). The listing
   travels as a JSON-lines file, not inside the pipeline graph, so millions of entries do not bloat
   the job a runner has to submit.
2. The driver then splits the usable files exactly as the plain build does (so an unusable file,
   or a split left empty by them, is handled and reported as there).
3. `LoadExamples`: per split, the pipeline TFDS runs reads the stored clips (`load_example`) and
   hands the examples to TFDS's Beam writer, which shuffles and shards them into ArrayRecord files.

The DirectRunner runs both here (`direct_running_mode=multi_processing,direct_num_workers=N` for
processes); Dataflow, Flink and Spark run the same pipelines when given their options, provided the
source and the output folder (where the scratch space lives) are paths every worker can read and
write: a shared file system.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
import warnings

import apache_beam as beam

from data_pipelines import audio_folder

# TFDS builder attributes a worker does not need: the listing, and what the driver collects.
_DRIVER_ONLY = ('entries', 'skipped', 'warnings', 'beam_options')


def entry_to_json(entry: audio_folder.Entry) -> dict:
    fields = dataclasses.asdict(entry)
    fields.pop('listed_at')  # for the driver's error messages only
    fields['path'] = os.fsdecode(entry.path)  # surrogate-escaped when the name is not UTF-8
    return fields


def entry_from_json(fields: dict) -> audio_folder.Entry:
    fields = dict(fields, path=pathlib.Path(fields['path']))
    for key, value in fields.items():
        if isinstance(value, list):  # JSON arrays were tuples
            fields[key] = tuple(value)
    return audio_folder.Entry(**fields)


def _write_listing(path: pathlib.Path, rows) -> str:
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(row) + '\n' for row in rows)
    return str(path)


class _Worker(beam.DoFn):
    """Pickles as the builder's class and its plain settings (sample rate, face options, ...), not as
    the builder: a TFDS builder unpickles by running its constructor, which lists the whole source.
    A worker calls the class's own `decode` and `load_example` on an instance holding those settings.
    """

    def __init__(self, builder: audio_folder.AudioFolder):
        super().__init__()
        self.builder_cls = type(builder)
        self.settings = {k: v for k, v in vars(builder).items()
                         if not k.startswith('_') and k not in _DRIVER_ONLY}

    def setup(self):
        self.builder = object.__new__(self.builder_cls)  # no constructor: no listing, no TFDS state
        vars(self.builder).update(self.settings)


class _Decode(_Worker):
    """A listing row → JSON [index, reason (None: usable), warnings]; the clip goes to row['stored']."""

    def process(self, line: str):
        row = json.loads(line)
        with warnings.catch_warnings():  # as the plain build: librosa's fallback warnings
            warnings.simplefilter('ignore')
            reason, notes = self.builder.decode(entry_from_json(row['entry']), pathlib.Path(row['stored']))
        beam.metrics.Metrics.counter('avpretrain', 'skipped' if reason else 'decoded').inc()
        yield json.dumps([row['index'], reason, notes])


def decode_all(builder: audio_folder.AudioFolder, stored: list[pathlib.Path]) -> list[tuple[str | None, list[str]]]:
    """Decodes `builder.entries[i]` into `stored[i]` in a Beam pipeline (`builder.beam_options`);
    returns each entry's (reason, warnings) in listing order, as `builder.decode` does."""
    scratch = stored[0].parent if stored else pathlib.Path(tempfile.mkdtemp())
    listing = _write_listing(scratch / 'decode-listing.jsonl', (
        {'index': i, 'stored': str(path), 'entry': entry_to_json(entry)}
        for i, (entry, path) in enumerate(zip(builder.entries, stored))))
    results = scratch / 'decode-results'
    with beam.Pipeline(options=builder.beam_options) as pipeline:
        _ = (pipeline
             | 'List' >> beam.io.ReadFromText(listing)
             # Spread the rows over the workers (a read fused with the decode would run in one).
             | 'Spread' >> beam.Reshuffle()
             | 'Decode' >> beam.ParDo(_Decode(builder))
             | 'Results' >> beam.io.WriteToText(str(results), file_name_suffix='.jsonl'))
    decoded: dict[int, tuple[str | None, list[str]]] = {}
    for path in scratch.glob('decode-results*.jsonl'):
        for line in path.read_text(encoding='utf-8').splitlines():
            index, reason, notes = json.loads(line)
            decoded[index] = (reason, notes)
    missing = len(builder.entries) - len(decoded)
    if missing:
        raise RuntimeError(f'the Beam decode pipeline returned no result for {missing} of '
                           f'{len(builder.entries)} files (results in {scratch})')
    return [decoded[i] for i in range(len(builder.entries))]


class _Load(_Worker):
    def process(self, line: str):
        row = json.loads(line)
        entry = entry_from_json(row['entry'])
        yield entry.id, self.builder.load_example(pathlib.Path(row['stored']), entry)


class LoadExamples(beam.PTransform):
    """The (key, example) pairs of one split, from the clips `decode_all` stored (a split generator
    of `_split_generators`; TFDS applies it to its pipeline and writes what it yields)."""

    def __init__(self, builder: audio_folder.AudioFolder, split: str,
                 items: list[tuple[pathlib.Path, audio_folder.Entry]], scratch: pathlib.Path):
        super().__init__()
        self.split, self.load = split, _Load(builder)
        self.listing = _write_listing(scratch / f'load-{split}.jsonl', (
            {'stored': str(path), 'entry': entry_to_json(entry)} for path, entry in items))

    def expand(self, pipeline):
        return (pipeline
                | f'List_{self.split}' >> beam.io.ReadFromText(self.listing)
                | f'Spread_{self.split}' >> beam.Reshuffle()
                | f'Load_{self.split}' >> beam.ParDo(self.load))


