"""Held-out reconstruction quality of exported VQ-VAE tokenizers (``vqvae_audio`` / ``vqvae_video``).

Usage::

  python benchmarks/vqvae_quality.py --data $DATA --split test \\
      --audio-vq $AUDIO_EXPORT --video-vq $VIDEO_EXPORT [--random-init] [--max-clips N] [--json-out F]

``--random-init`` measures the same architectures with fresh weights (``load_pretrained(...,
random_init=True)``: the step-0 model of seed 0), the "before training" baseline.

Every clip of the split is cropped to its first 2 s (audio: 32,000 samples at 16 kHz = 100 power-spectrum
frames; video: 50 frames at 25 fps) so that each tokenizer compiles once; shorter clips are skipped (and
counted). Clips are processed one at a time. Reported per tokenizer:

* audio: mean Itakura–Saito divergence mean(x/x̂ − log(x/x̂) − 1) between the input power spectrogram x
  (n_fft 1024, hop 320, the frames the tokenizer sees, floored at 1e-8 as in training) and x̂ =
  decode(encode(waveform)), averaged over bins, frames and clips (lower is better);
* video: PSNR (dB, [0, 1] scale) of decode(encode(frames)) per frame, averaged over frames (higher is better);
* both: the codebook perplexity exp(entropy) of the code histogram over the whole split, and usage, the
  fraction of the K codes used at least once.
"""
from __future__ import annotations

import argparse
import json
import time

import jax.numpy as jnp
import numpy as np

import avpretrain
from avpretrain import audio as audio_lib
from avpretrain.data import frames as frames_lib, source
from avpretrain.models import vqvae

SECONDS = 2.0
FPS = 25


def _perplexity_usage(counts: np.ndarray) -> tuple[float, float]:
    p = counts / counts.sum()
    nz = p[p > 0]
    return float(np.exp(-np.sum(nz * np.log(nz)))), float(np.mean(counts > 0))


def evaluate_audio(tok, data, max_clips: int | None) -> dict:
    samples = int(SECONDS * tok.sample_rate)
    counts = np.zeros(tok.model.vq.num_codes, np.int64)
    scores, clips, skipped = [], 0, 0
    for i in range(len(data)):
        if max_clips is not None and clips >= max_clips:
            break
        wave = np.asarray(data[i]["audio"])
        if len(wave) < samples:
            skipped += 1
            continue
        x = wave[None, :samples].astype(np.float32) / 32768.0
        codes = tok.encode(x)                                       # [1, 100, 64]
        power = audio_lib.power_spectrogram(x, n_fft=1024, hop_length=vqvae.HOP)[:, :samples // vqvae.HOP]
        log_x = jnp.log(jnp.maximum(power, vqvae.EPS))
        log_x_hat = jnp.log(tok.decode(codes))                      # decode: positive power
        scores.append(float(vqvae.itakura_saito(log_x, log_x_hat)))
        counts += np.bincount(np.asarray(codes).ravel(), minlength=len(counts))
        clips += 1
    perplexity, usage = _perplexity_usage(counts)
    return {"modality": "audio", "is_divergence": float(np.mean(scores)), "perplexity": perplexity,
            "usage": usage, "num_codes": len(counts), "clips": clips, "frames": clips * (samples // vqvae.HOP),
            "skipped_short": skipped}


def evaluate_video(tok, data, max_clips: int | None) -> dict:
    n = int(SECONDS * FPS)
    counts = np.zeros(tok.model.vq.num_codes, np.int64)
    psnrs, clips, skipped = [], 0, 0
    for i in range(len(data)):
        if max_clips is not None and clips >= max_clips:
            break
        jpegs = data[i]["video"]
        if len(jpegs) < n:
            skipped += 1
            continue
        frames = np.stack([frames_lib.decode_frame(j) for j in jpegs[:n]])[None]   # uint8 [1, 50, 96, 96, 3]
        codes = tok.encode(frames)
        recon = np.asarray(tok.decode(codes), np.float64)[0]
        mse = np.mean((recon - frames[0] / 255.0) ** 2, axis=(1, 2, 3))            # per frame
        psnrs.extend(-10.0 * np.log10(np.maximum(mse, 1e-12)))
        counts += np.bincount(np.asarray(codes).ravel(), minlength=len(counts))
        clips += 1
    perplexity, usage = _perplexity_usage(counts)
    return {"modality": "video", "psnr_db": float(np.mean(psnrs)), "perplexity": perplexity, "usage": usage,
            "num_codes": len(counts), "clips": clips, "frames": len(psnrs), "skipped_short": skipped}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset directory (avpretrain data build ...)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--audio-vq", help="an exported vqvae_audio tokenizer")
    parser.add_argument("--video-vq", help="an exported vqvae_video tokenizer")
    parser.add_argument("--random-init", action="store_true", help="fresh weights of the same architectures")
    parser.add_argument("--max-clips", type=int, default=None, help="evaluate at most this many clips")
    parser.add_argument("--json-out", help="also write the results here")
    args = parser.parse_args(argv)
    if not (args.audio_vq or args.video_vq):
        parser.error("give --audio-vq and/or --video-vq")

    data = source.data_source(args.data, args.split)
    results = []
    for path, evaluate in ((args.audio_vq, evaluate_audio), (args.video_vq, evaluate_video)):
        if not path:
            continue
        tok = avpretrain.load_pretrained(path, random_init=args.random_init)
        t0 = time.perf_counter()
        r = {"export": str(path), "random_init": args.random_init, "split": args.split,
             **evaluate(tok, data, args.max_clips)}
        r["seconds"] = time.perf_counter() - t0
        results.append(r)
        score = (f"IS divergence {r['is_divergence']:.4f}" if r["modality"] == "audio"
                 else f"PSNR {r['psnr_db']:.2f} dB")
        print(f"{r['modality']:5s} {'random-init' if args.random_init else 'trained':11s} {score}  "
              f"perplexity {r['perplexity']:.1f}  usage {r['usage']:.3f} of {r['num_codes']} codes  "
              f"{r['clips']} clips / {r['frames']} frames of split {args.split!r} (first {SECONDS:g} s each; "
              f"{r['skipped_short']} shorter skipped)  [{path}]")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
