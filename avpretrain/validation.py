"""Validation during training: every ``eval_every`` steps, best-step selection and early stopping.

For methods with ``Method.predict`` (classifiers). At each evaluation step the trainer first saves
its training checkpoint of that step, then this module scores the validation split
(``config.eval.split``; the test split is refused: it is never read during training) with
``evaluate.supervised`` and, when ``config.eval.metric`` improved (ties: the lower validation
loss), writes the model as an export to ``<workdir>/best/step-<step>``. Only after the training
checkpoint is committed is ``<workdir>/selected.json`` rewritten (atomically): the selected step,
its scores, the history of every evaluation, and where early stopping ended the run. That file is
the commit point: a directory under ``best/`` that it does not name is left over from a killed
run and removed at the next start, and a resumed run continues the history (an evaluation step
whose record was lost is evaluated again). ``config.eval.patience`` > 0 stops training after that
many evaluations without improvement. ``avpretrain export`` exports the selected step by default.
"""
from __future__ import annotations

import pathlib
import shutil

import jax
from flax import nnx

from avpretrain import frontend, method as method_lib, metrics as metrics_lib, sharding
from avpretrain.data import jobs, pipeline

SELECTED_NAME = "selected.json"
BEST_NAME = "best"
METRICS = {"accuracy": "max", "uar": "max", "macro_f1": "max", "weighted_f1": "max", "ccc": "max", "loss": "min"}
# what each task can select by (regression: the mean CCC over the rated dimensions)
TASK_METRICS = {"classify": ("accuracy", "uar", "macro_f1", "weighted_f1", "loss"), "regress": ("ccc", "loss")}


def task(config) -> str:
    """"classify" or "regress" (``config.model.task`` of the classifier method; classify otherwise)."""
    return str(config.get("model", {}).get("task", "classify"))


def selected(workdir) -> dict | None:
    """``<workdir>/selected.json`` (None when the run does not validate)."""
    path = pathlib.Path(workdir) / SELECTED_NAME
    return jobs.read_json(path) if path.is_file() else None


def selected_export(workdir) -> pathlib.Path | None:
    """The export of the selected step, or None."""
    sel = selected(workdir)
    if not sel or not sel.get("selected"):
        return None
    path = pathlib.Path(workdir) / sel["selected"]["path"]
    if not path.is_dir():
        raise FileNotFoundError(f"{workdir}/{SELECTED_NAME} selects {path}, which is missing")
    return path


def check_config(config) -> None:
    """Refuses validation settings that cannot work, before anything runs."""
    if not config.get("eval_every", 0):
        return
    e = config.eval
    if e.split == "test":
        raise ValueError("config.eval.split='test': the test split is never read during training; validate on "
                         "'validation' (or a fold's validation speakers)")
    if e.metric not in METRICS:
        raise ValueError(f"config.eval.metric={e.metric!r}: choose one of {sorted(METRICS)}")
    if e.metric not in TASK_METRICS.get(task(config), METRICS):
        raise ValueError(f"config.eval.metric={e.metric!r} does not score model.task={task(config)!r}: choose one of "
                         f"{TASK_METRICS[task(config)]}")
    if method_lib.of(config).predict is None:
        raise ValueError(f"config.eval_every={config.eval_every}: method {config.method!r} has no validation "
                         "(Method.predict); set --config.eval_every=0")


def _better(metric, a: dict, b: dict | None) -> bool:
    """Whether evaluation ``a`` beats ``b`` on ``metric`` (ties: the lower loss, then the earlier)."""
    if b is None:
        return True
    sign = 1 if METRICS[metric] == "max" else -1
    if sign * a[metric] != sign * b[metric]:
        return sign * a[metric] > sign * b[metric]
    return a["loss"] < b["loss"]


