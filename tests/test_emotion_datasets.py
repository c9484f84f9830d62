"""Emotion corpora as distributed (MSP-Podcast, IEMOCAP, ESD), built from small replicas made here:
the emotion contract (categorical + arousal/valence/dominance + speaker, corpus, transcript), the
corpora's own splits, and bad rows and files skipped with their reasons."""
import json
import math

import numpy as np
import pytest
import soundfile as sf

from avpretrain import cli
from avpretrain.data import source
from data_pipelines import emotion, esd, iemocap, msp_podcast
from helpers import read_all

SR = 16000


def write_wav(path, seconds=0.8, freq=220.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, subtype='PCM_16')


def build(name, src, out, *extra):
    code = cli.main(['data', 'build', name, '--source', str(src), '--out', str(out), *extra])
    report = json.loads((out / 'build_report.json').read_text())
    report['skipped'] = [(s['path'], s['reason']) for s in report['skipped']]
    return code, report, read_all(out) if code == 0 else {}


# ----------------------------------------------------------------------------- MSP-Podcast

def msp_replica(root, *, with_class=True):
    rows = [  # FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Split_Set
        ('MSP-PODCAST_0001_0001.wav', 'H', '5.2', '6.0', '4.4', '12', 'Train'),
        ('MSP-PODCAST_0001_0002.wav', 'A', '6.4', '2.0', '5.8', '12', 'Train'),
        ('MSP-PODCAST_0002_0001.wav', 'X', '3.0', '4.0', '3.5', 'Unknown', 'Development'),
        ('MSP-PODCAST_0003_0001.wav', 'N', '4.0', '4.0', '4.0', '31', 'Test1'),
        ('MSP-PODCAST_0004_0001.wav', 'S', '2.2', '2.6', '3.0', '40', 'Test2'),
        ('MSP-PODCAST_0005_0001.wav', 'N', 'n/a', '4.0', '4.0', '41', 'Train'),    # rating not a number
        ('MSP-PODCAST_0005_0002.wav', 'N', '9.5', '4.0', '4.0', '41', 'Train'),    # off the 1-7 scale
        ('MSP-PODCAST_0006_0001.wav', 'N', '4.0', '4.0', '4.0', '50', 'Holdout'),  # unknown split
        ('MSP-PODCAST_0007_0001.wav', 'N', '4.0', '4.0', '4.0', '51', 'Train'),    # no audio file
    ]
    header = 'FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set' if with_class else \
        'FileName,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set'
    lines = [header] + [','.join([r[0], *([r[1]] if with_class else []), *r[2:6], 'Female', r[6]]) for r in rows]
    (root / 'Labels').mkdir(parents=True)
    (root / 'Labels' / 'labels_consensus.csv').write_text('\n'.join(lines) + '\n')
    for name, *_ in rows[:-1]:
        write_wav(root / 'Audios' / name)
    (root / 'Transcripts').mkdir()
    (root / 'Transcripts' / 'MSP-PODCAST_0001_0001.txt').write_text('what a lovely day\n')


def test_msp_podcast_keeps_ratings_splits_speakers_and_transcripts(tmp_path):
    msp_replica(tmp_path / 'msp')
    code, report, examples = build('msp_podcast', tmp_path / 'msp', tmp_path / 'out')
    assert code == 0
    meta = source.dataset_meta(tmp_path / 'out')
    assert meta.num_examples == {'train': 2, 'validation': 1, 'test': 1, 'test2': 1}
    assert meta.label_names == [*msp_podcast.EMO_CLASSES.values(), emotion.UNLABELED]
    happy = examples['MSP-PODCAST_0001_0001']
    assert meta.label_names[happy['label']] == 'happy' and happy['speaker'].decode() == '12'
    assert (float(happy['arousal']), float(happy['valence']), float(happy['dominance'])) == \
        pytest.approx((5.2, 6.0, 4.4))
    assert happy['transcript'].decode() == 'what a lovely day' and happy['corpus'].decode() == 'msp_podcast'
    no_agreement = examples['MSP-PODCAST_0002_0001']
    assert meta.label_names[no_agreement['label']] == emotion.UNLABELED and no_agreement['speaker'].decode() == ''
    assert no_agreement['split'] == 'validation' and examples['MSP-PODCAST_0004_0001']['split'] == 'test2'
    reasons = {p.rsplit('/', 1)[-1]: r for p, r in report['skipped']}
    assert "EmoAct 'n/a' is not a number" in reasons['MSP-PODCAST_0005_0001.wav']
    assert 'EmoAct 9.5 is outside the corpus scale [1, 7]' in reasons['MSP-PODCAST_0005_0002.wav']
    assert "Split_Set 'Holdout'" in reasons['MSP-PODCAST_0006_0001.wav']
    assert reasons['MSP-PODCAST_0007_0001.wav'] == 'missing'
    assert 'labels_consensus.csv, line' in reasons['MSP-PODCAST_0005_0001.wav']  # where: the file and line


