"""A process pool that grades answers with a hard per-item deadline.

One dispatcher thread owns ``workers`` processes (``forkserver`` by default, preloaded with
math-verify, so a replacement starts in milliseconds; never ``fork``: the caller may hold torch or
Ray threads). A batch is cut into chunks; an idle worker receives a whole chunk in one message and
streams verdicts back. Each worker publishes, in shared memory, which item of its chunk it is on
and since when. The dispatcher kills a worker whose current item has run past the deadline, marks
that item ``timeout``, puts the unanswered rest of the chunk back at the head of the queue for the
other workers, and starts a replacement. A worker that dies on its own (a crash, the OOM killer)
costs its current item a ``parse_error`` the same way. Other items and batches are unaffected.
Items longer than ``max_response_chars`` are ``too_long`` at once and never reach a worker.

The service and ``LocalGrader`` both run this pool. As with any non-fork multiprocessing, a script
run by path that starts one must guard its entry point with ``if __name__ == "__main__":``.

Usage::

    with GradingPool(workers=2, item_timeout_s=10.0) as pool:
        results = pool.grade([("... \\boxed{4}", "4")])  # [PoolResult(verdict, seconds)]
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple

from distill_grader.extract import extract_answer
from distill_grader.schema import Reason, Verdict
from distill_grader.worker import worker_main

log = logging.getLogger(__name__)

_TICK_S = 0.05  # item clocks are re-read at least this often while workers are busy
_MAX_CHUNK = 32  # items per chunk: few messages, yet small enough to balance the workers
_RESPAWN_DELAY_S = 1.0  # wait before replacing a worker that died before it was ready
_STOP_GRACE_S = 2.0  # how long stopped workers get to exit before they are killed


class PoolClosedError(RuntimeError):
    """The pool is closed (or closing) and takes no more work."""


class PoolResult(NamedTuple):
    verdict: Verdict
    seconds: float | None  # wall time inside a worker; None when the item never reached one


class WorkerState(NamedTuple):
    pid: int | None
    ready: bool
    busy_s: float | None  # how long the current item has run; None when idle


@dataclass(eq=False)  # hashed by identity: batches live in a set
class _Batch:
    pairs: Sequence[tuple[str, str]]
    results: list[PoolResult | None]
    remaining: int
    future: Future[list[PoolResult]]


@dataclass
class _Chunk:
    batch: _Batch
    indices: list[int]  # positions in batch.pairs, in the order the worker grades them


@dataclass(eq=False)  # compared by identity
class _Worker:
    process: Any  # multiprocessing process of the pool's context
    conn: Connection
    clock: Any  # shared [position of the current item in the chunk, its start or 0.0 if none]
    ready: bool = False
    chunk: _Chunk | None = None
    answered: set[int] | None = None  # chunk positions whose verdicts arrived


def chunk_size(items: int, workers: int) -> int:
    """Items per chunk: about four chunks per worker, at most ``_MAX_CHUNK``."""
    return max(1, min(_MAX_CHUNK, math.ceil(items / (4 * workers))))


class GradingPool:
    """Grade (response, ground truth) pairs in worker processes; see the module docstring."""

    def __init__(
        self,
        workers: int = 2,
        item_timeout_s: float = 10.0,
        max_response_chars: int = 32768,
        context: str = "forkserver",
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if item_timeout_s <= 0:
            raise ValueError(f"item_timeout_s must be positive, got {item_timeout_s}")
        self._ctx = multiprocessing.get_context(context)
        if context == "forkserver":  # replacements then start without re-importing sympy
            self._ctx.set_forkserver_preload(["distill_grader.grading"])
        self._timeout = item_timeout_s
        self._max_chars = max_response_chars
        self._on_restart = on_restart
        self._slots: list[_Worker | None] = [None] * workers
        self._respawn_at = [0.0] * workers
        self._pending: deque[_Chunk] = deque()  # dispatcher thread only
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._incoming: deque[tuple[_Batch, list[int]]] = deque()  # guarded by _lock
        self._batches: set[_Batch] = set()  # submitted and not finished; guarded by _lock
        self._wake_r, self._wake_w = os.pipe()  # submit() and close() wake the dispatcher
        self._pipe_closed = False
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._all_ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stop = False
        self._restarts = 0

    def __enter__(self) -> GradingPool:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        """True while the dispatcher runs (workers may be restarting)."""
        return self._running()

    @property
    def ready(self) -> bool:
        """True while every worker is up and the pool takes work."""
        return self._all_ready.is_set() and not self._closing and self._running()

    def worker_states(self) -> list[WorkerState]:
        """A snapshot of the workers, for logs and tests (slots being restarted are absent)."""
        now = time.monotonic()
        states = []
        for worker in list(self._slots):
            if worker is not None:
                start = worker.clock[1]
                busy = now - start if start and worker.chunk is not None else None
                states.append(WorkerState(worker.process.pid, worker.ready, busy))
        return states

    @property
    def restarts(self) -> int:
        """Workers replaced so far (deadline kills and crashes)."""
        return self._restarts

    def start(self) -> GradingPool:
        """Start the dispatcher and the workers; returns at once (see ``wait_ready``)."""
        with self._lock:
            if self._closing:
                raise PoolClosedError("the grading pool is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="grading-pool", daemon=True)
                self._thread.start()
        return self

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until every worker is up; False if that took longer than ``timeout_s``."""
        return self._all_ready.wait(timeout_s)

    def grade(self, pairs: Sequence[tuple[str, str]]) -> list[PoolResult]:
        """Grade (response, ground truth) pairs; results in input order."""
        return self.submit(pairs).result()

    def submit(self, pairs: Sequence[tuple[str, str]]) -> Future[list[PoolResult]]:
        """Queue pairs for grading; the future resolves to one result per pair, in order."""
        self.start()
        future: Future[list[PoolResult]] = Future()
        results: list[PoolResult | None] = [None] * len(pairs)
        todo = []
        for index, (response, ground_truth) in enumerate(pairs):
            if len(response) > self._max_chars or len(ground_truth) > self._max_chars:
                results[index] = PoolResult(Verdict(0.0, Reason.TOO_LONG, None), None)
            else:
                todo.append(index)
        batch = _Batch(pairs, results, len(todo), future)
        if not todo:
            future.set_result(results)  # type: ignore[arg-type]  # every slot is filled
            return future
        with self._lock:
            if self._closing or not self._running():
                raise PoolClosedError("the grading pool is closed")
            self._incoming.append((batch, todo))
            self._batches.add(batch)
        # Finished, failed or cancelled (an HTTP client that went away), the batch is settled.
        future.add_done_callback(lambda _: self._forget(batch))
        self._wake()
        return future

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking work, let submitted batches finish (up to ``timeout_s``), stop workers."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._closing = True
            while self._batches and self._running():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join()
        with self._lock:  # under the lock: a late _wake() must not write to a reused fd number
            if not self._pipe_closed:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._pipe_closed = True

    def _forget(self, batch: _Batch) -> None:
        with self._lock:
            self._batches.discard(batch)
            self._changed.notify_all()

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wake(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            if not self._pipe_closed:
                os.write(self._wake_w, b"x")

    # Everything below runs in the dispatcher thread.

    def _run(self) -> None:
        try:
            while not self._stop:
                self._spawn_due()
                self._accept_incoming()
                self._dispatch()
                self._wait_and_read()
                self._enforce_deadlines()
        except Exception:
            log.exception("grading pool dispatcher failed; failing all queued batches")
        finally:
            self._all_ready.clear()
            self._stop_workers()
            self._fail_all(PoolClosedError("the grading pool stopped"))

    def _spawn_due(self) -> None:
        now = time.monotonic()
        for slot, worker in enumerate(self._slots):
            if worker is None and now >= self._respawn_at[slot]:
                try:
                    self._slots[slot] = self._spawn()
                except OSError:
                    log.exception("could not start a grading worker; retrying")
                    self._respawn_at[slot] = now + _RESPAWN_DELAY_S

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        clock = self._ctx.RawArray("d", 2)
        process = self._ctx.Process(
            target=worker_main, args=(child, clock), name="grader-worker", daemon=True
        )
        process.start()
        child.close()  # so that the worker's death reads as EOF here
        return _Worker(process, parent, clock)

    def _accept_incoming(self) -> None:
        workers = len(self._slots)
        with self._lock:
            incoming, self._incoming = self._incoming, deque()
        for batch, todo in incoming:
            size = chunk_size(len(todo), workers)
            for start in range(0, len(todo), size):
                self._pending.append(_Chunk(batch, todo[start : start + size]))

    def _dispatch(self) -> None:
        for worker in self._slots:
            if not self._pending:
                return
            if worker is None or not worker.ready or worker.chunk is not None:
                continue
            chunk = self._pending.popleft()
            while chunk.batch.future.done() and self._pending:  # failed or cancelled batch
                chunk = self._pending.popleft()
            if chunk.batch.future.done():
                return
            worker.chunk, worker.answered = chunk, set()
            try:
                worker.conn.send([tuple(chunk.batch.pairs[i]) for i in chunk.indices])
            except OSError:
                self._retire(worker, Reason.PARSE_ERROR)

    def _wait_and_read(self) -> None:
        by_conn = {w.conn: w for w in self._slots if w is not None}
        for ready in wait([self._wake_r, *by_conn], timeout=self._wait_timeout()):
            if ready == self._wake_r:
                self._drain_wake_pipe()
            elif by_conn[ready] in self._slots:  # not retired earlier in this loop
                self._read(by_conn[ready])

    def _wait_timeout(self) -> float | None:
        now = time.monotonic()
        respawns = [at for at, w in zip(self._respawn_at, self._slots, strict=True) if w is None]
        waits = [max(0.0, at - now) for at in respawns]
        if any(w is not None and w.chunk is not None for w in self._slots):
            waits.append(_TICK_S)
        return min(waits, default=None)

    def _drain_wake_pipe(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _read(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            self._retire(worker, Reason.PARSE_ERROR)

    def _handle(self, worker: _Worker, message: Any) -> None:
        if isinstance(message, tuple):  # ("ready", pid)
            worker.ready = True
            if all(w is not None and w.ready for w in self._slots):
                self._all_ready.set()
            return
        chunk = worker.chunk
        if chunk is None or worker.answered is None:
            return
        for position, score, reason, extracted, seconds in message:
            worker.answered.add(position)
            verdict = Verdict(score, Reason(reason), extracted)
            self._set_result(chunk.batch, chunk.indices[position], PoolResult(verdict, seconds))
        if len(worker.answered) == len(chunk.indices):
            worker.chunk, worker.answered = None, None

    def _set_result(self, batch: _Batch, index: int, result: PoolResult) -> None:
        if batch.results[index] is not None:
            return
        batch.results[index] = result
        batch.remaining -= 1
        if batch.remaining == 0:
            _settle(batch.future, result=batch.results)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._slots):
            if worker is None or worker.chunk is None:
                continue
            start = worker.clock[1]
            if start and now - start > self._timeout:
                self._retire(worker, Reason.TIMEOUT)

    def _retire(self, worker: _Worker, reason: Reason) -> None:
        """Kill ``worker``, settle its chunk (``reason`` for the current item), replace it."""
        slot = self._slots.index(worker)
        worker.process.kill()
        worker.process.join()
        try:  # verdicts sent before the kill are still in the pipe
            while worker.chunk is not None and worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            pass
        if worker.chunk is not None:
            self._requeue(worker, reason)
        worker.conn.close()
        self._slots[slot] = None
        self._respawn_at[slot] = time.monotonic() + (0.0 if worker.ready else _RESPAWN_DELAY_S)
        self._all_ready.clear()
        self._restarts += 1
        log.warning("replaced grading worker pid=%s reason=%s", worker.process.pid, reason.value)
        if self._on_restart is not None:
            try:
                self._on_restart()
            except Exception:
                log.exception("on_restart callback failed")

    def _requeue(self, worker: _Worker, reason: Reason) -> None:
        chunk, answered = worker.chunk, worker.answered or set()
        assert chunk is not None
        position, start = int(worker.clock[0]), worker.clock[1]
        elapsed = time.monotonic() - start
        current = position if start and position not in answered else None
        if reason is Reason.TIMEOUT and elapsed <= self._timeout:
            current = None  # the worker moved on to a fresh item just before the kill
        if current is not None:
            index = chunk.indices[current]
            verdict = Verdict(0.0, reason, _safe_extract(chunk.batch.pairs[index][0]))
            self._set_result(chunk.batch, index, PoolResult(verdict, elapsed))
        rest = [
            index
            for p, index in enumerate(chunk.indices)
            if p not in answered and p != current and chunk.batch.results[index] is None
        ]
        if rest:
            self._pending.appendleft(_Chunk(chunk.batch, rest))
        worker.chunk, worker.answered = None, None

    def _stop_workers(self) -> None:
        workers = [w for w in self._slots if w is not None]
        for worker in workers:
            with contextlib.suppress(OSError):  # already gone
                worker.conn.send(None)
        deadline = time.monotonic() + _STOP_GRACE_S
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._slots = [None] * len(self._slots)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            batches = list(self._batches)
            self._incoming.clear()
        self._pending.clear()
        for batch in batches:
            _settle(batch.future, error=error)


def _settle(future: Future[Any], result: Any = None, error: Exception | None = None) -> None:
    """Resolve ``future`` unless it is already done: a caller may cancel it at any moment.

    Checking ``done()`` first is not enough (the cancel can land between check and set), and an
    ``InvalidStateError`` escaping here would stop the dispatcher and fail every other batch.
    """
    with contextlib.suppress(InvalidStateError):
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _safe_extract(response: str) -> str | None:
    try:
        return extract_answer(response)
    except Exception:
        return None
