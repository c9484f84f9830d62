"""The demo's report: a PNG (loss curve + linear-probe bars) and the summary line."""
from __future__ import annotations

import json
import pathlib

import matplotlib

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
