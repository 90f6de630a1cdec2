"""Train embeddings with each loss of the family and compare what the margin and the mining buy.

    python -m amm_softmax.train [--data PATH.npz] [--quick] [--epochs E] [--out DIR] [--seed S]
                                [--seeds K]
    python -m amm_softmax.train --ranks P [--sample-rate R ...] [...]
    python -m amm_softmax.train --sample-rate R [R ...] [...]
    amm-softmax train ...                       (the same, through the installed command)

For each configuration (plain normalised softmax, CosFace, ArcFace, MV-AM-Softmax, AMM-Softmax,
and CurricularFace where the library has hard="curricular") the same small network (an MLP
128-32 with Adam, the same seed, budget and initial weights) is trained with the library's fused
head on the identities of the training split -- in PyTorch with amm_softmax.torch.AMMSoftmaxHead
when torch is importable, in NumPy otherwise (`--backend`); then:

- identification: accuracy of the nearest class weight on held-out samples of those identities;
- verification on identities never seen in training: ROC AUC and TAR at FAR = 1e-2 and 1e-3
  over all pairs of their samples (cosine of the embeddings), and the angle statistics: the mean
  angle of a sample to its identity's mean direction (intra), and the mean over identities of the
  angle to the nearest other identity (inter).

Data: `digits` (scikit-learn's bundled handwritten digits: classes 0-5 train, 6-9 unseen),
`synthetic` (hundreds of identities made by a fixed random non-linear map of identity and
nuisance factors, seeded), or `--data PATH` (an .npz with `x`, features, and `y`, identity
labels; a quarter of the identities are held out as unseen). By default both embedded sets run.

Each configuration runs on each data set over --seeds K seeds (default 3; 1 with --quick):
seed S, S+1, ..., each drawing its own split of held-out samples, initial weights and batch
order (seed s is exactly the run `--seed s --seeds 1`), and the tables give the mean and the
sample standard deviation over the seeds, with the paired per-seed differences of AMM-Softmax
against every other configuration.

Writes to --out (default out/train): results.json (means, standard deviations and per-seed
values), results.md (the tables), and PNG plots: loss curves and ROC curves (means with a band
of mean +- sd over the seeds), angle histograms (the seeds pooled). Progress bars show each
epoch's loss and the fraction of negatives mined as hard (counted by the kernels:
`hard_negatives=`).

Scaling by class (docs/SCALING.md), on the AMM-Softmax configuration and the NumPy network:

- `--ranks P` relaunches this module under `mpirun --oversubscribe -n P`; each rank holds one
  shard of the class weights (shard_range) and its own rows of each batch, the head runs
  through amm_softmax.mpi, the network's gradients are summed over the ranks. It prints the
  table of one process (the main job's run) and the sharded one, and how far apart they are.
- `--sample-rate R [R ...]` trains with PartialFC's class sampling at each rate (and 1.0) on
  the synthetic set (or --data) and tabulates time per epoch and TAR@FAR against the rate; in
  one process, or over the ranks of --ranks.

Both write --out/sharded.json instead of the main job's outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import head_forward_backward
from ._shard import shard_range

CONFIGS = {
    "softmax": dict(target="cos", margin=0.0, hard="none"),
    "CosFace": dict(target="cos", margin=0.35, hard="none"),
    "ArcFace": dict(target="arc", margin=0.5, hard="none"),
    # FaceX-Zoo's published MV-Softmax training settings (head_conf.yaml: is_am 1, margin 0.35,
    # mv_weight 1.12, scale 32): the arc variant at m = 0.5 collapses here at t = 1.2 and 1.12.
    "MV-AM-Softmax": dict(target="cos", margin=0.35, hard="mv-fixed", hard_margin=1.12),
    "AMM-Softmax": dict(target="arc", margin=0.5, hard="amm", hard_margin=0.2),
}
# CurricularFace's t is a moving average of the target cosine, passed to each step as
# hard_margin (curricular_t); the row runs only where the library knows the kind.
CURRICULAR = "CurricularFace"
CURRICULAR_CONFIG = dict(target="arc", margin=0.5, hard="curricular")
SCALE = 32.0
METRICS = ("identification", "auc", "tar_1e2", "tar_1e3", "intra_angle", "inter_angle")


def curricular_supported() -> bool:
    """Whether the loaded library accepts hard="curricular" (a one-row call of the head)."""
    try:
        head_forward_backward(np.ones((1, 2), np.float32), np.ones((2, 2), np.float32),
                              np.zeros(1, np.int64), hard="curricular", hard_margin=0.0,
                              **{k: v for k, v in CURRICULAR_CONFIG.items() if k != "hard"})
    except ValueError:  # an unknown kind is a ValueError from the package or the C library
        return False
    return True


def configurations() -> dict:
    """CONFIGS, with CurricularFace before AMM-Softmax where the library supports it."""
    if not curricular_supported():
        return dict(CONFIGS)
    names = list(CONFIGS)
    names.insert(names.index("AMM-Softmax"), CURRICULAR)
    return {n: CURRICULAR_CONFIG if n == CURRICULAR else CONFIGS[n] for n in names}


def curricular_t(t: float, embeddings, classes, labels, alpha=0.01) -> float:
    """CurricularFace's update t <- alpha mean(c_y) + (1 - alpha) t, c_y the cosine of each
    row's normalised embedding with its class's normalised weight (the job has no ignored
    rows), computed in float64 before the step that uses t."""
    e = _unit(np.asarray(embeddings, dtype=np.float64))
    w = _unit(np.asarray(classes, dtype=np.float64)[labels])
    return alpha * float(np.sum(e * w, axis=1).mean()) + (1 - alpha) * t


# ------------------------------------------------------------------------------------------------
# Data


@dataclass
class Split:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray      # labels 0..K-1 of the training identities
    x_test: np.ndarray       # held-out samples of the training identities
    y_test: np.ndarray
    x_unseen: np.ndarray     # identities never seen in training
    y_unseen: np.ndarray


def _standardise(*arrays):
    mean, std = arrays[0].mean(0), arrays[0].std(0) + 1e-6
    return [((a - mean) / std).astype(np.float32) for a in arrays]


def split_identities(name, x, y, unseen_ids, rng, test_fraction=0.2) -> Split:
    """Held-out samples of the seen identities, and the unseen identities apart."""
    unseen = np.isin(y, unseen_ids)
    xs, ys = x[~unseen], y[~unseen]
    seen_ids = np.unique(ys)
    ys = np.searchsorted(seen_ids, ys)
    order = rng.permutation(len(ys))
    n_test = int(len(ys) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    x_train, x_test, x_unseen = _standardise(xs[train], xs[test], x[unseen])
    return Split(name, x_train, ys[train], x_test, ys[test], x_unseen, y[unseen])


def digits(rng) -> Split:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
    data = load_digits()
    return split_identities("digits", data.data.astype(np.float64), data.target,
                            np.arange(6, 10), rng)


def synthetic(rng, identities=1000, per_identity=10, quick=False) -> Split:
    """x = phi(identity factor, nuisance factor): a fixed random 2-layer tanh map, seeded."""
    if quick:
        identities, per_identity = 200, 8
    gen = np.random.default_rng(12345)  # the map and the identities never change with --seed
    ident = gen.standard_normal((identities, 16))
    a1 = gen.standard_normal((24, 96)) / np.sqrt(24)
    a2 = gen.standard_normal((96, 64)) / np.sqrt(96)
    y = np.repeat(np.arange(identities), per_identity)
    nuisance = gen.standard_normal((len(y), 8)) * 1.5
    z = np.concatenate([ident[y], nuisance], axis=1)
    x = np.tanh(np.tanh(z @ a1) @ a2) + 0.2 * gen.standard_normal((len(y), 64))
    unseen = np.arange(identities * 3 // 4, identities)
    return split_identities("synthetic", x, y, unseen, rng)


def user_data(path: Path, rng) -> Split:
    with np.load(path) as f:
        x, y = np.asarray(f["x"], dtype=np.float64), np.asarray(f["y"])
    x = x.reshape(len(x), -1)
    ids = np.unique(y)
    unseen = rng.choice(ids, size=max(1, len(ids) // 4), replace=False)
    return split_identities(path.stem, x, y, unseen, rng)


# ------------------------------------------------------------------------------------------------
# The network: x -> relu(x W1 + b1) W2 + b2, trained with Adam; the head owns the class weights.


@dataclass
class Network:
    params: dict
    moments: dict = field(default_factory=dict)
    step: int = 0
    t: float = 0.0   # CurricularFace's moving average, which the NumPy back-end keeps itself

    @staticmethod
    def create(inputs, hidden, dim, classes, rng):
        p = {"w1": rng.standard_normal((inputs, hidden)) * np.sqrt(2 / inputs),
             "b1": np.zeros(hidden),
             "w2": rng.standard_normal((hidden, dim)) * np.sqrt(1 / hidden),
             "b2": np.zeros(dim),
             "classes": rng.standard_normal((classes, dim))}
        return Network({k: v.astype(np.float32) for k, v in p.items()})

    def embed(self, x):
        h = np.maximum(x @ self.params["w1"] + self.params["b1"], 0)
        return h @ self.params["w2"] + self.params["b2"], h

    def train_step(self, x, y, config, lr):
        """One step; returns (loss, number of hard negatives, number of negatives)."""
        emb, h = self.embed(x)
        if config.get("hard") == "curricular":
            self.t = curricular_t(self.t, emb.astype(np.float32), self.params["classes"], y)
            config = dict(config, hard_margin=self.t)
        counts = np.zeros(len(y), dtype=np.int64)
        loss, g_emb, g_classes = head_forward_backward(
            emb.astype(np.float32), self.params["classes"], y, scale=SCALE,
            hard_negatives=counts, **config)
        g_emb = g_emb.astype(np.float32)
        grads = {"w2": h.T @ g_emb, "b2": g_emb.sum(0), "classes": g_classes}
        g_h = (g_emb @ self.params["w2"].T) * (h > 0)
        grads["w1"] = x.T @ g_h
        grads["b1"] = g_h.sum(0)
        self._adam(grads, lr)
        return float(loss), int(counts.sum()), len(y) * (self.params["classes"].shape[0] - 1)

    def _adam(self, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.step += 1
        for k, g in grads.items():
            m, v = self.moments.get(k, (np.zeros_like(g), np.zeros_like(g)))
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            self.moments[k] = (m, v)
            m_hat, v_hat = m / (1 - b1 ** self.step), v / (1 - b2 ** self.step)
            self.params[k] -= (lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Evaluation


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def roc(scores, genuine):
    """False and true accept rates over all thresholds, and the area under the curve."""
    order = np.argsort(-scores, kind="stable")
    g = genuine[order]
    tar = np.concatenate([[0], np.cumsum(g) / g.sum()])
    far = np.concatenate([[0], np.cumsum(~g) / (~g).sum()])
    area = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 renamed it
    return far, tar, float(area(tar, far))


def tar_at(far, tar, target):
    return float(tar[np.searchsorted(far, target, side="right") - 1])


def evaluate(net: Network, split: Split, predicted=None) -> dict:
    """The metrics; `predicted` (the nearest class of each held-out sample) is computed here
    from net.params["classes"] unless given (a sharded run finds it over its shards)."""
    test_emb = _unit(net.embed(split.x_test)[0])
    if predicted is None:
        predicted = np.argmax(test_emb @ _unit(net.params["classes"]).T, axis=1)
    accuracy = float((predicted == split.y_test).mean())

    emb = _unit(net.embed(split.x_unseen)[0])
    y = split.y_unseen
    upper = np.triu_indices(len(y), k=1)
    scores = (emb @ emb.T)[upper]
    genuine = (y[:, None] == y[None, :])[upper]
    far, tar, auc = roc(scores, genuine)

    ids = np.unique(y)
    centres = _unit(np.stack([emb[y == i].mean(0) for i in ids]))
    intra = np.degrees(np.arccos(np.clip(np.sum(emb * centres[np.searchsorted(ids, y)], 1),
                                         -1, 1)))
    between = np.degrees(np.arccos(np.clip(centres @ centres.T, -1, 1)))
    np.fill_diagonal(between, np.inf)
    nearest = between.min(1)
    return dict(identification=accuracy, auc=auc, tar_1e2=tar_at(far, tar, 1e-2),
                tar_1e3=tar_at(far, tar, 1e-3), intra_angle=float(intra.mean()),
                inter_angle=float(nearest.mean()), roc=(far, tar), intra=intra, inter=nearest)


# ------------------------------------------------------------------------------------------------


def progress(prefix, done_fraction, epoch, epochs, loss, hard, width=24):
    """One line, redrawn: the run's progress, the epoch, its mean loss so far, and the fraction
    of negatives the last batch mined as hard."""
    done = int(width * done_fraction)
    bar = "#" * done + "." * (width - done)
    sys.stdout.write(f"\r  {prefix:<20}[{bar}] epoch {epoch:>3}/{epochs}  loss {loss:8.4f}  "
                     f"hard negatives {hard:6.2%}")
    sys.stdout.flush()


class TorchNetwork:
    """The same network and optimiser in PyTorch, with the library's AMMSoftmaxHead (used when
    torch is importable, or with --backend torch): initialised from the NumPy network's weights,
    so both back-ends start from the same point."""

    def __init__(self, start: Network, config: dict, lr: float):
        import torch
        from .torch import AMMSoftmaxHead
        self.torch = torch
        p = {k: torch.from_numpy(v.copy()) for k, v in start.params.items()}
        first, second = torch.nn.Linear(*p["w1"].shape), torch.nn.Linear(*p["w2"].shape)
        with torch.no_grad():
            first.weight.copy_(p["w1"].T)
            first.bias.copy_(p["b1"])
            second.weight.copy_(p["w2"].T)
            second.bias.copy_(p["b2"])
        self.net = torch.nn.Sequential(first, torch.nn.ReLU(), second)
        self.head = AMMSoftmaxHead(p["classes"].shape[1], p["classes"].shape[0], scale=SCALE,
                                   **config)
        with torch.no_grad():
            self.head.weight.copy_(p["classes"])
        self.optimiser = torch.optim.Adam(list(self.net.parameters()) + [self.head.weight],
                                          lr=lr)
        self.params = {}

    def train_step(self, x, y, config, lr):
        torch = self.torch
        self.optimiser.zero_grad()
        loss = self.head(self.net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        self.optimiser.step()
        hard = int(self.head.hard_negatives.sum())
        return float(loss.detach()), hard, len(y) * (self.head.weight.shape[0] - 1)

    def embed(self, x):
        with self.torch.no_grad():
            self.params["classes"] = self.head.weight.detach().numpy()
            return self.net(self.torch.from_numpy(x)).numpy(), None


def train(split: Split, name: str, config: dict, epochs: int, seed: int, backend: str,
          batch=128, lr=2e-3):
    rng = np.random.default_rng(seed)
    classes = int(split.y_train.max()) + 1
    net = Network.create(split.x_train.shape[1], 128, 32, classes, rng)
    if backend == "torch":
        net = TorchNetwork(net, config, lr)
        net.embed(split.x_train[:1])  # exposes the class weights for evaluate()
    curve = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(split.y_train))
        losses = []
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            loss, hard, negatives = net.train_step(split.x_train[idx], split.y_train[idx],
                                                   config, lr)
            losses.append(loss)
            done = (epoch - 1 + (start + len(idx)) / len(order)) / epochs
            progress(name, done, epoch, epochs, float(np.mean(losses)), hard / max(negatives, 1))
        curve.append(float(np.mean(losses)))
    sys.stdout.write("\n")
    return net, curve


def _tar_on(roc_curve, grid):
    """The ROC's true accept rate at each false accept rate of `grid` (as tar_at reads it), so
    that the seeds' curves can be averaged on one axis."""
    far, tar = roc_curve
    return tar[np.searchsorted(far, grid, side="right") - 1]


