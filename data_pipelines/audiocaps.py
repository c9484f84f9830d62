"""TFDS builder for AudioCaps (Kim et al., NAACL 2019) from a folder the user downloaded.

AudioCaps publishes captions only; the audio (10 s YouTube clips of AudioSet) is fetched by the
user. SOURCE holds the caption CSVs and the audio files:
  * SOURCE/train.csv, SOURCE/val.csv, SOURCE/test.csv (any subset, at least one), with header
    audiocap_id,youtube_id,start_time,caption; one row per caption. Rows of one clip
    (youtube_id + start_time) become one example with all its captions (val/test: 5, train: 1);
  * audio files anywhere under SOURCE (.wav/.flac/.ogg/.mp3), matched by file stem, any of
    <youtube_id>, Y<youtube_id>, <audiocap_id>, <youtube_id>_<start_time>.

Splits train/validation/test; example id '<youtube_id>_<start_time>'; label common.NO_LABEL.
Clips without an audio file, and unusable audio, are skipped and listed in build_report.json.

    python -m data_pipelines.audiocaps SOURCE --out DATA_DIR
"""
from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

from data_pipelines import audio_folder, common

CSV_SPLITS = {'train.csv': 'train', 'val.csv': 'validation', 'test.csv': 'test'}
COLUMNS = ('audiocap_id', 'youtube_id', 'start_time', 'caption')


def _start(value: str) -> str:
    """'30.000' -> '30', '12.5' -> '12.5' (as in the example id)."""
    t = float(value)
    return str(int(t)) if t.is_integer() else repr(t)


def list_audiocaps(source: pathlib.Path):
    """(entries, skipped): one entry per clip with an audio file, in CSV order."""
    index = audio_folder.audio_index(source)
    entries, skipped, seen = [], [], {}
    for path in audio_folder.caption_csvs(source, CSV_SPLITS):
        split = CSV_SPLITS[path.name]
        clips: dict[str, dict] = {}
        for row in audio_folder.read_csv(path, COLUMNS):
            youtube_id = (row['youtube_id'] or '').strip()
            raw_start = (row['start_time'] or '').strip()
            try:
                start = _start(raw_start)
            except ValueError:
                raise ValueError(
                    f'{path}, row {row["_line"]}: bad start_time {raw_start!r}') from None
            if not youtube_id:
                raise ValueError(f'{path}, row {row["_line"]}: empty youtube_id')
            clip = clips.setdefault(f'{youtube_id}_{start}', dict(
                youtube_id=youtube_id, starts=[], audiocap_ids=[], captions=[],
                listed_at=f'{path}, row {row["_line"]}'))
            clip['starts'] += [raw_start, start, f'{float(raw_start):.3f}']
            clip['audiocap_ids'].append((row['audiocap_id'] or '').strip())
            clip['captions'].append(row['caption'] or '')
        for id_, clip in clips.items():
            if id_ in seen:
                skipped.append((id_, f'listed in {path.name} and already in {seen[id_]}'))
                continue
            seen[id_] = path.name
            yid = clip['youtube_id']
            stems = list(dict.fromkeys(
                [yid, f'Y{yid}', *filter(None, clip['audiocap_ids']),
                 *(f'{yid}_{s}' for s in clip['starts'])]))
            found = next((index[s] for s in stems if s in index), None)
            if found is None:
                skipped.append((id_, f'missing audio (looked for {", ".join(stems)})'))
                continue
            entries.append(audio_folder.Entry(
                id_, found, common.NO_LABEL, captions=audio_folder.unique(clip['captions']),
                split=split, listed_at=clip['listed_at']))
    if not entries:
        raise ValueError(
            f'no audio for any of the {len(skipped)} clips listed in {source}: name the files '
            '<youtube_id>, Y<youtube_id>, <audiocap_id> or <youtube_id>_<start_time> '
            f'({"/".join(common.AUDIO_SUFFIXES)}) anywhere under it'
        )
    return entries, skipped


class AudioCaps(audio_folder.AudioFolder, skip_registration=True):
    """AudioCaps captions + the user's audio files as a TFDS dataset (see the module docstring)."""

    name = 'audiocaps'  # TFDS would derive 'audio_caps' from the class name
    VERSION = tfds.core.Version('2.0.0')

    @classmethod
    def list_entries(cls, source):
        return list_audiocaps(source)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info(
            'AudioCaps: AudioSet clips with human-written captions (1 per train clip, '
            '5 per validation/test clip); audio from the user\'s folder.',
            homepage='https://audiocaps.github.io/',
            citation='Kim et al., AudioCaps: Generating Captions for Audios in The Wild, NAACL 2019.',
        )


def build(source: str, out: str, **kwargs) -> common.BuildReport:
    """Builds AudioCaps from `source` (CSVs + audio) into a TFDS dataset in DATA_DIR `out`
    (keyword arguments: see `audio_folder.build_corpus`)."""
    return audio_folder.build_corpus(AudioCaps, source, out, **kwargs)


def main(argv=None) -> None:
    audio_folder.corpus_main(build, 'folder holding train.csv/val.csv/test.csv and the audio', __doc__, argv)


if __name__ == '__main__':
    main()
