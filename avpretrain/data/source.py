"""Reading a dataset written by `data_pipelines` (TFDS ArrayRecord) without TensorFlow.

DATA_DIR holds one prepared dataset: DATA_DIR/<name>/<version>/dataset_info.json + files.
Elements are dicts of numpy values: 'audio' int16 [T], 'label' int, 'id' and 'speaker' as bytes,
'captions' a list of bytes (possibly empty). A multi-label dataset (AudioSet) stores 'label' as a
``Sequence(ClassLabel)``, read back as the list of the clip's positive class indices (int64, possibly
empty). Audiovisual datasets add 'video', a list of JPEG bytes (RGB face crops, FACE_SIZE x
FACE_SIZE at VIDEO_FPS: frame i covers audio samples [i·SAMPLES_PER_FRAME, (i+1)·SAMPLES_PER_FRAME)),
and 'face_boxes' float32 [frames, 4].
"""
from __future__ import annotations

import dataclasses
import pathlib

import tensorflow_datasets as tfds

from avpretrain.data.frames import (  # noqa: F401  (the audiovisual contract, re-exported)
    AV_SAMPLE_RATE, FACE_SIZE, JPEG_QUALITY, SAMPLES_PER_FRAME, VIDEO_FPS, decode_frame, encode_frame)


def find_dataset_dir(data_dir: str | pathlib.Path) -> pathlib.Path:
    """The directory holding the single dataset_info.json at or under `data_dir`."""
    if not str(data_dir):
        raise ValueError('no dataset directory given (config.data.dir is empty): build one with '
                         '`avpretrain data build demo|audio_folder --out DIR` and pass --config.data.dir=DIR')
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f'dataset directory does not exist: {data_dir}')
    if (data_dir / 'dataset_info.json').is_file():
        return data_dir
    found = sorted(
        p.parent for p in data_dir.rglob('dataset_info.json')
        # Skip unfinished builds: TFDS's `incomplete.*` dirs, the builders' `.build-*` scratch.
        if not any(part.startswith(('incomplete.', '.')) for part in p.relative_to(data_dir).parts)
    )
    if not found:
        raise FileNotFoundError(
            f'no prepared dataset (dataset_info.json) under {data_dir}; build one with '
            '`avpretrain data build demo|audio_folder --out DIR`'
        )
    if len(found) > 1:
        raise ValueError(
            f'{data_dir} holds {len(found)} datasets, point at one of them: '
            + ', '.join(map(str, found))
        )
    return found[0]


def open_builder(data_dir: str | pathlib.Path) -> tfds.core.DatasetBuilder:
    return tfds.builder_from_directory(str(find_dataset_dir(data_dir)))


def data_source(data_dir: str | pathlib.Path, split: str):
    """Random-access source (`len`, `__getitem__`) over one split, e.g. for grain."""
    builder = open_builder(data_dir)
    # 'a+b' reads splits one after the other (e.g. AudioSet's train+unbalanced_train: AS-2M)
    if missing := [s for s in split.split('+') if s not in builder.info.splits]:
        raise ValueError(f'split {missing[0]!r} not in {list(builder.info.splits)} ({builder.data_dir})')
    return builder.as_data_source(split=split)


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    name: str
    sample_rate: int
    label_names: list[str]
    num_examples: dict[str, int]
    multi_label: bool  # 'label' is a list of positive classes per clip, not one class index


def is_multi_label(features) -> bool:
    """Whether a dataset's ``features`` store ``label`` as a list of classes (``Sequence(ClassLabel)``)."""
    return 'label' in features and isinstance(features['label'], tfds.features.Sequence)


def dataset_meta(data_dir: str | pathlib.Path) -> DatasetMeta:
    info = open_builder(data_dir).info
    multi_label = is_multi_label(info.features)
    labels = info.features['label'].feature if multi_label else info.features['label']
    return DatasetMeta(
        name=info.name,
        sample_rate=int(info.metadata['sample_rate']),
        label_names=list(labels.names),
        num_examples={name: split.num_examples for name, split in info.splits.items()},
        multi_label=multi_label,
    )


def require_single_label(data_dir: str | pathlib.Path, what: str) -> None:
    """Refuses a multi-label dataset for ``what``, a consumer that reads one class index per clip."""
    if is_multi_label(open_builder(data_dir).info.features):
        raise ValueError(f'{data_dir} is a multi-label dataset (a list of classes per clip); {what}: single-label '
                         'datasets only (one class per clip). Multi-label datasets are evaluated by `avpretrain eval '
                         'linear-probe` and `avpretrain eval zero-shot` (mAP)')