def _band(ax, x, rows, label):
    """The mean of `rows` (one per seed) as a line, and mean +- sd as a shaded band."""
    rows = np.asarray(rows, dtype=np.float64)
    mean = rows.mean(0)
    line, = ax.plot(x, mean, label=label)
    if len(rows) > 1:
        sd = rows.std(0, ddof=1)
        ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, lw=0)


def plot(out: Path, dataset: str, runs: dict):
    """runs: configuration -> the list of its seeds' runs (curve, metrics)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no plots: matplotlib is not installed)")
        return []
    paths = []
    seeds = len(next(iter(runs.values())))
    band = f"mean over {seeds} seeds, band mean ± sd" if seeds > 1 else "1 seed"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rs in runs.items():
        curves = [r["curve"] for r in rs]
        _band(ax, np.arange(1, len(curves[0]) + 1), curves, name)
    ax.set(xlabel="epoch", ylabel="training loss (each its own loss)", yscale="log",
           title=f"Training loss, {dataset}\n({band})")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / f"{dataset}_loss.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    grid = np.logspace(-5, 0, 400)
    for name, rs in runs.items():
        auc = np.mean([r["metrics"]["auc"] for r in rs])
        _band(ax, grid, [_tar_on(r["metrics"]["roc"], grid) for r in rs],
              f"{name} (AUC {auc:.3f})")
    ax.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate", ylim=(0, 1),
           title=f"Verification of unseen identities, {dataset}\n({band})")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / f"{dataset}_roc.png"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rs in runs.items():
        axes[0].hist(np.concatenate([r["metrics"]["intra"] for r in rs]), bins=40,
                     histtype="step", label=name)
        axes[1].hist(np.concatenate([r["metrics"]["inter"] for r in rs]), bins=40,
                     histtype="step", label=name)
    pooled = f" ({seeds} seeds pooled)" if seeds > 1 else ""
    axes[0].set(xlabel="degrees", title=f"sample to its identity's mean (unseen){pooled}")
    axes[1].set(xlabel="degrees", title=f"identity to the nearest other (unseen){pooled}")
    axes[1].legend(fontsize=8)
    paths.append(_save(fig, out / f"{dataset}_angles.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def table(dataset: str, runs: dict) -> str:
    """One run per configuration: `seed_table`'s columns, without a spread."""
    return seed_table(dataset, {name: summarise([r]) for name, r in runs.items()})


