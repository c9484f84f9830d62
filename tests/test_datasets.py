"""Dataset builders (demo corpus, audio folder) and the TF-free reader."""
import json
import pathlib

import numpy as np
import pytest
import soundfile as sf

from avpretrain.data import source
from data_pipelines import audio_folder, common, demo
from helpers import read_all

SR = 16000


def sine(seconds, sr, hz=440.0, amplitude=0.5):
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)


def peak_hz(x, sr):
    return np.argmax(np.abs(np.fft.rfft(x))) * sr / len(x)


# ----------------------------------------------------------------------------- demo

@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo')
    report = demo.build(str(out), num_clips=60, seed=3)
    return out, report


def test_demo_builds_three_splits_of_int16_clips(demo_dir):
    out, report = demo_dir
    meta = source.dataset_meta(out)
    assert meta.sample_rate == SR and meta.name == 'demo_sounds'
    assert len(meta.label_names) >= 10
    assert set(meta.num_examples) == set(common.SPLITS) and all(meta.num_examples.values())
    assert sum(meta.num_examples.values()) == 60 == report.num_built
    assert report.summary_lines()[-1] == 'built 60 examples, skipped 0'
    examples = read_all(out)
    assert len(examples) == 60 and 'demo-000007' in examples
    for ex in examples.values():
        assert ex['audio'].dtype == np.int16 and ex['audio'].ndim == 1
        assert 2.0 <= len(ex['audio']) / SR <= 4.0
        assert len(set(ex['captions'])) == 3 == len(ex['captions']) and ex['speaker'] == b''
    assert {ex['label'] for ex in examples.values()} == set(range(len(meta.label_names)))
    assert common.BuildReport.read(out / common.REPORT_NAME) == report
    assert json.loads((out / common.REPORT_NAME).read_text())['num_built'] == 60


def test_demo_is_deterministic(demo_dir, tmp_path):
    out, _ = demo_dir
    demo.build(str(tmp_path), num_clips=60, seed=3)
    first, second = read_all(out), read_all(tmp_path)
    for id_ in ('demo-000000', 'demo-000031', 'demo-000059'):
        np.testing.assert_array_equal(first[id_]['audio'], second[id_]['audio'])
        assert first[id_]['split'] == second[id_]['split']
    x, class_name, params = demo.generate_clip(31, 3, SR)
    np.testing.assert_array_equal(common.to_int16(x), first['demo-000031']['audio'])
    assert class_name == demo.CLASSES[31 % len(demo.CLASSES)]
    assert {'duration_seconds', 'loudness_db', 'snr_db'} <= set(params)
    captions = demo.caption_clip(class_name, params, demo.caption_rng(3, 31), 3)
    assert captions == first['demo-000031']['captions']
    assert not np.array_equal(demo.generate_clip(31, 4, SR)[0][:SR], x[:SR])


# ----------------------------------------------------------------------------- audio folder

def make_class_folders(root: pathlib.Path) -> dict[str, str]:
    """Good files per class in several formats and rates, and bad ones; returns bad -> reason."""
    for name in ('hum', 'hiss'):
        (root / name / 'nested').mkdir(parents=True)
        stereo = np.stack([sine(1.0, 8000), 0.5 * sine(1.0, 8000)], axis=1)
        sf.write(root / name / 'stereo8k.wav', stereo, 8000, subtype='PCM_16')
        sf.write(root / name / 'nested' / 'cd.flac', sine(1.0, 44100), 44100)
        sf.write(root / name / 'vorbis.ogg', sine(1.0, 22050), 22050)
        sf.write(root / name / 'plain.wav', sine(1.5, SR), SR)
    rng = np.random.default_rng(0)
    (root / 'hum' / 'corrupt.wav').write_bytes(rng.bytes(2000))
    (root / 'hum' / 'empty.wav').write_bytes(b'')
    sf.write(root / 'hiss' / 'short.wav', sine(0.2, SR), SR)
    sf.write(root / 'hiss' / 'nan.wav', np.full(SR, np.nan, np.float32), SR, subtype='FLOAT')
    sf.write(root / 'hiss' / 'zeros.wav', np.zeros(SR), SR)
    return {
        'hum/corrupt.wav': 'unreadable', 'hum/empty.wav': 'empty', 'hiss/short.wav': 'too short',
        'hiss/nan.wav': 'non-finite', 'hiss/zeros.wav': 'silent',
    }


