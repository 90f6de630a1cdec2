"""amm_softmax.torch.ShardedAMMSoftmaxHead over torch.distributed (gloo on 127.0.0.1), against
the single-process head (skipped where torch is absent; run by `bash scripts/test_torch.sh`).

Worlds of 1, 2 and 3 processes are spawned once each (torch.multiprocessing, spawn) and kept
for the tests that use them; each test sends every rank a task and waits at most TASK_TIMEOUT
seconds for all of them (the process group's own timeout is shorter), so a deadlock fails the
test instead of hanging the run (the world is then killed and started again). The checks: loss,
embedding gradients and the concatenated weight gradients equal amm_softmax.head_forward_backward
on the whole batch and every class (float64 within 1e-12 relative; float32 within the fused
head's tolerances, test_head.Expected), with uneven shards and rows, a rank without classes or
rows, ignored rows; class sampling equals the single-process head on the kept classes; the
initialisation is independent of the world size; a few optimiser steps equal the
single-process run and reduce the loss; bad input on one rank raises the same error on every
rank and leaves the group usable.
"""
import os
import queue
import socket
import time
import traceback
from datetime import timedelta

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (bash scripts/test_torch.sh)")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import amm_softmax  # noqa: E402
from amm_softmax._shard import shard_range  # noqa: E402
from amm_softmax.torch import (AMMSoftmaxHead, ShardedAMMSoftmaxHead,  # noqa: E402
                               TorchCollectives)
from helpers import rng_for  # noqa: E402
from test_head import Expected, head_problem  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

STARTUP_TIMEOUT = 120.0   # seconds for a world to import torch and form its group
TASK_TIMEOUT = 40.0       # seconds for every rank to answer one task
GLOO_TIMEOUT = 20.0       # the process group's timeout: a stuck collective raises in the rank
F64_RTOL = 1e-12


# --- the worlds --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank, size, port, tasks, results):
    """A rank: joins the group on the loopback interface, then runs tasks until None."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=size, timeout=timedelta(seconds=GLOO_TIMEOUT))
    except Exception as e:  # reported to the parent, which retries with another port
        results.put((rank, "failed", f"{type(e).__name__}: {e}"))
        return
    results.put((rank, "ready", None))
    while True:
        job = tasks.get()
        if job is None:
            break
        fn, args = job
        try:
            results.put((rank, "ok", fn(rank, size, *args)))
        except BaseException as e:  # noqa: BLE001 - reported to the parent as a failure
            results.put((rank, "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    dist.destroy_process_group()


class World:
    """`size` spawned ranks in one gloo group, waiting for tasks."""

    def __init__(self, size: int):
        self.size = size
        self.procs: list = []
        self.start()

    def start(self):
        for _ in range(3):  # a port taken between _free_port and the bind: try another
            ctx = mp.get_context("spawn")
            self.results = ctx.Queue()
            self.tasks = [ctx.Queue() for _ in range(self.size)]
            port = _free_port()
            self.procs = [ctx.Process(target=_serve, daemon=True,
                                      args=(r, self.size, port, self.tasks[r], self.results))
                          for r in range(self.size)]
            for p in self.procs:
                p.start()
            answers = self._collect(STARTUP_TIMEOUT, "start")
            if all(status == "ready" for status, _ in answers):
                return
            self.stop()
        raise AssertionError(f"a world of {self.size} could not start: {answers}")

    def _collect(self, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        got = {}
        while len(got) < self.size:
            try:
                rank, status, value = self.results.get(timeout=1.0)
                got[rank] = (status, value)
                continue
            except queue.Empty:
                pass
            dead = [r for r, p in enumerate(self.procs) if r not in got and not p.is_alive()]
            late = time.monotonic() > deadline
            if dead or late:
                missing = [r for r in range(self.size) if r not in got]
                self.stop()
                reason = f"ranks {dead} died" if dead else f"no answer within {timeout:.0f} s"
                raise AssertionError(f"{what}: {reason} from ranks {missing} of {self.size} "
                                     f"(a deadlock?); answers so far: {got}")
        return [got[r] for r in range(self.size)]

    def run(self, fn, *args, timeout: float = TASK_TIMEOUT) -> list:
        """fn(rank, size, *args) on every rank; the list of results in rank order."""
        if not self.procs or not all(p.is_alive() for p in self.procs):
            self.start()  # after a failure that stopped it
        for q in self.tasks:
            q.put((fn, args))
        answers = self._collect(timeout, fn.__name__)
        failed = [(r, v) for r, (status, v) in enumerate(answers) if status != "ok"]
        assert not failed, "\n".join(f"rank {r}: {v}" for r, v in failed)
        return [v for _, v in answers]

    def stop(self):
        for p, q in zip(self.procs, self.tasks):
            if p.is_alive():
                q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self.procs = []


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda n: f"world{n}")
def world(request):
    w = World(request.param)
    yield w
    w.stop()


# --- comparisons -------------------------------------------------------------------------------
def assert_close64(got, want, what):
    """|got - want| <= 1e-12 max|want| (0 exactly where want is all 0)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want).max(initial=0.0)
    scale = np.abs(want).max(initial=0.0)
    assert err <= F64_RTOL * scale, f"{what}: max error {err:.3e}, max |want| {scale:.3e}"