def _sd(values) -> float | None:
    """The sample standard deviation (ddof 1) over the seeds; None for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarise(seed_runs: list) -> dict:
    """One configuration over its seeds: the mean of each metric and of the loss curve at the
    top level (the keys of a single run), `sd` and `per_seed` beside them."""
    per_seed = {k: [float(r["metrics"][k]) for r in seed_runs] for k in METRICS}
    curves = [list(r["curve"]) for r in seed_runs]
    firsts, lasts = [c[0] for c in curves], [c[-1] for c in curves]
    sd = {k: _sd(v) for k, v in per_seed.items()}
    sd.update(loss_first=_sd(firsts), loss_last=_sd(lasts))
    return dict(curve=np.mean(curves, axis=0).tolist(),
                **{k: float(np.mean(v)) for k, v in per_seed.items()},
                sd=sd, per_seed=dict(per_seed, curve=curves))


def _pm(mean: float, sd: float | None, digits: int, unit: str = "") -> str:
    return f"{mean:.{digits}f}{unit}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def seed_table(dataset: str, summaries: dict, seeds: list | None = None) -> str:
    """The table of means ± sample standard deviations over the seeds (`seeds` named in the
    title when given)."""
    title = f"**{dataset}**"
    if seeds:
        title += (f" (mean ± sd over seeds {', '.join(map(str, seeds))})" if len(seeds) > 1
                  else f" (seed {seeds[0]})")
    head = ("| configuration | loss first -> last epoch | identification | ROC AUC | "
            "TAR@FAR=1e-2 | TAR@FAR=1e-3 | intra angle (deg) | nearest inter angle (deg) |")
    lines = [title, "", head, "|" + " --- |" * 8]
    for name, r in summaries.items():
        sd = r["sd"]
        lines.append(f"| {name} | {r['curve'][0]:.3f} -> "
                     f"{_pm(r['curve'][-1], sd['loss_last'], 3)} | "
                     f"{_pm(r['identification'], sd['identification'], 3)} | "
                     f"{_pm(r['auc'], sd['auc'], 4)} | {_pm(r['tar_1e2'], sd['tar_1e2'], 3)} | "
                     f"{_pm(r['tar_1e3'], sd['tar_1e3'], 3)} | "
                     f"{_pm(r['intra_angle'], sd['intra_angle'], 1)} | "
                     f"{_pm(r['inter_angle'], sd['inter_angle'], 1)} |")
    return "\n".join(lines)


REFERENCE = "AMM-Softmax"
DIFFERENCE_METRICS = ("identification", "auc", "tar_1e2", "tar_1e3")
SPREAD = 2.0   # a paired difference is beyond the spread when |mean| > SPREAD x its sd


def differences(summaries: dict) -> dict:
    """AMM-Softmax minus each other configuration, paired by seed (the two share the seed's
    split, initial weights and batches): per metric the per-seed differences, their mean and
    sample sd, and whether |mean| exceeds SPREAD sds (None with one seed)."""
    if REFERENCE not in summaries:
        return {}
    ref = summaries[REFERENCE]["per_seed"]
    out = {}
    for name, r in summaries.items():
        if name == REFERENCE:
            continue
        out[name] = {}
        for k in DIFFERENCE_METRICS:
            d = [a - b for a, b in zip(ref[k], r["per_seed"][k])]
            mean, sd = float(np.mean(d)), _sd(d)
            out[name][k] = dict(mean=mean, sd=sd, per_seed=d,
                                beyond_spread=None if sd is None else abs(mean) > SPREAD * sd)
    return out


def difference_table(dataset: str, diffs: dict) -> str:
    if not diffs:
        return ""
    names = {"identification": "identification", "auc": "ROC AUC", "tar_1e2": "TAR@FAR=1e-2",
             "tar_1e3": "TAR@FAR=1e-3"}
    lines = [f"**{dataset}: {REFERENCE} minus each configuration, paired by seed**", "",
             f"| {REFERENCE} minus | " + " | ".join(names[k] for k in DIFFERENCE_METRICS) + " |",
             "|" + " --- |" * (1 + len(DIFFERENCE_METRICS))]
    for name, row in diffs.items():
        cells = []
        for k in DIFFERENCE_METRICS:
            c = row[k]
            digits = 4 if k == "auc" else 3
            text = f"{c['mean']:+.{digits}f}" + ("" if c["sd"] is None else
                                                  f" ± {c['sd']:.{digits}f}")
            if c["beyond_spread"] is not None:
                text += " beyond" if c["beyond_spread"] else " within"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Each cell: the mean ± sd over the seeds of the per-seed difference; "
              f"\"beyond\" when |mean| > {SPREAD:g} sd (the seed-to-seed spread of the "
              f"difference), else \"within\"."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Sharded training (--ranks P) and PartialFC's class sampling (--sample-rate R)
#
# The AMM-Softmax configuration on the NumPy network, in PartialFC's layout: every rank holds the
# whole network (data parallel: the gradients of its parameters are summed over the ranks), one
# contiguous shard of the class weights, shard_range(C, rank, P), and its own contiguous rows of
# each batch; the head runs sharded by class (amm_softmax.mpi over MPI; in one process the
# library's head, whose sample_rate= samples the classes as one rank would). Adam is
# elementwise, so a rank's update of its shard is the slice of the one-process update; with
# class sampling only the kept classes' rows and optimiser state move (PartialFC's lazy update
# of the sampled weights).

SHARDED = "AMM-Softmax"
NETWORK_KEYS = ("w1", "b1", "w2", "b2")


class Group:
    """The ranks of a sharded run: mpi4py's COMM_WORLD under mpirun, or this process alone."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()

    def head(self, x, w, y, **kw):
        if self.comm is None:  # one process: the library's head, which samples as one rank would
            return head_forward_backward(x, w, y, **kw)
        from .mpi import head_forward_backward as mpi_head
        return mpi_head(x, w, y, self.comm, **kw)

    def sum(self, values: np.ndarray) -> np.ndarray:
        if self.comm is None:
            return values
        from mpi4py import MPI
        total = np.empty_like(values)
        self.comm.Allreduce(np.ascontiguousarray(values), total, op=MPI.SUM)
        return total

    def gather(self, obj) -> list:
        return [obj] if self.comm is None else self.comm.allgather(obj)