def test_audio_folder_class_layout_resamples_and_reports_bad_files(tmp_path, capsys):
    src, out = tmp_path / 'src', tmp_path / 'data'
    bad = make_class_folders(src)
    audio_folder.main([str(src), '--out', str(out)])
    printed = capsys.readouterr().out
    report = common.BuildReport.read(out / common.REPORT_NAME)

    skipped = {pathlib.Path(p).relative_to(src).as_posix(): reason for p, reason in report.skipped}
    assert skipped.keys() == bad.keys()
    for rel, reason in bad.items():
        assert skipped[rel].startswith(reason), (rel, skipped[rel])
    assert 'Format not recognised' in skipped['hum/corrupt.wav']  # the decoder's own message
    assert report.summary_lines()[-1] == 'built 8 examples, skipped 5'
    assert printed.rstrip().endswith('built 8 examples, skipped 5')
    assert 'Format not recognised' in printed
    assert all(report.counts[s] for s in common.SPLITS)

    meta = source.dataset_meta(out)
    assert meta.label_names == ['hiss', 'hum'] and meta.sample_rate == SR
    examples = read_all(out)
    assert sorted(examples) == sorted(
        f'{c}/{f}' for c in ('hum', 'hiss')
        for f in ('stereo8k.wav', 'nested/cd.flac', 'vorbis.ogg', 'plain.wav'))
    for id_, ex in examples.items():
        audio = ex['audio']
        assert audio.dtype == np.int16 and audio.ndim == 1
        assert abs(len(audio) - (1.5 if 'plain' in id_ else 1.0) * SR) <= 1
        assert abs(peak_hz(audio.astype(np.float32), SR) - 440) < 3
        assert meta.label_names[ex['label']] == id_.split('/')[0]
    # stereo (1.0, 0.5) x 0.5-amplitude sine, averaged to mono: peak 0.375 at 16 kHz.
    assert abs(np.abs(examples['hum/stereo8k.wav']['audio']).max() / 32767 - 0.375) < 0.01


def test_audio_folder_refuses_a_second_dataset_in_the_same_dir(demo_dir, tmp_path):
    out, _ = demo_dir
    (tmp_path / 'a').mkdir()
    sf.write(tmp_path / 'a' / 'x.wav', sine(1.0, SR), SR)
    with pytest.raises(ValueError, match='already holds another dataset'):
        audio_folder.build(str(tmp_path), str(out))


def write_manifest(root: pathlib.Path, rows: list[str], header='path,label,speaker,caption,split'):
    (root / 'manifest.csv').write_text('\n'.join([header, *rows]) + '\n')


def test_audio_folder_manifest_layout(tmp_path):
    src, out = tmp_path / 'src', tmp_path / 'data'
    (src / 'clips').mkdir(parents=True)
    for i in range(5):
        sf.write(src / 'clips' / f'{i}.wav', sine(1.0, SR, hz=300 + 100 * i), SR)
    write_manifest(src, [
        'clips/0.wav,yes,spk1,a person says yes,train',
        'clips/1.wav,no,spk2,"a person says no, loudly",train',
        'clips/2.wav,yes,spk1,,val',
        'clips/3.wav,no,spk3,,test',
        'clips/4.wav,no,spk3,,dev',
        'clips/missing.wav,yes,spk1,,train',
    ])
    report = audio_folder.build(str(src), str(out))
    assert report.skipped == [(str(src / 'clips' / 'missing.wav'), 'missing')]
    assert report.counts == {'train': 2, 'validation': 2, 'test': 1}
    assert report.summary_lines()[-1] == 'built 5 examples, skipped 1'
    examples = read_all(out)
    assert examples['clips/1.wav']['captions'] == ['a person says no, loudly']
    assert examples['clips/1.wav']['speaker'] == b'spk2'
    assert examples['clips/4.wav']['split'] == 'validation'
    assert source.dataset_meta(out).label_names == ['no', 'yes']


