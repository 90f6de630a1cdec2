"""Memory, communication and time of the fused head sharded by class over P MPI processes.

For the head with D = 512, N = 256 rows per rank and C = 10^6 classes (f32, AMM defaults),
P = 1, 2, 4, each configuration one fresh `mpirun --oversubscribe -n P` of this script, it prints:

1. peak memory per rank: the process's resident high-water mark (VmHWM, reset through
   /proc/self/clear_refs just before the first step), split into the class weights of the
   rank's shard and their gradient (both C/P x D x 4 bytes: they fall as 1/P), the rest of
   the step (the library's scratch and the driver's arrays: the gathered rows, grad_x; it
   should stay flat in P), and the process before the step (Python, NumPy, MPI, the library);
2. bytes communicated per rank per step, from amm_softmax.mpi.Traffic (each collective's
   payload as this rank sees it), by collective, against the formula (which has no C);
3. time per step against P, with the time in each of the library's three phases (weak
   scaling: every rank keeps N rows, so the global batch is N P, and each rank's products are
   N P x D x C/P: the same work per rank for every P);
4. time per step against sample_rate (1.0, 0.5, 0.1) at P = 2, with the peak memory.

Also the unsharded head (amm_softmax.head_forward_backward, one process, the same shapes) as
the reference for P = 1.

    python3 benchmarks/bench_sharded.py [--quick] [--classes C] [--repeats R] [--budget S]
                                        [--out DIR]

C is 10^6 if the whole run fits --budget (300 s), else the largest of 500,000, 200,000,
100,000, 50,000 and 20,000 that does, projected from one probe step at P = 1 and C = 20,000
(the report says which and why); --classes C forces it; --quick: C = 20,000, one timed step
after the first (about a minute). The printed report is also written to
DIR/sharded.txt (sharded_quick.txt with --quick; DIR defaults to benchmarks/results). Linux only
(/proc/self/status, /proc/self/clear_refs); needs mpirun and mpi4py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
import amm_softmax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_paths import repository_relative  # noqa: E402

MiB = 1 << 20
D, N = 512, 256
ELEMENT = 4  # f32


# ------------------------------------------------------------------------------------------------
# Memory of this process


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def _make(classes: int, rank: int, size: int, seed: int = 0):
    """This rank's shard of random class weights (each rank draws only its own), its rows and
    labels (targets anywhere in [0, C))."""
    from amm_softmax.mpi import shard_range
    start, stop = shard_range(classes, rank, size)
    rng = np.random.default_rng([seed, rank])
    w = rng.standard_normal((stop - start, D), dtype=np.float32)
    x = rng.standard_normal((N, D), dtype=np.float32)
    labels = rng.integers(0, classes, N)
    return w, x, labels


# ------------------------------------------------------------------------------------------------
# One rank (under mpirun)


def rank_main(classes: int, rate: float, repeats: int, threads: int, out: Path) -> None:
    from mpi4py import MPI
    from amm_softmax import _shard
    from amm_softmax import mpi as amm_mpi
    comm = MPI.COMM_WORLD
    # Time in each of the library's three phases (the rest of a step is the driver and the
    # collectives): the driver's one function that calls them, wrapped.
    phases: dict[str, float] = {}
    call = _shard._call

    def timed_call(name, *call_args):
        started = time.perf_counter()
        try:
            return call(name, *call_args)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - started
    _shard._call = timed_call
    rank, size = comm.Get_rank(), comm.Get_size()
    amm_softmax.library_version()  # the library loaded before the baseline
    process = _status("VmRSS")
    w, x, labels = _make(classes, rank, size)
    weights_rss = _status("VmRSS") - process
    params = dict(num_threads=threads, sample_rate=rate, seed=0, return_sampled=True)

    comm.Barrier()
    reset_peak()
    before = _status("VmRSS")
    traffic = amm_mpi.Traffic()
    started = time.perf_counter()
    loss, grad_x, grad_w, kept = amm_mpi.head_forward_backward(x, w, labels, comm, step=0,
                                                               traffic=traffic, **params)
    first = comm.allreduce(time.perf_counter() - started, op=MPI.MAX)
    first_phases = dict(phases)
    peak = _status("VmHWM")
    step_extra = peak - before - grad_w.nbytes
    del grad_x, grad_w
    times, step_phases = [], []
    for step in range(1, repeats + 1):
        comm.Barrier()
        phases.clear()
        started = time.perf_counter()
        result = amm_mpi.head_forward_backward(x, w, labels, comm, step=step, **params)
        times.append(comm.allreduce(time.perf_counter() - started, op=MPI.MAX))
        step_phases.append(dict(phases))
        del result
    if step_phases:  # each phase's median over the timed steps
        first_phases = {k: statistics.median(p[k] for p in step_phases) for k in first_phases}
    mine = dict(rank=rank, shard=int(w.shape[0]), weights=int(w.nbytes),
                weights_rss=int(weights_rss), gradient=int(w.nbytes), process=int(process),
                step_extra=int(step_extra), peak=int(peak), kept=int(kept.size),
                traffic=[list(t) for t in traffic.collectives], first=first,
                phases=first_phases)
    everyone = comm.gather(mine, root=0)
    if rank == 0:
        out.write_text(json.dumps(dict(ranks=everyone, times=times, loss=float(loss),
                                       threads=threads)))


def unsharded_main(classes: int, repeats: int, threads: int, out: Path) -> None:
    """The plain head on one process, the same shapes as P = 1 (the reference)."""
    amm_softmax.library_version()
    process = _status("VmRSS")
    w, x, labels = _make(classes, 0, 1)
    reset_peak()
    before = _status("VmRSS")
    started = time.perf_counter()
    _, grad_x, grad_w = amm_softmax.head_forward_backward(x, w, labels, num_threads=threads)
    first = time.perf_counter() - started
    peak = _status("VmHWM")
    extra = peak - before - grad_w.nbytes
    del grad_x, grad_w
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = amm_softmax.head_forward_backward(x, w, labels, num_threads=threads)
        times.append(time.perf_counter() - started)
        del result
    out.write_text(json.dumps(dict(process=process, extra=extra, peak=peak, times=times,
                                   first=first, weights=int(w.nbytes))))


# ------------------------------------------------------------------------------------------------
# The driver


def _threads(ranks: int) -> int:
    return max(1, (os.cpu_count() or 1) // ranks)


def run_ranks(ranks: int, classes: int, rate: float, repeats: int) -> dict:
    mpirun = shutil.which("mpirun")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OPENBLAS_NUM_THREADS=str(_threads(ranks)))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rank.json"
        command = [mpirun, "--oversubscribe", "--bind-to", "none",
                   "--mca", "mpi_yield_when_idle", "1", "-n", str(ranks),
                   sys.executable, __file__, "--rank", str(classes), str(rate), str(repeats),
                   str(_threads(ranks)), str(out)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            sys.exit(f"mpirun -n {ranks} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def run_unsharded(classes: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "one.json"
        subprocess.run([sys.executable, __file__, "--unsharded", str(classes), str(repeats),
                        str(_threads(1)), str(out)], check=True)
        return json.loads(out.read_text())


def formula(ranks: int, rate: float) -> dict:
    """Bytes per rank per step by the protocol (amm_softmax.mpi's docstring): n = N P rows in
    the global batch; the allgathers count the whole gathered array."""
    n = N * ranks
    parts = {"embeddings allgather": n * D * ELEMENT, "labels allgather": 8 * n,
             "3 per-row doubles": 3 * 8 * n, "grad_x allreduce": n * D * ELEMENT,
             "sampling": (8 * n + 8 * ranks) if rate < 1.0 else 0}
    parts["checks"] = 16 * ranks + 8 * 2 * 13 + 8 * 8
    return parts


def _group(what: str) -> str:
    if "embeddings" in what and "allgather" in what:
        return "embeddings allgather"
    if "labels" in what and "allgather" in what and "sampled" not in what:
        return "labels allgather"
    if any(k in what for k in ("target_cos", "row_max", "row_sum")):
        return "3 per-row doubles"
    if "grad_embeddings" in what:
        return "grad_x allreduce"
    if "sampled labels" in what or "kept counts" in what:
        return "sampling"
    return "checks"


def measured_traffic(result: dict) -> dict:
    parts = dict.fromkeys(["embeddings allgather", "labels allgather", "3 per-row doubles",
                           "grad_x allreduce", "sampling", "checks"], 0)
    for what, nbytes in result["ranks"][0]["traffic"]:
        parts[_group(what)] += nbytes
    return parts


def gemm_rate() -> float:
    """This machine's speed at the moment, in GFLOP/s: NumPy's x W^T of 256 x 512 x 20,000 (f32,
    its own BLAS and threads), the best of three."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D), dtype=np.float32)
    w = rng.standard_normal((20_000, D), dtype=np.float32)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        x @ w.T
        best = min(best, time.perf_counter() - started)
    return 2 * N * D * 20_000 / best / 1e9


def step_time(result: dict) -> float:
    """The median of the timed steps, or the first step's time when none was timed."""
    if result["times"]:
        return statistics.median(result["times"])
    return result["first"] if "first" in result else max(r["first"] for r in result["ranks"])


def fmt_time(t: float) -> str:
    return f"{t * 1e3:.0f} ms" if t < 10 else f"{t:.1f} s"


PROBE = 20_000
SIZES = (1_000_000, 500_000, 200_000, 100_000, 50_000, PROBE)
#: The benchmark's steps in units of one P = 1 step, as measured on 2 cores (P = 2 and 4 took
#: 1.3 and 1.7 times as long as P = 1, the rates 0.5 and 0.1 at P = 2 0.4 and 0.1, the unsharded
#: head 0.2), rounded up.
WORK = 6.0


def choose_classes(args) -> tuple[int, str]:
    """C: --classes, or 20,000 with --quick, or the largest of SIZES whose run fits --budget,
    projected from one P = 1 step at C = 20,000 (time linear in C); and what was decided."""
    if args.classes:
        return args.classes, ""
    if args.quick:
        return PROBE, ""
    started = time.perf_counter()
    step = step_time(run_ranks(1, PROBE, 1.0, 0))
    overhead = time.perf_counter() - started - step  # mpirun, imports, the weights

    def projected(c: int) -> float:
        return (WORK * (args.repeats + 1) * step * c / PROBE +
                6 * (overhead + 5.0 * c / 1_000_000))
    classes = next((c for c in SIZES if projected(c) <= args.budget), PROBE)
    if classes == SIZES[0]:
        return classes, f"C = 10^6 fits the budget of {args.budget:.0f} s."
    return classes, (
        f"C = 10^6 does not fit the budget of {args.budget:.0f} s: a probe step at P = 1, "
        f"C = {PROBE:,} took {fmt_time(step)}, so a P = 1 step at C = 10^6 would take about "
        f"{fmt_time(step * 1_000_000 / PROBE)} and the benchmark about "
        f"{projected(1_000_000) / 60:.0f} min; measured at C = {classes:,}, the largest of "
        f"{', '.join(f'{c:,}' for c in SIZES)} that fits (memory at C = 10^6 by arithmetic "
        f"in table 1).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="C = 10^5 (about a minute)")
    ap.add_argument("--classes", type=int, help="C (default 10^6; 10^5 with --quick)")
    ap.add_argument("--repeats", type=int,
                    help="timed steps after the first (default 0: the first step's time; 2 "
                         "with --quick)")
    ap.add_argument("--budget", type=float, default=300.0,
                    help="seconds the run may take, which picks C (default 300)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--rank", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--unsharded", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank:
        c, rate, repeats, threads, out = args.rank
        return rank_main(int(c), float(rate), int(repeats), int(threads), Path(out))
    if args.unsharded:
        c, repeats, threads, out = args.unsharded
        return unsharded_main(int(c), int(repeats), int(threads), Path(out))
    if shutil.which("mpirun") is None:
        sys.exit("needs mpirun (Open MPI) and mpi4py: bash scripts/setup.sh installs them")

    if args.repeats is None:
        args.repeats = 1 if args.quick else 0
    cores = os.cpu_count() or 1
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    started = time.perf_counter()
    load, gflops = os.getloadavg()[0], gemm_rate()
    classes, decision = choose_classes(args)
    with open("/proc/meminfo") as f:
        total_memory = int(f.readline().split()[1]) * 1024
    say(f"amm-softmax {amm_softmax.library_version()} ({amm_softmax.kernel_build()} kernels), "
        f"sharded head: D = {D}, N = {N} rows per rank, C = {classes:,} classes, f32, AMM "
        f"defaults, random inputs")
    say(f"machine: {cores} cores, {total_memory / (1 << 30):.0f} GiB; load average "
        f"{load:.1f} and NumPy's f32 GEMM at {gflops:.0f} GFLOP/s at the start (a shared "
        f"host: times move between runs). P > {cores} oversubscribes: the ranks share the "
        f"{cores} cores.")
    timing = (f"then the median of {args.repeats} timed steps" if args.repeats else
              "its time is the step's (every step allocates its gradients afresh, as the first "
              "does)")
    say(f"each configuration: one mpirun --oversubscribe -n P, {_threads(1)} thread(s) for "
        f"P = 1 and 1 per rank for P >= {cores}; a first step (memory, traffic), {timing}; "
        f"the slowest rank's time.")
    if decision:
        say(decision)
    say()

    results = {}
    for ranks in (1, 2, 4):
        results[(ranks, 1.0)] = run_ranks(ranks, classes, 1.0, args.repeats)
    for rate in (0.5, 0.1):
        results[(2, rate)] = run_ranks(2, classes, rate, args.repeats)
    one = run_unsharded(classes, args.repeats)

    # 1. Memory
    say(f"1. Peak memory per rank (MiB; the largest over the ranks of each field), C = "
        f"{classes:,}")
    head = (f"{'P':>3}{'classes/rank':>14}{'weights':>10}{'gradient':>10}{'w + grad':>10}"
            f"{'step extra':>12}{'process':>10}{'peak RSS':>10}")
    say(head)
    say("-" * len(head))
    for ranks in (1, 2, 4):
        r = results[(ranks, 1.0)]["ranks"]
        big = lambda key: max(x[key] for x in r)  # noqa: E731
        say(f"{ranks:>3}{big('shard'):>14,}{big('weights') / MiB:>10.0f}"
            f"{big('gradient') / MiB:>10.0f}{(big('weights') + big('gradient')) / MiB:>10.0f}"
            f"{big('step_extra') / MiB:>12.1f}{big('process') / MiB:>10.0f}"
            f"{big('peak') / MiB:>10.0f}")
    say(f"  unsharded head, one process: step extra {one['extra'] / MiB:.1f} MiB, peak RSS "
        f"{one['peak'] / MiB:.0f} MiB")
    if classes != 1_000_000:
        shard = [-(-1_000_000 // ranks) for ranks in (1, 2, 4)]
        say("  at C = 10^6 (arithmetic): weights + gradient per rank " +
            ", ".join(f"{2 * c * D * ELEMENT / MiB:,.0f} MiB at P = {ranks}"
                      for c, ranks in zip(shard, (1, 2, 4))) + "; the rest as above")
    say("  weights and gradient: C/P x D x 4 bytes each (the gradient is allocated by the step);"
        " step extra: the")
    say("  rest of the step's peak above the resident set before it (the library's scratch, the"
        " gathered rows,")
    say("  grad_x); process: Python, NumPy, mpi4py and the library before the weights exist.")
    say()

    # 2. Traffic
    say("2. Bytes communicated per rank per step (Traffic: each collective's payload as this "
        "rank sees it)")
    kinds = ["embeddings allgather", "labels allgather", "3 per-row doubles",
             "grad_x allreduce", "checks"]
    head = (f"{'P':>3}{'rows':>7}" + "".join(f"{k.split()[0][:10]:>12}" for k in kinds) +
            f"{'measured':>12}{'formula':>12}{'ring wire':>12}")
    say(head)
    say("-" * len(head))
    for ranks in (1, 2, 4):
        m, f = measured_traffic(results[(ranks, 1.0)]), formula(ranks, 1.0)
        n = N * ranks
        wire = 3 * (ranks - 1) / ranks * n * D * ELEMENT
        say(f"{ranks:>3}{n:>7}" + "".join(f"{m[k]:>12,}" for k in kinds) +
            f"{sum(m.values()):>12,}{sum(f.values()):>12,}{wire:>12,.0f}")
    say("  columns: embeddings allgather (n D 4, n = N P rows gathered), labels allgather (8 n),"
        " target/row max/")
    say("  row sum allreduces (3 x 8 n), grad_x allreduce (n D 4), checks (parameters "
        "2 x 8 x 13, shard layout")
    say("  16 P, 8 error agreements x 8); formula: 2 n D 4 + 32 n + 16 P + 272 bytes, no C. "
        "ring wire: what a ring")
    say("  algorithm sends per rank for the two large collectives: (P-1)/P of the allgather + "
        "2 (P-1)/P of the allreduce.")
    say()

    # 3. Time against P
    say("3. Time per step against P (every rank N rows: its products are N P x D x C/P, the "
        "same work per rank for every P)")
    head = (f"{'P':>3}{'rows gathered':>15}{'classes/rank':>14}{'threads/rank':>14}"
            f"{'time/step':>12}{'phase 1':>10}{'phase 2':>10}{'phase 3':>10}{'rest':>10}")
    say(head)
    say("-" * len(head))
    for ranks in (1, 2, 4):
        r = results[(ranks, 1.0)]
        ph = r["ranks"][0]["phases"]
        parts = [ph.get(k, 0.0) for k in ("head_target", "head_statistics", "head_gradient")]
        say(f"{ranks:>3}{N * ranks:>15,}{r['ranks'][0]['shard']:>14,}{r['threads']:>14}"
            f"{fmt_time(step_time(r)):>12}" + "".join(f"{fmt_time(t):>10}" for t in parts) +
            f"{fmt_time(max(step_time(r) - sum(parts), 0.0)):>10}")
    say(f"  unsharded head (amm_softmax.head_forward_backward), one process, {_threads(1)} "
        f"threads: {fmt_time(step_time(one))} a step")
    say("  phases 1-3 (target, statistics, gradient): rank 0's time in the library's amm_shard_"
        "head_* calls (medians")
    say("  of the same steps); rest: the driver's checks and copies and the collectives "
        "(waiting for the slowest rank included).")
    say(f"  On P cores the time per step would stay flat. Here P = 2 runs 2 ranks of 1 thread "
        f"on the {cores} cores")
    say("  (P = 1: 1 rank of 2 threads) and P = 4 runs 4 ranks on the 2 cores: twice the work "
        "per core, about twice the time.")
    say()

    # 4. Time against the sample rate
    say("4. Time per step against sample_rate, P = 2 (classes kept: the batch's targets and "
        "floor(rate x C/P) per rank in all)")
    head = (f"{'rate':>6}{'kept/rank':>12}{'time/step':>12}{'peak RSS':>10}"
            f"{'step extra':>12}{'bytes/rank':>12}")
    say(head)
    say("-" * len(head))
    for rate in (1.0, 0.5, 0.1):
        r = results[(2, rate)]
        say(f"{rate:>6g}{max(x['kept'] for x in r['ranks']):>12,}"
            f"{fmt_time(step_time(r)):>12}"
            f"{max(x['peak'] for x in r['ranks']) / MiB:>10.0f}"
            f"{max(x['step_extra'] for x in r['ranks']) / MiB:>12.1f}"
            f"{sum(measured_traffic(r).values()):>12,}")
    say("  peak RSS in MiB; step extra: the step's peak above the resident set before it, "
        "less the full gradient (MiB).")
    say()
    say(f"total {time.perf_counter() - started:.0f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("sharded_quick.txt" if args.quick else "sharded.txt")
    path.write_text("\n".join(lines) + "\n")
    print(f"written to {repository_relative(path)}")


if __name__ == "__main__":
    main()