def _adam_rows(net: Network, grad, moments, rows, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Network._adam's update of the class shard, on `rows` only (a slice or the kept rows),
    at the step net._adam has just counted."""
    m, v = moments
    g = grad[rows]
    m[rows] = b1 * m[rows] + (1 - b1) * g
    v[rows] = b2 * v[rows] + (1 - b2) * g * g
    m_hat, v_hat = m[rows] / (1 - b1 ** net.step), v[rows] / (1 - b2 ** net.step)
    net.params["classes"][rows] -= (lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)


def sharded_step(net: Network, group: Group, x, y, state: dict, lr, sample_rate, seed):
    """One step on this rank's rows x, y; returns (loss over every rank's rows, hard negatives
    and kept classes summed over the ranks, seconds in the head)."""
    emb, h = net.embed(x)
    counts = np.zeros(len(y), dtype=np.int64)
    started = time.perf_counter()
    loss, g_emb, g_classes, kept = group.head(
        emb.astype(np.float32), net.params["classes"], y, scale=SCALE, hard_negatives=counts,
        sample_rate=sample_rate, seed=seed, step=net.step, return_sampled=True,
        num_threads=state["threads"], **CONFIGS[SHARDED])
    head_seconds = time.perf_counter() - started
    g_emb = g_emb.astype(np.float32)
    grads = {"w2": h.T @ g_emb, "b2": g_emb.sum(0)}
    g_h = (g_emb @ net.params["w2"].T) * (h > 0)
    grads["w1"] = x.T @ g_h
    grads["b1"] = g_h.sum(0)
    # One allreduce: the network's gradients (data parallel) and two counts for the reports.
    flat = np.concatenate([grads[k].ravel().astype(np.float64) for k in NETWORK_KEYS] +
                          [[counts.sum(), kept.size]])
    flat = group.sum(flat)
    offset = 0
    for k in NETWORK_KEYS:
        size = grads[k].size
        grads[k] = flat[offset:offset + size].reshape(grads[k].shape).astype(np.float32)
        offset += size
    net._adam(grads, lr)
    rows = slice(None) if sample_rate >= 1.0 else kept - state["start"]
    _adam_rows(net, g_classes, state["moments"], rows, lr)
    return float(loss), int(flat[-2]), int(flat[-1]), head_seconds


def nearest_class(net: Network, group: Group, start: int, x) -> np.ndarray:
    """The nearest class weight of each row of x over every shard: each rank its best, then the
    first rank holding the largest cosine (the lowest class id, as argmax over all would)."""
    emb = _unit(net.embed(x)[0])
    cos = emb @ _unit(net.params["classes"]).T
    if cos.shape[1]:
        mine = (cos.max(1), start + np.argmax(cos, axis=1))
    else:  # a rank without classes
        mine = (np.full(len(x), -np.inf, dtype=cos.dtype), np.zeros(len(x), dtype=np.int64))
    parts = group.gather(mine)
    values, ids = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
    return ids[np.argmax(values, axis=0), np.arange(len(x))]


def train_sharded(split: Split, epochs: int, seed: int, group: Group, sample_rate=1.0,
                  threads=1, batch=128, lr=2e-3, label=None):
    """train() for the AMM-Softmax configuration, sharded over `group` (the same data order,
    initial weights and batches as one process); the head runs on `threads` threads (0: all).
    Returns (net, class_start, report) on every rank; report holds the loss curve, seconds per
    epoch (all and in the head) and the classes kept per step (mean over the run, summed over
    the shards)."""
    rng = np.random.default_rng(seed)
    classes = int(split.y_train.max()) + 1
    net = Network.create(split.x_train.shape[1], 128, 32, classes, rng)
    start, stop = shard_range(classes, group.rank, group.size)
    net.params["classes"] = net.params["classes"][start:stop].copy()
    shard = net.params["classes"]
    state = dict(start=start, moments=(np.zeros_like(shard), np.zeros_like(shard)),
                 threads=threads)
    label = label or (SHARDED if group.size == 1 else f"{SHARDED} x{group.size}")
    curve, epoch_seconds, head_seconds, kept = [], [], [], []
    for epoch in range(1, epochs + 1):
        started, in_head = time.perf_counter(), 0.0
        order = rng.permutation(len(split.y_train))
        losses = []
        for first in range(0, len(order), batch):
            idx = order[first:first + batch]
            lo, hi = shard_range(len(idx), group.rank, group.size)  # this rank's rows
            mine = idx[lo:hi]
            loss, hard, kept_now, seconds = sharded_step(
                net, group, split.x_train[mine], split.y_train[mine], state, lr, sample_rate,
                seed)
            losses.append(loss)
            in_head += seconds
            kept.append(kept_now)
            if group.rank == 0:
                done = (epoch - 1 + (first + len(idx)) / len(order)) / epochs
                progress(label, done, epoch, epochs, float(np.mean(losses)),
                         hard / max(len(idx) * (kept_now - 1), 1))  # of the kept negatives
        curve.append(float(np.mean(losses)))
        epoch_seconds.append(time.perf_counter() - started)
        head_seconds.append(in_head)
    if group.rank == 0:
        sys.stdout.write("\n")
    return net, start, dict(curve=curve, epoch_seconds=epoch_seconds, head_seconds=head_seconds,
                            kept_per_step=float(np.mean(kept)), classes=classes,
                            ranks=group.size, sample_rate=sample_rate)


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("roc", "intra", "inter")}


def _blas_threads(count: int):
    """A context that limits the BLAS threads of this process (threadpoolctl, which comes with
    scikit-learn), or does nothing without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(count)


