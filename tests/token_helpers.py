"""A synthetic token dataset (the layout `avpretrain data tokenize` writes) whose codes carry the label.

Every example has aligned code grids (audio 2T frames × 64, video T frames × 24×24) of random codes,
a share of which are replaced by its class's codes (audio code 10 + c, video code 100 + c), so
a classifier can learn the class from either modality. Speakers: spk00 … spkNN; the splits are
speaker-disjoint (the last speaker tests, the one before validates, the rest train), each speaker
has ``per_class`` examples of every class.
"""
from __future__ import annotations

import pathlib

import numpy as np

CLASSES = ("calm", "angry", "sad")


def write_token_dataset(out, *, speakers: int = 6, per_class: int = 2, classes=CLASSES, frames=(8, 16),
                        signal: float = 0.3, seed: int = 0, splits: dict | None = None,
                        empty_speaker: bool = False) -> pathlib.Path:
    """``splits``: split -> speaker names (default: the last speaker tests, the one before validates);
    ``empty_speaker``: the records of spk00 store an empty speaker."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter

    from avpretrain.data import tokenize

    rng = np.random.default_rng(seed)
    names = [f"spk{i:02d}" for i in range(speakers)]
    if splits is None:
        splits = {"train": names[:-2], "validation": [names[-2]], "test": [names[-1]]}
    features = tokenize._features(classes, ("audio", "video"))
    name = "tokens"
    version_dir = pathlib.Path(out) / name / "1.0.0"
    version_dir.mkdir(parents=True, exist_ok=True)
    template = tfds.core.ShardedFileTemplate(data_dir=version_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                                             dataset_name=name, filetype_suffix="array_record")
    infos = []
    for split, spks in splits.items():
        path = template.replace(split=split).sharded_filepath(shard_index=0, num_shards=1)
        writer = ArrayRecordWriter(str(path), "group_size:1")
        n = 0
        for spk in spks:
            for c in range(len(classes)):
                for k in range(per_class):
                    T = int(rng.integers(frames[0], frames[1] + 1))
                    audio = rng.integers(0, 256, (2 * T, 64))
                    video = rng.integers(0, 512, (T, 24, 24))
                    audio[rng.random(audio.shape) < signal] = 10 + c
                    video[rng.random(video.shape) < signal] = 100 + c
                    ex = {"id": f"{spk}-{classes[c]}-{k}", "label": c,
                          "speaker": "" if empty_speaker and spk == "spk00" else spk,
                          "audio_codes": audio.astype(np.int16), "video_codes": video.astype(np.int16)}
                    writer.write(features.serialize_example(ex))
                    n += 1
        writer.close()
        infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=pathlib.Path(str(path)).stat().st_size,
                                         filename_template=template.replace(split=split)))
    tfds.folder_dataset.write_metadata(data_dir=version_dir, features=features, split_infos=infos,
                                       filename_template=template, check_data=False,
                                       metadata=tfds.core.MetadataDict(sample_rate=16000))
    return pathlib.Path(out)