def test_msp_podcast_without_categories_is_dimensional_only(tmp_path):
    msp_replica(tmp_path / 'msp', with_class=False)
    code, _, examples = build('msp_podcast', tmp_path / 'msp', tmp_path / 'out')
    assert code == 0 and source.dataset_meta(tmp_path / 'out').label_names[-1] == emotion.UNLABELED
    assert {int(e['label']) for e in examples.values()} == {len(msp_podcast.EMO_CLASSES)}
    assert float(examples['MSP-PODCAST_0003_0001']['valence']) == 4.0


def test_msp_podcast_without_a_labels_csv_is_one_clear_error(tmp_path, capsys):
    (tmp_path / 'msp' / 'Audios').mkdir(parents=True)
    assert cli.main(['data', 'build', 'msp_podcast', '--source', str(tmp_path / 'msp'),
                     '--out', str(tmp_path / 'out')]) == 2
    assert 'no MSP-Podcast labels' in capsys.readouterr().err


# ----------------------------------------------------------------------------- IEMOCAP

def iemocap_replica(root):
    utterances = {  # session -> dialog -> [(utt, code, [V, A, D], text)]
        1: {'Ses01F_impro01': [('Ses01F_impro01_F000', 'neu', '[2.5000, 2.5000, 2.5000]', 'Excuse me.'),
                               ('Ses01F_impro01_M000', 'exc', '[4.0000, 4.5000, 3.5000]', 'Oh, yes!'),
                               ('Ses01F_impro01_M001', 'fru', '[2.0000, 3.5000, 3.0000]', 'Not again.'),
                               ('Ses01F_impro01_F001', 'xxx', '[3.0000, 3.0000, 3.0000]', 'Hmm.')]},
        4: {'Ses04M_script01_1': [('Ses04M_script01_1_F000', 'sad', '[1.5000, 2.0000, 2.0000]', 'I miss her.')]},
        5: {'Ses05F_impro02': [('Ses05F_impro02_M000', 'ang', '[1.5000, 4.5000, 4.5000]', 'Get out!'),
                               ('Ses05F_impro02_F000', 'hap', '[4.5000, 3.0000, 3.0000]', 'Wonderful.')]},
    }
    for session, dialogs in utterances.items():
        base = root / f'Session{session}'
        for dialog, utts in dialogs.items():
            rating_lines = ['% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]', '']
            transcript_lines = []
            for i, (utt, code, vad, text) in enumerate(utts):
                rating_lines += [f'[{i:.4f} - {i + 0.9:.4f}]\t{utt}\t{code}\t{vad}', f'C-E1:\tNeutral;\t()', '']
                transcript_lines.append(f'{utt} [{i:07.4f}-{i + 0.9:07.4f}]: {text}')
                write_wav(base / 'sentences' / 'wav' / dialog / f'{utt}.wav', freq=200 + 20 * i)
            (base / 'dialog' / 'EmoEvaluation').mkdir(parents=True, exist_ok=True)
            (base / 'dialog' / 'transcriptions').mkdir(parents=True, exist_ok=True)
            (base / 'dialog' / 'EmoEvaluation' / f'{dialog}.txt').write_text('\n'.join(rating_lines) + '\n')
            (base / 'dialog' / 'transcriptions' / f'{dialog}.txt').write_text('\n'.join(transcript_lines) + '\n')
    # a WAV nobody rated, a rated utterance without its WAV, a rating line that does not parse
    write_wav(root / 'Session1' / 'sentences' / 'wav' / 'Ses01F_impro01' / 'Ses01F_impro01_F009.wav')
    ev = root / 'Session4' / 'dialog' / 'EmoEvaluation' / 'Ses04M_script01_1.txt'
    ev.write_text(ev.read_text() + '[5.0000 - 6.0000]\tSes04M_script01_1_M007\tneu\t[3.0000, 3.0000, 3.0000]\n'
                  '[7.0000 - 8.0000]\tSes04M_script01_1_M008\tneu\t[3.0000; 3.0000]\n')


