"""Speaker-independent k-fold fine-tuning (``avpretrain kfold``): K runs of one config, one per fold.

``<workdir>/folds.json`` (``data.folds.make_folds``: all examples of the dataset, speakers grouped
into K folds; fold i tests on group i, validates on the next) is written once;
``<workdir>/kfold_job.json`` records the settings and a rerun with others is refused. Fold i trains
in ``<workdir>/fold-<i>`` with ``data.folds``/``data.fold`` set (its step selected on its validation
speakers: the config must validate, ``eval_every`` > 0), then its selected export is evaluated on
its test speakers and ``fold-<i>/result.json`` written: the commit point. A rerun skips finished
folds and resumes an interrupted one from its checkpoint. ``<workdir>/kfold.json`` holds the
per-fold results and their mean ± std (population std over folds): accuracy, UAR and F1 for
classifiers, the CCC per rating for ``model.task="regress"`` (plus the CCC of all folds' test
predictions pooled).
"""
from __future__ import annotations

import pathlib

import numpy as np

from avpretrain import config as config_lib, method as method_lib, metrics as metrics_lib
from avpretrain.data import folds as folds_lib, jobs, pipeline

JOB_NAME, FOLDS_NAME, RESULT_NAME, SUMMARY_NAME = "kfold_job.json", "folds.json", "result.json", "kfold.json"


def fold_overrides(overrides: list[str], folds_path, fold: int) -> list[str]:
    return [*overrides, f"data.folds={folds_path}", f"data.fold={fold}"]


def run(config_spec: str, overrides: list[str], workdir, *, num_folds: int = 5, by: str = "speaker",
        loso: bool = False, seed: int = 0, batch_size: int = 64, log=print) -> dict | None:
    """Runs (or resumes) the k-fold; returns the summary, or None when a fold's training was stopped by
    a signal (checkpointed: rerun to resume)."""
    from avpretrain import train, validation
    from avpretrain.evaluate import classify, supervised

    workdir = pathlib.Path(workdir)
    overrides = [o.removeprefix("--").removeprefix("config.") for o in overrides]
    base = config_lib.load_config(config_spec, overrides)  # unknown keys, bad values: refused here
    if not base.get("eval_every", 0):
        raise ValueError(f"{config_spec}: kfold selects each fold's step on its validation speakers; the config "
                         "must validate (set --config.eval_every=N)")
    if any(o.split("=")[0] in ("data.folds", "data.fold") for o in overrides):
        raise ValueError("kfold sets config.data.folds and config.data.fold itself; do not override them")
    regress = validation.task(base) == "regress"
    data_dir = str(base.data.dir)
    method = method_lib.of(base)
    if method.prepare:  # e.g. the encoder of init.path: what the runs will read
        method.prepare(base)
    pipeline.training_source(base, method.inputs(base))  # a dataset without those fields: refused before the folds
    job = {"config": config_spec, "overrides": sorted(overrides), "folds": None if loso else int(num_folds),
           "loso": bool(loso), "by": by, "seed": int(seed), "data": data_dir}
    job_path, folds_path = workdir / JOB_NAME, workdir / FOLDS_NAME
    if job_path.is_file():
        stored = jobs.read_json(job_path)
        if stored != job:
            diff = ", ".join(f"{k}: {stored.get(k)!r} -> {job[k]!r}" for k in job if stored.get(k) != job[k])
            raise ValueError(f"{workdir} holds a k-fold with other settings ({diff}); use another --workdir")
    if folds_path.is_file():
        folds = folds_lib.read(folds_path)
    else:
        folds = folds_lib.make_folds(data_dir, num_folds, loso=loso, seed=seed, by=by)
        folds_lib.write(folds_path, folds)
    jobs.write_json(job_path, job)
    K = folds["num_folds"]
    log(f"kfold: {K} folds by {by} over {folds['num_examples']} examples of {data_dir} ({workdir / FOLDS_NAME})")

    results = []
    for i, fold in enumerate(folds["folds"]):
        fdir = workdir / f"fold-{i}"
        result_path = fdir / RESULT_NAME
        if result_path.is_file():
            result = jobs.read_json(result_path)
            log(_fold_line(i, result) + " (done before)")
            results.append(result)
            continue
        counts = {s: len(r) for s, r in fold["records"].items()}
        log(f"fold {i}/{K}: test speakers {fold['speakers']['test']}, validation {fold['speakers']['validation']}; "
            f"examples {counts}")
        config = config_lib.load_config(config_spec, fold_overrides(overrides, folds_path.absolute(), i))
        trained = train.train(config, fdir)
        if trained.stopped_by in ("SIGTERM", "SIGINT"):
            log(f"kfold stopped ({trained.stopped_by}) in fold {i} at step {trained.step}: rerun the same command "
                "to resume")
            return None
        model = validation.selected_export(fdir)
        if model is None:
            raise ValueError(f"{fdir}: no step was selected (no validation ran); is config.eval_every <= total_steps?")
        if regress:
            result = supervised.regress(model, data_dir, split="test", batch_size=batch_size, folds_file=folds_path,
                                        fold=i, keep_predictions=True)
        else:
            result = supervised.classify(model, data_dir, split="test", batch_size=batch_size, folds_file=folds_path,
                                         fold=i, png=fdir / "confusion-test.png",
                                         title=f"fold {i}: test speakers {', '.join(fold['speakers']['test'])}")
        result |= {"fold": i, "speakers": fold["speakers"], "selected": validation.selected(fdir)["selected"]}
        jobs.write_json(result_path, result)
        log(_fold_line(i, result))
        results.append(result)

    if regress:
        summary = _summarize_regression(results)
        jobs.write_json(workdir / SUMMARY_NAME, summary)
        log(summary["line"])
        return summary
    summary = classify.summarize_folds(results) | {"class_names": folds["class_names"], "per_fold": [
        {k: r[k] for k in ("fold", "accuracy", "uar", "macro_f1", "weighted_f1", "num_examples", "speakers")}
        for r in results]}
    pooled = np.sum([r["confusion"] for r in results], axis=0)
    summary["confusion"] = pooled.tolist()
    jobs.write_json(workdir / SUMMARY_NAME, summary)
    png = classify.confusion_png(pooled, folds["class_names"],
                                 workdir / "confusion-all-folds.png", title=f"{K} folds, test predictions pooled")
    metrics_lib.log(f"pooled confusion matrix: {png}")
    summary["line"] = classify.format_kfold_line(summary)
    log(summary["line"])
    return summary


