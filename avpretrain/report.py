"""The demo's report: a PNG (loss curve + linear-probe bars) and the summary line."""
from __future__ import annotations

import json
import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def demo_report(run_dir: str) -> str:
    run = pathlib.Path(run_dir)
    records = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines() if line]
    by_step = {r["step"]: r["loss"] for r in records}  # a resumed run may repeat steps: keep the last
    probes = {name: json.loads((run / f"probe_{name}.json").read_text())["test_accuracy"]
              for name in ("pretrained", "random-init")}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = sorted(by_step)
    ax1.plot(steps, [by_step[s] for s in steps])
    ax1.set(xlabel="step", ylabel="M2D loss (2 − 2·cos)", title="pretraining loss")
    ax1.grid(alpha=0.3)
    bars = ax2.bar(list(probes), [100 * v for v in probes.values()], color=["tab:blue", "tab:gray"])
    ax2.bar_label(bars, fmt="%.1f")
    ax2.set(ylabel="test accuracy (%)", ylim=(0, 100), title="linear probe, demo test split")
    fig.tight_layout()
    png = run / "demo_report.png"
    fig.savefig(png, dpi=100)
    line = (f"demo: linear-probe accuracy pretrained={probes['pretrained']:.4f} "
            f"random-init={probes['random-init']:.4f}")
    print(f"report: {png}")
    print(line)
    return line