def bounds(rows):
    edges = np.concatenate([[0], np.cumsum(rows)]).astype(int)
    return [(int(edges[r]), int(edges[r + 1])) for r in range(len(rows))]


# --- tasks (run on every rank) -----------------------------------------------------------------
def task_head(rank, size, x, w, labels, rows, params, upstream, sample_rate=1.0, seed=0,
              steps=1, block_size=0):
    """A sharded head holding its shard of `w`; `steps` training-mode forwards and backwards,
    then one in eval mode. Returns what each produced."""
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    head = ShardedAMMSoftmaxHead(x.shape[1], w.shape[0], sample_rate=sample_rate, seed=seed,
                                 dtype=dtype, block_size=block_size, **params)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w[head.class_start:head.class_stop]))
    lo, hi = bounds(rows)[rank]
    y = torch.from_numpy(labels[lo:hi])
    out = []
    for mode in ["train"] * steps + ["eval"]:
        head.train(mode == "train")
        step = head.step
        x_local = torch.from_numpy(x[lo:hi].copy()).requires_grad_(True)
        head.weight.grad = None
        loss = head(x_local, y)
        (loss * upstream).backward()
        out.append(dict(loss=float(loss), dtype=str(loss.dtype), shape=tuple(loss.shape),
                        gx=x_local.grad.numpy(), gw=head.weight.grad.numpy(),
                        start=head.class_start, stop=head.class_stop, step=step,
                        hard=head.hard_negatives.copy(), sampled=head.sampled_classes,
                        traffic=head.traffic.total))
    return out


def task_init(rank, size, num_classes, dim, init_seed):
    """The weight shard with a given init_seed, and with init_seed=None after the same global
    seed on every rank."""
    given = ShardedAMMSoftmaxHead(dim, num_classes, init_seed=init_seed, dtype=torch.float64)
    torch.manual_seed(5)
    drawn = ShardedAMMSoftmaxHead(dim, num_classes, dtype=torch.float64)
    return dict(given=given.weight.detach().numpy(), drawn=drawn.weight.detach().numpy(),
                drawn_seed=drawn.init_seed, start=given.class_start, stop=given.class_stop)


