"""The `amm-softmax` command: `amm-softmax train [...]` runs amm_softmax.train."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: amm-softmax train [--data PATH.npz] [--quick] [--epochs E] [--seed S] "
              "[--out DIR]\n"
              "                         [--ranks P] [--sample-rate R [R ...]]\n\n"
              "  train   train embeddings with each loss and compare them; --ranks P trains\n"
              "          AMM-Softmax sharded by class over P processes (MPI), --sample-rate\n"
              "          with PartialFC's class sampling (amm-softmax train --help)")
        return 0 if argv else 2
    if argv[0] == "train":
        from .train import main as train
        return train(argv[1:])
    print(f"amm-softmax: unknown command {argv[0]!r} (try: amm-softmax train)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
