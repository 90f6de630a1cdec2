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


def expected_configurations() -> set:
    """The rows of the main job: CurricularFace's only where the library has its kind."""
    sys.path.insert(0, str(PYTHON_DIR))
    from amm_softmax import train as t
    names = {"softmax", "CosFace", "ArcFace", "MV-AM-Softmax", "AMM-Softmax"}
    return names | {"CurricularFace"} if t.curricular_supported() else names


def test_quick_run_writes_outputs_and_reduces_the_loss(tmp_path):
    out = tmp_path / "out"
    stdout = run("--quick", "--out", str(out), cwd=tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"digits", "synthetic"}
    assert results["seeds"] == [0]                    # --quick: one seed unless --seeds
    for dataset, runs in results["results"].items():
        assert set(runs) == expected_configurations()
        for name, r in runs.items():
            assert r["curve"][-1] < r["curve"][0], (dataset, name, r["curve"])
            assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["identification"] <= 1.0
            assert 0.0 < r["intra_angle"] < 180.0 and 0.0 < r["inter_angle"] < 180.0
        for kind in ("loss", "roc", "angles"):
            png = out / f"{dataset}_{kind}.png"
            assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| AMM-Softmax |" in (out / "results.md").read_text()
    assert "hard negatives" in stdout  # the progress bars report the mined fraction


def test_seeds_report_mean_sd_and_per_seed_values(tmp_path):
    """--seeds 2: each row is the mean of its seeds with their sample sd, seed s is the run of
    --seed s alone, and the paired differences are those of the per-seed values."""
    out, alone = tmp_path / "two", tmp_path / "alone"
    stdout = run("--quick", "--seeds", "2", "--out", str(out), cwd=tmp_path)
    run("--quick", "--seed", "1", "--out", str(alone), cwd=tmp_path)
    results = json.loads((out / "results.json").read_text())
    single = json.loads((alone / "results.json").read_text())["results"]
    assert results["seeds"] == [0, 1]
    metrics = ("identification", "auc", "tar_1e2", "tar_1e3", "intra_angle", "inter_angle")
    for dataset, runs in results["results"].items():
        for name, r in runs.items():
            for k in metrics:
                values = r["per_seed"][k]
                assert len(values) == 2
                assert r[k] == pytest.approx(np.mean(values), abs=1e-12)
                assert r["sd"][k] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
                assert values[1] == single[dataset][name][k]   # seed 1 is --seed 1's run
            # Seeds draw their own weights, batches and held-out samples: they must differ.
            assert r["sd"]["auc"] > 0 and r["sd"]["loss_last"] > 0, (dataset, name)
            assert r["per_seed"]["curve"][1] == single[dataset][name]["curve"]
            assert r["curve"] == pytest.approx(np.mean(r["per_seed"]["curve"], axis=0))
        for name, row in results["differences"][dataset].items():
            ref = runs["AMM-Softmax"]["per_seed"]["tar_1e3"]
            d = [a - b for a, b in zip(ref, runs[name]["per_seed"]["tar_1e3"])]
            c = row["tar_1e3"]
            assert c["per_seed"] == pytest.approx(d, abs=1e-15)
            assert c["sd"] == pytest.approx(np.std(d, ddof=1), abs=1e-15)
            assert c["beyond_spread"] == (abs(np.mean(d)) > 2 * np.std(d, ddof=1))
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "(mean ± sd over seeds 0, 1)" in text and "AMM-Softmax minus" in text
    assert " ± " in text.split("| AMM-Softmax |")[1].splitlines()[0]
    assert "mean ± sd over seeds 0, 1" in stdout


