"""The ``avpretrain`` command (also ``python -m avpretrain``).

  avpretrain data build demo --out DATA
  avpretrain data build audio_folder --source DIR --out DATA   (also: audiocaps, clotho, audioset, av_folder, ...)
      [--beam [--beam-options runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=N]]
  avpretrain data stats --config=configs/m2d.py:size=tiny,runlocal --config.data.dir=DATA --workdir=W
  avpretrain data embed-captions --data DATA [--model NAME_OR_PATH] [--batch-size 256] [--shard i/n]
      [--field transcript [--asr-model DIR]]
  avpretrain data tokenize --audio-vq=E1 --video-vq=E2 --data=DATA --out=TOKENS [--shard i/n]
  avpretrain train --config=configs/m2d.py:size=tiny,runlocal --config.data.dir=DATA --workdir=W
  avpretrain export --workdir=W --out=E
  avpretrain eval linear-probe --model=E --data=DATA [--random-init]
  avpretrain eval zero-shot --model=E --data=DATA [--template "{label} can be heard"]
  avpretrain eval retrieval --model=E --data=DATA
  avpretrain eval classify --model=E --data=TOKENS [--split test] [--json-out F]
  avpretrain eval regress --model=E --data=EMOTION_DATA [--split test] [--json-out F]
  avpretrain eval layers --model=E --data=DATA --task regress|classify [--split test] [--out STEM]
  avpretrain eval few-shot --model=E[,E2,...] --data=ESD [--shots 2,4,8,16,24,32,64] [--trials 3] [--json-out F]
  avpretrain kfold --config=configs/finetune.py --folds 5 --by speaker --workdir=W --config.init.path=E \
      --config.data.dir=TOKENS [--loso]
  avpretrain sweep --config=configs/m2d.py:size=tiny,runlocal --workdir=W [--run]
  avpretrain bench --config=configs/m2d.py:size=base --config.batch_size=8 [--peak-tflops=989]
  avpretrain bench --tokenize --audio-vq=E1 --video-vq=E2 --data=DATA [--examples 128]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys


CONFIG_EPILOG = ("Any config value can be overridden with --config.KEY=VALUE (e.g. --config.total_steps=500 "
                 "--config.optim.base_lr=1e-3 --config.data.dir=DATA); unknown keys and out-of-range values "
                 "are refused before anything runs.")


def _config_args(parser, required: bool = True):
    parser.add_argument("--config", required=required,
                        help="config file and argument, e.g. configs/m2d.py:size=tiny,runlocal (configs/... is "
                        "also found in the installed project)")
    parser.epilog = CONFIG_EPILOG


def _int_at_least(minimum):
    """argparse type: an integer >= ``minimum``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: must be >= {minimum}")
        return value

    return parse


positive_int, non_negative_int = _int_at_least(1), _int_at_least(0)


def _output_dir(path, option) -> str:
    """``path`` for ``option`` (a directory that will be written): refused, before any work, when it
    is a file or cannot be created or written."""
    import pathlib
    import tempfile

    directory = pathlib.Path(path)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{option}={path} is a file, expected a directory")
    existing = next(p for p in (directory, *directory.absolute().parents) if p.exists())
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise ValueError(f"{option}={path}: not writable ({e.strerror or e} in {existing})") from None
    return path


def _distributed_args(parser):
    g = parser.add_argument_group("multi-process (auto-detected on TPU pods and SLURM)")
    g.add_argument("--coordinator", help="host:port of process 0")
    g.add_argument("--num-processes", type=positive_int, help="number of processes in the job")
    g.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes-1")
    g.add_argument("--local-devices", type=positive_int, help="force this many CPU devices per process")


def _load_config(args, overrides):
    from avpretrain import config as config_lib

    return config_lib.load_config(args.config, overrides)


def _init_distributed(args):
    from avpretrain import sharding

    sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.local_devices)


def cmd_train(args, overrides):
    config = _load_config(args, overrides)  # rejects unknown keys before anything compiles
    _output_dir(args.workdir, "--workdir")
    _init_distributed(args)
    from avpretrain import checkpoint, train

    try:
        result = train.train(config, args.workdir, stop_at=args.stop_at)
    except train.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except checkpoint.SaveFailedError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 4
    status = f"stopped ({result.stopped_by}), checkpoint saved" if result.stopped_by else "done"
    print(f"train {status}: step {result.step} workdir={args.workdir}")
    return 0


