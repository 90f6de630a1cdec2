"""Train embeddings with each loss of the family and compare what the margin and the mining buy.

    python -m amm_softmax.train [--data PATH.npz] [--quick] [--epochs E] [--out DIR] [--seed S]
    amm-softmax train ...                       (the same, through the installed command)

For each configuration (plain normalised softmax, CosFace, ArcFace, MV-Arc-Softmax, AMM-Softmax)
the same small network (an MLP 128-32 with Adam, the same seed, budget and initial weights) is
trained with the library's fused head on the identities of the training split -- in PyTorch
with amm_softmax.torch.AMMSoftmaxHead when torch is importable, in NumPy otherwise
(`--backend`); then:

- identification: accuracy of the nearest class weight on held-out samples of those identities;
- verification on identities never seen in training: ROC AUC and TAR at FAR = 1e-2 and 1e-3
  over all pairs of their samples (cosine of the embeddings), and the angle statistics: the mean
  angle of a sample to its identity's mean direction (intra), and the mean over identities of the
  angle to the nearest other identity (inter).

Data: `digits` (scikit-learn's bundled handwritten digits: classes 0-5 train, 6-9 unseen),
`synthetic` (hundreds of identities made by a fixed random non-linear map of identity and
nuisance factors, seeded), or `--data PATH` (an .npz with `x`, features, and `y`, identity
labels; a quarter of the identities are held out as unseen). By default both embedded sets run.

Writes to --out (default out/train): results.json, results.md (the table), and PNG plots: loss
curves, ROC curves and angle histograms. Progress bars show each epoch's loss and the fraction of
negatives mined as hard (counted by the kernels: `hard_negatives=`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import head_forward_backward

CONFIGS = {
    "softmax": dict(target="cos", margin=0.0, hard="none"),
    "CosFace": dict(target="cos", margin=0.35, hard="none"),
    "ArcFace": dict(target="arc", margin=0.5, hard="none"),
    "MV-Arc-Softmax": dict(target="arc", margin=0.5, hard="mv-fixed", hard_margin=1.2),
    "AMM-Softmax": dict(target="arc", margin=0.5, hard="amm", hard_margin=0.2),
}
SCALE = 32.0


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


def evaluate(net: Network, split: Split) -> dict:
    test_emb = _unit(net.embed(split.x_test)[0])
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
    sys.stdout.write(f"\r  {prefix:<16}[{bar}] epoch {epoch:>3}/{epochs}  loss {loss:8.4f}  "
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


def plot(out: Path, dataset: str, runs: dict):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no plots: matplotlib is not installed)")
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in runs.items():
        ax.plot(np.arange(1, len(r["curve"]) + 1), r["curve"], label=name)
    ax.set(xlabel="epoch", ylabel="training loss (each its own loss)", yscale="log",
           title=f"Training loss, {dataset}")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / f"{dataset}_loss.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in runs.items():
        far, tar = r["metrics"]["roc"]
        ax.plot(np.maximum(far, 1e-5), tar, label=f"{name} (AUC {r['metrics']['auc']:.3f})")
    ax.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate",
           title=f"Verification of unseen identities, {dataset}")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / f"{dataset}_roc.png"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in runs.items():
        axes[0].hist(r["metrics"]["intra"], bins=40, histtype="step", label=name)
        axes[1].hist(r["metrics"]["inter"], bins=40, histtype="step", label=name)
    axes[0].set(xlabel="degrees", title="sample to its identity's mean (unseen)")
    axes[1].set(xlabel="degrees", title="identity to the nearest other identity (unseen)")
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
    head = ("| configuration | loss first -> last epoch | identification | ROC AUC | "
            "TAR@FAR=1e-2 | TAR@FAR=1e-3 | intra angle | nearest inter angle |")
    lines = [f"**{dataset}**", "", head, "|" + " --- |" * 8]
    for name, r in runs.items():
        m = r["metrics"]
        lines.append(f"| {name} | {r['curve'][0]:.3f} -> {r['curve'][-1]:.3f} | "
                     f"{m['identification']:.3f} | {m['auc']:.4f} | {m['tar_1e2']:.3f} | "
                     f"{m['tar_1e3']:.3f} | {m['intra_angle']:.1f} deg | "
                     f"{m['inter_angle']:.1f} deg |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="amm-softmax train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="an .npz with x (features) and y (identities)")
    ap.add_argument("--quick", action="store_true", help="a small run (seconds), for tests")
    ap.add_argument("--epochs", type=int, help="epochs per configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("out/train"))
    ap.add_argument("--backend", choices=["auto", "numpy", "torch"], default="auto",
                    help="the network's framework: torch if importable (auto), else numpy")
    args = ap.parse_args(argv)
    if args.backend == "auto":
        try:
            import torch  # noqa: F401
            args.backend = "torch"
        except Exception:  # ImportError, or a torch that cannot load its libraries
            args.backend = "numpy"
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    if args.data:
        splits = [user_data(args.data, rng)]
    else:
        splits = [digits(rng), synthetic(rng, quick=args.quick)]
    epochs = args.epochs or (4 if args.quick else 30)
    started = time.perf_counter()
    results, report = {}, []
    for split in splits:
        print(f"{split.name}: {len(split.y_train)} training samples of "
              f"{split.y_train.max() + 1} identities, {len(split.y_test)} held out, "
              f"{len(split.y_unseen)} samples of {len(np.unique(split.y_unseen))} unseen "
              f"identities; {epochs} epochs, seed {args.seed}, s = {SCALE:g}, "
              f"network in {args.backend}")
        runs = {}
        for name, config in CONFIGS.items():
            net, curve = train(split, name, config, epochs, args.seed, args.backend)
            runs[name] = dict(curve=curve, metrics=evaluate(net, split))
        report.append(table(split.name, runs))
        print("\n" + report[-1] + "\n")
        plots = plot(args.out, split.name, runs)
        results[split.name] = {name: dict(curve=r["curve"], **{
            k: v for k, v in r["metrics"].items() if k not in ("roc", "intra", "inter")})
            for name, r in runs.items()}
        for p in plots:
            print(f"  wrote {p}")
    (args.out / "results.json").write_text(json.dumps(
        dict(seed=args.seed, epochs=epochs, scale=SCALE, backend=args.backend, configs=CONFIGS,
             results=results),
        indent=1))
    (args.out / "results.md").write_text("\n\n".join(report) + "\n")
    print(f"results in {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
