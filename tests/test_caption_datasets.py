"""Captioned datasets: audio_folder captions, AudioCaps and Clotho replicas, demo captions."""
import hashlib
import json
import pathlib
import re

import numpy as np
import pytest
import soundfile as sf

from avpretrain import cli
from avpretrain.data import source
from data_pipelines import audio_folder, audiocaps, clotho, common, demo
from helpers import read_all

SR = 16000


def wav(path: pathlib.Path, sr: int = SR, seconds: float = 0.6, hz: float = 440.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr), sr)


def write_csv(path: pathlib.Path, lines: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n')


# ----------------------------------------------------------------------------- audio folder

def test_caption_columns_in_numeric_order():
    columns = ['path', 'caption_10', 'caption_2', 'caption', 'caption_x', 'caption_1']
    assert audio_folder.caption_columns(columns) == ['caption', 'caption_1', 'caption_2', 'caption_10']


def test_audio_folder_numbered_caption_columns_and_repeated_rows(tmp_path):
    src, out = tmp_path / 'src', tmp_path / 'data'
    for name in ('a', 'b', 'c'):
        wav(src / f'{name}.wav')
    write_csv(src / 'manifest.csv', [
        'path,label,caption_1,caption_2,caption_3',
        'a.wav,dog,a dog barks,,a dog barks loudly',
        'b.wav,cat,a cat meows,a cat meows,',
        'a.wav,dog,a dog barks,a puppy yelps,',  # adds one caption
        'b.wav,cat,a cat meows,,',  # adds none: a duplicate
        'c.wav,cat,,,',  # no caption at all is fine
    ])
    report = audio_folder.build(str(src), str(out), val_fraction=0, test_fraction=0)
    assert report.skipped == [(str(src / 'b.wav'), 'duplicate manifest entry (first at row 3)')]
    assert report.summary_lines()[-1] == 'built 3 examples, skipped 1'
    examples = read_all(out)
    assert examples['a.wav']['captions'] == ['a dog barks', 'a dog barks loudly', 'a puppy yelps']
    assert examples['b.wav']['captions'] == ['a cat meows']
    assert examples['c.wav']['captions'] == []
    assert source.dataset_meta(out).label_names == ['cat', 'dog']


def test_audio_folder_caption_column_plus_repeats_keep_split(tmp_path):
    src = tmp_path / 'src'
    wav(src / 'x.wav')
    write_csv(src / 'manifest.csv', [
        'path,label,caption,split', 'x.wav,rain,rain falls,val', 'x.wav,rain,rain on a roof,dev'])
    entries, skipped = audio_folder.list_source(src)
    assert skipped == []
    assert entries == [audio_folder.Entry(
        'x.wav', src / 'x.wav', 'rain', '', ('rain falls', 'rain on a roof'), 'validation')]


@pytest.mark.parametrize('field, second_row, first_value, second_value', [
    ('label', 'a.wav,no,,something else,train', "'yes'", "'no'"),
    ('speaker', 'a.wav,yes,spk2,something else,train', "''", "'spk2'"),
    ('split', 'a.wav,yes,,something else,test', "'train'", "'test'"),
])
def test_audio_folder_conflicting_repeated_row_is_an_error(
        tmp_path, field, second_row, first_value, second_value):
    wav(tmp_path / 'a.wav')
    write_csv(tmp_path / 'manifest.csv', [
        'path,label,speaker,caption,split', 'a.wav,yes,,a person says yes,train', second_row])
    with pytest.raises(ValueError) as error:
        audio_folder.build(str(tmp_path), str(tmp_path / 'data'))
    message = str(error.value)
    assert message.startswith(f'{tmp_path / "manifest.csv"}, row 3: ')
    assert f'different {field}: {first_value} (row 2) vs {second_value} (row 3)' in message


def test_audio_folder_label_less_manifest(tmp_path):
    src, out = tmp_path / 'src', tmp_path / 'data'
    for i in range(4):
        wav(src / 'clips' / f'{i}.wav', hz=300 + 100 * i)
    write_csv(src / 'manifest.csv', ['path,caption'] + [f'clips/{i}.wav,sound {i}' for i in range(4)])
    report = audio_folder.build(str(src), str(out))
    assert report.num_built == 4 and report.skipped == []
    assert source.dataset_meta(out).label_names == [common.NO_LABEL] == ['unlabeled']
    examples = read_all(out)
    assert {id_: ex['captions'] for id_, ex in examples.items()} == {
        f'clips/{i}.wav': [f'sound {i}'] for i in range(4)}
    # Without a caption column, path and label stay required.
    write_csv(src / 'manifest.csv', ['path,speaker', 'clips/0.wav,s'])
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['label'\]; has \['path', 'speaker'\]"):
        audio_folder.build(str(src), str(tmp_path / 'data2'))


# ----------------------------------------------------------------------------- AudioCaps

AUDIOCAPS_HEADER = 'audiocap_id,youtube_id,start_time,caption'


def make_audiocaps(root: pathlib.Path):
    write_csv(root / 'train.csv', [
        AUDIOCAPS_HEADER,
        '101,dogClip_01,30,a dog barks twice',
        '102,rainClip-2,10.000,rain falls on a roof',
        '103,goneClip_3,0,nobody has this file',
        '104,carClip_4,20,a car drives past',
    ])
    write_csv(root / 'val.csv', [AUDIOCAPS_HEADER] + [
        f'{200 + k},birdClip_5,30.000,"birds chirp, take {k}"' for k in range(5)])
    wav(root / 'audio' / 'train' / 'YdogClip_01.wav', hz=300)  # Y<youtube_id>
    wav(root / 'audio' / 'train' / 'rainClip-2_10.flac', hz=400)  # <youtube_id>_<start>
    wav(root / 'nested' / 'deeper' / '104.ogg', hz=500)  # <audiocap_id>
    wav(root / 'audio' / 'val' / 'birdClip_5_30.wav', hz=600)  # <youtube_id>_<start>


def test_audiocaps_replica(tmp_path, capsys):
    src, out = tmp_path / 'audiocaps', tmp_path / 'data'
    make_audiocaps(src)
    audiocaps.main([str(src), '--out', str(out)])
    assert 'built 4 examples, skipped 1' in capsys.readouterr().out
    report = common.BuildReport.read(out / common.REPORT_NAME)
    assert report.counts == {'train': 3, 'validation': 1, 'test': 0}
    [(where, reason)] = report.skipped
    assert where == 'goneClip_3_0'
    assert reason.startswith('missing audio (looked for goneClip_3, YgoneClip_3, 103, goneClip_3_0')
    on_disk = json.loads((out / common.REPORT_NAME).read_text())
    assert on_disk['num_built'] == 4 and on_disk['skipped'][0]['path'] == 'goneClip_3_0'

    meta = source.dataset_meta(out)
    assert meta.name == 'audiocaps' and meta.label_names == ['unlabeled'] and meta.sample_rate == SR
    examples = read_all(out)
    assert sorted(examples) == ['birdClip_5_30', 'carClip_4_20', 'dogClip_01_30', 'rainClip-2_10']
    assert examples['dogClip_01_30']['captions'] == ['a dog barks twice']
    assert examples['dogClip_01_30']['split'] == 'train'
    bird = examples['birdClip_5_30']
    assert bird['split'] == 'validation'
    assert bird['captions'] == [f'birds chirp, take {k}' for k in range(5)]
    assert all(abs(len(ex['audio']) - 0.6 * SR) <= 1 for ex in examples.values())


def test_audiocaps_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match='no caption CSV in .*train.csv, val.csv, test.csv'):
        audiocaps.build(str(tmp_path), str(tmp_path / 'data'))
    write_csv(tmp_path / 'test.csv', ['audiocap_id,youtube_id,caption', '1,abc,a sound'])
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'test.csv'}: missing column(s) ['start_time']; "
            "has ['audiocap_id', 'youtube_id', 'caption']")):
        audiocaps.build(str(tmp_path), str(tmp_path / 'data'))