class Validator:
    def __init__(self, config, workdir, mesh, graphdef, state_sharding, batch_sharding, norm_stats):
        from avpretrain.data import folds

        self.config, self.workdir = config, pathlib.Path(workdir)
        self.every, self.metric = int(config.eval_every), str(config.eval.metric)
        self.patience = int(config.eval.patience)
        self.batch_size = int(config.eval.batch_size) or int(config.batch_size)
        dp = sharding.data_parallel_size(mesh, config.sharding_rules)
        if self.batch_size % dp or self.batch_size % jax.process_count():
            raise ValueError(f"config.eval.batch_size={self.batch_size} is not divisible by the {dp} data-parallel "
                             f"devices and {jax.process_count()} processes")
        method = method_lib.of(config)
        self.inputs = method.inputs(config)
        # a missing split (or missing transcripts for a model that reads text) fails here, before training
        data = config.data
        self.data_dir = str(config.eval.get("dir", "") or config.data.dir)
        if self.data_dir != str(config.data.dir):  # an explicit held-out split of another dataset (e.g. the target)
            data = config.data.copy_and_resolve_references()
            with data.unlocked():
                # the training data's classes, matched by name in that dataset
                data.dir, data.folds, data.classes = self.data_dir, "", tuple(folds.class_names(config.data))
            metrics_lib.log(f"validation reads the labelled split {config.eval.split!r} of {self.data_dir} (config.eval.dir),"
                            f" not of the training data {config.data.dir}: its labels select the step")
        self.src = pipeline.with_text(data, config.eval.split, folds.split_source(data, config.eval.split), self.inputs)
        self.task = task(config)
        self.targets = tuple(config.model.dimensions) if self.task == "regress" else None
        self.class_names = None if self.targets else folds.class_names(config.data)
        self.batch_sharding = batch_sharding
        self.norm_stats = norm_stats
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

        def predict(state, batch):
            model = nnx.merge(graphdef, state).model
            return method.predict(model, frontend.apply(method.frontend, batch, norm_stats))

        with sharding.mesh_rules(mesh, config.sharding_rules):
            self._predict = jax.jit(predict, in_shardings=(state_sharding, batch_sharding), out_shardings=replicated)
        self.mesh = mesh
        self.record = selected(self.workdir) or {}
        if self.record and self.record.get("metric", self.metric) != self.metric:
            raise ValueError(f"{self.workdir}/{SELECTED_NAME} selects by {self.record['metric']!r}, the config by "
                             f"{self.metric!r}: use another workdir")

    # -- state ----------------------------------------------------------------------------------
    @property
    def history(self) -> list:
        return self.record.setdefault("history", [])

    @property
    def best(self) -> dict | None:
        return self.record.get("selected")

    def stopped_early(self, start: int) -> bool:
        at = self.record.get("stopped_early_at")
        return at is not None and start >= at

    def resume(self, start: int) -> None:
        """Drops evaluations after the checkpoint this run starts from and directories ``selected.json``
        does not name."""
        kept = [h for h in self.history if h["step"] <= start]
        if len(kept) != len(self.history):
            self.record["history"] = kept
            if self.best and self.best["step"] > start:
                self.record["selected"] = None
        if jax.process_index() == 0:
            keep = self.best["path"] if self.best else None
            root = self.workdir / BEST_NAME
            for d in sorted(root.glob("*")) if root.is_dir() else []:
                if str(d.relative_to(self.workdir)) != keep:
                    shutil.rmtree(d, ignore_errors=True)

    def due(self, step: int, stop: int) -> bool:
        return step % self.every == 0 or step == self.config.total_steps and step == stop

    def evaluated(self, step: int) -> bool:
        return any(h["step"] == step for h in self.history)

    # -- one evaluation -------------------------------------------------------------------------
    def _predict_fn(self, state):
        P, p = jax.process_count(), jax.process_index()
        rows = self.batch_size // P

        def predict(batch):
            local = {k: v[p * rows:(p + 1) * rows] for k, v in batch.items()}
            from avpretrain.data import pipeline

            with sharding.mesh_rules(self.mesh, self.config.sharding_rules):
                return jax.device_get(self._predict(state, pipeline.to_global(local, self.batch_sharding)))

        return predict

    def evaluate(self, step: int, state) -> dict:
        """Scores the validation split with ``state``; saves the model under ``best/`` when it is the
        best so far. Returns this evaluation's record (``selected.json`` is written by ``commit``)."""
        from avpretrain.evaluate import supervised

        predicted = supervised.predict_source(self.src, self.inputs, self._predict_fn(state),
                                              batch_size=self.batch_size, class_names=self.class_names,
                                              targets=self.targets, what=f"validation split {self.config.eval.split!r}")
        if self.targets:
            result = supervised.regression_scores(predicted, self.targets)
            keys = ("loss", "ccc", *(f"ccc_{d}" for d in self.targets))
        else:
            result = supervised.scores(predicted, self.class_names)
            keys = ("loss", "accuracy", "uar", "macro_f1", "weighted_f1")
        entry = {"step": int(step), **{k: float(result[k]) for k in keys}}
        improved = _better(self.metric, entry, self.best)
        if improved:
            entry["path"] = f"{BEST_NAME}/step-{step:07d}"
            self._save_best(self.workdir / entry["path"], state)
        self.history.append(entry)
        if improved:
            self.record["selected"] = entry
        since = sum(1 for h in self.history if h["step"] > self.best["step"])
        if self.patience and since >= self.patience:
            self.record["stopped_early_at"] = int(step)
        shown = ("accuracy", "loss") if not self.targets else tuple(f"ccc_{d}" for d in self.targets) + ("loss",)
        metrics_lib.log(f"validation at step {step}: {self.metric}={entry[self.metric]:.4f} "
                        + " ".join(f"{k}={entry[k]:.4f}" for k in shown if k != self.metric)
                        + (" (best so far)" if improved else f" (best {self.best[self.metric]:.4f} at step "
                           f"{self.best['step']}; {since} without improvement)"))
        return entry

    def _save_best(self, path: pathlib.Path, state) -> None:
        from avpretrain import export

        params = export.exported_part(self.config, nnx.to_pure_dict(state)["model"])
        if path.exists() and jax.process_index() == 0:
            shutil.rmtree(path)
        export.write_export(path, self.config, params, self.norm_stats)

    def commit(self) -> None:
        """Writes ``selected.json`` (call once the step's training checkpoint is committed) and removes
        the best directories it no longer names."""
        self.record.update(metric=self.metric, split=str(self.config.eval.split), eval_every=self.every,
                           patience=self.patience, data=self.data_dir)
        if jax.process_index() == 0:
            jobs.write_json(self.workdir / SELECTED_NAME, self.record)
        self.resume(max([h["step"] for h in self.history] or [0]))

    @property
    def stop_now(self) -> bool:
        return self.record.get("stopped_early_at") is not None


def summary(workdir) -> str:
    sel = selected(workdir)
    if not sel or not sel.get("selected"):
        return "no validation"
    b = sel["selected"]
    other = "accuracy" if "accuracy" in b else "loss"  # classification / regression records
    return (f"selected step {b['step']} by validation {sel['metric']}={b[sel['metric']]:.4f} "
            f"({other}={b[other]:.4f}, {len(sel['history'])} evaluations"
            + (f", stopped early at step {sel['stopped_early_at']})" if sel.get("stopped_early_at") else ")"))