def _metric_curve(path: pathlib.Path, key: str):
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    by_step = {r["step"]: r[key] for r in records if key in r}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def clap_report(run_dir: str) -> str:
    """`make demo-clap`'s report: CLAP loss curves of both stages, zero-shot and R@1 bars, summary line."""
    run = pathlib.Path(run_dir)
    stages = ("stage1", "stage2")
    zero_shot = {s: json.loads((run / s / "zero_shot.json").read_text()) for s in stages}
    retrieval = {s: json.loads((run / s / "retrieval.json").read_text()) for s in stages}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for s in stages:
        ax1.plot(*_metric_curve(run / s / "metrics.jsonl", "clap_loss"), label=f"{s} CLAP loss")
    ax1.set(xlabel="step", ylabel="symmetric InfoNCE", title="contrastive loss (global batch)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    names = ["zero-shot acc", "a2t R@1", "t2a R@1", "mAP@10"]
    width = 0.38
    for i, s in enumerate(stages):
        values = [zero_shot[s]["accuracy"], retrieval[s]["a2t_R@1"], retrieval[s]["t2a_R@1"], retrieval[s]["mAP@10"]]
        bars = ax2.bar([j + (i - 0.5) * width for j in range(len(names))], [100 * v for v in values], width, label=s)
        ax2.bar_label(bars, fmt="%.0f", fontsize=8)
    ax2.hlines(100 * zero_shot["stage1"]["chance"], -0.5, 0.5, color="gray", ls="--", lw=1, label="zero-shot chance")
    ax2.set_xticks(range(len(names)), names)
    ax2.set(ylabel="%", ylim=(0, 100), title="held-out test clips")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    png = run / "demo_clap_report.png"
    fig.savefig(png, dpi=100)
    for s in stages:
        r = retrieval[s]
        print(f"{s}: zero-shot accuracy={zero_shot[s]['accuracy']:.4f} mAP={zero_shot[s]['mAP']:.4f}; retrieval "
              f"a2t R@1={r['a2t_R@1']:.4f} R@10={r['a2t_R@10']:.4f} t2a R@1={r['t2a_R@1']:.4f} "
              f"R@10={r['t2a_R@10']:.4f} mAP@10={r['mAP@10']:.4f}")
    line = (f"demo-clap: zero-shot stage1={zero_shot['stage1']['accuracy']:.4f} "
            f"stage2={zero_shot['stage2']['accuracy']:.4f} retrieval-R@1 stage1={retrieval['stage1']['a2t_R@1']:.4f} "
            f"stage2={retrieval['stage2']['a2t_R@1']:.4f}")
    print(f"report: {png}")
    print(line)
    return line


AV_CONDITIONS = (("av", "pretrained audio+video"), ("audio", "pretrained audio"), ("video", "pretrained video"),
                 ("random-init", "random init audio+video"))


def av_report(run_dir: str) -> str:
    """`make demo-av`'s report: VQ-MAE-AV pretraining losses and masked-code accuracy, the k-fold test
    accuracy of each condition (mean ± std over folds, folds as dots), the pooled confusion matrix
    of the audio+video condition; the summary line."""
    from avpretrain.evaluate import classify

    run = pathlib.Path(run_dir)
    kfold = {c: json.loads((run / f"kfold_{c}" / "kfold.json").read_text()) for c, _ in AV_CONDITIONS}
    metrics = run / "pretrain" / "metrics.jsonl"

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for key, label in (("ce_video", "CE masked video codes"), ("ce_audio", "CE masked audio codes"),
                       ("nt_xent", "NT-Xent audio↔video")):
        axes[0].plot(*_metric_curve(metrics, key), label=label)
    axes[0].set(xlabel="step", ylabel="loss", title="VQ-MAE-AV pretraining")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    for key, label in (("acc_video", "video"), ("acc_audio", "audio")):
        steps, values = _metric_curve(metrics, key)
        axes[1].plot(steps, [100 * v for v in values], label=label)
    axes[1].set(xlabel="step", ylabel="%", title="masked-code accuracy (training batches)")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    names = [label for _, label in AV_CONDITIONS]
    means = [100 * kfold[c]["accuracy"]["mean"] for c, _ in AV_CONDITIONS]
    stds = [100 * kfold[c]["accuracy"]["std"] for c, _ in AV_CONDITIONS]
    bars = axes[2].bar(range(len(names)), means, yerr=stds, capsize=4,
                       color=["tab:blue", "tab:green", "tab:orange", "tab:gray"])
    axes[2].bar_label(bars, fmt="%.1f", padding=2)
    for i, (c, _) in enumerate(AV_CONDITIONS):
        folds = [100 * f["accuracy"] for f in kfold[c]["per_fold"]]
        axes[2].scatter([i + 0.25] * len(folds), folds, s=10, color="k", zorder=3)
    chance = 100 / len(kfold["av"]["class_names"])
    axes[2].axhline(chance, color="gray", ls="--", lw=1, label=f"chance {chance:.0f}%")
    axes[2].set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    axes[2].set(ylabel="test accuracy (%)", ylim=(0, 100),
                title=f"{kfold['av']['folds']}-fold speaker-independent (mean ± std)")
    axes[2].legend(fontsize=8)
    classify.plot_confusion(axes[3], np.asarray(kfold["av"]["confusion"]), kfold["av"]["class_names"],
                            title="audio+video, test predictions of all folds")
    fig.tight_layout()
    png = run / "demo_av_report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    for c, label in AV_CONDITIONS:
        k = kfold[c]
        print(f"{label}: accuracy={k['accuracy']['mean']:.4f}±{k['accuracy']['std']:.4f} "
              f"uar={k['uar']['mean']:.4f}±{k['uar']['std']:.4f} macro-f1={k['macro_f1']['mean']:.4f}")
    line = "demo-av: kfold accuracy " + " ".join(f"{c}={kfold[c]['accuracy']['mean']:.4f}" for c, _ in AV_CONDITIONS)
    print(f"report: {png}")
    print(line)
    return line


EMOTION_MODELS = (("teacher", "tab:blue"), ("student", "tab:orange"), ("student+text", "tab:green"))


def emotion_report(run_dir: str) -> str:
    """`make demo-emotion`'s report: the teacher's layer analysis, the distillation losses, the test
    CCC per dimension of the three fine-tuned models (with the encoders' parameter counts); the
    summary line."""
    from avpretrain import config as config_lib
    from avpretrain.models import distill

    run = pathlib.Path(run_dir)
    scores = {m: json.loads((run / f"regress_{m}.json").read_text()) for m, _ in EMOTION_MODELS}
    layers = json.loads((run / "layers_teacher.json").read_text())
    student_config = config_lib.from_json((run / "student" / "config.json").read_text())
    params = {"teacher": distill.encoder_params(student_config.teacher.model),
              "student": distill.encoder_params(student_config.model)}
    pairs = ", ".join(f"{s}→{t}" for s, t in distill.pairs_from_config(student_config))

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    per_layer = layers["per_layer"]
    x = np.arange(1, layers["layers"] + 1)
    for name, values in per_layer.items():
        axes[0].plot(x, values, marker="o", label=name)
    axes[0].set_xticks(x)
    axes[0].set(xlabel="teacher block", ylabel="test CCC (linear probe)", title="layer analysis of the teacher")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    metrics = run / "student" / "metrics.jsonl"
    keys = sorted({k for line in metrics.read_text().splitlines() if line for k in json.loads(line)
                   if k.startswith("loss_")})
    for key in keys:
        axes[1].plot(*_metric_curve(metrics, key), label=key.replace("loss_t", "teacher block ").replace("loss_out", "output"))
    axes[1].set(xlabel="step", ylabel="L1 − log σ(cos)", title=f"distillation (student→teacher: {pairs})")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    dims = list(scores["teacher"]["dimensions"])
    width = 0.8 / len(EMOTION_MODELS)
    for i, (m, color) in enumerate(EMOTION_MODELS):
        values = [scores[m][f"ccc_{d}"] for d in dims]
        label = f"{m} ({params['teacher' if m == 'teacher' else 'student'] / 1e3:.0f}k encoder params)"
        bars = axes[2].bar(np.arange(len(dims)) + (i - 1) * width, values, width, color=color, label=label)
        axes[2].bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    axes[2].set_xticks(np.arange(len(dims)), dims)
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set(ylabel="test CCC", ylim=(min(0, axes[2].get_ylim()[0]), 1),
                title=f"fine-tuned A/V/D, test speaker (n={scores['teacher']['clips']})")
    axes[2].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    png = run / "demo_emotion_report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    print(f"student: {params['student']:,} encoder params = {100 * params['student'] / params['teacher']:.1f} % of "
          f"the teacher's {params['teacher']:,}; targets student→teacher block {pairs}")
    for m, _ in EMOTION_MODELS:
        print(f"{m}: test ccc " + " ".join(f"{d}={scores[m][f'ccc_{d}']:.4f}" for d in dims))
    line = "demo-emotion: ccc " + " ".join(
        f"{d} " + " ".join(f"{m}={scores[m][f'ccc_{d}']:.4f}" for m, _ in EMOTION_MODELS) for d in ("valence", "arousal"))
    print(f"report: {png}")
    print(line)
    return line