def test_seeds_must_be_positive(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    done = subprocess.run([sys.executable, "-m", "amm_softmax.train", "--seeds", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "--seeds 0: must be >= 1" in done.stderr


def test_curricular_t_is_the_moving_average_of_the_target_cosine():
    """The NumPy back-end's CurricularFace state: t <- 0.01 mean(c_y) + 0.99 t, with c_y the
    cosine of each normalised embedding with its class's normalised weight."""
    sys.path.insert(0, str(PYTHON_DIR))
    from amm_softmax import train as t
    rng = np.random.default_rng(3)
    emb, classes = rng.standard_normal((7, 5)), 3.0 * rng.standard_normal((4, 5))
    y = np.array([0, 3, 3, 1, 2, 0, 1])
    c_y = [emb[i] @ classes[y[i]] / np.linalg.norm(emb[i]) / np.linalg.norm(classes[y[i]])
           for i in range(len(y))]
    assert t.curricular_t(0.4, emb, classes, y) == pytest.approx(
        0.01 * np.mean(c_y) + 0.99 * 0.4, abs=1e-15)
    # The first step from t = 0 moves it by a hundredth of the mean target cosine.
    assert t.curricular_t(0.0, emb, classes, y) == pytest.approx(0.01 * np.mean(c_y), abs=1e-15)


def test_numpy_backend_passes_the_updated_t_to_each_curricular_step(monkeypatch):
    """Network.train_step updates t from the step's own embeddings before the head sees it, as
    hard_margin, and the library's curricular kind computes the step with it."""
    sys.path.insert(0, str(PYTHON_DIR))
    from amm_softmax import train as t
    seen = []

    def head(emb, w, y, **kw):
        assert kw["hard"] == "curricular"
        seen.append((kw["hard_margin"], t.curricular_t(expected[-1], emb, w, y)))
        expected.append(seen[-1][1])
        return real(emb, w, y, **kw)  # any finite t, also t < 0

    real, expected = t.head_forward_backward, [0.0]
    monkeypatch.setattr(t, "head_forward_backward", head)
    split = t.synthetic(np.random.default_rng(0), quick=True)
    net, _ = t.train(split, "CurricularFace", t.CURRICULAR_CONFIG, 1, 0, "numpy")
    assert len(seen) == -(-len(split.y_train) // 128)
    assert [a for a, _ in seen] == [b for _, b in seen] and net.t == seen[-1][0]
    assert 0 < abs(seen[0][0]) <= 0.01    # from t = 0: a hundredth of a mean cosine


def test_curricular_row_follows_the_library():
    """The CurricularFace row is in the job exactly when the library accepts the kind, which
    this tree's library does (the row is on, before AMM-Softmax)."""
    sys.path.insert(0, str(PYTHON_DIR))
    from amm_softmax import train as t
    from amm_softmax._params import check_params
    try:
        check_params(hard="curricular", hard_margin=0.0)
        known = True
    except ValueError:
        known = False
    assert t.curricular_supported() == known
    # The library of this tree has the kind (0.3): the row must be on, not silently dropped
    # by a stale build.
    assert known, "the loaded library refuses hard='curricular'; rebuild it (swift build)"
    assert list(t.configurations()) == \
        ["softmax", "CosFace", "ArcFace", "MV-AM-Softmax", "CurricularFace", "AMM-Softmax"]


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


# ------------------------------------------------------------------------------------------------
# Scaling by class: --ranks (sharded over MPI processes) and --sample-rate (PartialFC)


def _mpi_missing() -> str | None:
    import importlib.util
    import shutil
    if shutil.which("mpirun") is None:
        return "mpirun is not installed"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed"
    return None


def test_sharded_step_on_one_process_is_the_main_jobs_training_bit_for_bit():
    """The data-parallel step with the class shard's Adam, on one rank, is train() exactly:
    the same loss curve and the same weights (the ranks' run differs from it only by the order
    of sums over ranks)."""
    sys.path.insert(0, str(PYTHON_DIR))
    from amm_softmax import train as t
    split = t.synthetic(np.random.default_rng(0), quick=True)
    one, curve = t.train(split, t.SHARDED, t.CONFIGS[t.SHARDED], 2, 0, "numpy")
    sharded, start, report = t.train_sharded(split, 2, 0, t.Group(), threads=0)
    assert start == 0 and report["curve"] == curve
    for k, v in one.params.items():
        assert np.array_equal(v, sharded.params[k]), k


@pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))
def test_ranks_give_the_single_process_table(tmp_path):
    out = tmp_path / "o"
    stdout = run("--quick", "--ranks", "2", "--out", str(out), cwd=tmp_path)
    summary = json.loads((out / "sharded.json").read_text())
    assert summary["ranks"] == 2 and set(summary["comparison"]) == {"digits", "synthetic"}
    for name, c in summary["comparison"].items():
        assert c["sharded"]["ranks"] == 2
        assert c["cells_differing"] == 0, (name, c)            # the printed table is the same
        assert c["loss_relative"] < 1e-5, (name, c)            # every epoch's loss: rounding
        assert c["metric_relative"] < 1e-4, (name, c)
        assert f"{name}: 7 of 7 printed cells the same as one process" in stdout
    assert "sharded over 2 ranks" in stdout and "largest difference" in stdout


def test_sample_rate_runs_and_reports(tmp_path):
    out = tmp_path / "o"
    stdout = run("--quick", "--sample-rate", "0.5", "--out", str(out), cwd=tmp_path)
    runs = json.loads((out / "sharded.json").read_text())["sampling"]
    assert [r["sample_rate"] for r in runs] == [1.0, 0.5]
    full, half = runs
    assert full["kept_per_step"] == full["classes"] == 150
    assert half["kept_per_step"] < full["classes"]            # classes were left out
    for r in runs:
        assert r["curve"][-1] < r["curve"][0]
        assert min(r["epoch_seconds"]) > 0 and 0 <= r["metrics"]["tar_1e3"] <= 1
    assert "| sample rate | classes per step | time per epoch |" in stdout
    assert "| 0.5 | " in stdout and "| 1 | 150 |" in stdout