def run_jobs(splits: list, jobs: list, epochs: int, seed: int, group: Group,
             threads: int = 1) -> list:
    """Each job (data set name, sample rate): train_sharded and evaluate (rank 0 evaluates;
    every rank takes part in finding the nearest classes), with `threads` BLAS and library
    threads. Rank 0 returns the reports."""
    with _blas_threads(threads):
        return _run_jobs(splits, jobs, epochs, seed, group, threads)


def _run_jobs(splits, jobs, epochs, seed, group, threads):
    by_name = {s.name: s for s in splits}
    reports = []
    for name, rate in jobs:
        split = by_name[name]
        if group.rank == 0:
            classes = int(split.y_train.max()) + 1
            bounds = " ".join(f"[{a}, {b})" for a, b in
                              (shard_range(classes, r, group.size) for r in range(group.size)))
            print(f"{name}, {SHARDED}, sample rate {rate:g}: {classes} classes over "
                  f"{group.size} rank{'s' if group.size > 1 else ''}: {bounds}")
        net, start, report = train_sharded(split, epochs, seed, group, rate, threads,
                                           label=None if rate >= 1.0 else f"rate {rate:g}")
        predicted = nearest_class(net, group, start, split.x_test)
        if group.rank == 0:
            report.update(dataset=name, metrics=_scalars(evaluate(net, split, predicted)))
            reports.append(report)
    return reports


