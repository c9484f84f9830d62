"""Dataset builds as Apache Beam pipelines (DirectRunner) give the plain build's records and report;
the AudioSet builder (multi-label, its own splits) from a replica of a download."""
import json
import os
import pathlib

import numpy as np
import pytest
import soundfile as sf

from avpretrain import cli
from avpretrain.data import pipeline, source
from data_pipelines import audio_folder, audioset, av_folder, common
from helpers import tiny_config

SR = 16000
MULTI = 'runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=2'


def wav(path: pathlib.Path, seconds: float = 1.0, amplitude: float = 0.5, freq: float = 440.0, subtype=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)
    sf.write(path, x.astype(np.float32), SR, subtype=subtype)
    return path


def records(data_dir) -> dict[str, list[dict]]:
    """Every split's examples, in stored order."""
    meta = source.dataset_meta(data_dir)
    out = {}
    for split in meta.num_examples:
        src = source.data_source(data_dir, split)
        out[split] = [src[i] for i in range(len(src))]
    return out


def assert_same_records(a, b):
    assert a.keys() == b.keys()
    for split in a:
        assert [r['id'] for r in a[split]] == [r['id'] for r in b[split]], split  # same order too
        for x, y in zip(a[split], b[split]):
            assert x.keys() == y.keys()
            for key in x:
                np.testing.assert_array_equal(np.asarray(x[key], dtype=object if key == 'video' else None),
                                              np.asarray(y[key], dtype=object if key == 'video' else None))


def assert_same_report(plain: common.BuildReport, beam: common.BuildReport):
    assert plain.counts == beam.counts
    assert sorted(plain.skipped) == sorted(beam.skipped)
    assert sorted(plain.warnings) == sorted(beam.warnings)


@pytest.fixture(scope='module')
def audio_source(tmp_path_factory):
    """Three classes of tones, plus what a build must skip or warn about."""
    root = tmp_path_factory.mktemp('beam_src')
    for c, freq in enumerate((300, 500, 700)):
        for i in range(6):
            wav(root / f'class{c}' / f'{i}.wav', seconds=0.6 + 0.1 * i, freq=freq + 10 * i)
    (root / 'class0' / 'empty.wav').write_bytes(b'')
    (root / 'class1' / 'junk.wav').write_bytes(b'RIFF not a wav')
    wav(root / 'class2' / 'short.wav', seconds=0.1)
    wav(root / 'class2' / 'loud.wav', amplitude=1.5, subtype='FLOAT')  # kept, with a warning
    return root


def test_beam_build_multiprocess_equals_plain_build(audio_source, tmp_path):
    plain = audio_folder.build(str(audio_source), str(tmp_path / 'plain'))
    beam = audio_folder.build(str(audio_source), str(tmp_path / 'beam'), beam_options=MULTI)
    assert_same_report(plain, beam)
    assert len(beam.skipped) == 3 and [w[0] for w in beam.warnings] == [str(audio_source / 'class2' / 'loud.wav')]
    assert_same_records(records(tmp_path / 'plain'), records(tmp_path / 'beam'))
    # the report on disk, and no scratch space left behind
    on_disk = common.BuildReport.read(tmp_path / 'beam' / common.REPORT_NAME)
    assert on_disk.counts == beam.counts and len(on_disk.skipped) == 3
    assert not [p for p in (tmp_path / 'beam').iterdir() if p.name.startswith('.build-')]


def test_beam_build_with_every_file_skipped_reports_them_like_the_plain_build(tmp_path, capsys):
    src = tmp_path / 'junk'
    (src / 'a').mkdir(parents=True)
    (src / 'a' / 'empty.wav').write_bytes(b'')
    wav(src / 'a' / 'short.wav', seconds=0.1)
    assert cli.main(['data', 'build', 'audio_folder', '--source', str(src), '--out', str(tmp_path / 'out'),
                     '--beam']) == 2
    captured = capsys.readouterr()
    assert 'error: no usable audio in' in captured.err and 'all 2 files skipped' in captured.err
    assert [line.split(':')[0] for line in captured.out.splitlines() if line.startswith('skipped')] == [
        f'skipped {src / "a" / name}' for name in ('empty.wav', 'short.wav')]
    assert json.loads((tmp_path / 'out' / common.REPORT_NAME).read_text())['num_built'] == 0


