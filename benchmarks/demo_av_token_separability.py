"""Does a token dataset still tell the emotion? Linear probes on the codes and on what they decode to.

    .venv/bin/python benchmarks/demo_av_token_separability.py --data DATA --tokens TOKENS --video-vq E [--frames 12]

For the video of each clip (``--frames`` evenly spaced frames): the grayscale 24x24 mean/std features of
``benchmarks/demo_av_separability.py`` computed on (a) the stored face frames and (b) the video
tokenizer's reconstruction of the clip's codes (``Tokenizer.decode``); (c) the codes themselves as a
bag of codes per image half (upper: eyes and brows, lower: mouth). For the audio: (d) the log-mel
statistics and (e) a bag of audio codes. Each a softmax regression trained on the train speakers,
L2 chosen on the validation speakers, scored on the test speakers (the corpus's splits). What the
reconstruction loses that the frames had, the codes cannot give a model either.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from avpretrain import export
from avpretrain.data import source

from demo_av_separability import audio_features, probe, video_features  # noqa: E402


def _gray_features(frames_THW3: np.ndarray) -> np.ndarray:
    gray = np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (24, 24), interpolation=cv2.INTER_AREA)
                     for f in frames_THW3]).astype(np.float32) / 255
    return np.concatenate([gray.mean(0).ravel(), gray.std(0).ravel()])


def load(data, tokens, tokenizer, split: str, frames: int):
    raw, tok = source.data_source(data, split), source.data_source(tokens, split)
    ids = {tok[i]["id"]: i for i in range(len(tok))}
    feats = {k: [] for k in ("frames", "decoded", "video_codes", "log_mel", "audio_codes")}
    labels = []
    for i in range(len(raw)):
        ex = raw[i]
        t = tok[ids[ex["id"]]]
        codes = np.asarray(t["video_codes"]).astype(np.int32)
        pick = np.linspace(0, len(codes) - 1, frames).round().astype(int)  # a fixed count: one compiled decode
        v = codes[pick]
        a = np.asarray(t["audio_codes"]).astype(np.int32)
        decoded = np.clip(np.asarray(tokenizer.decode(v[None]))[0] * 255, 0, 255).astype(np.uint8)
        feats["frames"].append(video_features([ex["video"][j] for j in pick]))
        feats["decoded"].append(_gray_features(decoded))
        feats["video_codes"].append(np.concatenate([np.bincount(v[:, h:h + 12].ravel(), minlength=512) / v[:, h:h + 12].size
                                                    for h in (0, 12)]))
        feats["log_mel"].append(audio_features(ex["audio"]))
        feats["audio_codes"].append(np.bincount(a.ravel(), minlength=256) / a.size)
        labels.append(int(ex["label"]))
    return {k: np.stack(v) for k, v in feats.items()}, np.array(labels)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the demo_av corpus")
    p.add_argument("--tokens", required=True, help="its token dataset (avpretrain data tokenize)")
    p.add_argument("--video-vq", required=True, help="the video tokenizer export that made the tokens")
    p.add_argument("--frames", type=int, default=12, help="video frames per clip, evenly spaced")
    args = p.parse_args(argv)
    tokenizer = export.load_pretrained(args.video_vq)
    splits = {s: load(args.data, args.tokens, tokenizer, s, args.frames) for s in ("train", "validation", "test")}
    classes = len(source.dataset_meta(args.data).label_names)
    for name in ("frames", "decoded", "video_codes", "log_mel", "audio_codes"):
        r = probe(*[(splits[s][0][name], splits[s][1]) for s in ("train", "validation", "test")], classes)
        print(f"{name:12s} test accuracy {100 * r['test']:.1f} % (validation {100 * r['validation']:.1f} %, "
              f"l2 {r['l2']})")


if __name__ == "__main__":
    main()
