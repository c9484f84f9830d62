"""The audiovisual storage contract (DESIGN §5, VQ-MAE-AV): 16 kHz mono audio and RGB face crops at
25 fps, stored as one JPEG per frame; frame i covers audio samples [i·640, (i+1)·640), so 2 s =
50 frames = 32,000 samples = 100 STFT hops of 320. No TFDS or grain here: the bench, the trainer
and the builders share these."""
from __future__ import annotations

import numpy as np

AV_SAMPLE_RATE = 16000
VIDEO_FPS = 25
FACE_SIZE = 96
SAMPLES_PER_FRAME = AV_SAMPLE_RATE // VIDEO_FPS  # 640
JPEG_QUALITY = 90


def encode_frame(rgb_HW3: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] -> JPEG bytes (a standard RGB JPEG)."""
    import cv2

    ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(rgb_HW3[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f'cannot JPEG-encode a frame of shape {rgb_HW3.shape}')
    return buf.tobytes()


def decode_frame(jpeg: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 RGB [H, W, 3]."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'cannot decode a stored frame ({len(jpeg)} bytes)')
    return bgr[..., ::-1]