def _worker_argv(args) -> list[str]:
    argv = ["--seed", str(args.seed), "--epochs", str(args.epochs)]
    if args.quick:
        argv.append("--quick")
    if args.data:
        argv += ["--data", str(args.data.resolve())]
    if args.sample_rate:
        argv += ["--sample-rate", *map(str, args.sample_rate)]
    return argv


def launch_ranks(args) -> list:
    """Runs this module's sharded jobs under `mpirun --oversubscribe -n P` and returns rank 0's
    reports."""
    import shutil
    import subprocess
    import tempfile
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise SystemExit("--ranks needs mpirun and mpi4py (Debian: apt-get install openmpi-bin "
                         "libopenmpi-dev; then pip install mpi4py)")
    # One core's worth of BLAS threads per rank (P > cores oversubscribes anyway); ranks that
    # wait in a collective yield their core (the host may be shared).
    threads = str(_threads(args.ranks))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
    package_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH"))
                                        if p)
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "ranks.json"
        command = [mpirun, "--oversubscribe", "--bind-to", "none",
                   "--mca", "mpi_yield_when_idle", "1", "-n", str(args.ranks),
                   sys.executable, "-m", "amm_softmax.train", "--mpi-worker", str(result),
                   *_worker_argv(args)]
        sys.stdout.flush()
        done = subprocess.run(command, env=env)
        if done.returncode != 0 or not result.exists():
            raise SystemExit(f"the sharded run failed (mpirun exit status {done.returncode})")
        return json.loads(result.read_text())


def _jobs(args, splits) -> list:
    jobs = [(s.name, 1.0) for s in splits] if args.ranks else []
    for rate in _rates(args):
        if (splits[-1].name, rate) not in jobs:
            jobs.append((splits[-1].name, rate))
    return jobs


def _threads(ranks) -> int:
    """BLAS and library threads of each process of a sharded run: one in a single process (the
    timings then measure work rather than thread scheduling on a shared host), the cores shared
    out under mpirun."""
    return max(1, (os.cpu_count() or 1) // ranks) if ranks else 1


def _rates(args) -> list:
    return sorted({1.0, *args.sample_rate}, reverse=True) if args.sample_rate else []


COMPARED = ("identification", "auc", "tar_1e2", "tar_1e3", "intra_angle", "inter_angle")


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b)) if a != b else 0.0


def compare_runs(one: dict, sharded: dict) -> dict:
    """How far a sharded run is from one process: the table's printed cells that differ, the
    largest relative difference of the metrics (and which), and of every epoch's mean loss."""
    row = lambda r: table("", {"": r}).splitlines()[-1].split("|")[2:-1]  # noqa: E731
    cells = list(zip(row(one), row(sharded)))
    metric = max(COMPARED, key=lambda k: _relative(one["metrics"][k], sharded["metrics"][k]))
    losses = [_relative(a, b) for a, b in zip(one["curve"], sharded["curve"])]
    return dict(cells=len(cells), cells_differing=sum(a != b for a, b in cells),
                metric=metric, metric_one=one["metrics"][metric],
                metric_sharded=sharded["metrics"][metric],
                metric_relative=_relative(one["metrics"][metric], sharded["metrics"][metric]),
                loss_relative=max(losses), first_epoch_loss_relative=losses[0])