def test_beam_av_folder_equals_plain_build(tmp_path):
    from av_helpers import write_video

    src = tmp_path / 'videos'
    for i in range(2):
        write_video(src / 'talk' / f'{i}.mp4', seconds=0.8, seed=i)
    write_video(src / 'talk' / 'boxes.mp4', seconds=0.8, face=False)  # no face: skipped
    (src / 'talk' / 'broken.mp4').write_bytes(b'\x00' * 64)
    plain = av_folder.build(str(src), str(tmp_path / 'plain'), val_fraction=0, test_fraction=0)
    beam = av_folder.build(str(src), str(tmp_path / 'beam'), val_fraction=0, test_fraction=0, beam_options='')
    assert_same_report(plain, beam)
    assert beam.counts['train'] == 2 and len(beam.skipped) == 2
    assert_same_records(records(tmp_path / 'plain'), records(tmp_path / 'beam'))


def test_beam_options_are_checked_before_anything_is_read(tmp_path, capsys):
    src = tmp_path / 'src'
    wav(src / 'a' / '0.wav')
    out = tmp_path / 'out'
    for options, message in (('direct_num_worker=2', "unknown Beam option 'direct_num_worker' (did you mean "
                                                     "direct_num_workers"),
                             ('runner', "'runner' is not key=value"),
                             ('direct_num_workers=two', 'a value Beam cannot parse')):
        assert cli.main(['data', 'build', 'audio_folder', '--source', str(src), '--out', str(out),
                         '--beam-options', options]) == 2
        err = capsys.readouterr().err
        assert err.startswith('error: --beam-options') and message in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    assert cli.main(['data', 'build', 'demo', '--out', str(out), '--beam']) == 2
    assert 'generated in process' in capsys.readouterr().err


def test_beam_option_values_may_hold_commas():
    options = common.beam_pipeline_options('runner=DirectRunner, experiments=a,b , direct_num_workers=3')
    given = options.get_all_options(drop_default=True)
    assert {k: given[k] for k in ('runner', 'experiments', 'direct_num_workers')} == {
        'runner': 'DirectRunner', 'experiments': ['a', 'b'], 'direct_num_workers': 3}  # Beam splits a list value
    assert given['default_sdk_harness_log_level'] == 'WARNING'  # ours, unless given


# ----------------------------------------------------------------------------- AudioSet

CLASSES = [('/m/09x0r', 'Speech'), ('/m/04rlf', 'Music'), ('/m/0jbk', 'Animal'), ('/m/05tny_', 'Bark')]


def audioset_replica(root: pathlib.Path) -> pathlib.Path:
    """class_labels_indices.csv, the three segments CSVs (Google's layout) and some of the audio."""
    root.mkdir(parents=True)
    (root / 'class_labels_indices.csv').write_text(
        'index,mid,display_name\n' + ''.join(f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(CLASSES)))
    head = ('# Segments csv created Sun Mar  5 10:54:31 2017\n'
            '# num_ytids=3, num_segs=3, num_unique_labels=4, num_positive_labels=5\n'
            '# YTID, start_seconds, end_seconds, positive_labels\n')
    (root / 'balanced_train_segments.csv').write_text(head + (
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/04rlf"\n'
        'aaaaaaaaaaa, 0.000, 10.000, "/m/0jbk,/m/05tny_"\n'
        'bbbbbbbbbbb, 10.000, 20.000, "/m/04rlf"\n'
        'gone0000000, 0.000, 10.000, "/m/04rlf"\n'))  # taken down: no audio
    (root / 'eval_segments.csv').write_text(head + (
        'ccccccccccc, 0.000, 10.000, "/m/09x0r"\n'
        'ddddddddddd, 5.000, 15.000, "/m/0jbk,/m/05tny_,/m/09x0r"\n'
        'aaaaaaaaaaa, 0.000, 10.000, "/m/0jbk"\n'))  # listed twice
    (root / 'unbalanced_train_segments.csv').write_text(head + 'eeeeeeeeeee, 0.000, 10.000, "/m/09x0r"\n')
    for i, name in enumerate(['--PJHxphWEs.wav', 'aaaaaaaaaaa.flac', 'Ybbbbbbbbbbb.wav', 'ccccccccccc.wav',
                              'ddddddddddd_5.wav', 'eeeeeeeeeee_0.000.wav']):
        wav(root / 'audio' / name, seconds=1.0, freq=200 + 100 * i)
    (root / 'audio' / 'ccccccccccc.wav').write_bytes(b'')  # present but empty: skipped as unusable
    # names tried: <YTID>, Y<YTID>, <YTID>_<start as written>, <YTID>_<whole seconds>
    return root