def task_collectives(rank, size):
    """The adapter alone: allreduce ops and dtypes, allgather of unequal, empty and 0-d arrays,
    broadcast_text from every root."""
    c = TorchCollectives()
    out = dict(rank=c.rank, size=c.size)
    for op in ("sum", "max", "min"):
        for dtype in (np.int64, np.float32, np.float64):
            a = np.array([rank + 1, -rank, 2 * rank], dtype=dtype)
            before = a.copy()
            r = c.allreduce(a, op)
            assert np.array_equal(a, before) and r.dtype == a.dtype
            out[f"{op}-{np.dtype(dtype).name}"] = r
    out["rows"] = c.allgather(np.full((rank + 1, 2), rank, dtype=np.float64))
    out["empty"] = c.allgather(np.zeros((0, 3), dtype=np.float32))
    out["some_empty"] = c.allgather(np.arange(rank * 2, dtype=np.int64))
    out["scalar"] = c.allgather(np.array(rank * 1.5))
    out["text"] = [c.broadcast_text(f"from {rank}" if rank == root else "", root)
                   for root in range(size)]
    out["bytes"] = c.bytes_sent
    return out


def task_errors(rank, size, x, w, labels, rows, params):
    """Bad input on one rank, case after case, in one group: each case's exception (type,
    message) or None; then a good call (the group still in step)."""
    lo, hi = bounds(rows)[rank]
    last = size - 1
    head = ShardedAMMSoftmaxHead(x.shape[1], w.shape[0], dtype=torch.float64, **params)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w[head.class_start:head.class_stop]))
    x_local = torch.from_numpy(x[lo:hi].copy())
    y_local = torch.from_numpy(labels[lo:hi].copy())
    big = y_local.clone()
    big[0] = w.shape[0] + 5

    def wrong_dim():
        return torch.zeros(hi - lo, x.shape[1] + 1, dtype=torch.float64)
    cases = {
        "label out of range": lambda: head(x_local, big if rank == last else y_local),
        "float labels": lambda: head(x_local, y_local.double() if rank == 0 else y_local),
        "labels not a tensor": lambda: head(x_local, y_local.tolist() if rank == last
                                            else y_local),
        "embedding width": lambda: head(wrong_dim() if rank == last else x_local, y_local),
        "float32 embeddings": lambda: head(x_local.float() if rank == last else x_local,
                                           y_local),
        "seed differs": lambda: ShardedAMMSoftmaxHead(x.shape[1], w.shape[0], sample_rate=0.5,
                                                      seed=rank),
        "reduction none": lambda: ShardedAMMSoftmaxHead(
            x.shape[1], w.shape[0], reduction="none" if rank == last else "mean"),
    }
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = None
        except Exception as e:  # noqa: BLE001 - compared across ranks by the parent
            out[name] = (type(e).__name__, str(e))
    out["after"] = float(head(x_local, y_local).detach())
    return out


def task_subgroup(rank, size, x, w, labels, params):
    """A head over the group of ranks 1 and 2 of 3 (rank 0 stays out): its results, and the
    error of float32 embeddings on the group's rank 1 (global rank 2)."""
    group = dist.new_group([1, 2])
    if rank == 0:
        return None
    head = ShardedAMMSoftmaxHead(x.shape[1], w.shape[0], process_group=group,
                                 dtype=torch.float64, **params)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w[head.class_start:head.class_stop]))
    half = x.shape[0] // 2
    lo, hi = (0, half) if rank == 1 else (half, x.shape[0])
    x_local = torch.from_numpy(x[lo:hi].copy()).requires_grad_(True)
    loss = head(x_local, torch.from_numpy(labels[lo:hi]))
    loss.backward()
    try:  # found by the group's rank 1 alone: its message is broadcast from global rank 2
        head(x_local.detach().float() if rank == 2 else x_local.detach(),
             torch.from_numpy(labels[lo:hi]))
        error = None
    except TypeError as e:
        error = str(e)
    return dict(loss=float(loss), gx=x_local.grad.numpy(), gw=head.weight.grad.numpy(),
                start=head.class_start, stop=head.class_stop, error=error)


TRAIN = dict(classes=30, rows=118, inputs=12, dim=8, steps=8, init_seed=11,
             params=dict(scale=16.0, margin=0.2))


