"""The main job, amm_softmax.train: runs, writes its outputs, and training reduces the loss
(which configuration wins is not asserted)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PYTHON_DIR = Path(__file__).resolve().parents[1]
pytest.importorskip("sklearn", reason="scikit-learn (bundled digits) is not installed")


def run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    done = subprocess.run([sys.executable, "-m", "amm_softmax.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_quick_run_writes_outputs_and_reduces_the_loss(tmp_path):
    out = tmp_path / "out"
    stdout = run("--quick", "--out", str(out), cwd=tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"digits", "synthetic"}
    for dataset, runs in results["results"].items():
        assert set(runs) == {"softmax", "CosFace", "ArcFace", "MV-Arc-Softmax", "AMM-Softmax"}
        for name, r in runs.items():
            assert r["curve"][-1] < r["curve"][0], (dataset, name, r["curve"])
            assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["identification"] <= 1.0
            assert 0.0 < r["intra_angle"] < 180.0 and 0.0 < r["inter_angle"] < 180.0
        for kind in ("loss", "roc", "angles"):
            png = out / f"{dataset}_{kind}.png"
            assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| AMM-Softmax |" in (out / "results.md").read_text()
    assert "hard negatives" in stdout  # the progress bars report the mined fraction


def test_user_data(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(40), 6)
    x = rng.standard_normal((40, 10))[y] + 0.3 * rng.standard_normal((len(y), 10))
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    run("--quick", "--data", str(tmp_path / "mine.npz"), "--out", str(tmp_path / "o"),
        cwd=tmp_path)
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert list(results["results"]) == ["mine"]


def test_command_line_entry(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    done = subprocess.run([sys.executable, "-m", "amm_softmax.cli", "train", "--help"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "--quick" in done.stdout