def test_audioset_replica_builds_multilabel_with_its_own_splits_plain_and_beam(tmp_path):
    src = audioset_replica(tmp_path / 'audioset')
    plain = audioset.build(str(src), str(tmp_path / 'plain'))
    beam = audioset.build(str(src), str(tmp_path / 'beam'), beam_options='')
    assert_same_report(plain, beam)
    assert plain.counts == {'train': 3, 'validation': 0, 'test': 1, 'unbalanced_train': 1}
    reasons = dict(plain.skipped)
    assert reasons['gone0000000'].startswith('missing: no audio file named gone0000000.*, Ygone0000000.*, '
                                            'gone0000000_0.000.*, gone0000000_0.* under')
    assert reasons['aaaaaaaaaaa'].startswith('listed again at') and 'eval_segments.csv, line 6' in reasons['aaaaaaaaaaa']
    assert reasons[str(src / 'audio' / 'ccccccccccc.wav')] == 'empty: 0-byte file'
    assert_same_records(records(tmp_path / 'plain'), records(tmp_path / 'beam'))

    meta = source.dataset_meta(tmp_path / 'plain')
    assert meta.label_names == [n for _, n in CLASSES]
    by_id = {r['id'].decode(): sorted(int(v) for v in r['label']) for split in records(tmp_path / 'plain').values()
             for r in split}
    assert by_id == {'--PJHxphWEs': [0, 1], 'aaaaaaaaaaa': [2, 3], 'bbbbbbbbbbb': [1],
                     'ddddddddddd': [0, 2, 3], 'eeeeeeeeeee': [0]}
    info = source.open_builder(tmp_path / 'plain').info
    assert info.metadata['label_mids'] == [m for m, _ in CLASSES] and info.metadata['multi_label']
    # AS-2M pretraining reads the two training splits at once
    assert len(source.data_source(tmp_path / 'plain', 'train+unbalanced_train')) == 4
    config = tiny_config(tmp_path / 'plain', **{'data.split': 'train+unbalanced_train'})
    batch = next(iter(pipeline.train_dataset(config)))
    assert batch['audio'].shape[0] == config.batch_size and np.abs(batch['audio']).max() > 0


def test_audioset_listing_errors_name_the_file_and_line(tmp_path, capsys):
    src = audioset_replica(tmp_path / 'a')
    with open(src / 'eval_segments.csv', 'a') as f:
        f.write('fffffffffff, 0.000, 10.000, "/m/unknown"\n')
    out = tmp_path / 'out'
    assert cli.main(['data', 'build', 'audioset', '--source', str(src), '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src / 'eval_segments.csv'}, line 7: label(s) ['/m/unknown'] not in class_labels_indices.csv" in err
    os.remove(src / 'class_labels_indices.csv')
    assert cli.main(['data', 'build', 'audioset', '--source', str(src), '--out', str(out)]) == 2
    assert 'class_labels_indices.csv not found' in capsys.readouterr().err
    assert not out.exists()