def _comparison_text(name: str, ranks: int, c: dict, steps: int) -> str:
    first = c["first_epoch_loss_relative"]
    text = (f"{name}: {c['cells'] - c['cells_differing']} of {c['cells']} printed cells the same "
            f"as one process. Every epoch's mean loss within {c['loss_relative']:.2g} "
            f"(relative; the first epoch's "
            f"{'identical' if first == 0 else f'within {first:.2g}'}); ")
    a, b = c["metric_sharded"], c["metric_one"]
    if c["metric_relative"] == 0.0:
        text += "every metric identical."
    else:
        text += (f"the largest difference of the metrics is in {c['metric']}: {a:.6g} over "
                 f"{ranks} ranks against {b:.6g} (difference {abs(a - b):.2g}, relative "
                 f"{c['metric_relative']:.2g}).")
    return text + (f" Sharding changes only the order of floating-point sums (over shards and "
                   f"ranks), and {steps} steps of training carry those last bits forward.")


def run_scaled(args, splits) -> int:
    """--ranks and --sample-rate: the sharded runs, their tables and sharded.json."""
    started = time.perf_counter()
    jobs = _jobs(args, splits)
    summary = dict(seed=args.seed, epochs=args.epochs, scale=SCALE, backend="numpy",
                   config=CONFIGS[SHARDED], ranks=args.ranks or 1)
    lines = []
    if args.ranks:
        singles = {}
        for split in splits:
            print(f"{split.name}: {SHARDED} in one process (the main job's run), "
                  f"{args.epochs} epochs, seed {args.seed}, network in numpy")
            t0 = time.perf_counter()
            net, curve = train(split, SHARDED, CONFIGS[SHARDED], args.epochs, args.seed,
                               "numpy")
            seconds = (time.perf_counter() - t0) / args.epochs
            singles[split.name] = dict(curve=curve, metrics=_scalars(evaluate(net, split)),
                                       seconds_per_epoch=seconds)
        print(f"\nthe same, sharded over {args.ranks} ranks: mpirun --oversubscribe -n "
              f"{args.ranks} (this machine has {os.cpu_count()} cores)")
        reports = launch_ranks(args)
    else:
        reports = run_jobs(splits, jobs, args.epochs, args.seed, Group())
    found = {(r["dataset"], r["sample_rate"]): r for r in reports}

    if args.ranks:
        summary["comparison"] = {}
        for split in splits:
            one, many = singles[split.name], found[(split.name, 1.0)]
            c = compare_runs(one, many)
            steps = args.epochs * -(-len(split.y_train) // 128)
            per_epoch = float(np.mean(many["epoch_seconds"]))
            lines += [table(f"{split.name}: {SHARDED}, one process", {SHARDED: one}), "",
                      table(f"{split.name}: {SHARDED}, sharded over {args.ranks} ranks",
                            {SHARDED: many}), "",
                      _comparison_text(split.name, args.ranks, c, steps),
                      f"Time per epoch (mean): {one['seconds_per_epoch']:.3f} s in one process "
                      f"(BLAS threads as the main job's), {per_epoch:.3f} s over {args.ranks} "
                      f"ranks ({_threads(args.ranks)} thread(s) each, {os.cpu_count()} cores; "
                      f"a shared host).", ""]
            summary["comparison"][split.name] = dict(one_process=one, sharded=many, **c)
    rates = _rates(args)
    if rates:
        split = splits[-1]
        runs = [found[(split.name, r)] for r in rates]
        where = f"{args.ranks} ranks" if args.ranks else "one process"
        lines += [f"**{split.name}: PartialFC's class sampling, {SHARDED}, {runs[0]['classes']} "
                  f"classes, batch 128, {where}**", "",
                  "| sample rate | classes per step | time per epoch | of it in the head | "
                  "loss first -> last epoch | identification | ROC AUC | TAR@FAR=1e-2 | "
                  "TAR@FAR=1e-3 |", "|" + " --- |" * 9]
        for r in runs:
            m = r["metrics"]
            lines.append(f"| {r['sample_rate']:g} | {r['kept_per_step']:.0f} | "
                         f"{min(r['epoch_seconds']):.3f} s | "
                         f"{min(r['head_seconds']):.3f} s | "
                         f"{r['curve'][0]:.3f} -> {r['curve'][-1]:.3f} | "
                         f"{m['identification']:.3f} | {m['auc']:.4f} | {m['tar_1e2']:.3f} | "
                         f"{m['tar_1e3']:.3f} |")
        lines += ["", "Each step keeps the batch's target classes and, when that is more, "
                  "floor(rate x classes) classes in all, the others drawn at random (PartialFC); "
                  "the loss is over the kept classes, so its values are not comparable across "
                  f"rows. Times are the fastest epoch's (the host is shared), with "
                  f"{_threads(args.ranks)} BLAS and library thread(s) per process (the main "
                  f"job's table, on the BLAS's own threads, sums in another order: its last "
                  f"digits differ)."]
        if not args.ranks:
            lines += ["Rate 1 is the exact head in one call; a lower rate runs the sharded "
                      "protocol's three phases on the kept classes, whose fixed costs can exceed "
                      "what the skipped classes save at a few hundred classes: sampling pays "
                      "where the head dominates the step, at many classes "
                      "(benchmarks/bench_sharded.py)."]
        summary["sampling"] = runs
    print("\n" + "\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sharded.json").write_text(json.dumps(summary, indent=1))
    print(f"\nresults in {args.out / 'sharded.json'} ({time.perf_counter() - started:.0f} s)")
    return 0


def mpi_worker(args, splits) -> int:
    """One rank under mpirun: the jobs, and rank 0 writes the reports to --mpi-worker."""
    from mpi4py import MPI
    group = Group(MPI.COMM_WORLD)
    args.ranks = group.size
    reports = run_jobs(splits, _jobs(args, splits), args.epochs, args.seed, group,
                       threads=_threads(group.size))
    if group.rank == 0:
        args.mpi_worker.write_text(json.dumps(reports))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="amm-softmax train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="an .npz with x (features) and y (identities)")
    ap.add_argument("--quick", action="store_true", help="a small run (seconds), for tests")
    ap.add_argument("--epochs", type=int, help="epochs per configuration")
    ap.add_argument("--seed", type=int, default=0, help="the first seed")
    ap.add_argument("--seeds", type=int, metavar="K",
                    help="seeds per configuration and data set: --seed, --seed + 1, ... "
                         "(default 3, 1 with --quick; --ranks and --sample-rate use --seed "
                         "alone)")
    ap.add_argument("--out", type=Path, default=Path("out/train"))
    ap.add_argument("--backend", choices=["auto", "numpy", "torch"], default="auto",
                    help="the network's framework: torch if importable (auto), else numpy")
    ap.add_argument("--ranks", type=int, metavar="P",
                    help="train AMM-Softmax with its head sharded by class over P processes "
                         "(mpirun --oversubscribe -n P) and compare with one process")
    ap.add_argument("--sample-rate", type=float, nargs="+", metavar="R",
                    help="PartialFC's class sampling: train AMM-Softmax at each rate R in "
                         "(0, 1] (and 1.0) and tabulate time per epoch and TAR@FAR")
    ap.add_argument("--mpi-worker", type=Path, help=argparse.SUPPRESS)  # one rank of --ranks
    args = ap.parse_args(argv)
    if args.ranks is not None and args.ranks < 1:
        ap.error(f"--ranks {args.ranks}: must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: must be >= 1")
    for rate in args.sample_rate or []:
        if not 0.0 < rate <= 1.0:
            ap.error(f"--sample-rate {rate}: must be in (0, 1]")
    if args.ranks or args.sample_rate or args.mpi_worker:
        rng = np.random.default_rng(args.seed)
        splits = ([user_data(args.data, rng)] if args.data else
                  [digits(rng), synthetic(rng, quick=args.quick)])
        args.epochs = args.epochs or (4 if args.quick else 30)
        if args.mpi_worker:
            return mpi_worker(args, splits)
        return run_scaled(args, splits)
    if args.backend == "auto":
        try:
            import torch  # noqa: F401
            args.backend = "torch"
        except Exception:  # ImportError, or a torch that cannot load its libraries
            args.backend = "numpy"
    args.out.mkdir(parents=True, exist_ok=True)
    return run_main_job(args)


def _splits(args, seed: int) -> list:
    """The data sets as seed `seed` splits them (the identities never change with it)."""
    rng = np.random.default_rng(seed)
    if args.data:
        return [user_data(args.data, rng)]
    return [digits(rng), synthetic(rng, quick=args.quick)]


def _machine() -> str:
    """The CPU model and core count, for the record of a measurement."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def run_main_job(args) -> int:
    """Every configuration on every data set over the seeds; the tables, plots and JSON."""
    seeds = list(range(args.seed, args.seed + (args.seeds or (1 if args.quick else 3))))
    epochs = args.epochs or (4 if args.quick else 30)
    configs = configurations()
    started, cpu_started = time.perf_counter(), time.process_time()
    by_seed = {seed: _splits(args, seed) for seed in seeds}
    results, differences_all, report = {}, {}, []
    for index, first in enumerate(by_seed[seeds[0]]):
        print(f"{first.name}: {len(first.y_train)} training samples of "
              f"{first.y_train.max() + 1} identities, {len(first.y_test)} held out, "
              f"{len(first.y_unseen)} samples of {len(np.unique(first.y_unseen))} unseen "
              f"identities; {epochs} epochs, seeds {', '.join(map(str, seeds))}, "
              f"s = {SCALE:g}, network in {args.backend}")
        runs = {name: [] for name in configs}
        for seed in seeds:
            split = by_seed[seed][index]
            for name, config in configs.items():
                net, curve = train(split, f"{name} s{seed}", config, epochs, seed, args.backend)
                runs[name].append(dict(curve=curve, metrics=evaluate(net, split)))
        summaries = {name: summarise(rs) for name, rs in runs.items()}
        diffs = differences(summaries)
        tables = [seed_table(first.name, summaries, seeds)]
        if len(seeds) > 1 and diffs:
            tables.append(difference_table(first.name, diffs))
        report += tables
        print("\n" + "\n\n".join(tables) + "\n")
        for p in plot(args.out, first.name, runs):
            print(f"  wrote {p}")
        results[first.name] = summaries
        differences_all[first.name] = diffs
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    when = time.strftime("%Y-%m-%d")
    footer = (f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}), {epochs} epochs, "
              f"s = {SCALE:g}, network in {args.backend}; {when}, {_machine()}; "
              f"{seconds:.0f} s wall, {cpu:.0f} s CPU.")
    (args.out / "results.json").write_text(json.dumps(
        dict(seed=args.seed, seeds=seeds, epochs=epochs, scale=SCALE, backend=args.backend,
             configs=configs, results=results, differences=differences_all,
             spread_rule=f"|mean| > {SPREAD:g} sd of the paired per-seed differences",
             date=when, machine=_machine(), seconds=seconds, cpu_seconds=cpu),
        indent=1), encoding="utf-8")
    (args.out / "results.md").write_text("\n\n".join(report + [_settings_text(configs), footer])
                                         + "\n", encoding="utf-8")
    print(f"results in {args.out} ({seconds:.0f} s)")
    return 0


def _settings_text(configs: dict) -> str:
    def one(name, c):
        parts = [f"target {c['target']}", f"m = {c['margin']:g}", f"hard {c['hard']}"]
        if c["hard"] == "curricular":
            parts.append("t = the moving average of the target cosine (from 0)")
        elif "hard_margin" in c:
            parts.append(f"t = {c['hard_margin']:g}")
        return f"{name}: {', '.join(parts)}"
    return "Settings: " + "; ".join(one(n, c) for n, c in configs.items()) + "."


if __name__ == "__main__":
    sys.exit(main())