def _summarize_regression(results: list[dict]) -> dict:
    """Mean ± population std over folds of each CCC, and the CCC of the folds' test predictions pooled."""
    from avpretrain.evaluate import supervised

    dims = results[0]["dimensions"]
    summary = {"folds": len(results), "task": "regress", "dimensions": dims}
    for key in [f"ccc_{d}" for d in dims] + ["ccc"]:
        values = np.array([r[key] for r in results])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std())}
    pooled = {"preds": np.concatenate([np.asarray(r["predictions"]["preds"], float) for r in results]),
              "targets": np.concatenate([np.asarray(r["predictions"]["targets"], float) for r in results])}
    summary["pooled"] = {k: v for k, v in supervised.regression_scores(pooled, dims).items()}
    summary["per_fold"] = [{k: r[k] for k in ("fold", "speakers", "clips", *(f"ccc_{d}" for d in dims))}
                           for r in results]
    summary["line"] = f"kfold folds={len(results)} ccc " + " ".join(
        f"{d}={summary[f'ccc_{d}']['mean']:.4f}±{summary[f'ccc_{d}']['std']:.4f}" for d in dims)
    return summary


def _fold_line(i: int, r: dict) -> str:
    if "dimensions" in r:
        return (f"fold {i}: test {','.join(r['speakers']['test'])} n={r['clips']} ccc "
                + " ".join(f"{d}={r[f'ccc_{d}']:.4f}" for d in r["dimensions"])
                + f" (step {r['selected']['step']}, validation ccc={r['selected']['ccc']:.4f})")
    return (f"fold {i}: test {','.join(r['speakers']['test'])} n={r['num_examples']} accuracy={r['accuracy']:.4f} "
            f"uar={r['uar']:.4f} macro-f1={r['macro_f1']:.4f} (step {r['selected']['step']}, validation "
            f"uar={r['selected']['uar']:.4f})")