def train(rank, size, distributed):
    """A linear backbone and the head trained with SGD for a few steps on a fixed synthetic
    set, each rank on its rows (the backbone's gradients summed over ranks: the gradient of the
    loss over every rank's rows); with distributed=False, one process with AMMSoftmaxHead on
    every row. float64. Returns the losses, the backbone and the head's weights."""
    t = TRAIN
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(t["classes"], t["inputs"], generator=g, dtype=torch.float64)
    labels = torch.arange(t["classes"]).repeat(4)[:t["rows"]]
    inputs = centres[labels] + 0.3 * torch.randn(t["rows"], t["inputs"], generator=g,
                                                 dtype=torch.float64)
    torch.manual_seed(0)
    net = torch.nn.Linear(t["inputs"], t["dim"]).double()
    if distributed:
        head = ShardedAMMSoftmaxHead(t["dim"], t["classes"], init_seed=t["init_seed"],
                                     dtype=torch.float64, **t["params"])
        lo, hi = shard_range(t["rows"], rank, size)
    else:
        head = AMMSoftmaxHead(t["dim"], t["classes"], init_seed=t["init_seed"],
                              dtype=torch.float64, **t["params"])
        lo, hi = 0, t["rows"]
    # SGD with momentum, written out (torch.optim's first use costs seconds in each process).
    params = list(net.parameters()) + [head.weight]
    velocities = [torch.zeros_like(p) for p in params]
    losses = []
    for _ in range(t["steps"]):
        for p in params:
            p.grad = None
        loss = head(net(inputs[lo:hi]), labels[lo:hi])
        loss.backward()
        if distributed:
            for p in net.parameters():
                dist.all_reduce(p.grad)
        with torch.no_grad():
            for p, v in zip(params, velocities):
                v.mul_(0.9).add_(p.grad)
                p.sub_(0.5 * v)
        losses.append(float(loss.detach()))
    return dict(losses=losses, net=[p.detach().numpy().copy() for p in net.parameters()],
                weight=head.weight.detach().numpy().copy())


# --- the tests ---------------------------------------------------------------------------------
# Rows per rank (the first `size` entries); classes; parameters.
CASES = {
    "uneven": ([5, 3, 4], 23, dict(scale=16.0)),
    "sum, cos, mv-adaptive": ([4, 6, 2], 17, dict(scale=64.0, target="cos", margin=0.35,
                                                  hard="mv-adaptive", reduction="sum")),
    "fewer classes than ranks": ([3, 4, 5], 2, dict(scale=16.0, hard="none")),
    "a rank without rows": ([4, 0, 6], 19, dict(scale=32.0, hard="mv-fixed",
                                                hard_margin=1.2)),
    "last rank ignored": ([5, 3, 4], 23, dict(scale=16.0)),
}


def problem(case, size, dtype):
    rows_all, classes, params = CASES[case]
    rows = rows_all[:size]
    rng = rng_for("sharded-torch", case, size, np.dtype(dtype).name)
    x, w, labels = head_problem(rng, sum(rows), 6, classes, dtype, params)
    if case == "last rank ignored":
        labels[bounds(rows)[-1][0]:] = -100
    return x, w, labels, rows, params


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_single_process(world, case, dtype):
    x, w, labels, rows, params = problem(case, world.size, dtype)
    upstream = 0.75 if dtype == np.float64 else 1.0
    results = [r[0] for r in world.run(task_head, x, w, labels, rows, params, upstream, 1.0, 0,
                                       1, 5)]
    # The shards are PartialFC's split, in rank order.
    assert [(r["start"], r["stop"]) for r in results] == \
        [shard_range(w.shape[0], k, world.size) for k in range(world.size)]
    # The loss: a 0-d tensor of the dtype, bit-identical on every rank.
    assert {r["loss"] for r in results} == {results[0]["loss"]}
    assert results[0]["shape"] == () and results[0]["dtype"] == str(torch.from_numpy(x).dtype)
    got = (results[0]["loss"], np.concatenate([r["gx"] for r in results]) / upstream,
           np.concatenate([r["gw"] for r in results]) / upstream)
    hard_want = np.zeros(len(labels), dtype=np.int64)
    want = amm_softmax.head_forward_backward(x, w, labels, hard_negatives=hard_want, **params)
    assert np.array_equal(np.concatenate([r["hard"] for r in results]), hard_want)
    ignored = labels == -100
    assert np.all(got[1][ignored] == 0)
    if dtype == np.float64:
        for name, a, b in zip(("loss", "grad_x", "grad_w"), got, want):
            assert_close64(a, b, f"{case} world {world.size}: {name}")
    else:
        Expected(x, w, labels, params).check(got, where=f"sharded world {world.size} {case}")
    assert all(r["traffic"] > 0 for r in results)


