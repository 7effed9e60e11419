"""Grader benchmark: items/s and latency for batches of 1,024 typical rollouts.

A batch looks like one training step: 128 problems x 8 samples, each response ~1.5 KB of
reasoning ending in an answer (integers, fractions, decimals vs fractions, radicals, tuples,
intervals, multiples of pi; boxed or "The answer is X", a few without an answer). About half
are right; wrong answers are mostly the same kind of object, one in ten a different kind.
Every batch is fresh (new random answers): worker caches only help within a batch, as in training.
Two paths, each with --workers grading processes:

- ``pool``: the in-process ``GradingPool`` (what ``LocalGrader`` runs);
- ``http``: the real service (``python -m distill_grader`` on a loopback port) through
  ``HttpGraderClient`` with its defaults (requests of 128 items, 8 at once, a fresh connection
  each), so JSON, HTTP and connection set-up are included.

For each: batch wall time p50/p99 over --batches batches, items/s at the median, the CPU time a
batch costs (all processes involved, read from /proc) and, for the pool, the p50/p99 of one item's
time inside a worker. Target: a batch under 1 s with 2 workers.

    .venv/bin/python bench/grader.py [--batches 20] [--size 1024] [--workers 2]
                                     [--out bench/results/grader.json]

Wall times depend on whatever else runs on the machine; CPU seconds per batch much less so
(divided by the workers, they estimate the batch time on idle cores). The result file records the
CPU count, the load average (start, end) and versions next to them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import httpx

from distill_grader import GradeRequestItem, HttpGraderClient
from distill_grader.pool import GradingPool

REPO = Path(__file__).resolve().parent.parent
FILLER = (
    "We expand the expression and collect like terms. Substituting the given values, the "
    "equation simplifies, and checking the boundary cases confirms the result. "
)


KINDS = {"int": 55, "frac": 12, "decimal": 8, "sqrt": 8, "tuple": 6, "interval": 6, "pi": 5}


def _answer_pair(rng: random.Random, kind: str) -> tuple[str, str]:
    """(ground truth, a right way to write it) of a random problem of this kind."""
    a, b = rng.randint(1, 999), rng.randint(2, 97)
    pairs = {
        "int": (str(a), str(a)),
        "frac": (rf"\frac{{{a}}}{{{b}}}", rf"\dfrac{{{2 * a}}}{{{2 * b}}}"),
        "decimal": (rf"\frac{{{a}}}{{4}}", str(a / 4)),
        "sqrt": (rf"{a}\sqrt{{{b}}}", rf"\sqrt{{{a * a * b}}}"),
        "tuple": (f"({a}, {b})", f"\\left({a},{b}\\right)"),
        "interval": (f"[{a}, {a + b})", f"[{a},{a + b})"),
        "pi": (rf"\frac{{{a}\pi}}{{{b}}}", rf"{a}\pi/{b}"),
    }
    return pairs[kind]


def _response(rng: random.Random, right: str, wrong: str) -> str:
    text = FILLER * rng.randint(8, 12)
    style = rng.random()
    answer = right if rng.random() < 0.5 else wrong
    if style < 0.05:
        return text + "I could not finish this one."
    if style < 0.12:
        return text + f"The answer is ${answer}$."
    return text + f"Therefore the answer is $\\boxed{{{answer}}}$."


def make_batch(seed: int, size: int, samples: int = 8) -> list[GradeRequestItem]:
    """``size`` items: ``size / samples`` problems with ``samples`` responses each."""
    rng = random.Random(seed)
    items = []
    for problem in range(size // samples):
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        truth, right = _answer_pair(rng, kind)
        # Wrong answers are mostly of the right kind; some are a different kind of object.
        wrong_kind = kind if rng.random() < 0.9 else rng.choice(list(KINDS))
        _, wrong = _answer_pair(rng, wrong_kind)
        for sample in range(samples):
            item_id = f"{problem}-{sample}"
            response = _response(rng, right, wrong)
            items.append(GradeRequestItem(id=item_id, response=response, ground_truth=truth))
    return items


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and of their reaped children so far.

    Children count too: a grading worker killed at a deadline or preempted is reaped by the
    forkserver, whose ``cutime`` then holds the CPU time the worker spent.
    """
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime (14-17)
    return total / os.sysconf("SC_CLK_TCK")


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (the service, its forkserver and its workers)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sorted(tree)