def test_audio_folder_manifest_errors_name_the_problem(tmp_path):
    sf.write(tmp_path / 'a.wav', sine(1.0, SR), SR)
    write_manifest(tmp_path, ['a.wav,yes,,,train', 'a.wav,yes,,,holdout'])
    with pytest.raises(ValueError, match=r"manifest.csv, row 3: unknown split value 'holdout'"):
        audio_folder.build(str(tmp_path), str(tmp_path / 'data'))
    write_manifest(tmp_path, ['a.wav,yes'], header='file,label')
    with pytest.raises(ValueError, match=r"manifest.csv: missing required column\(s\) \['path'\]"):
        audio_folder.build(str(tmp_path), str(tmp_path / 'data'))


def test_mp3_decodes(tmp_path):
    if 'MP3' not in sf.available_formats():
        pytest.skip('this libsndfile cannot write MP3, so there is no MP3 file to test with')
    sf.write(tmp_path / 'a.mp3', sine(1.0, 44100), 44100)
    x, reason, warnings = common.read_checked(tmp_path / 'a.mp3', SR, min_seconds=0.5)
    assert reason is None and warnings == [] and x.dtype == np.float32
    assert abs(len(x) - SR) < 0.1 * SR  # MP3 encoders pad a little
    assert abs(peak_hz(x, SR) - 440) < 3


def test_stratified_split_is_seeded_stable_and_covers_every_split():
    labels = ['a'] * 50 + ['b'] * 10 + ['c'] * 3
    splits = common.stratified_split(labels, seed=0, val_fraction=0.1, test_fraction=0.1)
    assert splits == common.stratified_split(labels, seed=0, val_fraction=0.1, test_fraction=0.1)
    assert splits != common.stratified_split(labels, seed=1, val_fraction=0.1, test_fraction=0.1)
    for label, n_each in (('a', 5), ('b', 1), ('c', 1)):
        mine = [s for s, l in zip(splits, labels) if l == label]
        assert mine.count('validation') == mine.count('test') == n_each


# ----------------------------------------------------------------------------- reader

def test_find_dataset_dir_errors_are_clear(tmp_path, demo_dir):
    with pytest.raises(FileNotFoundError, match='does not exist: .*nowhere'):
        source.find_dataset_dir(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match=f'no prepared dataset .* under {tmp_path}'):
        source.find_dataset_dir(tmp_path)
    for name in ('one/1.0.0', 'two/1.0.0'):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / 'dataset_info.json').write_text('{}')
    with pytest.raises(ValueError, match='holds 2 datasets.*one/1.0.0.*two/1.0.0'):
        source.find_dataset_dir(tmp_path)
    out, _ = demo_dir
    dataset_dir = source.find_dataset_dir(out)
    assert dataset_dir == out / 'demo_sounds' / '2.0.0'
    assert source.find_dataset_dir(dataset_dir) == dataset_dir
    with pytest.raises(ValueError, match="split 'dev' not in"):
        source.data_source(out, 'dev')


def test_grain_worker_processes_give_the_in_process_batches(data_dir):
    """data.num_workers > 0 (grain's mp_prefetch) starts, and hands out the batches of the in-process pipeline
    (grain 0.2.18 raised UnparsedFlagAccessError outside absl.app: google/grain#1355)."""
    from avpretrain.data import pipeline
    from helpers import tiny_config

    with_workers = iter(pipeline.train_dataset(tiny_config(data_dir, **{"data.num_workers": 1})))
    in_process = iter(pipeline.train_dataset(tiny_config(data_dir)))
    for _ in range(2):
        a, b = next(with_workers), next(in_process)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
