"""Dataset builds that go wrong: all files skipped, failed builds, odd file names, duplicate or
outside paths, truncated and over-full-scale WAVs, build output and command-line errors."""
import json
import os
import pathlib
import re

import numpy as np
import pytest
import soundfile as sf

from avpretrain import cli
from data_pipelines import audio_folder, common
from helpers import read_all

SR = 16000


def wav(path: pathlib.Path, seconds: float = 1.0, amplitude: float = 0.5, subtype=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = amplitude * np.sin(2 * np.pi * 440 * np.arange(int(seconds * SR)) / SR)
    sf.write(path, x.astype(np.float32), SR, subtype=subtype)


def class_folder(root: pathlib.Path, n: int = 3) -> pathlib.Path:
    for i in range(n):
        wav(root / 'tone' / f'{i}.wav')
    return root


def write_manifest(root: pathlib.Path, rows: list[str]):
    root.mkdir(parents=True, exist_ok=True)
    (root / 'manifest.csv').write_text('\n'.join(['path,label', *rows]) + '\n')


def build_cli(*args) -> int:
    return cli.main(['data', 'build', *args])


# ----------------------------------------------------------------------------- failed builds

def test_all_files_skipped_prints_and_writes_the_reasons_then_exits_2(tmp_path, capsys):
    src, out = tmp_path / 'junk', tmp_path / 'new' / 'data'
    (src / 'a').mkdir(parents=True)
    (src / 'a' / 'empty.wav').write_bytes(b'')
    wav(src / 'a' / 'short.wav', seconds=0.1)
    wav(src / 'a' / 'silent.wav', amplitude=0.0)
    assert build_cli('audio_folder', '--source', str(src), '--out', str(out)) == 2
    captured = capsys.readouterr()
    assert [line.split(':')[0] for line in captured.out.splitlines()] == [
        f'skipped {src / "a" / name}' for name in ('empty.wav', 'short.wav', 'silent.wav')]
    report_path = out / common.REPORT_NAME
    assert captured.err.strip() == (
        f'error: no usable audio in {src}: all 3 files skipped '
        f'(reasons above and in {report_path})')
    report = json.loads(report_path.read_text())
    assert report['num_built'] == 0 and len(report['skipped']) == 3
    assert os.listdir(out) == [common.REPORT_NAME]  # no dataset, no scratch space


def test_failed_build_leaves_no_new_directory_and_keeps_what_was_there(tmp_path, monkeypatch):
    src = class_folder(tmp_path / 'src')
    fresh = tmp_path / 'fresh' / 'data'
    write_manifest(tmp_path / 'bad', ['x.wav,'])  # empty label
    with pytest.raises(ValueError, match='empty path or label'):
        audio_folder.build(str(tmp_path / 'bad'), str(fresh))
    assert not (tmp_path / 'fresh').exists()

    out = tmp_path / 'data'
    audio_folder.build(str(src), str(out))
    (out / 'notes.txt').write_text('mine')
    before = read_all(out)

    def fail_midway(self, items):
        yield from list(original(self, items))[:1]
        raise OSError('disk full')

    original = audio_folder.AudioFolder._generate_examples
    monkeypatch.setattr(audio_folder.AudioFolder, '_generate_examples', fail_midway)
    with pytest.raises(OSError, match='disk full'):
        audio_folder.build(str(src), str(out))
    assert sorted(os.listdir(out)) == ['audio_folder', common.REPORT_NAME, 'notes.txt']
    assert read_all(out).keys() == before.keys()  # the earlier build, whole


# ----------------------------------------------------------------------------- files and paths

def test_file_name_that_is_not_utf8_is_read_with_a_readable_id(tmp_path):
    src = class_folder(tmp_path / 'src')
    name = os.path.join(os.fsencode(src / 'tone'), b'caf\xe9.wav')
    sf.write(name, 0.5 * np.ones(SR, np.float32), SR)
    report = audio_folder.build(str(src), str(tmp_path / 'data'))
    assert report.skipped == [] and report.num_built == 4
    assert 'tone/caf\\xe9.wav' in read_all(tmp_path / 'data')


def test_same_file_under_two_paths_is_refused_before_decoding(tmp_path, monkeypatch):
    src = tmp_path / 'src'
    wav(src / 'x.wav')
    (src / 'sub').mkdir()
    monkeypatch.setattr(common, 'load_audio', lambda *a: pytest.fail('decoded before refusing'))
    write_manifest(src, ['x.wav,a', 'sub/../x.wav,a'])
    with pytest.raises(ValueError, match=r'manifest.csv, row 3: .*sub/../x.wav.* same file as '
                                         r'.*x.wav.*manifest.csv, row 2'):
        audio_folder.build(str(src), str(tmp_path / 'data'))
    write_manifest(src, ['x.wav,a', f'{src / "x.wav"},a'])
    with pytest.raises(ValueError, match='row 3: .*same file as .*row 2'):
        audio_folder.build(str(src), str(tmp_path / 'data'))
    (src / 'manifest.csv').unlink()
    (src / 'x.wav').unlink()
    wav(src / 'a' / 'x.wav')
    (src / 'b').mkdir()
    os.link(src / 'a' / 'x.wav', src / 'b' / 'hard.wav')
    with pytest.raises(ValueError, match=r'b/hard.wav.* same file as .*a/x.wav'):
        audio_folder.build(str(src), str(tmp_path / 'data'))
    (src / 'b' / 'hard.wav').unlink()
    os.symlink(src / 'a' / 'x.wav', src / 'b' / 'soft.wav')
    with pytest.raises(ValueError, match=r'b/soft.wav.* same file as .*a/x.wav'):
        audio_folder.build(str(src), str(tmp_path / 'data'))


def test_manifest_paths_outside_the_source_need_a_flag(tmp_path, capsys):
    src, outside = tmp_path / 'src', tmp_path / 'elsewhere'
    wav(src / 'in.wav')
    wav(outside / 'x.wav')
    for path in ('../elsewhere/x.wav', str(outside / 'x.wav')):
        write_manifest(src, ['in.wav,a', f'{path},b'])
        with pytest.raises(ValueError, match=rf'manifest.csv, row 3: {re.escape(repr(path))} is outside the source'):
            audio_folder.build(str(src), str(tmp_path / 'data'))
    wav(src / 'in2.wav')
    write_manifest(src, ['in.wav,a', f'{src / "in2.wav"},b'])  # an absolute path inside is fine
    assert audio_folder.build(str(src), str(tmp_path / 'inside')).num_built == 2
    write_manifest(src, ['in.wav,a', '../elsewhere/x.wav,b'])
    assert build_cli('audio_folder', '--source', str(src), '--out', str(tmp_path / 'data'),
                     '--allow-outside-source') == 0
    assert sorted(read_all(tmp_path / 'data')) == ['../elsewhere/x.wav', 'in.wav']


def test_truncated_wav_is_kept_with_a_warning(tmp_path, capsys):
    src = class_folder(tmp_path / 'src')
    cut = src / 'tone' / 'cut.wav'
    wav(cut, seconds=2.0)
    data = cut.read_bytes()
    cut.write_bytes(data[:44 + SR * 2])  # PCM_16 header + 1 s of the 2 s it declares
    report = audio_folder.build(str(src), str(tmp_path / 'data'))
    what = 'truncated: header says 2.00 s, file holds 1.00 s'
    assert report.warnings == [(str(cut), what)] and report.num_built == 4
    assert f'warning {cut}: {what}' in capsys.readouterr().out.splitlines()
    on_disk = json.loads((tmp_path / 'data' / common.REPORT_NAME).read_text())
    assert on_disk['warnings'] == [{'path': str(cut), 'what': what}]
    assert len(read_all(tmp_path / 'data')['tone/cut.wav']['audio']) == SR


def test_float_wav_above_full_scale_is_scaled_down_not_clipped(tmp_path, capsys):
    src = class_folder(tmp_path / 'src')
    loud = src / 'tone' / 'loud.wav'
    wav(loud, amplitude=4.0, subtype='FLOAT')
    report = audio_folder.build(str(src), str(tmp_path / 'data'))
    what = 'above full scale: peak 4.00 (+12.0 dBFS), scaled down by 12.0 dB instead of clipping'
    assert report.warnings == [(str(loud), what)]
    assert f'warning {loud}: {what}' in capsys.readouterr().out.splitlines()
    audio = read_all(tmp_path / 'data')['tone/loud.wav']['audio'].astype(np.float32) / 32767
    expected = np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    np.testing.assert_allclose(audio, expected, atol=2e-4)  # the waveform, undistorted


# ----------------------------------------------------------------------------- output and CLI

def test_build_output_is_plain_and_warns_about_an_empty_split(tmp_path, capsys):
    src, out = tmp_path / 'src', tmp_path / 'data'
    for i in range(3):
        wav(src / f'{i}.wav')
    (src / 'manifest.csv').write_text('path,label,split\n0.wav,a,train\n1.wav,a,train\n2.wav,a,test\n')
    assert build_cli('audio_folder', '--source', str(src), '--out', str(out)) == 0
    captured = capsys.readouterr()
    dataset_dir = out / 'audio_folder' / '2.0.0'
    lines = captured.out.splitlines()
    assert lines[0].startswith(f'dataset {dataset_dir} (16000 Hz), built in ')
    assert lines[0].endswith(' s')
    assert lines[1:] == ['  train: 2 examples', '  validation: 0 examples', '  test: 1 examples',
                         'warning: split validation has 0 examples', 'built 3 examples, skipped 0']
    assert 'Downloading and preparing' not in captured.out + captured.err
    assert '\x1b[' not in captured.err and 'Decoding' not in captured.err


def test_cli_source_and_out_errors_are_one_line_exit_2(tmp_path, capsys):
    src = class_folder(tmp_path / 'src')
    (tmp_path / 'file').write_text('')
    for args, message in (
        ([], 'error: data build audio_folder needs --source DIR'),
        (['--source', str(tmp_path / 'nowhere')], f'audio_folder source {tmp_path / "nowhere"} does not exist'),
        (['--source', str(tmp_path / 'file')], f'audio_folder source {tmp_path / "file"} is not a directory'),
    ):
        assert build_cli('audio_folder', *args, '--out', str(tmp_path / 'data')) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / 'data').exists()
    assert build_cli('audio_folder', '--source', str(src), '--out', str(tmp_path / 'file')) == 2
    assert 'is a file, expected a directory' in capsys.readouterr().err
