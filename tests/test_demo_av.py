"""The procedural audiovisual demo corpus (data_pipelines/demo_av.py) and `avpretrain data show`."""
from __future__ import annotations

import itertools

import cv2
import matplotlib.image
import numpy as np
import pytest
import tensorflow_datasets as tfds

from avpretrain import cli
from avpretrain.data import show, source
from data_pipelines import common, demo, demo_av


def _examples(data_dir) -> dict[str, list[dict]]:
    return {split: [ds[i] for i in range(len(ds))] for split in source.dataset_meta(data_dir).num_examples
            for ds in [source.data_source(data_dir, split)]}


def _gray(frames, encoded: bool = True) -> np.ndarray:
    """Grayscale float [T, H, W] of JPEG-encoded (or RGB) frames."""
    return np.stack([cv2.cvtColor(source.decode_frame(f) if encoded else f, cv2.COLOR_RGB2GRAY)
                     for f in frames]).astype(float)


@pytest.fixture(scope='module')
def av_dir(av_data_dir):  # the session's 48-clip build (conftest)
    return av_data_dir


@pytest.fixture(scope='module')
def av_examples(av_dir):
    return _examples(av_dir)


def test_splits_are_speaker_disjoint_with_all_emotions(av_dir, av_examples):
    speakers = {split: {ex['speaker'].decode() for ex in exs} for split, exs in av_examples.items()}
    expected = {split: list(v) for split, v in demo_av.SPLIT_SPEAKERS.items()}
    assert {split: sorted(v) for split, v in speakers.items()} == expected
    assert not any(a & b for a, b in itertools.combinations(speakers.values(), 2))
    meta = source.dataset_meta(av_dir)
    assert meta.label_names == list(demo_av.EMOTIONS) and len(meta.label_names) >= 6
    labels = {int(ex['label']) for exs in av_examples.values() for ex in exs}
    assert labels == set(range(len(demo_av.EMOTIONS)))
    assert sum(meta.num_examples.values()) == 48
    info = source.open_builder(av_dir).info.metadata
    assert [info[k] for k in ('sample_rate', 'fps', 'frame_size', 'modalities')] == [16000, 25, 96,
                                                                                     'audio,video']
    assert info['speakers'] == expected


def test_examples_follow_the_av_contract(av_examples):
    for ex in itertools.chain(*av_examples.values()):
        frames = len(ex['video'])
        assert len(ex['audio']) == frames * common.SAMPLES_PER_FRAME
        assert 50 <= frames < 75  # 2-3 s at 25 fps
        assert ex['face_boxes'].shape == (frames, 4)
        assert source.decode_frame(ex['video'][0]).shape == (96, 96, 3)
        assert [c.decode() for c in ex['captions']] in [[s] for s in demo_av.SENTENCES]
        speaker, emotion = demo_av.clip_speaker_emotion(int(ex['id'].decode().split('-')[1]))
        assert (ex['speaker'].decode(), demo_av.EMOTIONS[int(ex['label'])]) == (speaker, emotion)


def test_same_seed_same_bytes_whatever_came_before(tmp_path):
    """Two builds in one process (espeak-ng's state would carry over between them), and the clips
    rendered again in 2 worker processes in another order, are byte-identical; another seed differs."""
    builds = []
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        demo_av.build(str(tmp_path / name), num_clips=4, seed=seed)
        builds.append({ex['id']: ex for exs in _examples(tmp_path / name).values() for ex in exs})

    def fingerprint(ex):
        return ex['audio'].tobytes(), tuple(ex['video']), ex['face_boxes'].tobytes()

    first, again, other_seed = ({k: fingerprint(v) for k, v in b.items()} for b in builds)
    assert first == again
    assert all(first[k] != other_seed[k] for k in first)
    for ex in demo_av.render([3, 1], seed=3, workers=2):
        assert fingerprint(ex) == first[ex['id'].encode()]


