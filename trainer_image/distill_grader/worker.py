"""The grading worker process: receives chunks of (response, ground truth, data_source),
streams verdicts.

Started by ``distill_grader.pool.GradingPool``; grading runs in the process's main thread, as
math-verify requires. Before each item the worker writes (item position, start time) into shared
memory, which is how the pool sees a hung item; it zeroes the start time between items, so it is
never killed while it sends. Between items it reads the pool's yield flag (the third slot): when
set, it sends what it has, then ``("yielded", next position)``, and waits for the next chunk.
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

_FLUSH_S = 0.02  # finished verdicts are sent at least this often (and at the end of a chunk)


def worker_main(conn: Connection, clock: Any) -> None:
    """Worker process: grade chunks in the main thread (math-verify relies on that)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    from distill_grader.grading import grade_item, warm_up

    warm_up()
    conn.send(("ready", os.getpid()))
    while (jobs := _receive(conn)) is not None:
        done: list[tuple[int, float, str, str | None, float]] = []
        flushed = time.monotonic()
        for position, (response, ground_truth, data_source) in enumerate(jobs):
            if position and clock[2]:  # another batch waits for this worker
                if done:
                    conn.send(done)
                conn.send(("yielded", position))
                break
            clock[0] = position
            clock[1] = start = time.monotonic()
            verdict = grade_item(response, ground_truth, data_source)
            clock[1] = 0.0  # between items: never killed while sending
            now = time.monotonic()
            reason, extracted = verdict.reason.value, verdict.extracted
            done.append((position, verdict.score, reason, extracted, now - start))
            if now - flushed >= _FLUSH_S or position == len(jobs) - 1:
                conn.send(done)
                done, flushed = [], now


def _receive(conn: Connection) -> list[tuple[str, str, str]] | None:
    try:
        return conn.recv()
    except EOFError:  # the parent is gone: nothing left to grade for
        return None
