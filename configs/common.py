"""Defaults shared by every config: mesh, sharding rules, logging, image and checkpoint cadence."""
import ml_collections

from avpretrain import sharding


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100_000
    c.batch_size = 256            # global, over all processes
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.image_every = 0             # the method's images (Method.images), N > 0: every N steps; 0: at each checkpoint
    c.eval_every = 0              # validate every N steps and keep the best step (methods with Method.predict); 0: off

    # Validation (eval_every > 0): best-step selection on eval.split only (never the test split).
    c.eval = ml_collections.ConfigDict()
    c.eval.split = "validation"
    c.eval.metric = "uar"         # accuracy | uar | macro_f1 | weighted_f1 | loss (ties: the lower loss)
    c.eval.patience = 0           # stop after this many evaluations without improvement; 0: never
    c.eval.batch_size = 0         # windows per predict call; 0: batch_size
    c.mesh = sharding.DEFAULT_MESH
    c.sharding_rules = sharding.DEFAULT_RULES

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""               # a directory built by `avpretrain data build ...`
    c.data.split = "train"
    c.data.sample_rate = 16000
    c.data.num_workers = 0        # grain worker processes per host (use 8–32 on real hosts)
    c.data.read_threads = 16      # grain threads reading + cropping clips (per process / worker)
    c.data.prefetch_batches = 2   # clips read ahead = this × the per-process batch
    c.data.max_bad_fraction = 0.01  # corrupt records skipped in training; more than this share (of >= 1000 reads) stops
    c.data.norm_stats = ()        # (mean, std); empty: read <workdir>/norm_stats.json or compute it
    c.data.stats_batches = 20
    c.data.use_captions = False   # batches carry 'text_emb': one stored caption embedding per clip
    c.data.text_model = ""        # which stored caption-embedding set ("": the only one); filled in at train time
    c.data.text_field = "captions"  # what 'text_emb' embeds: captions (M2D-CLAP) | transcript (audio-text fusion)
    c.data.folds = ""             # a folds.json of `avpretrain kfold`: the splits are those of fold data.fold
    c.data.fold = -1
    c.data.classes = ()           # supervised: only these classes (names), relabelled in this order; (): all

    # Initialise some params from another run (e.g. stage 2 from stage 1) before step 0.
    c.init = ml_collections.ConfigDict()
    c.init.path = ""              # a training workdir (its latest checkpoint) or an exported model
    c.init.params = ("patch_embed", "cls_token", "blocks", "norm")   # top-level model attributes

    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 3e-4        # per 256 examples: lr = base_lr · batch_size / 256
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.05   # not on biases / norms / 1-D params
    c.optim.warmup_fraction = 20 / 300
    c.optim.grad_clip = 3.0
    c.optim.lr_mult = ml_collections.ConfigDict({"encoder": 1.0, "head": 1.0})  # per param group; 0 freezes
    return c


def vqvae_config(method: str, runlocal: bool, *, frames: int, num_codes: int, code_dim: int, hidden: int,
                 residual_hidden: int, local_frames: int) -> ml_collections.ConfigDict:
    """What the two VQ-VAE tokenizer configs share (configs/vqvae_audio.py, configs/vqvae_video.py)."""
    c = base_config()
    c.method = method
    c.total_steps = 100_000
    c.batch_size = 32              # crops of model.frames frames each

    c.model = ml_collections.ConfigDict()
    c.model.frames = frames        # frames per crop (audio: 20 ms power-spectrum frames; video: 25 fps faces)
    c.model.num_codes = num_codes
    c.model.code_dim = code_dim
    c.model.decay = 0.99           # EMA codebook
    c.model.commitment = 0.25
    c.model.dead_after = 100       # restart a code unused for this many steps (0: never)
    c.model.hidden = hidden        # encoder/decoder channels (the reference's)
    c.model.residual_blocks = 2
    c.model.residual_hidden = residual_hidden

    c.optim.weight_decay = 0.0
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.warmup_fraction = 0.01
    c.optim.grad_clip = 10.0

    if runlocal:
        c.total_steps = 20
        c.batch_size = 8
        c.model.frames = local_frames
        c.model.dead_after = 2
        c.log_every = 5
        c.checkpoint_every = 10
    c.optim.base_lr = 1e-3 * 256 / c.batch_size   # peak lr = base_lr · batch / 256 = 1e-3 (Adam 1e-3)
    return c
