"""The MPI side of test_mpi.py: `mpirun -n P python mpi_worker.py CASES.pkl OUT_DIR`.

Every rank reads the cases that test_mpi.py wrote (whole problems, how their rows and classes
are split over the ranks, keywords, and per-rank changes that make bad input), runs each one
through amm_softmax.mpi in order (twice when the case asks, for determinism), and writes what
it got, or the exception's type and message, to OUT_DIR/rank<r>.pkl. A case that raises does
not stop the run: the next case checks that the ranks are still in step. test_mpi.py compares
the results with the single-process library.
"""
import pickle
import sys
import time

import numpy as np
from mpi4py import MPI

from amm_softmax import mpi as amm_mpi


def run_case(case, comm):
    rank = comm.Get_rank()
    rows = case["rows"][rank]
    start, stop = case["shards"][rank]
    change = case.get("per_rank", {}).get(rank, {})
    kw = dict(case["kwargs"])
    kw.update(change.get("kwargs", {}))
    want_counts = kw.pop("hard_negatives", False)
    traffic = amm_mpi.Traffic()
    if case["kind"] == "head":
        x = np.array(case["x"][rows])
        w = np.array(case["w"][start:stop])
        y = np.array(case["y"][rows])
    else:
        x = np.array(case["cos"][:, start:stop])
        y = np.array(case["y"])
        w = None
    arrays = {"x": x, "w": w, "y": y}
    for name, index, value in change.get("poison", ()):
        arrays[name][index] = value
    if "astype_y" in change:
        y = y.astype(change["astype_y"])
    if "astype" in change:
        x, w = x.astype(change["astype"]), None if w is None else w.astype(change["astype"])
    counts = np.zeros(y.shape[0], np.int64) if want_counts else None
    began = time.perf_counter()
    if case["kind"] == "head":
        out = amm_mpi.head_forward_backward(x, w, y, comm, hard_negatives=counts,
                                            traffic=traffic, **kw)
        result = dict(loss=out[0], gx=out[1], gw=out[2])
        if len(out) == 4:
            result["kept"] = out[3]
    else:
        loss, grad = amm_mpi.forward_backward(x, y, comm, hard_negatives=counts,
                                              traffic=traffic, **kw)
        result = dict(loss=loss, grad=grad)
    result["seconds"] = time.perf_counter() - began
    result["counts"] = counts
    result["traffic"] = list(traffic.collectives)
    return result


def main():
    cases_path, out_dir = sys.argv[1], sys.argv[2]
    comm = MPI.COMM_WORLD
    with open(cases_path, "rb") as f:
        cases = pickle.load(f)
    results = []
    for case in cases:
        runs = []
        for _ in range(case.get("repeat", 1)):
            try:
                runs.append(run_case(case, comm))
            except Exception as e:  # noqa: BLE001 - reported to the test, which judges it
                runs.append({"error": (type(e).__name__, str(e))})
        results.append(runs)
    with open(f"{out_dir}/rank{comm.Get_rank()}.pkl", "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main()