def check_sampled(per_rank, x, w, labels, params, rate, where):
    """One sampled step, every rank's result: per shard, the batch's targets and
    floor(rate * c_r) classes in all when that is more; the loss and gradients of the
    single-process head on the kept classes (a zero gradient for the others). Returns the kept
    classes."""
    kept = np.concatenate([r["sampled"] for r in per_rank])
    targets = np.unique(labels[labels != -100])
    assert np.all(np.diff(kept) > 0) and np.isin(targets, kept).all(), where
    for r in per_rank:
        in_shard = targets[(targets >= r["start"]) & (targets < r["stop"])]
        assert r["sampled"].size == max(int(rate * (r["stop"] - r["start"])), in_shard.size)
        assert np.all((r["sampled"] >= r["start"]) & (r["sampled"] < r["stop"]))
    mapped = np.where(labels == -100, -100, np.searchsorted(kept, labels))
    loss, gx, gw = amm_softmax.head_forward_backward(x, w[kept], mapped, **params)
    got_gw = np.concatenate([r["gw"] for r in per_rank])
    assert_close64(per_rank[0]["loss"], loss, f"{where} loss")
    assert_close64(np.concatenate([r["gx"] for r in per_rank]), gx, f"{where} grad_x")
    assert_close64(got_gw[kept], gw, f"{where} grad_w of the kept classes")
    assert np.all(np.delete(got_gw, kept, axis=0) == 0)
    return kept


def test_class_sampling_is_the_head_on_the_kept_classes(world):
    """sample_rate < 1: in training mode each step keeps, per shard, the batch's targets and
    floor(rate * c_r) classes in all (the draws change with the step), and the loss and
    gradients are those of the single-process head on the kept classes (zero gradient for the
    others); in eval mode every class is used and the step stays."""
    rate, seed, classes = 0.25, 7, 90
    rows = [5, 3, 4][:world.size]
    rng = rng_for("sharded-torch-sampled", world.size)
    params = dict(scale=16.0)
    x, w, labels = head_problem(rng, sum(rows), 6, classes, np.float64, params)
    results = world.run(task_head, x, w, labels, rows, params, 1.0, rate, seed, 2)
    kept_by_step = []
    for step in range(2):
        per_rank = [r[step] for r in results]
        assert [r["step"] for r in per_rank] == [step] * world.size
        kept_by_step.append(check_sampled(per_rank, x, w, labels, params, rate,
                                          f"step {step}"))
    assert not np.array_equal(*kept_by_step)
    # Eval mode: every class, the step not advanced.
    evaluated = [r[2] for r in results]
    assert all(r["sampled"] is None and r["step"] == 2 for r in evaluated)
    assert_close64(evaluated[0]["loss"], amm_softmax.head_forward_backward(x, w, labels,
                                                                           **params)[0],
                   "eval loss")
    if world.size == 1:  # the single-process head draws the same classes
        head = AMMSoftmaxHead(6, classes, sample_rate=rate, seed=seed, dtype=torch.float64,
                              **params)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(w))
        for step in range(2):
            loss = head(torch.from_numpy(x), torch.from_numpy(labels)).detach()
            assert np.array_equal(head.sampled_classes, kept_by_step[step])
            assert float(loss) == results[0][step]["loss"]