def _encoder_label(path) -> str:
    """"plain" for an encoder that was not pre-finetuned, else "pre-finetuned: a+b" (its corpora)."""
    meta = json.loads((pathlib.Path(path) / "config.json").read_text())
    config = meta.get("config", meta)
    if config.get("method") != "prefinetune":
        return "plain"
    return "pre-finetuned: " + "+".join(config["prefinetune"]["corpora"])


def emotion_xcorpus_report(run_dir: str) -> str:
    """`make demo-emotion-xcorpus`'s report: few-shot macro-F1 per k of the plain and pre-finetuned
    encoders, target UAR/WAR of Emo-DNA and of its source-only baseline, the adaptation's selected
    share and thresholds per step; the summary line. "prefinetuned" in it is the encoder pre-finetuned
    on every corpus (the most corpora), fixed before any result."""
    run = pathlib.Path(run_dir)
    shots = json.loads((run / "few_shot.json").read_text())
    labels = {path: _encoder_label(path) for path in shots["models"]}
    scores = {m: json.loads((run / f"classify_{m}.json").read_text()) for m in ("source_only", "adapted")}
    plain = next(p for p, label in labels.items() if label == "plain")
    full = max((p for p, label in labels.items() if label != "plain"), key=lambda p: labels[p].count("+"))

    def f1(path, k):
        return shots["models"][path][str(k)]["macro_f1"]

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ks = shots["shots"]
    for path, label in labels.items():
        per_k = shots["models"][path]
        axes[0].errorbar(ks, [per_k[str(k)]["macro_f1"] for k in ks], yerr=[per_k[str(k)]["macro_f1_std"] for k in ks],
                         marker="o", capsize=3, label=label, lw=2.5 if path in (plain, full) else 1)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(ks, [str(k) for k in ks])
    axes[0].set(xlabel="shots k", ylabel="test macro-F1 (mean ± std over trials)",
                title=f"few-shot on {pathlib.Path(shots['data']).name}: {len(shots['speakers'])} speakers × "
                      f"{len(shots['emotions'])} emotions")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    names = ("source_only", "adapted")
    for i, metric in enumerate(("uar", "war")):
        bars = axes[1].bar(np.arange(2) + (i - 0.5) * 0.38, [scores[m][metric] for m in names], 0.38,
                           label=metric.upper())
        axes[1].bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    chance = 1 / len(scores["adapted"]["per_class"])
    axes[1].axhline(chance, color="k", lw=0.8, ls="--", label=f"chance {chance:.2f}")
    axes[1].set_xticks(np.arange(2), ["source only", "Emo-DNA"])
    axes[1].set(ylim=(0, 1), ylabel="target test", title=f"{pathlib.Path(scores['adapted']['data']).name} test "
                f"(n={sum(c['support'] for c in scores['adapted']['per_class'])}); no target label in training")
    axes[1].legend(fontsize=8)
    metrics = run / "adapted" / "metrics.jsonl"
    axes[2].plot(*_metric_curve(metrics, "selected"), color="k", lw=2, label="selected target share")
    for key in sorted({k for line in metrics.read_text().splitlines() if line for k in json.loads(line)
                       if k.startswith("thr_")}):
        axes[2].plot(*_metric_curve(metrics, key), lw=1, label=f"threshold {key[4:]}")
    axes[2].set(xlabel="step", ylim=(0, 1.02), title="Emo-DNA: adaptive thresholds, selected pseudo-labels")
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    png = run / "demo_emotion_xcorpus_report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    for path, label in labels.items():
        print(f"few-shot {label}: macro-f1 " + " ".join(f"k{k}={f1(path, k):.4f}" for k in ks))
    for m in names:
        print(f"{m}: target test uar={scores[m]['uar']:.4f} war={scores[m]['war']:.4f} "
              f"macro-f1={scores[m]['macro_f1']:.4f}")
    print(f"report: {png}")
    line = (f"demo-emotion-xcorpus: few-shot macro-f1 k8 plain={f1(plain, 8):.4f} prefinetuned={f1(full, 8):.4f} "
            f"emo-dna uar source-only={scores['source_only']['uar']:.4f} adapted={scores['adapted']['uar']:.4f}")
    print(line)
    return line
