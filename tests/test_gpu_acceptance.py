"""The GPU acceptance script's --dry-run: every stage on tiny synthetic data on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_acceptance_dry_run(tmp_path):
    env = {**os.environ, "VGGCIFAR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_acceptance.py"), "--dry-run",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=420,
                       env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    s = json.loads((out / "summary.json").read_text())
    assert s["dry_run"] is True
    assert s["train"]["rc"] == 0 and 0 <= s["train"]["test_accuracy"] <= 1
    assert s["train"]["process_wall_s"] >= s["train"]["train_time_s"] > 0
    assert s["study"]["rc"] == 0 and set(s["study"]["test_accuracy"]) == {"0.5", "1"}
    assert (out / "study" / "report.md").exists()
    assert s["export"]["rc"] == 0 and (out / "export" / "parity.json").exists()
    assert {row["compile"] for row in s["train_throughput"]} == {False, True}
    assert s["loader"]["device_loader_img_s"] > 0 and s["loader"]["classic_loader_img_s"] > 0
    assert any("images_per_s" in row for row in s["inference_throughput"])
    parts = sorted((out / "model-fp16").glob("*.part*"))
    assert parts and all(p.stat().st_size < 16 * 2**20 for p in parts)
    for f in ("train-curves.png", "train-summary.json", "logs/1-train.log", "logs/3-export.log"):
        assert (out / f).exists(), f
    assert "total script time" in r.stdout.splitlines()[-2]