# ----------------------------------------------------------------------------- Clotho

def test_clotho_replica_resamples_and_skips_bad_files(tmp_path):
    src, out = tmp_path / 'clotho', tmp_path / 'data'
    header = 'file_name,caption_1,caption_2,caption_3,caption_4,caption_5'
    write_csv(src / 'clotho_captions_development.csv', [
        header,
        'rain.wav,' + ','.join(f'rain caption {k}' for k in range(1, 6)),
        'door creak.wav,a door creaks,"a door creaks, slowly",a door creaks,hinges squeak,wood moans',
        'corrupt.wav,c1,c2,c3,c4,c5',
        'nowhere.wav,n1,n2,n3,n4,n5',
    ])
    write_csv(src / 'clotho_captions_evaluation.csv', [header, 'bell.wav,b1,b2,b3,b4,b5'])
    wav(src / 'development' / 'rain.wav', sr=44100)
    wav(src / 'development' / 'door creak.wav', sr=44100, hz=300)
    (src / 'development' / 'corrupt.wav').write_bytes(np.random.default_rng(0).bytes(3000))
    wav(src / 'elsewhere' / 'bell.wav', sr=44100, hz=880)  # not in evaluation/: found by name

    report = clotho.build(str(src), str(out))
    assert report.counts == {'train': 2, 'validation': 0, 'test': 1}
    skipped = dict(report.skipped)
    assert skipped.keys() == {'nowhere.wav', str(src / 'development' / 'corrupt.wav')}
    assert skipped['nowhere.wav'].startswith('missing audio (looked for development/nowhere.wav')
    assert skipped[str(src / 'development' / 'corrupt.wav')].startswith('unreadable')

    meta = source.dataset_meta(out)
    assert meta.name == 'clotho' and meta.label_names == ['unlabeled']
    examples = read_all(out)
    assert examples['rain.wav']['captions'] == [f'rain caption {k}' for k in range(1, 6)]
    assert examples['door creak.wav']['captions'] == [
        'a door creaks', 'a door creaks, slowly', 'hinges squeak', 'wood moans']
    assert examples['bell.wav']['split'] == 'test' and examples['rain.wav']['split'] == 'train'
    for ex in examples.values():  # 0.6 s at 44.1 kHz -> 16 kHz
        assert abs(len(ex['audio']) - 0.6 * SR) <= 1