def cmd_export(args, overrides):
    from avpretrain import export

    _output_dir(args.out, "--out")
    from avpretrain import validation

    out = export.export(args.workdir, args.out, step=args.step)
    sel = validation.selected(args.workdir) if args.step is None else None
    what = f" ({validation.summary(args.workdir)})" if sel and sel.get("selected") else ""
    print(f"exported encoder to {out}{what}")


AV_BUILDERS = ("av_folder", "ravdess", "ravdess_audio", "crema_d")  # data_pipelines.<name>.build(source, out, ...)
EMOTION_BUILDERS = ("msp_podcast", "iemocap", "esd", "crema_d_audio")  # the emotion contract (data_pipelines.emotion)


def cmd_data_build(args, overrides):
    """Builds the dataset; the build prints its report (skipped files, warnings, counts)."""
    _output_dir(args.out, "--out")
    beam = {} if args.beam_options is None and not args.beam else {"beam_options": args.beam_options or ""}
    if beam:
        if args.name in ("demo", "demo_av", "demo_emotion"):
            raise ValueError(f"--beam builds datasets from a source folder; {args.name} is generated in process")
        from data_pipelines import common

        common.beam_pipeline_options(beam["beam_options"])  # a bad option fails before the source is listed
    if args.name == "demo":
        from data_pipelines import demo

        demo.build(args.out, num_clips=args.num_clips or 2400, seed=args.seed, sample_rate=args.sample_rate,
                   num_captions=args.num_captions)
    elif args.name == "demo_av":
        from data_pipelines import demo_av

        demo_av.build(args.out, num_clips=args.num_clips or demo_av.DEFAULT_NUM_CLIPS, seed=args.seed)
    elif args.name == "demo_emotion":
        from data_pipelines import demo_emotion

        demo_emotion.build(args.out, corpus=args.corpus, num_clips=args.num_clips or demo_emotion.DEFAULT_NUM_CLIPS,
                           seed=args.seed, split_by=args.split_by)
    else:
        if not args.source:
            raise ValueError(f"data build {args.name} needs --source DIR")
        import importlib

        module = importlib.import_module(f"data_pipelines.{args.name}")
        kwargs = {"seed": args.seed} if args.name in ("audio_folder", "av_folder") else {}
        if args.name in AV_BUILDERS:
            kwargs["max_no_face_fraction"] = args.max_no_face_fraction
        if args.name == "av_folder":
            kwargs["require_audio"] = not args.audio_optional
        if args.name == "iemocap":
            kwargs["classes"] = args.classes
        module.build(args.source, args.out, sample_rate=args.sample_rate, min_seconds=args.min_seconds,
                     allow_outside_source=args.allow_outside_source, **kwargs, **beam)


def cmd_data_show(args, overrides):
    from avpretrain.data import show

    _output_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    path = show.contact_sheet(args.data, args.out, split=args.split, n=args.n, seed=args.seed)
    print(f"contact sheet written to {path}")


def cmd_data_stats(args, overrides):
    config = _load_config(args, overrides)
    _output_dir(args.workdir, "--workdir")
    from avpretrain import frontend

    mean, std = frontend.load_or_compute_norm_stats(config, args.workdir)
    print(f"norm_stats mean={mean:.6f} std={std:.6f}")