def test_iemocap_labels_dimensions_speakers_and_session_splits(tmp_path):
    iemocap_replica(tmp_path / 'iemocap')
    code, report, examples = build('iemocap', tmp_path / 'iemocap', tmp_path / 'out')
    assert code == 0
    meta = source.dataset_meta(tmp_path / 'out')
    assert meta.num_examples == {'train': 4, 'validation': 1, 'test': 2}
    excited = examples['Ses01F_impro01_M000']
    assert meta.label_names[excited['label']] == 'excited' and excited['speaker'].decode() == 'Ses01_M'
    # the bracket is [valence, activation, dominance]: activation is the arousal
    assert (float(excited['arousal']), float(excited['valence']), float(excited['dominance'])) == (4.5, 4.0, 3.5)
    assert excited['transcript'].decode() == 'Oh, yes!' and excited['corpus'].decode() == 'iemocap'
    assert meta.label_names[examples['Ses01F_impro01_F001']['label']] == emotion.UNLABELED
    assert examples['Ses04M_script01_1_F000']['split'] == 'validation'
    assert {examples[u]['split'] for u in ('Ses05F_impro02_M000', 'Ses05F_impro02_F000')} == {'test'}
    assert {e['speaker'].decode() for e in examples.values()} == {'Ses01_F', 'Ses01_M', 'Ses04_F', 'Ses05_M', 'Ses05_F'}
    reasons = dict(report['skipped'])
    assert any(p.endswith('Ses01F_impro01_F009.wav') and r == 'no rating in dialog/EmoEvaluation' for p, r in reasons.items())
    assert any(p.endswith('Ses04M_script01_1_M007.wav') and r == 'missing' for p, r in reasons.items())
    assert any("M008: rating '3.0000; 3.0000' is not a number" in r for p, r in reasons.items()
               if 'Ses04M_script01_1.txt, line 7' in p)


def test_iemocap_four_classes_merge_excited_into_happy(tmp_path):
    iemocap_replica(tmp_path / 'iemocap')
    code, report, examples = build('iemocap', tmp_path / 'iemocap', tmp_path / 'out', '--classes', 'four')
    assert code == 0
    names = source.dataset_meta(tmp_path / 'out').label_names
    assert names == ['neutral', 'happy', 'sad', 'angry']
    assert names[examples['Ses01F_impro01_M000']['label']] == 'happy'
    assert 'Ses01F_impro01_M001' not in examples and 'Ses01F_impro01_F001' not in examples
    assert any(r == 'frustrated: not one of the four classes (classes=four)' for _, r in report['skipped'])


# ----------------------------------------------------------------------------- ESD

def test_esd_folders_give_labels_splits_and_transcripts(tmp_path):
    root = tmp_path / 'esd'
    for spk in ('0001', '0011'):
        for emo in ('Angry', 'Neutral'):
            for folder, n in (('train', 2), ('evaluation', 1), ('test', 1)):
                for k in range(n):
                    utt = f'{spk}_{len(list(root.rglob(f"{spk}_*.wav"))) + 1:06d}'
                    write_wav(root / spk / emo / folder / f'{utt}.wav')
        (root / spk / f'{spk}.txt').write_text(f'{spk}_000001\tThe nine the eggs.\tNeutral\n')
    write_wav(root / '0001' / 'Angry' / 'stray.wav')                       # not in a split folder
    write_wav(root / '0001' / 'Happy' / 'train' / '0011_000099.wav')       # another speaker's name
    code, report, examples = build('esd', root, tmp_path / 'out')
    assert code == 0
    meta = source.dataset_meta(tmp_path / 'out')
    assert meta.label_names == list(esd.EMOTIONS.values())
    assert meta.num_examples == {'train': 8, 'validation': 4, 'test': 4}
    first = examples['0001_000001']
    assert first['transcript'].decode() == 'The nine the eggs.' and first['speaker'].decode() == '0001'
    assert first['corpus'].decode() == 'esd' and math.isnan(float(first['arousal']))
    reasons = {p.rsplit('/', 1)[-1]: r for p, r in report['skipped']}
    assert reasons['stray.wav'].startswith('not in 0001/<Angry|')
    assert "another speaker's file" in reasons['0011_000099.wav']


def test_folds_by_session_keep_a_sessions_speakers_together(tmp_path):
    """IEMOCAP-style speaker ids (<session>_<speaker>): --by session folds never split a session."""
    from avpretrain.data import folds

    rows = ['path,label,speaker']
    for session in ('Ses01', 'Ses02', 'Ses03', 'Ses04'):
        for spk in ('F', 'M'):
            for label in ('neutral', 'angry'):
                name = f'{session}_{spk}_{label}.wav'
                write_wav(tmp_path / 'src' / name, freq=200 + 10 * len(rows))
                rows.append(f'{name},{label},{session}_{spk}')
    (tmp_path / 'src' / 'manifest.csv').write_text('\n'.join(rows) + '\n')
    assert cli.main(['data', 'build', 'audio_folder', '--source', str(tmp_path / 'src'), '--out', str(tmp_path / 'd')]) == 0
    made = folds.make_folds(tmp_path / 'd', 0, loso=True, by='session')
    assert made['num_folds'] == 4 and made['by'] == 'session'
    for i, fold in enumerate(made['folds']):
        assert fold['speakers']['test'] == [f'Ses0{i + 1}']
        assert len(fold['records']['test']) == 4  # both speakers of the session, both classes
    by_speaker = folds.make_folds(tmp_path / 'd', 0, loso=True)
    assert by_speaker['num_folds'] == 8
    with pytest.raises(ValueError, match=r"speaker 'Ses01' has no '<session>_<speaker>' form"):
        folds.group_of('Ses01', 'session')
