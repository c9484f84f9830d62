"""grain input pipelines: per-process shard → seeded shuffle → random crop/pad → batch → global jax.Array.

Training iterators are infinite and checkpointable (``get_state``/``set_state`` via Orbax). The
evaluation pipeline visits every example of a split exactly once, each clip at its own length.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from avpretrain import audio, metrics as metrics_lib

# grain and TFDS (``source``) are imported where datasets are built: the step helpers here
# (``clip_samples``, ``process_batch_size``, ``to_global``) serve `avpretrain bench` without them.

INT16_SCALE = 1.0 / 32768.0


def clip_samples(config) -> int:
    """Samples of one training crop: exactly ``model.input_frames`` log-mel frames."""
    return audio.num_samples_for_frames(config.model.input_frames)


def _crop_or_pad(wave: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """A random window of ``length`` samples (start 0 without rng); shorter clips are zero-padded."""
    if len(wave) > length:
        start = int(rng.integers(0, len(wave) - length + 1)) if rng is not None else 0
        wave = wave[start:start + length]
    out = np.zeros(length, np.float32)
    out[:len(wave)] = wave.astype(np.float32) * INT16_SCALE
    return out


@dataclasses.dataclass(frozen=True)
class RandomCrop:
    """A random crop of ``length`` samples; with stored captions, also one caption embedding drawn
    at random (the per-element rng is seeded by grain from the seed and the position in the
    repeated stream: deterministic by seed, a new draw each epoch)."""

    length: int

    def __call__(self, element, rng: np.random.Generator):  # grain's random_map callable
        out = {"audio": _crop_or_pad(element["audio"], self.length, rng)}
        if "caption_embeddings" in element:
            captions = element["caption_embeddings"]
            out["text_emb"] = np.asarray(captions[rng.integers(len(captions))])
        return out


class CaptionedSource:
    """The records of a split that have captions, each with its stored caption embeddings.

    Records without captions are left out (and counted in ``num_without_captions``). Each record's
    id is checked against the store, so a dataset rebuilt after embedding fails loudly.
    """

    def __init__(self, src, store):
        if len(store) != len(src):
            raise ValueError(f"caption embeddings of {store.model!r} list {len(store)} records of split "
                             f"{store.split!r} but the dataset has {len(src)}: the dataset changed since "
                             "`avpretrain data embed-captions`; run it again")
        self.src, self.store = src, store
        self.index = np.flatnonzero(np.diff(store.offsets) > 0)
        self.num_without_captions = len(src) - len(self.index)
        if not len(self.index):
            raise ValueError(f"split {store.split!r} has no captioned records")

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        record = int(self.index[i])
        element = self.src[record]
        if element["id"].decode() != self.store.ids[record]:
            raise ValueError(f"record {record} of split {self.store.split!r} is {element['id'].decode()!r} but the "
                             f"caption embeddings expect {self.store.ids[record]!r}: run embed-captions again")
        return {"audio": element["audio"], "caption_embeddings": self.store.for_record(record)}


def training_source(config):
    """The training split as a random-access source (``CaptionedSource`` with data.use_captions)."""
    from avpretrain.data import source as source_lib

    src = source_lib.data_source(config.data.dir, config.data.split)
    if not config.data.use_captions:
        return src
    from avpretrain.data import captions

    store = captions.CaptionEmbeddings.open(config.data.dir, config.data.split, config.data.text_model or None)
    captioned = CaptionedSource(src, store)
    if captioned.num_without_captions:
        metrics_lib.log(f"{config.data.dir}: {captioned.num_without_captions} of {len(src)} {config.data.split} "
                        "records have no caption and are left out of caption-conditioned training")
    return captioned


def process_batch_size(global_batch: int) -> int:
    if global_batch % jax.process_count():
        raise ValueError(f"batch_size={global_batch} is not divisible by {jax.process_count()} processes")
    return global_batch // jax.process_count()


def train_dataset(config, *, seed: int | None = None):
    """This process's infinite, shuffled stream (a ``grain.IterDataset``) of cropped-and-batched training examples."""
    import grain

    seed = config.seed if seed is None else seed
    ds = grain.MapDataset.source(training_source(config))
    if len(ds) < jax.process_count():
        raise ValueError(f"{config.data.dir}: split {config.data.split!r} has {len(ds)} examples "
                         f"for {jax.process_count()} processes")
    ds = ds[jax.process_index()::jax.process_count()]
    ds = ds.shuffle(seed=seed).repeat(None).random_map(RandomCrop(clip_samples(config)), seed=seed)
    # Threads read and crop single clips ahead of the consumer; the buffer counts clips, not
    # batches (grain's default of 500 *batches* held gigabytes per host at pretraining batch sizes).
    batch = process_batch_size(config.batch_size)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.data.read_threads,
                                              prefetch_buffer_size=config.data.prefetch_batches * batch))
    ds = ds.batch(batch, drop_remainder=True)
    if config.data.num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
    return ds


def to_global(batch: dict, sharding) -> dict:
    """Per-process numpy batch → global jax.Arrays sharded over the data-parallel axes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def eval_batches(data_dir: str, split: str, *, batch_size: int, process_index: int = 0, process_count: int = 1):
    """Every example of ``split`` once, in order, ``batch_size`` examples at a time (the last batch
    shorter), each example read once.

    Each batch: ``audio`` (a list of float32 [samples] arrays, every clip at its own length: nothing is
    padded), ``label`` [B] int32, and lists ``record`` (index in the split), ``id`` (str) and
    ``captions`` (list of str).
    """
    from avpretrain.data import source as source_lib

    src = source_lib.data_source(data_dir, split)
    indices = np.arange(len(src))[process_index::process_count]
    for start in range(0, len(indices), batch_size):
        batch = {"audio": [], "label": [], "record": [], "id": [], "captions": []}
        for i in indices[start:start + batch_size]:
            example = src[int(i)]
            batch["audio"].append(example["audio"].astype(np.float32) * INT16_SCALE)
            batch["label"].append(int(example["label"]))
            batch["record"].append(int(i))
            batch["id"].append(example["id"].decode())
            batch["captions"].append([c.decode() for c in example.get("captions", [])])
        yield batch | {"label": np.asarray(batch["label"], np.int32)}