def _shard_arg(text):
    """'i/n' with 0 <= i < n -> (i, n)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: shard i of n needs 0 <= i < n (0/4, 1/4, 2/4, 3/4)")
    return i, n


def cmd_data_embed_captions(args, overrides):
    from avpretrain.data import captions

    try:
        r = captions.embed_captions(args.data, model=args.model, batch_size=args.batch_size, shard=args.shard,
                                    device=args.device, field=args.field, asr_model=args.asr_model)
    except ImportError as e:
        raise SystemExit(f"error: {e}") from None
    i, n = args.shard
    what = "captions" if args.field == "captions" else "transcripts"
    if r.complete:
        print(f"{captions.NOUN[args.field]} embeddings in {r.directory}")
    else:
        print(f"shard {i}/{n} done: waiting for the other shards ({r.chunks_done} of {r.chunks_total} chunks present)")
    print(f"{r.sentences_per_s:.1f} sentences/s")
    print(f"embedded {r.total_captions if r.complete else r.num_captions} {what} dim={r.dim} model={r.model}")


def cmd_data_tokenize(args, overrides):
    from avpretrain.data import tokenize

    _output_dir(args.out, "--out")
    r = tokenize.tokenize(args.data, args.out, audio_vq=args.audio_vq, video_vq=args.video_vq, shard=args.shard,
                          chunk_records=args.chunk, read_threads=args.read_threads,
                          audio_frames_per_call=args.audio_frames_per_call,
                          video_frames_per_call=args.video_frames_per_call)
    i, n = args.shard
    if r.tokenized:
        what = "video" if args.video_vq else "audio"
        print(f"this call: {r.tokenized} clips in {r.seconds:.1f} s: {r.tokenized / r.seconds:.1f} clips/s, "
              f"{r.signal_seconds / r.seconds:.1f} {what}-seconds/s (waiting for the host "
              f"{r.timings['host_wait']:.1f} s, device {r.timings['device']:.1f} s, writing {r.timings['write']:.1f} s)")
    if r.skipped:
        print(f"skipped {len(r.skipped)} examples (listed in {tokenize.REPORT_NAME} when complete)")
    if r.complete:
        print(f"token dataset in {r.directory}")
    else:
        print(f"shard {i}/{n} done: waiting for the other shards ({r.chunks_done} of {r.chunks_total} chunks present)")
    print(r.summary())


def _write_json(path, result):
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def cmd_eval_linear_probe(args, overrides):
    from avpretrain.evaluate import downstream

    result = downstream.linear_probe(args.model, args.data, random_init=args.random_init, seed=args.seed,
                                     batch_size=args.batch_size)
    _write_json(args.json_out, result)
    if result["valid_from_train"]:
        from avpretrain.evaluate.linear_probe import FALLBACK_VALID_FRACTION

        print(f"no validation split in {args.data}: holding out {FALLBACK_VALID_FRACTION:.0%} of train for early stopping")
    if result["metric"] == "mAP" and result["test_classes_without_positives"]:
        print(f"multi-label: {result['test_classes_without_positives']} of {result['num_classes']} classes have no "
              f"positive in test and are left out of its mAP")
    print(f"linear-probe {result['metric']}={result['test_score']:.4f}")


def cmd_eval_regress(args, overrides):
    from avpretrain.evaluate import supervised

    result = supervised.regress(args.model, args.data, split=args.split, batch_size=args.batch_size)
    _write_json(args.json_out, result)
    dims = result["dimensions"]
    print(f"{args.data} split {args.split}: {result['clips']} clips")
    for d in dims:
        print(f"  {d:10s} ccc={result[f'ccc_{d}']:.4f} pearson={result[f'pearson_{d}']:.4f} "
              f"mse={result[f'mse_{d}']:.4f} (n={result[f'n_{d}']})")
    print("regress ccc " + " ".join(f"{d}={result[f'ccc_{d}']:.4f}" for d in dims))


def cmd_eval_layers(args, overrides):
    from avpretrain.evaluate import layers

    result = layers.analyse(args.model, args.data, task=args.task, split=args.split, batch_size=args.batch_size,
                            out=args.out)
    print(f"{args.data}: {result['clips']} clips; a linear probe per encoder layer ({result['layers']} layers), "
          f"scored on {args.split}")
    for name, values in result["per_layer"].items():
        print(f"  {name:10s} " + " ".join(f"{v:.3f}" for v in values))
    print(f"plot: {result['png']}  figures: {result['json']}")
    print(f"layers {args.task} " + " ".join(f"{k}={b['value']:.4f}@{b['layer']}" for k, b in result["best"].items()))


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 2,4,8") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def cmd_eval_few_shot(args, overrides):
    import pathlib

    from avpretrain.evaluate import few_shot

    models = [m for m in args.model.split(",") if m]
    png = args.png or str(pathlib.Path(models[0]) / "eval" / "few-shot.png")
    result = few_shot.evaluate(models, args.data, shots=args.shots, trials=args.trials, seed=args.seed,
                               emotions=[e for e in (args.emotions or "").split(",") if e], batch_size=args.batch_size,
                               png=png)
    _write_json(args.json_out, result)
    print(f"{args.data}: {len(result['speakers'])} speakers x {len(result['emotions'])} emotions "
          f"({', '.join(result['emotions'])}) x {len(result['shots'])} k x {args.trials} trials per model")
    for name, per_k in result["models"].items():
        print(f"{name}: " + " ".join(f"k{k}: acc={v['accuracy']:.4f} macro-f1={v['macro_f1']:.4f} "
                                     f"weighted-f1={v['weighted_f1']:.4f};" for k, v in per_k.items()))
    print(f"plot: {result['png']}")
    print(f"few-shot trials={result['num_trials']} models={len(result['models'])} macro-f1 "
          + " ".join(f"k{k}={v['macro_f1']:.4f}" for k, v in result["mean"].items()))


def cmd_eval_classify(args, overrides):
    from avpretrain.evaluate import classify, supervised

    result = supervised.classify(args.model, args.data, split=args.split, batch_size=args.batch_size, png=args.png)
    _write_json(args.json_out, result)
    print(f"confusion matrix: {result['confusion_png']}")
    if "left_out" in result:
        print(f"classes matched by name; left out: {result['left_out']['clips']} clips of "
              f"{result['left_out']['classes'] or 'no'} classes the model does not have")
    for line in classify.format_report(result):
        print(line)


def cmd_kfold(args, overrides):
    from avpretrain.evaluate import kfold

    _output_dir(args.workdir, "--workdir")
    kfold.run(args.config, overrides, args.workdir, num_folds=args.folds, by=args.by, loso=args.loso,
              seed=args.seed, batch_size=args.batch_size)
    return 0  # a fold stopped by a signal is checkpointed: the same command resumes it


def cmd_eval_zero_shot(args, overrides):
    from avpretrain.evaluate import audio_text

    result = audio_text.zero_shot(args.model, args.data, template=args.template, split=args.split,
                                  batch_size=args.batch_size)
    _write_json(args.json_out, result)
    if result["multi_label"]:
        left_out = result["classes_without_positives"]
        note = f" ({left_out} without a positive, left out of the mAP)" if left_out else ""
        print(f"zero-shot multi-label over {result['num_examples']} {args.split} clips, {len(result['prompts'])} "
              f"classes{note}: top-1 prompt is one of the clip's classes for {result['top1_hit']:.4f} of the clips "
              f"(mAP of a random ranking ≈ {result['prevalence']:.4f})")
        print(f"zero-shot mAP={result['mAP']:.4f}")
        return
    print(f"zero-shot mAP={result['mAP']:.4f} over {result['num_examples']} {args.split} clips, "
          f"{len(result['prompts'])} classes (chance accuracy {result['chance']:.4f})")
    print(f"zero-shot accuracy={result['accuracy']:.4f}")


def cmd_eval_retrieval(args, overrides):
    from avpretrain.evaluate import audio_text, retrieval

    result = audio_text.retrieval(args.model, args.data, split=args.split, batch_size=args.batch_size)
    _write_json(args.json_out, result)
    print(f"{result['num_audios']} {args.split} clips, {result['num_captions']} captions "
          f"({result['caption_embeddings']} sentence embeddings)")
    print(retrieval.format_retrieval_line(result))


def cmd_sweep(args, overrides):
    from avpretrain import config as config_lib

    runs = config_lib.load_sweep(args.config, overrides)
    for i, run in enumerate(runs):
        name = "_".join(f"{k.split('.')[-1]}={v}" for k, v in run.items())
        workdir = os.path.join(args.workdir, f"{i:02d}_{name}")
        run_overrides = list(overrides) + [f"--config.{k}={v if isinstance(v, str) else repr(v)}"
                                           for k, v in run.items()]
        config_lib.load_config(args.config, run_overrides)  # every run's keys are checked first
        command = ["avpretrain", "train", f"--config={args.config}", *run_overrides, f"--workdir={workdir}"]
        print(shlex.join(command))
        if args.run:
            import subprocess

            rc = subprocess.run([sys.executable, "-m", "avpretrain", *command[1:]]).returncode
            if rc:
                print(f"error: sweep run {i} ({workdir}) exited with status {rc}; runs before it are done, "
                      "the same command resumes", file=sys.stderr)
                return rc


def cmd_bench(args, overrides):
    if args.tokenize:
        if args.config or overrides:
            raise ValueError("bench --tokenize takes --data/--audio-vq/--video-vq, not --config")
        if not args.data:
            raise ValueError("bench --tokenize needs --data (an audiovisual dataset directory)")
        from avpretrain import bench

        bench.run_tokenize(args.data, audio_vq=args.audio_vq, video_vq=args.video_vq, examples=args.examples,
                           read_threads=args.read_threads)
        return
    if not args.config:
        raise ValueError("bench needs --config (or --tokenize with --data and the tokenizer exports)")
    config = _load_config(args, overrides)
    _init_distributed(args)
    from avpretrain import bench

    bench.run(config, steps=args.steps, warmup=args.warmup, peak_tflops=args.peak_tflops,
              data_batches=args.data_batches)


def cmd_aot(args, overrides):
    config = _load_config(args, overrides)
    from avpretrain import aot, bench

    with config.unlocked():
        bench.prepare_without_data(config)  # widths read from the data, or stand-ins without it
    return 0 if aot.run(config, args.topology) else 1


def cmd_report(args, overrides):
    from avpretrain import report

    {"clap": report.clap_report, "av": report.av_report, "m2d": report.demo_report,
     "emotion": report.emotion_report, "emotion-xcorpus": report.emotion_xcorpus_report}[args.kind](args.run_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avpretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain (resumes from the workdir's latest checkpoint)")
    _config_args(t)
    t.add_argument("--workdir", required=True,
                   help="run directory: config.json, checkpoints/, metrics.jsonl, tensorboard/, norm_stats.json")
    t.add_argument("--stop-at", type=positive_int,
                   help="end this run at this step (checkpointed); the schedule is unchanged")
    _distributed_args(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="write a params-only encoder from a training workdir")
    e.add_argument("--workdir", required=True, help="a training workdir (avpretrain train --workdir)")
    e.add_argument("--out", required=True, help="directory to write the export into (config.json, params/)")
    e.add_argument("--step", type=positive_int, help="export this checkpointed step (default: the step selected by validation, "
                   "else the latest)")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    b = d.add_parser("build", help="build a dataset (TFDS ArrayRecord)")
    b.add_argument("name", choices=["demo", "audio_folder", "audiocaps", "clotho", "audioset", "demo_av",
                                    "demo_emotion", *AV_BUILDERS, *EMOTION_BUILDERS])
    b.add_argument("--out", required=True, help="dataset directory (TFDS data_dir)")
    b.add_argument("--source", help="audio_folder: the folder (class sub-folders or manifest.csv); "
                   "audiocaps/clotho: the downloaded corpus (caption CSVs + audio)")
    b.add_argument("--sample-rate", type=positive_int, default=16000, help="stored sample rate (Hz)")
    b.add_argument("--seed", type=int, default=0, help="seed of the demo corpus / of the 80/10/10 split")
    b.add_argument("--num-clips", type=positive_int, help="demo / demo_av / demo_emotion: number of clips (default 2400 / 1600 / 600)")
    b.add_argument("--num-captions", type=non_negative_int, default=3, help="demo: captions per clip")
    b.add_argument("--min-seconds", type=float, default=0.5,
                   help="audio_folder/audiocaps/clotho: shorter files are skipped")
    b.add_argument("--allow-outside-source", action="store_true",
                   help="use listed audio paths that lead outside --source (refused by default)")
    b.add_argument("--max-no-face-fraction", type=float, default=0.5,
                   help="av_folder/ravdess/crema_d: skip a video with no face found in more than this share of frames")
    b.add_argument("--corpus", choices=("studio", "phone", "room"), default="studio",
                   help="demo_emotion: which of its corpora (speakers, sentences, labels, channel differ)")
    b.add_argument("--split-by", choices=("speaker", "clip"), default="speaker",
                   help="demo_emotion: speaker-disjoint splits, or every speaker in every split (ESD's layout, "
                        "for the few-shot protocol)")
    b.add_argument("--classes", choices=("all", "four"), default="all",
                   help="iemocap: every category, or the usual four (neutral, happy incl. excited, sad, angry)")
    b.add_argument("--beam", action="store_true",
                   help="decode and write with an Apache Beam pipeline (DirectRunner in process unless --beam-options "
                        "says otherwise); for every builder with a --source")
    b.add_argument("--beam-options", metavar="K=V,...",
                   help="Beam pipeline options (implies --beam), e.g. runner=DirectRunner,direct_running_mode="
                        "multi_processing,direct_num_workers=8, or a Dataflow/Flink/Spark runner's options")
    b.add_argument("--audio-optional", action="store_true",
                   help="av_folder: keep videos without an audio stream (video-only examples)")
    b.set_defaults(func=cmd_data_build)
    sh = d.add_parser("show", help="a contact sheet PNG of a few examples: face frames over time, log-mel, labels")
    sh.add_argument("data", help="dataset directory (as for data build --out)")
    sh.add_argument("--split", help="split to draw from (default: train, else the first)")
    sh.add_argument("--n", type=positive_int, default=8, help="number of examples")
    sh.add_argument("--seed", type=int, default=0, help="which examples (a seeded draw)")
    sh.add_argument("--out", required=True, help="PNG file to write")
    sh.set_defaults(func=cmd_data_show)
    s = d.add_parser("stats", help="normalisation mean/std of the log-mel from random crops")
    _config_args(s)
    s.add_argument("--workdir", required=True, help="norm_stats.json is stored here")
    s.set_defaults(func=cmd_data_stats)
    c = d.add_parser("embed-captions", help="sentence embeddings of the captions, stored beside the dataset")
    c.add_argument("--data", required=True, help="dataset directory (as for data build --out)")
    c.add_argument("--model", default="all-MiniLM-L6-v2",
                   help="sentence-transformers model: a local directory or a name in the local HF cache "
                   "(default: the packaged all-MiniLM-L6-v2)")
    c.add_argument("--batch-size", type=positive_int, default=256,
                   help="sentences per forward pass (256: about 2x the throughput of 64 on CPU)")
    c.add_argument("--shard", type=_shard_arg, default=(0, 1), metavar="i/n",
                   help="embed chunks k with k %% n == i; the shard that completes the set merges it")
    c.add_argument("--device", default="cpu", help="torch device of the text (and ASR) model, e.g. cuda")
    c.add_argument("--field", choices=["captions", "transcript"], default="captions",
                   help="what to embed: the captions (M2D-CLAP), or an emotion corpus's transcripts (audio-text "
                   "fusion, configs/finetune.py:text=1)")
    c.add_argument("--asr-model", default=None, metavar="DIR",
                   help="--field transcript: a local transformers ASR model directory (Whisper, wav2vec 2.0 CTC, ...) "
                   "that transcribes the records without a transcript; nothing is downloaded")
    c.set_defaults(func=cmd_data_embed_captions)

    tk = d.add_parser("tokenize", help="VQ-VAE codes of every example (a token dataset, TFDS ArrayRecord)")
    tk.add_argument("--data", required=True, help="dataset directory (as for data build --out)")
    tk.add_argument("--out", required=True, help="directory for the token dataset (empty, or this job's)")
    tk.add_argument("--audio-vq", help="an export of configs/vqvae_audio.py")
    tk.add_argument("--video-vq", help="an export of configs/vqvae_video.py (needs an audiovisual dataset)")
    tk.add_argument("--shard", type=_shard_arg, default=(0, 1), metavar="i/n",
                    help="tokenize chunks k with k %% n == i (one per host); the shard that completes the set "
                    "writes the metadata")
    tk.add_argument("--chunk", type=positive_int, default=128,
                    help="examples per chunk: the unit of resuming and of the output shard files")
    tk.add_argument("--read-threads", type=positive_int, default=8, help="threads reading and decoding examples")
    tk.add_argument("--audio-frames-per-call", type=positive_int, default=2048,
                    help="audio frames (20 ms) per device call")
    tk.add_argument("--video-frames-per-call", type=positive_int, default=256, help="face frames per device call")
    tk.set_defaults(func=cmd_data_tokenize)

    v = sub.add_parser("eval", help="downstream evaluation").add_subparsers(dest="eval_command", required=True)
    lp = v.add_parser("linear-probe", help="linear evaluation of frozen scene embeddings")
    lp.add_argument("--model", required=True, help="an exported encoder directory")
    lp.add_argument("--data", required=True, help="a dataset directory with train/validation/test")
    lp.add_argument("--random-init", action="store_true", help="the same architecture, randomly initialised")
    lp.add_argument("--seed", type=int, default=0, help="seed of the probe's init and shuffling (and random init)")
    lp.add_argument("--batch-size", type=positive_int, default=32, help="clips read at a time; chunks per encoder call")
    lp.add_argument("--json-out", help="also write the result as JSON")
    lp.set_defaults(func=cmd_eval_linear_probe)
    cl = v.add_parser("classify", help="a fine-tuned classifier on a split: per-class figures, confusion matrix, "
                      "accuracy / UAR / WAR / macro-F1 / weighted-F1")
    rg = v.add_parser("regress", help="a fine-tuned regression model (configs/finetune.py:task=regress) on a split: "
                      "CCC, Pearson and MSE per rated dimension")
    for cmd, model_help, data_help, func in (
            (cl, "an export of a classifier (avpretrain export of a fine-tuning run)",
             "a dataset with the model's inputs (e.g. a token dataset)", cmd_eval_classify),
            (rg, "an export of a task=regress fine-tuning run",
             "an emotion corpus (data_pipelines/emotion.py) with the model's inputs", cmd_eval_regress)):
        cmd.add_argument("--model", required=True, help=model_help)
        cmd.add_argument("--data", required=True, help=data_help)
        cmd.add_argument("--split", default="test")
        cmd.add_argument("--batch-size", type=positive_int, default=64, help="windows per predict call")
        cmd.add_argument("--json-out", help="write the figures as JSON")
        cmd.set_defaults(func=func)
    cl.add_argument("--png", help="confusion-matrix PNG (default: <model>/eval/confusion-<split>.png)")
    ly = v.add_parser("layers", help="layer analysis: a linear probe on every encoder layer (frozen), the metric per "
                      "layer and per dimension as a PNG and JSON")
    ly.add_argument("--model", required=True, help="an exported M2D-family encoder")
    ly.add_argument("--data", required=True, help="a dataset with train (+ validation) and the scored split")
    ly.add_argument("--task", required=True, choices=("regress", "classify"),
                    help="regress: CCC per rating (arousal/valence/dominance); classify: UAR and accuracy")
    ly.add_argument("--split", default="test")
    ly.add_argument("--batch-size", type=positive_int, default=64, help="chunks per encoder call")
    ly.add_argument("--out", help="path stem of the PNG and JSON (default: <model>/eval/layers-<task>-<split>)")
    ly.set_defaults(func=cmd_eval_layers)
    fs = v.add_parser("few-shot", help="the few-shot protocol (Chen & Yu): per speaker and emotion one-vs-rest "
                      "k-shot tasks, all trials batched; the last line's macro-F1 per k is the mean over the given "
                      "models (one model: its own)")
    fs.add_argument("--model", required=True, help="exported M2D-family encoder(s), comma-separated")
    fs.add_argument("--data", required=True, help="a dataset with speakers and per-speaker train / validation / test "
                    "clips (ESD: avpretrain data build esd)")
    fs.add_argument("--shots", type=_int_list, default=(2, 4, 8, 16, 24, 32, 64), help="k values (even)")
    fs.add_argument("--trials", type=positive_int, default=3, help="trials per speaker, emotion and k (seeded)")
    fs.add_argument("--seed", type=int, default=0)
    fs.add_argument("--emotions", default="", help="target emotions by name, comma-separated (default: every class)")
    fs.add_argument("--batch-size", type=positive_int, default=64, help="chunks per encoder call")
    fs.add_argument("--json-out", help="write every figure (per model, k and trial) as JSON")
    fs.add_argument("--png", help="the macro-F1 per k plot (default: <first model>/eval/few-shot.png)")
    fs.set_defaults(func=cmd_eval_few_shot)
    zs = v.add_parser("zero-shot", help="zero-shot classification with an audio-language model")
    zs.add_argument("--template", default="{label} can be heard", help="class prompt; {label} = the class name")
    rt = v.add_parser("retrieval", help="audio-text retrieval (R@1/5/10, mAP@10) with an audio-language model")
    for cmd, func in ((zs, cmd_eval_zero_shot), (rt, cmd_eval_retrieval)):
        cmd.add_argument("--model", required=True, help="an exported M2D-CLAP / M2D2 model directory")
        cmd.add_argument("--data", required=True, help="a dataset directory")
        cmd.add_argument("--split", default="test", help="the dataset split to evaluate")
        cmd.add_argument("--batch-size", type=positive_int, default=32, help="clips read at a time; chunks per encoder call")
        cmd.add_argument("--json-out", help="also write the result as JSON")
        cmd.set_defaults(func=func)

    k = sub.add_parser("kfold", help="speaker-independent k-fold fine-tuning (resumable): one run per fold, "
                       "test figures per fold and their mean ± std")
    _config_args(k)
    k.add_argument("--workdir", required=True, help="folds.json, fold-<i>/ runs, kfold.json")
    k.add_argument("--folds", type=positive_int, default=5, help="number of folds (>= 3)")
    k.add_argument("--by", default="speaker", choices=["speaker", "session"],
                   help="what no two folds share: speakers, or sessions (<session>_<speaker> ids, IEMOCAP)")
    k.add_argument("--loso", action="store_true", help="leave one speaker (or session, --by session) out: one fold each")
    k.add_argument("--seed", type=int, default=0, help="how speakers are shuffled into folds")
    k.add_argument("--batch-size", type=positive_int, default=64, help="windows per predict call in the test")
    k.set_defaults(func=cmd_kfold)
    w = sub.add_parser("sweep", help="print (or --run) the runs of the config's get_sweep")
    _config_args(w)
    w.add_argument("--workdir", required=True, help="each run gets a sub-directory")
    w.add_argument("--run", action="store_true", help="run them one after another here")
    w.set_defaults(func=cmd_sweep)

    n = sub.add_parser("bench", help="step time, examples/s, TFLOP/s, MFU and input-pipeline throughput; "
                       "--tokenize: the offline tokenization job")
    _config_args(n, required=False)  # not with --tokenize
    n.add_argument("--steps", type=positive_int, default=10, help="timed steps (after warm-up)")
    n.add_argument("--warmup", type=positive_int, default=2, help="untimed steps first (compilation included)")
    n.add_argument("--peak-tflops", type=float, default=0.0, help="per-device peak TFLOP/s for MFU (default: the datasheet figure, or cores x clock x FMA width on CPUs)")
    n.add_argument("--data-batches", type=non_negative_int, default=20, help="batches for the input-pipeline figure (0: skip)")
    g = n.add_argument_group("the tokenization job (avpretrain data tokenize) instead of a training step")
    g.add_argument("--tokenize", action="store_true", help="clips/s and video-seconds/s: host alone, device alone, "
                   "end to end")
    g.add_argument("--data", help="dataset directory")
    g.add_argument("--audio-vq", help="an export of configs/vqvae_audio.py")
    g.add_argument("--video-vq", help="an export of configs/vqvae_video.py")
    g.add_argument("--examples", type=positive_int, default=128, help="training clips to tokenize")
    g.add_argument("--read-threads", type=positive_int, default=8, help="threads reading and decoding examples")
    _distributed_args(n)
    n.set_defaults(func=cmd_bench)

    a = sub.add_parser("aot", help="will it fit? compile the sharded train step for a TPU topology here (libtpu, "
                       "no TPU): per-device memory vs HBM, FLOPs, collectives; exit 1 when it does not fit")
    a.add_argument("--config", required=True)
    a.add_argument("--topology", required=True, help="TYPE:SHAPE, e.g. v5e:16x16, v5p:4x4x8, v4:2x2x4, v6e:8x8")
    a.set_defaults(func=cmd_aot)
    r = sub.add_parser("report", help="demo report: loss curve + probe bars PNG, summary line")
    r.add_argument("--run-dir", required=True)
    r.add_argument("--kind", choices=["m2d", "clap", "av", "emotion", "emotion-xcorpus"], default="m2d",
                   help="m2d: `make demo`; clap: `make demo-clap`; av: `make demo-av`; emotion: `make demo-emotion`")
    r.set_defaults(func=cmd_report)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    if overrides and not hasattr(args, "config"):
        parser.error(f"{args.command} takes no --config.* overrides")
    from avpretrain import runtime

    runtime.setup()
    try:
        return args.func(args, overrides) or 0
    except (KeyError, ValueError, TypeError, FileNotFoundError) as e:
        if os.environ.get("AVP_DEBUG"):
            raise
        print(f"error: {one_line(e.args[0] if isinstance(e, KeyError) and e.args else e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("AVP_DEBUG"):
            raise
        print("interrupted", file=sys.stderr)
        return 130


def one_line(message, limit: int = 400) -> str:
    """A message's first line, cut at ``limit`` characters (library errors can be kilobytes of tree
    dumps); what was left out is counted, and AVP_DEBUG=1 shows it all."""
    text = str(message).strip()
    first = text.splitlines()[0] if text else ""
    cut = first[:limit]
    hidden = len(text) - len(cut)
    return cut + (f" [... {hidden} more characters; AVP_DEBUG=1 shows all]" if hidden > 0 else "")
