"""VQ-VAE tokenizers of VQ-MAE-AV (DESIGN §5): power-spectrum frames and face frames → discrete codes.

Both models treat the B·T frames of a batch as one batch of independent frames.

``AudioVQVAE``: each frame's 513-bin power spectrum is a 1-D signal along frequency (length axis =
frequency, channels = features). Shapes per frame, with explicit (1, 1) padding as PyTorch's ``padding=1``:

    log power [513, 1] → Conv(1→16, k4, s2) + BN + tanh   → [256, 16]    (513 + 2 − 4) // 2 + 1 = 256
                       → Conv(16→32, k4, s2) + BN + tanh  → [128, 32]    (256 + 2 − 4) // 2 + 1 = 128
                       → Conv(32→32, k3, s2) + BN         → [64, 32]     (128 + 2 − 3) // 2 + 1 = 64
                       → residual blocks (tanh) → Conv 1×1 → [64, 8]: 64 codes of the 256 × 8 codebook
    decoder: Conv 1×1 (8→32) → residual blocks → ConvT(32→32, k3, s2, SAME) + BN + tanh → [128, 32]
             → ConvT(32→16, k4, s2, SAME) + BN + tanh → [256, 16] → ConvT(16→1, k4, s2, VALID) → [514, 1],
             the last bin cropped → log x̂ [513]; x̂ = exp(log x̂) (positive power).

The encoder's input is the log power, log(max(x, EPS)) (raw power spans ~15 decades: a numerically
poor convolution input; the reference feeds the power). The loss is the Itakura–Saito divergence
mean(x/x̂ − log(x/x̂) − 1), computed in the log domain as exp(r) − r − 1 with r = log max(x, EPS) − log x̂,
plus the codebook commitment. Normalisation: ``nnx.BatchNorm`` as in the reference (batch statistics
in ``loss``, the running averages (``BatchStat``, kept by the default step) in ``encode``/``decode``).

``VideoVQVAE`` (no normalisation layers, as the reference's visual VQ-VAE), per 96×96×3 frame,
normalised as ``frontend.VideoFrames`` does ((x/255 − 0.5)/1):

    Conv(3→64, k4, s2) + ReLU → [48, 48, 64] → Conv(64→128, k4, s2) → [24, 24, 128] → Conv k3 →
    2 residual blocks → Conv 1×1 → [24, 24, 4]: 24×24 codes of the 512 × 4 codebook;
    decoder: Conv k3 (4→128) → 2 residual blocks → ConvT(128→64, k4, s2) + ReLU → ConvT(64→3, k4, s2).
Loss: MSE on the normalised scale + commitment; metrics mse and psnr on the [0, 1] scale.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avpretrain import frontend, method
from avpretrain.models.vq import VectorQuantizer

BINS = 513          # power-spectrum bins per audio frame (n_fft 1024)
HOP = 320           # samples per audio frame (20 ms at 16 kHz)
AUDIO_CODES = 64    # codes per audio frame
FRAME = 96          # face crop side
VIDEO_GRID = 24     # codes per video frame side
EPS = 1e-8          # power floor: encoder input log(max(x, EPS)) and the IS divergence's target


def itakura_saito(log_x, log_x_hat):
    """Mean Itakura–Saito divergence mean(x/x̂ − log(x/x̂) − 1) from log powers: exp(r) − r − 1, r = log x − log x̂."""
    r = log_x - log_x_hat
    return jnp.mean(jnp.exp(r) - r - 1.0)


class Residual(nnx.Module):
    """x + Conv1×1(act(Conv3(act(x)))) (the VQ-VAE residual layer); ``act`` tanh (audio) or ReLU (video)."""

    def __init__(self, channels: int, hidden: int, ndim: int, act, rngs: nnx.Rngs):
        self.act = act
        self.conv3 = nnx.Conv(channels, hidden, (3,) * ndim, padding="SAME", rngs=rngs)
        self.conv1 = nnx.Conv(hidden, channels, (1,) * ndim, rngs=rngs)

    def __call__(self, x):
        return x + self.conv1(self.act(self.conv3(self.act(x))))


def _batch_norm(features, rngs):
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)  # PyTorch BN momentum 0.1


class AudioVQVAE(nnx.Module):
    def __init__(self, *, num_codes: int = 256, code_dim: int = 8, hidden: int = 32, residual_blocks: int = 2,
                 residual_hidden: int = 32, decay: float = 0.99, commitment: float = 0.25, dead_after: int = 100,
                 frames: int = 1, rngs: nnx.Rngs):
        pad = ((1, 1),)
        self.frames = frames  # power-spectrum frames per training example (crop): for flops_per_example
        self.enc1 = nnx.Conv(1, 16, (4,), strides=2, padding=pad, rngs=rngs)
        self.enc1_bn = _batch_norm(16, rngs)
        self.enc2 = nnx.Conv(16, hidden, (4,), strides=2, padding=pad, rngs=rngs)
        self.enc2_bn = _batch_norm(hidden, rngs)
        self.enc3 = nnx.Conv(hidden, hidden, (3,), strides=2, padding=pad, rngs=rngs)
        self.enc3_bn = _batch_norm(hidden, rngs)
        self.enc_res = nnx.List([Residual(hidden, residual_hidden, 1, jnp.tanh, rngs) for _ in range(residual_blocks)])
        self.pre_vq = nnx.Conv(hidden, code_dim, (1,), rngs=rngs)
        self.vq = VectorQuantizer(num_codes, code_dim, decay=decay, commitment=commitment,
                                  dead_after=dead_after, rngs=rngs)
        self.post_vq = nnx.Conv(code_dim, hidden, (1,), rngs=rngs)
        self.dec_res = nnx.List([Residual(hidden, residual_hidden, 1, jnp.tanh, rngs) for _ in range(residual_blocks)])
        self.dec1 = nnx.ConvTranspose(hidden, hidden, (3,), strides=2, padding="SAME", rngs=rngs)
        self.dec1_bn = _batch_norm(hidden, rngs)
        self.dec2 = nnx.ConvTranspose(hidden, 16, (4,), strides=2, padding="SAME", rngs=rngs)
        self.dec2_bn = _batch_norm(16, rngs)
        self.dec3 = nnx.ConvTranspose(16, 1, (4,), strides=2, padding="VALID", rngs=rngs)

    @staticmethod
    def log_power(spec):
        return jnp.log(jnp.maximum(spec.astype(jnp.float32), EPS))

    def _encode_z(self, log_x_NF, train: bool):
        """log power [N, 513] → pre-quantisation latents [N, 64, D]."""
        ura = not train
        h = jnp.tanh(self.enc1_bn(self.enc1(log_x_NF[..., None]), use_running_average=ura))
        h = jnp.tanh(self.enc2_bn(self.enc2(h), use_running_average=ura))
        h = self.enc3_bn(self.enc3(h), use_running_average=ura)
        for block in self.enc_res:
            h = block(h)
        return self.pre_vq(jnp.tanh(h))

    def _decode_log(self, q_NLD, train: bool):
        """Quantised latents [N, 64, D] → log x̂ [N, 513]."""
        ura = not train
        h = self.post_vq(q_NLD)
        for block in self.dec_res:
            h = block(h)
        h = jnp.tanh(self.dec1_bn(self.dec1(jnp.tanh(h)), use_running_average=ura))
        h = jnp.tanh(self.dec2_bn(self.dec2(h), use_running_average=ura))
        return self.dec3(h)[:, :BINS, 0]

    def encode(self, spec_BTF):
        """Power spectra [B, T, 513] → codes int32 [B, T, 64] (running BN statistics)."""
        B, T, F = spec_BTF.shape
        z = self._encode_z(self.log_power(spec_BTF).reshape(B * T, F), train=False)
        _, codes, _ = self.vq(z, train=False)
        return codes.reshape(B, T, AUDIO_CODES)

    def decode(self, codes_BTL):
        """Codes [B, T, 64] → power x̂ [B, T, 513] (positive)."""
        B, T, L = codes_BTL.shape
        return jnp.exp(self._decode_log(self.vq.lookup(codes_BTL.reshape(B * T, L)), train=False)).reshape(B, T, BINS)

    def loss(self, batch, rng):
        spec = batch["spec"]
        log_x = self.log_power(spec.reshape(-1, spec.shape[-1]))
        z_q, _, aux = self.vq(self._encode_z(log_x, train=True), train=True, rng=rng)
        is_div = itakura_saito(log_x, self._decode_log(z_q, train=True))
        return is_div + aux["commitment_loss"], {
            "is_divergence": is_div, "commitment_loss": aux["commitment_loss"], "perplexity": aux["perplexity"],
            "usage": aux["usage"], "restarted": aux["restarted"]}

    def flops_per_example(self) -> float:
        """Analytic training FLOPs of one example, a crop of ``self.frames`` spectrum frames.

        Per frame, 2·MACs of every convolution, MACs = output length × kernel × C_in × C_out for a
        convolution and input length × kernel × C_in × C_out for a transposed one (each input element
        meets the whole kernel): enc1 (L 256), enc2 (128), enc3 (64), per residual block its k3 and 1×1
        convolutions (64), pre/post 1×1 (64), dec1 (in 64), dec2 (in 128), dec3 (in 256); ×3 for
        training (backward = 2× forward). Plus the codebook, not differentiated (argmin, stop-gradient):
        the distances z·eᵀ (2·N·K·D, N = 64 codes) and the EMA sums one_hotᵀ·z (2·N·K·D), counted once.
        BatchNorm, tanh, the loss and the optimiser are elementwise and not counted.
        Default sizes: 4.06 MFLOP forward of convolutions and 0.52 MFLOP of codebook per frame, 12.7 MFLOP
        per trained frame.
        """
        conv = _conv_macs(self.enc1, 256) + _conv_macs(self.enc2, 128) + _conv_macs(self.enc3, AUDIO_CODES)
        for block in list(self.enc_res) + list(self.dec_res):
            conv += _conv_macs(block.conv3, AUDIO_CODES) + _conv_macs(block.conv1, AUDIO_CODES)
        conv += _conv_macs(self.pre_vq, AUDIO_CODES) + _conv_macs(self.post_vq, AUDIO_CODES)
        conv += _conv_macs(self.dec1, AUDIO_CODES) + _conv_macs(self.dec2, 128) + _conv_macs(self.dec3, 256)
        vq = 2 * 2 * AUDIO_CODES * self.vq.num_codes * self.vq.dim
        return float(self.frames * (3 * 2 * conv + vq))


class VideoVQVAE(nnx.Module):
    def __init__(self, *, num_codes: int = 512, code_dim: int = 4, hidden: int = 128, residual_blocks: int = 2,
                 residual_hidden: int = 32, decay: float = 0.99, commitment: float = 0.25, dead_after: int = 100,
                 mean: float = 0.5, std: float = 1.0, frames: int = 1, rngs: nnx.Rngs):
        pad = ((1, 1), (1, 1))
        self.mean, self.std = mean, std
        self.frames = frames  # video frames per training example (crop): for flops_per_example
        self.enc1 = nnx.Conv(3, hidden // 2, (4, 4), strides=2, padding=pad, rngs=rngs)
        self.enc2 = nnx.Conv(hidden // 2, hidden, (4, 4), strides=2, padding=pad, rngs=rngs)
        self.enc3 = nnx.Conv(hidden, hidden, (3, 3), padding=pad, rngs=rngs)
        self.enc_res = nnx.List([Residual(hidden, residual_hidden, 2, jax.nn.relu, rngs) for _ in range(residual_blocks)])
        self.pre_vq = nnx.Conv(hidden, code_dim, (1, 1), rngs=rngs)
        self.vq = VectorQuantizer(num_codes, code_dim, decay=decay, commitment=commitment,
                                  dead_after=dead_after, rngs=rngs)
        self.dec1 = nnx.Conv(code_dim, hidden, (3, 3), padding=pad, rngs=rngs)
        self.dec_res = nnx.List([Residual(hidden, residual_hidden, 2, jax.nn.relu, rngs) for _ in range(residual_blocks)])
        self.dec2 = nnx.ConvTranspose(hidden, hidden // 2, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs)
        self.dec3 = nnx.ConvTranspose(hidden // 2, 3, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs)

    def _encode_z(self, x_NHWC):
        h = jax.nn.relu(self.enc1(x_NHWC))
        h = self.enc3(self.enc2(h))
        for block in self.enc_res:
            h = block(h)
        return self.pre_vq(jax.nn.relu(h))

    def _decode(self, q_NHWD):
        h = self.dec1(q_NHWD)
        for block in self.dec_res:
            h = block(h)
        return self.dec3(jax.nn.relu(self.dec2(jax.nn.relu(h))))

    def encode(self, frames_BTHWC):
        """Normalised frames [B, T, 96, 96, 3] → codes int32 [B, T, 24, 24]."""
        B, T = frames_BTHWC.shape[:2]
        _, codes, _ = self.vq(self._encode_z(frames_BTHWC.reshape(B * T, *frames_BTHWC.shape[2:])), train=False)
        return codes.reshape(B, T, *codes.shape[1:])

    def decode(self, codes_BTHW):
        """Codes [B, T, 24, 24] → frames in [0, 1] [B, T, 96, 96, 3] (clipped)."""
        B, T = codes_BTHW.shape[:2]
        out = self._decode(self.vq.lookup(codes_BTHW.reshape(B * T, *codes_BTHW.shape[2:])))
        return jnp.clip(out * self.std + self.mean, 0.0, 1.0).reshape(B, T, *out.shape[1:])

    def loss(self, batch, rng):
        frames = batch["frames"]
        x = frames.reshape(-1, *frames.shape[2:]).astype(jnp.float32)
        z_q, _, aux = self.vq(self._encode_z(x), train=True, rng=rng)
        mse = jnp.mean((self._decode(z_q) - x) ** 2)
        mse01 = mse * self.std ** 2
        return mse + aux["commitment_loss"], {
            "mse": mse01, "psnr": -10.0 * jnp.log10(jnp.maximum(mse01, 1e-12)),
            "commitment_loss": aux["commitment_loss"], "perplexity": aux["perplexity"],
            "usage": aux["usage"], "restarted": aux["restarted"]}

    def flops_per_example(self) -> float:
        """Analytic training FLOPs of one example, a crop of ``self.frames`` 96×96 frames.

        Per frame, 2·MACs of every convolution, MACs = output positions × kh·kw × C_in × C_out for a
        convolution and input positions × kh·kw × C_in × C_out for a transposed one: enc1 (48²), enc2,
        enc3, per residual block its 3×3 and 1×1 convolutions, pre_vq and dec1 (24²), dec2 (in 24²),
        dec3 (in 48²); ×3 for training (backward = 2× forward). Plus the codebook, not differentiated:
        distances 2·N·K·D and EMA sums 2·N·K·D, N = 24² codes, counted once. ReLU, the loss and the
        optimiser are elementwise and not counted. Default sizes (hidden 128): 695 MFLOP forward of
        convolutions and 4.7 MFLOP of codebook per frame, 2.09 GFLOP per trained frame.
        """
        g, half = VIDEO_GRID ** 2, (2 * VIDEO_GRID) ** 2
        conv = _conv_macs(self.enc1, half) + _conv_macs(self.enc2, g) + _conv_macs(self.enc3, g)
        for block in list(self.enc_res) + list(self.dec_res):
            conv += _conv_macs(block.conv3, g) + _conv_macs(block.conv1, g)
        conv += _conv_macs(self.pre_vq, g) + _conv_macs(self.dec1, g)
        conv += _conv_macs(self.dec2, g) + _conv_macs(self.dec3, half)
        vq = 2 * 2 * g * self.vq.num_codes * self.vq.dim
        return float(self.frames * (3 * 2 * conv + vq))


def _conv_macs(conv, positions: int) -> int:
    """Multiply-adds of ``conv`` (nnx.Conv / nnx.ConvTranspose, ungrouped) over ``positions`` spatial
    positions: its output positions for a convolution, its input positions for a transposed one."""
    return positions * int(np.prod(conv.kernel_size)) * conv.in_features * conv.out_features


# -- the methods -------------------------------------------------------------------------------
def _vq_kwargs(m):
    return dict(num_codes=m.num_codes, code_dim=m.code_dim, decay=m.get("decay", 0.99),
                commitment=m.get("commitment", 0.25), dead_after=m.dead_after,
                **{k: m[k] for k in ("hidden", "residual_blocks", "residual_hidden") if m.get(k) is not None})


def create_audio(config, rngs, encoder_only=False):
    del encoder_only  # an export keeps the whole tokenizer (encoder, codebook, decoder)
    return AudioVQVAE(rngs=rngs, frames=config.model.frames, **_vq_kwargs(config.model))


def create_video(config, rngs, encoder_only=False):
    del encoder_only
    return VideoVQVAE(rngs=rngs, frames=config.model.frames, **_vq_kwargs(config.model))


class Tokenizer:
    """The export adapter of ``vqvae_audio`` / ``vqvae_video``: raw inputs ↔ codes (jitted).

    audio: ``encode(waveforms [B, S] float at config.data.sample_rate)`` → codes int32 [B, S // 320, 64];
           ``decode(codes)`` → power spectra [B, T, 513].
    video: ``encode(frames uint8 [B, T, 96, 96, 3])`` → codes int32 [B, T, 24, 24];
           ``decode(codes)`` → frames float in [0, 1] [B, T, 96, 96, 3].
    """

    def __init__(self, model, config, meta):
        self.model, self.config, self.meta = model, config, meta
        self.modality = "audio" if isinstance(model, AudioVQVAE) else "video"
        self.sample_rate = int(meta.get("sample_rate", config.data.sample_rate)) if meta else config.data.sample_rate
        graphdef, state = nnx.split(model)
        self._state = state
        op = frontend.PowerSpectrogram() if self.modality == "audio" else frontend.VideoFrames()
        key = "spec" if self.modality == "audio" else "frames"
        self._encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(op({self.modality: x}, None)[key]))
        self._decode = jax.jit(lambda state, codes: nnx.merge(graphdef, state).decode(codes))

    def encode(self, x):
        if self.modality == "audio":
            x = np.asarray(x, np.float32)
            if x.ndim != 2:
                raise ValueError(f"audio tokenizer: waveforms must be [B, samples] at {self.sample_rate} Hz, got {x.shape}")
        else:
            x = np.asarray(x)
            if x.ndim != 5 or x.shape[2:] != (FRAME, FRAME, 3) or x.dtype != np.uint8:
                raise ValueError(f"video tokenizer: frames must be uint8 [B, T, {FRAME}, {FRAME}, 3], "
                                 f"got {x.dtype} {x.shape}")
        return self._encode(self._state, x)

    def decode(self, codes):
        return self._decode(self._state, jnp.asarray(codes, jnp.int32))


# -- reconstruction images (Method.images) ------------------------------------------------------
def _viridis() -> np.ndarray:
    import matplotlib

    return np.round(matplotlib.colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


VIRIDIS = _viridis()    # [256, 3] uint8: the spectrogram images' colormap
IMAGE_CROPS = 4         # crops shown per image
IMAGE_FRAMES = 8        # video frames shown per crop
IMAGE_SEP = 2           # separator width in pixels
IMAGE_DB_RANGE = 80.0   # spectrogram images show [max − 80 dB, max] of each input crop
IMAGE_MIN_WIDTH = 128   # spectrogram time axis repeated to at least this many pixels


def _grid(tiles_RCHW3, fill: int = 255):
    """Tiles uint8 [R, C, H, W, 3] → one image [R·H + (R − 1)·2, C·W + (C − 1)·2, 3], 2-pixel ``fill`` separators."""
    R, C, H, W, _ = tiles_RCHW3.shape
    padded = jnp.pad(tiles_RCHW3, ((0, 0), (0, 0), (0, IMAGE_SEP), (0, IMAGE_SEP), (0, 0)), constant_values=fill)
    image = padded.transpose(0, 2, 1, 3, 4).reshape(R * (H + IMAGE_SEP), C * (W + IMAGE_SEP), 3)
    return image[:-IMAGE_SEP, :-IMAGE_SEP]


def audio_images(model: AudioVQVAE, batch) -> dict:
    """``reconstruction``: the first n = min(4, B) crops side by side, each its input log-power spectrogram
    (top) over the reconstruction, frequency upwards, time repeated r = ⌈128 / T⌉ times; both in dB clipped
    to [max − 80, max] of the input crop, viridis. uint8 [2·513 + 2, n·T·r + (n − 1)·2, 3] (eval mode)."""
    spec = batch["spec"][:IMAGE_CROPS]
    n, T, F = spec.shape
    log_x = model.log_power(spec).reshape(n * T, F)
    z_q, _, _ = model.vq(model._encode_z(log_x, train=False), train=False)
    db = (10.0 / np.log(10.0)) * jnp.stack([log_x, model._decode_log(z_q, train=False)]).reshape(2, n, T, F)
    top = db[0].max(axis=(1, 2))[None, :, None, None]
    level = jnp.nan_to_num(jnp.clip((db - top) / IMAGE_DB_RANGE + 1.0, 0.0, 1.0))
    rgb = jnp.asarray(VIRIDIS)[jnp.round(level * 255).astype(jnp.int32)]             # [2, n, T, F, 3]
    tiles = jnp.repeat(rgb.transpose(0, 1, 3, 2, 4)[:, :, ::-1], -(-IMAGE_MIN_WIDTH // T), axis=3)
    return {"reconstruction": _grid(tiles)}


def video_images(model: VideoVQVAE, batch) -> dict:
    """``reconstruction``: the first n = min(4, B) crops stacked, each a row of its first t = min(8, T)
    input frames over the row of their reconstructions (eval mode), in [0, 1] → uint8
    [2n·96 + (2n − 1)·2, t·96 + (t − 1)·2, 3]."""
    x = batch["frames"][:IMAGE_CROPS, :IMAGE_FRAMES].astype(jnp.float32)
    n, t, *frame = x.shape
    flat = x.reshape(n * t, *frame)
    z_q, _, _ = model.vq(model._encode_z(flat), train=False)
    both = jnp.stack([flat, model._decode(z_q)]) * model.std + model.mean       # [2, n·t, 96, 96, 3]
    rows = both.reshape(2, n, t, *frame).transpose(1, 0, 2, 3, 4, 5).reshape(2 * n, t, *frame)
    return {"reconstruction": _grid(jnp.round(jnp.clip(rows, 0.0, 1.0) * 255).astype(jnp.uint8))}


def audio_inputs(config) -> dict:
    """A waveform crop of ``model.frames`` power-spectrum frames."""
    return {"audio": method.Field((config.model.frames * HOP,))}


def video_inputs(config) -> dict:
    return {"video": method.Field((config.model.frames, FRAME, FRAME, 3), "uint8")}


AUDIO_METHOD = method.register(method.Method(
    name="vqvae_audio", create=create_audio, inputs=audio_inputs, frontend=(frontend.PowerSpectrogram(),),
    pretrained=Tokenizer, images=audio_images))
VIDEO_METHOD = method.register(method.Method(
    name="vqvae_video", create=create_video, inputs=video_inputs, frontend=(frontend.VideoFrames(),),
    pretrained=Tokenizer, images=video_images))