def test_class_sampling_where_shards_keep_nothing(world):
    """floor(rate * c_r) = 0 and every target in the first shard: the other shards keep no
    class, with a block size given (the library's block rule divides by zero for no class and
    a given block: the module asks for the automatic block there)."""
    rate, classes = 0.25, 3 * world.size
    rows = [4, 2, 3][:world.size]
    params = dict(scale=16.0)
    x, w, labels = head_problem(rng_for("sharded-torch-sampled-empty", world.size), sum(rows),
                                6, classes, np.float64, params, ignore_fraction=0.0)
    labels = labels % 3   # shard 0's classes only
    results = world.run(task_head, x, w, labels, rows, params, 1.0, rate, 0, 1, 2)
    per_rank = [r[0] for r in results]
    assert all(r["sampled"].size == 0 for r in per_rank[1:])
    check_sampled(per_rank, x, w, labels, params, rate, "empty shards")


def test_initialisation_is_independent_of_the_world_size(world):
    """The shards concatenate to AMMSoftmaxHead(init_seed=...)'s weights; without init_seed,
    rank 0's draw is used everywhere."""
    classes, dim = 2500, 5   # several 1024-class blocks, shards that cut them
    results = world.run(task_init, classes, dim, 3)
    single = AMMSoftmaxHead(dim, classes, init_seed=3, dtype=torch.float64).weight
    assert np.array_equal(np.concatenate([r["given"] for r in results]),
                          single.detach().numpy())
    seeds = {r["drawn_seed"] for r in results}
    assert len(seeds) == 1
    drawn = AMMSoftmaxHead(dim, classes, init_seed=seeds.pop(), dtype=torch.float64).weight
    assert np.array_equal(np.concatenate([r["drawn"] for r in results]),
                          drawn.detach().numpy())


def test_collectives_adapter(world):
    results = world.run(task_collectives)
    n = world.size
    for r in results:
        assert (r["rank"], r["size"]) == (results.index(r), n)
        for dtype in ("int64", "float32", "float64"):
            ranks = np.arange(n)
            rows = np.stack([ranks + 1, -ranks, 2 * ranks])
            assert np.array_equal(r[f"sum-{dtype}"], rows.sum(axis=1))
            assert np.array_equal(r[f"max-{dtype}"], rows.max(axis=1))
            assert np.array_equal(r[f"min-{dtype}"], rows.min(axis=1))
            assert r[f"sum-{dtype}"].dtype == np.dtype(dtype)
        assert [a.shape for a in r["rows"]] == [(k + 1, 2) for k in range(n)]
        assert all(np.all(a == k) for k, a in enumerate(r["rows"]))
        assert [a.shape for a in r["empty"]] == [(0, 3)] * n
        assert all(a.dtype == np.float32 for a in r["empty"])
        assert [a.tolist() for a in r["some_empty"]] == [list(range(2 * k)) for k in range(n)]
        assert [a.shape for a in r["scalar"]] == [()] * n
        assert [float(a) for a in r["scalar"]] == [1.5 * k for k in range(n)]
        assert r["text"] == [f"from {k}" for k in range(n)]
        assert r["bytes"] > 0


def test_a_few_optimiser_steps_match_one_process_and_reduce_the_loss(world):
    results = world.run(train, True)
    single = train(0, 1, False)
    for r in results:
        assert r["losses"] == results[0]["losses"]
        for a, b in zip(r["net"], single["net"]):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(results[0]["losses"], single["losses"], rtol=1e-10)
    np.testing.assert_allclose(np.concatenate([r["weight"] for r in results]), single["weight"],
                               rtol=1e-9, atol=1e-12)
    losses = results[0]["losses"]
    assert losses[-1] < 0.7 * losses[0], losses


ERRORS = {  # case: (exception type, a part of the message)
    "label out of range": ("ValueError", "= 28"),
    "float labels": ("TypeError", "labels"),
    "labels not a tensor": ("TypeError", "labels_local must be a torch.Tensor"),
    "embedding width": ("ValueError", "columns"),
    "float32 embeddings": ("TypeError", "dtype"),
    "seed differs": ("ValueError", "seed"),
    "reduction none": ("ValueError", "reduction 'mean' or 'sum'"),
}