def test_cli_builds_clotho_and_needs_a_source(tmp_path, capsys):
    src = tmp_path / 'clotho'
    write_csv(src / 'clotho_captions_validation.csv', ['file_name,caption_1', 'a.wav,a tone'])
    wav(src / 'validation' / 'a.wav', sr=44100)
    assert cli.main(['data', 'build', 'clotho', '--source', str(src), '--out', str(tmp_path / 'd')]) == 0
    assert capsys.readouterr().out.rstrip().endswith('built 1 examples, skipped 0')
    assert cli.main(['data', 'build', 'audiocaps', '--out', str(tmp_path / 'e')]) == 2
    assert capsys.readouterr().err == 'error: data build audiocaps needs --source DIR\n'
    # A malformed corpus is a clean error exit, not a traceback.
    write_csv(src / 'clotho_captions_validation.csv', ['name,caption_1', 'a.wav,a tone'])
    assert cli.main(['data', 'build', 'clotho', '--source', str(src), '--out', str(tmp_path / 'f')]) == 2
    assert "missing column(s) ['file_name']" in capsys.readouterr().err


# ----------------------------------------------------------------------------- demo captions

def clips(n, seed=0, sr=8000):
    for i in range(n):
        _, class_name, params = demo.generate_clip(i, seed, sr)
        yield i, class_name, params


@pytest.fixture(scope='module')
def demo_captions():
    """(index, class, params, 3 captions) for 10 clips of each class."""
    return [(i, c, p, demo.caption_clip(c, p, demo.caption_rng(0, i), 3)) for i, c, p in clips(120)]


def test_demo_captions_are_deterministic_and_distinct(demo_captions):
    for i, c, p, captions in demo_captions[:24]:
        assert demo.caption_clip(c, p, demo.caption_rng(0, i), 3) == captions
        for n in (1, 5, 10):
            more = demo.caption_clip(c, p, demo.caption_rng(0, i), n)
            assert len(more) == n == len(set(more)) and all(more)
    assert demo_captions[0][3] != demo.caption_clip(
        demo_captions[0][1], demo_captions[0][2], demo.caption_rng(1, 0), 3)


def test_demo_captions_use_label_words_for_about_a_third(demo_captions):
    words = {c: c.replace('_', ' ') for c in demo.CLASSES}
    literal = [words[c] in caption.lower() for _, c, _, captions in demo_captions for caption in captions]
    assert 0.25 <= np.mean(literal) <= 0.45
    for c in demo.CLASSES:
        assert any(words[c] in cap.lower() for _, k, _, caps in demo_captions if k == c for cap in caps)
    for _, c, _, captions in demo_captions:  # never another class's label words
        assert not [o for o in demo.CLASSES if o != c for cap in captions if words[o] in cap.lower()]


def test_demo_captions_match_the_clip_parameters(demo_captions):
    up = re.compile(r'\b(rising|upward|ascending|going up|climbing)\b')
    down = re.compile(r'\b(falling|downward|descending|dropping)\b')
    directions = set()
    for _, c, p, captions in demo_captions:
        text = ' | '.join(captions)
        if c == 'chirp':
            directions.add(p['direction'])
            assert not (down if p['direction'] == 'rising' else up).search(text), (p, captions)
        if p['loudness_db'] > -30:  # 'faint' may describe the background noise only
            quiet = r'\b(quiet|faint)\b(?! (soft hiss|hiss|rumble|white|pink|brown))'
            assert not re.search(quiet, text), (p, captions)
        if c == 'vowel':
            assert {'a': '"ah"', 'e': '"eh"', 'i': '"ee"', 'o': '"oh"', 'u': '"oo"'}[p['vowel']] in text \
                or '"' not in text
    assert directions == {'rising', 'falling'}


def test_demo_audio_does_not_depend_on_captions():
    x, class_name, params = demo.generate_clip(13, 3, SR)
    # The audio from before captions existed, bit for bit (int16 as stored).
    assert hashlib.sha256(common.to_int16(x).tobytes()).hexdigest()[:16] == '4e9f6b4c1718af23'
    assert class_name == 'chirp' and params['direction'] == 'falling'
    captions = demo.caption_clip(class_name, params, demo.caption_rng(3, 13), 5)
    np.testing.assert_array_equal(demo.generate_clip(13, 3, SR)[0], x)
    assert len(captions) == 5
