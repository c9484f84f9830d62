"""A user's own folder through the CLI, with no code change: build → train → export → linear probe."""
import re

import numpy as np
import pytest
import soundfile as sf

from avpretrain import cli
from helpers import REPO, TINY_CONFIG, tiny_overrides

pytestmark = pytest.mark.xdist_group("cli_flow")


def make_folder(root):
    rng = np.random.default_rng(0)
    for c, (name, sr) in enumerate((("tone", 22050), ("noise", 16000), ("clicks", 44100))):
        (root / name).mkdir(parents=True)
        for i in range(6):
            t = np.arange(int(sr * rng.uniform(1.0, 2.0))) / sr
            if name == "tone":
                x = 0.3 * np.sin(2 * np.pi * rng.uniform(300, 900) * t)
            elif name == "noise":
                x = 0.1 * rng.standard_normal(len(t))
            else:
                x = (np.arange(len(t)) % int(sr * rng.uniform(0.05, 0.2)) == 0).astype(float) * 0.8
            sf.write(root / name / f"{i}.wav", np.stack([x, x], 1) if i % 2 else x, sr)
    (root / "tone" / "broken.wav").write_bytes(b"RIFF not really a wav")
    return root


def test_user_folder_end_to_end(tmp_path, capsys):
    src, data, work, export = make_folder(tmp_path / "src"), tmp_path / "data", tmp_path / "w", tmp_path / "e"

    assert cli.main(["data", "build", "audio_folder", "--source", str(src), "--out", str(data)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "built 18 examples, skipped 1"
    assert any("broken.wav" in line for line in out)

    overrides = tiny_overrides(data, total_steps=4, checkpoint_every=4)
    args = [f"--config.{k}={v}" for k, v in overrides.items()]
    assert cli.main(["train", f"--config={REPO / TINY_CONFIG}", *args, f"--workdir={work}"]) == 0
    assert cli.main(["export", f"--workdir={work}", f"--out={export}"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "linear-probe", f"--model={export}", f"--data={data}"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"linear-probe accuracy=(\d\.\d+)", last)
    assert match and 0.0 <= float(match.group(1)) <= 1.0