def _percentiles(values: list[float], digits: int = 4) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        k: round(v, digits) for k, v in (("p50", cuts[49]), ("p99", cuts[98]), ("max", max(values)))
    }


def _summary(
    batch_s: list[float], cpu_s: list[float], size: int, workers: int
) -> dict[str, object]:
    cpu = statistics.median(cpu_s)
    return {
        "batch_seconds": _percentiles(batch_s),
        "items_per_second_at_p50": round(size / statistics.median(batch_s), 1),
        # CPU time per batch does not depend on what else runs on the machine; divided by the
        # workers it is the batch time on idle cores (grading spreads evenly over the workers).
        "cpu_seconds_per_batch_p50": round(cpu, 3),
        "batch_seconds_on_idle_cores_estimate": round(cpu / workers, 3),
    }


def bench_pool(batches: list[list[GradeRequestItem]], workers: int) -> dict[str, object]:
    batch_s, cpu_s, item_s, reasons = [], [], [], Counter()
    with GradingPool(workers=workers, item_timeout_s=10.0) as pool:
        assert pool.wait_ready(120), "grading workers did not start"
        pool.grade([(i.response, i.ground_truth) for i in batches[0]])  # warm the workers
        for batch in batches[1:]:
            pids = _process_tree(os.getpid())  # this process, the forkserver and the workers
            cpu, start = _cpu_seconds(pids), time.perf_counter()
            results = pool.grade([(i.response, i.ground_truth) for i in batch])
            batch_s.append(time.perf_counter() - start)
            cpu_s.append(_cpu_seconds(pids) - cpu)
            item_s += [r.seconds for r in results if r.seconds is not None]
            reasons.update(r.verdict.reason.value for r in results)
        restarts, preemptions = pool.restarts, pool.preemptions
    return {
        **_summary(batch_s, cpu_s, len(batches[0]), workers),
        "item_seconds_in_worker": _percentiles(item_s, digits=6),
        "reasons": dict(reasons),
        "worker_restarts": restarts,  # deadline kills and preemptions (none expected here)
        "preemptions": preemptions,
    }


def bench_http(batches: list[list[GradeRequestItem]], workers: int) -> dict[str, object]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "distill_grader", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning"]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)
        batch_s, cpu_s = [], []
        with HttpGraderClient(url, item_timeout_s=10.0) as client:
            client.grade(batches[0])  # warm the workers
            for batch in batches[1:]:
                # client, service, forkserver, workers (replacements are new processes)
                pids = [os.getpid(), *_process_tree(server.pid)]
                cpu, start = _cpu_seconds(pids), time.perf_counter()
                client.grade(batch)
                batch_s.append(time.perf_counter() - start)
                cpu_s.append(_cpu_seconds(pids) - cpu)
        restarts = _counter(url, "grader_pool_restarts_total")
    finally:
        server.terminate()
        server.wait(30)
    summary = _summary(batch_s, cpu_s, len(batches[0]), workers)
    client_settings = {"max_batch": client.max_batch, "concurrency": client.concurrency}
    # The client's concurrent requests share the pool fairly; on a loaded machine an item that
    # runs past preempt_after_s while another request waits is preempted (counted here).
    return {**summary, "client": client_settings, "worker_restarts": restarts}


def _counter(url: str, name: str) -> float:
    """The value of an unlabelled-but-for-distilljob counter on the service's /metrics."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def _wait_ready(url: str, server: subprocess.Popen, deadline_s: float = 120.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"grader at {url} did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per path")
    parser.add_argument("--size", type=int, default=1024, help="items per batch")
    parser.add_argument("--workers", type=int, default=2, help="grading processes")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/grader.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    batches = [make_batch(seed, args.size) for seed in range(args.batches + 1)]
    pool = bench_pool(batches, args.workers)
    http = bench_http(batches, args.workers)
    result = {
        "batch_size": args.size,
        "workers": args.workers,
        "timed_batches": args.batches,
        "pool": pool,
        "http": http,
        "target": "1,024 items in < 1 s with 2 workers",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
            "python": platform.python_version(),
            "math_verify": version("math-verify"),
            "sympy": version("sympy"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