def test_mouth_opens_with_the_voice(av_examples):
    """Per frame, the darkness of the mouth region follows the level of the clip's own audio, and
    not that of another clip."""
    def level_db(audio):  # per frame of 640 samples
        x = audio[:len(audio) // 640 * 640].reshape(-1, 640) / 32768
        return 20 * np.log10(np.sqrt(np.mean(x ** 2, axis=1)) + 1e-5)

    own, other = [], []
    clips = list(itertools.chain(*av_examples.values()))
    for ex, other_ex in zip(clips, clips[1:] + clips[:1]):
        darkness = 255 - _gray(ex['video'])[:, 60:86, 32:64].mean(axis=(1, 2))
        own.append(np.corrcoef(level_db(ex['audio']), darkness)[0, 1])
        n = min(len(darkness), len(other_ex['video']))
        other.append(np.corrcoef(level_db(other_ex['audio'])[:n], darkness[:n])[0, 1])
    assert np.median(own) > 0.8 and np.mean(np.array(own) > 0.5) > 0.9, np.round(own, 2)
    assert np.median(np.abs(other)) < 0.4, np.round(other, 2)


def test_emotions_change_the_expression():
    """Drawn without motion, nuisance or mouth opening, every pair of emotions of every speaker
    differs in the brow/eye band or the mouth band; happy mouth corners are higher than sad ones."""
    def corner_drop(gray):  # rows of the mouth's outermost columns minus its centre's (> 0: corners down)
        band = gray[60:82, 30:66]  # inside the head
        cols = np.flatnonzero(band.min(0) < 0.8 * np.median(band))  # darker than the skin: lips
        rows = band.argmin(0)
        return rows[cols[[0, 1, -2, -1]]].mean() - rows[16:21].mean()

    for name, profile in demo_av.SPEAKER_PROFILES.items():
        faces = {e: _gray([demo_av.draw_face(profile, demo_av.expression(e), 0, 0, 0)], encoded=False)[0]
                 for e in demo_av.EMOTIONS}
        for a, b in itertools.combinations(demo_av.EMOTIONS, 2):
            diff = np.abs(faces[a] - faces[b])
            assert max(diff[20:50].mean(), diff[60:86].mean()) > 0.5, (name, a, b)
        assert corner_drop(faces['happy']) < corner_drop(faces['sad']) - 1.5, name


def _coloured(rgb) -> float:
    """Share of pixels in colour (log-mels and faces; the empty panels, text and axes are grey)."""
    return float(np.mean(rgb.std(axis=2) > 0.05))


def _check_png(path, rows: int, min_coloured: float = 0.2) -> np.ndarray:
    """The sheet's RGB, checked: 1600 px wide, 1.9 in (190 px) per row plus the title, not blank."""
    rgb = matplotlib.image.imread(path)[..., :3]
    assert rgb.shape[:2] == (round((1.9 * rows + 0.8) * 100), 1600)
    assert rgb.std() > 0.1 and _coloured(rgb) > min_coloured
    return rgb


def test_show_av_and_cli(av_dir, tmp_path, capsys):
    rgb = _check_png(show.contact_sheet(av_dir, tmp_path / 'sheet.png', n=4, seed=1), rows=4)
    assert _coloured(rgb[60:, :800]) > 0.2  # the face strips
    sheet = tmp_path / 'c.png'
    assert cli.main(['data', 'show', str(av_dir), '--split', 'test', '--n', '2', '--out', str(sheet)]) == 0
    _check_png(sheet, rows=2)
    assert cli.main(['data', 'show', str(av_dir), '--split', 'nope', '--out', str(tmp_path / 'd.png')]) == 2
    err = capsys.readouterr().err
    assert "unknown split 'nope'" in err and 'train, validation, test' in err
    assert not (tmp_path / 'd.png').exists()


def test_show_audio_only_dataset_shows_all_when_n_is_larger(tmp_path):
    demo.build(str(tmp_path / 'audio'), num_clips=24)  # 24 clips, all in 'train'
    path = show.contact_sheet(tmp_path / 'audio', tmp_path / 'audio.png', n=30)
    _check_png(path, rows=24)


class MixedAV(common.AudioBuilder, skip_registration=True):
    """An audiovisual dataset holding one video-only and one audio-only example."""

    VERSION = tfds.core.Version('1.0.0')

    def __init__(self, **kwargs):
        self.skipped = []
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=common.av_features(demo_av.EMOTIONS),
                                     metadata=tfds.core.MetadataDict(sample_rate=16000))

    def _split_generators(self, dl_manager):
        return {'test': self._generate_examples()}

    def _generate_examples(self):
        clip = demo_av.generate_clip(0, 0)
        jpegs = [common.encode_frame(f) for f in clip.frames]
        yield 'v', common.av_example('video-only', np.zeros(0, np.int16), jpegs, clip.face_boxes, 'happy')
        yield 'a', common.av_example('audio-only', common.to_int16(clip.audio), [], np.zeros((0, 4)), 'sad')


def test_show_video_only_and_audio_only_examples(tmp_path):
    """Each row has one empty panel ('no audio' / 'no video'), on different sides."""
    common.prepare_dataset(MixedAV, tmp_path / 'mixed')
    path = show.contact_sheet(tmp_path / 'mixed', tmp_path / 'mixed.png')  # no train split: the first
    body = _check_png(path, rows=2, min_coloured=0.05)[60:]  # below the title
    half = len(body) // 2
    coloured = np.array([[_coloured(row[:, :800]), _coloured(row[:, 800:])]
                         for row in (body[:half], body[half:])])
    assert sorted(coloured.argmin(axis=1)) == [0, 1], coloured
    assert (coloured.min(axis=1) < 0.05).all() and (coloured.max(axis=1) > 0.2).all(), coloured
