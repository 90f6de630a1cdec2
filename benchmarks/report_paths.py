"""Paths as the benchmarks print them: relative to the repository, so that the committed results
(benchmarks/results/*.txt) name no folder of the machine that ran them."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repository_relative(path: Path) -> str:
    """`path` relative to the repository when it lies inside it, else as given."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