@pytest.mark.parametrize("world", [2, 3], indirect=True, ids=["world2", "world3"])
def test_bad_input_on_one_rank_is_the_same_error_on_every_rank(world):
    rows = [5, 3, 4][:world.size]
    x, w, labels = head_problem(rng_for("sharded-torch-errors", world.size), sum(rows), 6, 23,
                                np.float64, dict(scale=16.0))
    results = world.run(task_errors, x, w, labels, rows, dict(scale=16.0))
    for name, (kind, part) in ERRORS.items():
        seen = [r[name] for r in results]
        assert seen[0] is not None, f"{name}: no error"
        assert all(s == seen[0] for s in seen), f"{name}: the ranks differ: {seen}"
        assert seen[0][0] == kind and part in seen[0][1], f"{name}: {seen[0]}"
        assert seen[0][1].startswith("rank "), seen[0]
    want = amm_softmax.head_forward_backward(x, w, labels, scale=16.0)[0]
    for r in results:
        assert_close64(r["after"], want, "the loss after the errors")


@pytest.mark.parametrize("world", [3], indirect=True, ids=["world3"])
def test_a_process_group_of_some_ranks(world):
    """process_group=dist.new_group([1, 2]): the head over those two ranks equals one process
    on their rows; an error found by the group's second rank alone names it (group rank 1) and
    reaches both."""
    params = dict(scale=16.0)
    x, w, labels = head_problem(rng_for("sharded-torch-group"), 9, 6, 13, np.float64, params)
    results = world.run(task_subgroup, x, w, labels, params)
    assert results[0] is None
    group = results[1:]
    assert [(r["start"], r["stop"]) for r in group] == [shard_range(13, k, 2) for k in (0, 1)]
    loss, gx, gw = amm_softmax.head_forward_backward(x, w, labels, **params)
    assert_close64(group[0]["loss"], loss, "loss")
    assert_close64(np.concatenate([r["gx"] for r in group]), gx, "grad_x")
    assert_close64(np.concatenate([r["gw"] for r in group]), gw, "grad_w")
    errors = {r["error"] for r in group}
    assert len(errors) == 1 and errors.pop().startswith("rank 1: ")


def curricular_steps(rank, size, distributed):
    """Three training forwards of the head with hard="curricular" (each rank on its rows of
    the TRAIN set, the weights fixed): the module's t and the loss after each; with
    distributed=False, AMMSoftmaxHead on every row."""
    t = TRAIN
    g = torch.Generator().manual_seed(2)
    inputs = torch.randn(t["rows"], t["dim"], generator=g, dtype=torch.float64)
    labels = torch.arange(t["classes"]).repeat(4)[:t["rows"]]
    params = dict(hard="curricular", scale=16.0, margin=0.3)
    if distributed:
        head = ShardedAMMSoftmaxHead(t["dim"], t["classes"], init_seed=t["init_seed"],
                                     dtype=torch.float64, **params)
        lo, hi = shard_range(t["rows"], rank, size)
    else:
        head = AMMSoftmaxHead(t["dim"], t["classes"], init_seed=t["init_seed"],
                              dtype=torch.float64, **params)
        lo, hi = 0, t["rows"]
    out = []
    for step in range(3):
        x = inputs[lo:hi] * (1.0 + 0.1 * step)
        loss = head(x, labels[lo:hi])
        out.append((float(head.t), float(loss)))
    return out


def test_curricular_t_over_ranks_is_the_one_process_t(world):
    """The sharded head updates t from phase 1's target cosines of every rank's rows, before
    the step uses it: every rank holds the t and the loss of one process on all the rows."""
    results = world.run(curricular_steps, True)
    single = curricular_steps(0, 1, False)
    assert single[0][0] != 0.0 and single[1][0] != single[0][0]
    for r in results:
        for (t_got, loss_got), (t_want, loss_want) in zip(r, single):
            assert t_got == pytest.approx(t_want, rel=1e-12, abs=1e-15)
            assert loss_got == pytest.approx(loss_want, rel=1e-10)
