"""The procedural emotional-speech demo (data_pipelines/demo_emotion.py): real espeak-ng speech with
categorical and dimensional labels and transcripts, three corpora that differ, speaker-disjoint
splits, determinism, and the labels audible the way its docstring says."""
import numpy as np
import pytest

from avpretrain import cli
from avpretrain.data import source
from data_pipelines import demo_emotion, emotion
from helpers import read_all


@pytest.fixture(scope='module')
def studio_clips():
    return [demo_emotion.generate_clip('studio', i, 0) for i in range(48)]


def test_build_stores_the_emotion_contract_with_speaker_disjoint_splits(tmp_path):
    assert cli.main(['data', 'build', 'demo_emotion', '--corpus', 'phone', '--num-clips', '30',
                     '--out', str(tmp_path / 'out')]) == 0
    meta = source.dataset_meta(tmp_path / 'out')
    assert meta.label_names == ['neutral', 'happy', 'sad', 'angry', 'calm']
    assert meta.num_examples == {'train': 20, 'validation': 5, 'test': 5}
    examples = read_all(tmp_path / 'out')
    speakers = {s: {e['speaker'].decode() for e in examples.values() if e['split'] == s} for s in meta.num_examples}
    assert speakers == {'train': {'phone-00', 'phone-01', 'phone-02', 'phone-03'}, 'validation': {'phone-04'},
                        'test': {'phone-05'}}
    sentences = {s for pool in demo_emotion.CORPORA['phone'].sentences['en'].values() for s in pool}
    for e in examples.values():
        assert e['corpus'].decode() == 'demo_emotion_phone' and e['transcript'].decode() in sentences
        assert all(1 <= float(e[d]) <= 7 for d in emotion.DIMENSIONS)
        assert len(e['audio']) > 16000 and np.abs(e['audio']).max() > 3000  # > 1 s of real speech, not silence


def test_clips_depend_only_on_corpus_seed_and_index():
    a, b = demo_emotion.generate_clip('room', 7, 3), demo_emotion.generate_clip('room', 7, 3)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.dims == b.dims and a.text == b.text
    c = demo_emotion.generate_clip('room', 7, 4)
    assert c.dims != a.dims


def test_the_corpora_differ_in_speakers_sentences_labels_and_language():
    corpora = demo_emotion.CORPORA
    voices = [v for c in corpora.values() for v in c.voices]
    assert len(set(voices)) == len(voices) == 18  # no speaker shared between corpora
    assert set(corpora['phone'].emotions) != set(corpora['studio'].emotions)
    assert not set(corpora['studio'].sentences['en']['neutral']) & set(corpora['phone'].sentences['en']['neutral'])
    spanish = demo_emotion.generate_clip('room', 0, 0)   # speaker room-00 is a Spanish voice
    german = demo_emotion.generate_clip('room', 1, 0)
    assert spanish.text in {s for p in corpora['room'].sentences['es'].values() for s in p}
    assert german.text in {s for p in corpora['room'].sentences['de'].values() for s in p}


def test_the_labels_are_in_the_audio_and_the_transcript_as_documented(studio_clips):
    arousal, valence, dominance = (np.array([c.dims[i] for c in studio_clips]) for i in range(3))
    chars_per_s = np.array([len(c.text) / (len(c.audio) / 16000) for c in studio_clips])
    level = np.array([np.sqrt(np.mean(c.audio[np.abs(c.audio) > 0.01] ** 2)) for c in studio_clips])
    sentence = np.array([demo_emotion.SENTENCE_VALENCE[c.polarity] for c in studio_clips])
    assert np.corrcoef(arousal, chars_per_s)[0, 1] > 0.4     # faster speech with arousal
    assert np.corrcoef(dominance, level)[0, 1] > 0.4         # louder with dominance
    assert np.corrcoef(valence, sentence)[0, 1] > 0.8        # valence mostly from what is said
    by_emotion = {e: np.mean([c.dims[0] for c in studio_clips if c.emotion == e]) for e in ('sad', 'angry')}
    assert by_emotion['angry'] > by_emotion['sad'] + 1.5
