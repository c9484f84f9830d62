"""Distil an exported M2D-family encoder into a student with ~20 % of its parameters (``method="distill"``,
``avpretrain/models/distill.py``), on unlabeled audio, sharded like pretraining.

The recipe (de Oliveira et al., Interspeech 2023): first see which teacher layers carry what, then
distil those layers and the output::

  avpretrain eval layers --model=$TEACHER --data=$EMOTION_CORPUS --task regress     # → $TEACHER/eval/layers-regress-test.json
  avpretrain train --config=configs/distill.py --config.teacher.path=$TEACHER \\
      --config.distill.layers_from=$TEACHER/eval/layers-regress-test.json --config.data.dir=$AUDIO --workdir=$RUN
  avpretrain export --workdir=$RUN --out=$STUDENT          # an M2D encoder: probes, eval layers, finetune take it

The student sees the teacher's input (its crop length, patch grid and log-mel statistics). Its
width, depth and heads default to half the teacher's width and heads and 0.8 × its depth
(``--config.model.width=… --config.model.depth=…`` to choose); the start of training logs the
student's share of the teacher's parameters and the (student block → teacher block) targets.
Without ``layers_from`` the teacher blocks are evenly spaced (4, 8 of 12, and the output);
``--config.distill.teacher_layers=3,6 --config.distill.student_layers=2,4`` names them directly.

Config arguments: ``runlocal`` (a smoke test: 20 steps of 8 crops).
"""
import ml_collections

from avpretrain.config import parse_arg
from configs.common import base_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = base_config()
    c.method = "distill"
    c.total_steps = 100_000
    c.batch_size = 256
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.init.params = ()                      # unused: the teacher comes from teacher.path

    # The teacher: an export (or training workdir) of m2d / m2d_clap / m2d2 / distill; its
    # architecture (method, model) is filled in at train time.
    c.teacher = ml_collections.ConfigDict()
    c.teacher.path = ""
    c.teacher.method = ""
    c.teacher.model = ml_collections.ConfigDict()

    # The student: an M2D encoder; None = from the teacher (input_frames, n_mels, patch, mlp_ratio as
    # the teacher's; width, heads half the teacher's, depth 0.8 × its depth).
    c.model = ml_collections.ConfigDict()
    for field in ("size", "input_frames", "n_mels", "patch", "width", "depth", "num_heads"):
        c.model[field] = ml_collections.config_dict.placeholder(str if field == "size" else int)
    for field in ("mlp_ratio", "mask_ratio"):
        c.model[field] = ml_collections.config_dict.placeholder(float)
    c.model.dtype = "float32"               # compute dtype; "bfloat16" on TPU/GPU
    c.model.attention = "auto"
    c.model.remat = "none"                  # none | dots | full (the student's blocks)

    c.distill = ml_collections.ConfigDict()
    c.distill.layers_from = ""              # an `avpretrain eval layers` JSON: its best layer per dimension
    c.distill.teacher_layers = ()           # 1-based teacher blocks; (): from layers_from, else evenly spaced
    c.distill.student_layers = ()           # 1-based student blocks; (): round(t · student depth / teacher depth)
    c.distill.output = True                 # also the student's output → the teacher's output
    c.distill.cos_weight = 1.0              # L1 + cos_weight · (−log σ(cos)) per target (DistilHuBERT)

    c.optim.base_lr = 2e-3                  # per 256 (DistilHuBERT: Adam 2e-4 at batch 24 ≈ 2.1e-3 per 256)
    c.optim.b1, c.optim.b2 = 0.9, 0.98
    c.optim.weight_decay = 0.01
    c.optim.warmup_fraction = 0.07
    c.optim.grad_clip = 10.0

    if arg.runlocal:
        c.total_steps = 20
        c.batch_size = 8
        c.log_every = 5
        c.checkpoint_every = 10
        c.data.stats_batches = 2
    return c
