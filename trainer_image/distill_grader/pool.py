"""A process pool that grades answers with a hard per-item deadline and fair scheduling.

One dispatcher thread owns ``workers`` processes (``forkserver`` by default, preloaded with
math-verify, so a replacement starts in milliseconds; never ``fork``: the caller may hold torch or
Ray threads). Each submitted batch (one HTTP request) keeps its own queue; an idle worker takes
a chunk from the batch that holds the fewest workers (the oldest on a tie), so concurrent
requests interleave. Each worker publishes, in shared memory, which item of its chunk it is on
and since when, and reads a "yield" flag there between items.

- Deadline: the dispatcher kills a worker whose current item has run past ``item_timeout_s``,
  marks that item ``timeout``, puts the unanswered rest
  of its chunk back at the head of its batch's queue and starts a replacement. A worker that
  dies on its own (a crash, the OOM killer) costs its current item a ``parse_error`` the same way.
- Fairness: when a batch has items waiting and no worker while every worker is busy, the worker
  of the batch holding the most workers is asked to yield after its current item. If the waiting
  batch has waited ``preempt_after_s`` and that item has run as long (and was never preempted),
  the worker is killed and the item goes back to its queue, for a fresh run with a full deadline
  (a hung item so costs at most ``preempt_after_s`` more). So a 1-item request waits about
  ``preempt_after_s`` behind a batch of slow items, not an item deadline.
- Budget: a batch still unfinished ``request_timeout_s`` after it was submitted gets ``timeout``
  for all its remaining items; its workers are reclaimed the same way.

Items longer than ``max_response_chars`` are ``too_long`` at once and never reach a worker. The
pool is ``ready`` while it takes work and a worker is up (or was, moments ago: a worker being
replaced does not make the pool unready). The service and ``LocalGrader`` both run this pool. As
with any non-fork multiprocessing, a script run by path that starts one must guard its entry
point with ``if __name__ == "__main__":``.

Usage::

    with GradingPool(workers=2, item_timeout_s=10.0) as pool:
        results = pool.grade([("... \\boxed{4}", "4")])  # [PoolResult(verdict, seconds)]
        results = pool.grade([("... \\boxed{4}", "4", "gsm8k")])  # with the item's data_source
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
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple

from distill_grader.extract import extract_answer
from distill_grader.schema import DEFAULT_SOURCE, Reason, Verdict
from distill_grader.worker import worker_main

log = logging.getLogger(__name__)

_TICK_S = 0.05  # item clocks are re-read at least this often while workers are busy
# A chunk runs at least this long before its worker is asked to yield to another request: a
# waiting request is served within ~a slice, yet requests sharing the pool don't alternate
# after every item (each switch costs two messages).
_SLICE_S = 0.05
_MAX_CHUNK = 32  # items per chunk: few messages, yet small enough to balance the workers
_RESPAWN_DELAY_S = 1.0  # wait before replacing a worker that died before it was ready
_STOP_GRACE_S = 2.0  # how long stopped workers get to exit before they are killed
# A pool whose workers are all being replaced still serves within this: it stays ready.
_READY_GRACE_S = 10.0
# Fifty times a slow ordinary item (p99 ~20 ms); a loaded machine stretches items tenfold.
DEFAULT_PREEMPT_AFTER_S = 1.0

Item = tuple[str, str] | tuple[str, str, str]  # (response, ground truth[, data_source])


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
    items: Sequence[Item]
    results: list[PoolResult | None]
    remaining: int
    future: Future[list[PoolResult]]
    submitted: float
    queue: deque[int] = field(default_factory=deque)  # positions waiting for a worker
    # Chunks of items given back by a killed or yielding worker, sent again as they are: the
    # items a killed worker had graded but not yet sent then end a chunk, whose end is flushed.
    retry: deque[list[int]] = field(default_factory=deque)
    chunk: int = 1  # items per chunk
    holders: int = 0  # workers grading a chunk of this batch now
    preempted: set[int] = field(default_factory=set)  # preempted once: never again
    starved_since: float | None = None  # since when it has had work waiting and no worker


@dataclass
class _Chunk:
    batch: _Batch
    indices: list[int]  # positions in batch.items, in the order the worker grades them


@dataclass(eq=False)  # compared by identity
class _Worker:
    process: Any  # multiprocessing process of the pool's context
    conn: Connection
    # shared [position of the current item in the chunk, its start or 0.0, yield-after-it flag]
    clock: Any
    ready: bool = False
    chunk: _Chunk | None = None
    answered: set[int] | None = None  # chunk positions whose verdicts arrived
    yielding: bool = False  # asked to stop after its current item
    since: float = 0.0  # when it was given its chunk


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
        *,
        request_timeout_s: float | None = None,
        preempt_after_s: float = DEFAULT_PREEMPT_AFTER_S,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        for name, value in (
            ("item_timeout_s", item_timeout_s),
            ("preempt_after_s", preempt_after_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if request_timeout_s is not None and not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be positive, got {request_timeout_s}")
        self._ctx = multiprocessing.get_context(context)
        if context == "forkserver":  # replacements then start without re-importing sympy
            self._ctx.set_forkserver_preload(["distill_grader.warm"])
        self._timeout = item_timeout_s
        self._budget = request_timeout_s
        self._preempt_after = preempt_after_s
        self._max_chars = max_response_chars
        self._on_restart = on_restart
        self._slots: list[_Worker | None] = [None] * workers
        self._respawn_at = [0.0] * workers
        self._active: list[_Batch] = []  # accepted and not settled, oldest first; dispatcher only
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._incoming: deque[tuple[_Batch, list[int]]] = deque()  # guarded by _lock
        self._batches: set[_Batch] = set()  # submitted and not finished; guarded by _lock
        self._wake_r, self._wake_w = os.pipe()  # submit() and close() wake the dispatcher
        self._pipe_closed = False
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._all_ready = threading.Event()
        self._last_ready_at: float | None = None  # when a worker was last seen ready
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stop = False
        self._restarts = 0
        self._preemptions = 0

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
        """True while the pool takes work and a worker is up, or was up moments ago (a worker
        being replaced, even every worker at once, leaves the pool serving)."""
        if self._closing or not self._running():
            return False
        if any(w is not None and w.ready for w in list(self._slots)):
            return True
        seen = self._last_ready_at
        return seen is not None and time.monotonic() - seen < _READY_GRACE_S

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
        """Workers replaced so far (deadline kills, preemptions and crashes)."""
        return self._restarts

    @property
    def preemptions(self) -> int:
        """Workers killed mid-item so that another batch could be served."""
        return self._preemptions

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

    def grade(self, items: Sequence[Item]) -> list[PoolResult]:
        """Grade (response, ground truth[, data_source]) items; results in input order."""
        return self.submit(items).result()

    def submit(self, items: Sequence[Item]) -> Future[list[PoolResult]]:
        """Queue items for grading; the future resolves to one result per item, in order."""
        self.start()
        future: Future[list[PoolResult]] = Future()
        results: list[PoolResult | None] = [None] * len(items)
        todo = []
        for index, (response, ground_truth, *_) in enumerate(items):
            if len(response) > self._max_chars or len(ground_truth) > self._max_chars:
                results[index] = PoolResult(Verdict(0.0, Reason.TOO_LONG, None), None)
            else:
                todo.append(index)
        batch = _Batch(items, results, len(todo), future, time.monotonic())
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
        self._wake()  # its workers may be reclaimed

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
                self._enforce_budgets()
                self._make_room()
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
        clock = self._ctx.RawArray("d", 3)
        process = self._ctx.Process(
            target=worker_main, args=(child, clock), name="grader-worker", daemon=True
        )
        process.start()
        child.close()  # so that the worker's death reads as EOF here
        return _Worker(process, parent, clock)

    def _accept_incoming(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, deque()
        for batch, todo in incoming:
            batch.queue.extend(todo)
            batch.chunk = chunk_size(len(todo), len(self._slots))
            self._active.append(batch)

    def _dispatch(self) -> None:
        self._active = [b for b in self._active if not b.future.done() or b.holders]
        for worker in self._slots:
            if worker is None or not worker.ready or worker.chunk is not None:
                continue
            waiting = [b for b in self._active if _has_work(b)]
            if not waiting:
                return
            batch = min(waiting, key=lambda b: b.holders)  # oldest first among equals
            if batch.retry:
                indices = batch.retry.popleft()
            else:
                size = min(batch.chunk, len(batch.queue))
                indices = [batch.queue.popleft() for _ in range(size)]
            worker.chunk, worker.answered = _Chunk(batch, indices), set()
            worker.clock[2], worker.yielding, worker.since = 0.0, False, time.monotonic()
            batch.holders += 1
            batch.starved_since = None
            try:
                worker.conn.send([_job(batch.items[i]) for i in indices])
            except OSError:
                self._retire(worker, Reason.PARSE_ERROR)

    def _wait_and_read(self) -> None:
        by_conn = {w.conn: w for w in self._slots if w is not None}
        for ready in wait([self._wake_r, *by_conn], timeout=self._wait_timeout()):
            if ready == self._wake_r:
                self._drain_wake_pipe()
            elif by_conn[ready] in self._slots:  # not retired earlier in this loop
                self._read(by_conn[ready])
        if any(w is not None and w.ready for w in self._slots):
            self._last_ready_at = time.monotonic()

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
        if isinstance(message, tuple) and message[0] == "yielded":  # ("yielded", next position)
            if worker.chunk is not None:
                self._requeue(worker, None)
            return
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
            index = chunk.indices[position]
            verdict = Verdict(score, Reason(reason), extracted)
            self._set_result(chunk.batch, index, PoolResult(verdict, seconds))
        if len(worker.answered) == len(chunk.indices):
            self._release(worker)

    def _release(self, worker: _Worker) -> None:
        """The worker is done with its chunk (finished, yielded or killed)."""
        if worker.chunk is not None:
            worker.chunk.batch.holders -= 1
        worker.chunk, worker.answered, worker.yielding = None, None, False

    def _set_result(self, batch: _Batch, index: int, result: PoolResult) -> None:
        if batch.results[index] is not None:
            return
        batch.results[index] = result
        batch.remaining -= 1
        if batch.remaining == 0:
            _settle(batch.future, result=batch.results)

    def _current(self, worker: _Worker) -> tuple[int, float] | None:
        """(batch position, seconds it has run) of the worker's current item, if any."""
        chunk, start = worker.chunk, worker.clock[1]
        position = int(worker.clock[0])
        if chunk is None or not start or position >= len(chunk.indices):
            return None
        index = chunk.indices[position]
        return index, time.monotonic() - start

    def _enforce_deadlines(self) -> None:
        for worker in list(self._slots):
            current = None if worker is None else self._current(worker)
            if current is not None and current[1] > self._timeout:
                self._retire(worker, Reason.TIMEOUT)

    def _enforce_budgets(self) -> None:
        """Batches past ``request_timeout_s``: ``timeout`` for every item still unanswered."""
        if self._budget is None:
            return
        now = time.monotonic()
        for batch in self._active:
            if not batch.future.done() and now - batch.submitted > self._budget:
                batch.queue.clear()
                batch.retry.clear()
                for index, result in enumerate(batch.results):
                    if result is None:
                        extracted = _safe_extract(batch.items[index][0])
                        verdict = Verdict(0.0, Reason.TIMEOUT, extracted)
                        self._set_result(batch, index, PoolResult(verdict, None))

    def _make_room(self) -> None:
        """Reclaim workers for batches that wait with none, and from settled batches."""
        now = time.monotonic()
        workers = [w for w in self._slots if w is not None]
        for worker in workers:
            if worker.chunk is not None and worker.chunk.batch.future.done():
                self._ask_to_yield(worker)  # cancelled or out of budget: nothing to wait for
        starved = [b for b in self._active if _has_work(b) and not b.holders]
        for batch in starved:
            batch.starved_since = batch.starved_since or now
        coming = sum(w is None or not w.ready or w.chunk is None or w.yielding for w in self._slots)
        for _ in range(len(starved) - coming):
            busy = [
                w
                for w in workers
                if w.chunk is not None and not w.yielding and now - w.since >= _SLICE_S
            ]
            if not busy:
                break
            self._ask_to_yield(max(busy, key=_holders))
        # Killing costs the item's work so far: only when yielding did not free a worker soon.
        starved_s = max((now - b.starved_since for b in starved if b.starved_since), default=0.0)
        for worker in workers:
            if worker in self._slots and worker.yielding:
                self._preempt_if_slow(worker, starved_s >= self._preempt_after)

    def _ask_to_yield(self, worker: _Worker) -> None:
        worker.clock[2], worker.yielding = 1.0, True

    def _preempt_if_slow(self, worker: _Worker, someone_waits: bool) -> None:
        """Kill a yielding worker whose current item has run ``preempt_after_s``: at once for a
        settled batch (its item is of no use), else when another batch has waited that long and
        the item was never preempted (so that an item needing more time still gets graded)."""
        current = self._current(worker)
        if current is None or worker.chunk is None:
            return
        index, seconds = current
        batch = worker.chunk.batch
        settled = batch.future.done()
        if seconds >= self._preempt_after and (
            settled or (someone_waits and index not in batch.preempted)
        ):
            if not settled:
                self._preemptions += 1
            self._retire(worker, None)

    def _retire(self, worker: _Worker, reason: Reason | None) -> None:
        """Kill ``worker``, settle its chunk (``reason`` for the current item; None: it is
        preempted and goes back to its queue), replace it."""
        slot = self._slots.index(worker)
        worker.process.kill()
        worker.process.join()
        try:  # verdicts sent before the kill are still in the pipe
            while worker.chunk is not None and worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            pass
        if worker.chunk is not None:
            self._requeue(worker, self._current_after_kill(worker, reason))
        worker.conn.close()
        self._slots[slot] = None
        self._respawn_at[slot] = time.monotonic() + (0.0 if worker.ready else _RESPAWN_DELAY_S)
        self._all_ready.clear()
        self._restarts += 1
        label = "preempted" if reason is None else reason.value
        log.warning("replaced grading worker pid=%s reason=%s", worker.process.pid, label)
        if self._on_restart is not None:
            try:
                self._on_restart()
            except Exception:
                log.exception("on_restart callback failed")

    def _current_after_kill(self, worker: _Worker, reason: Reason | None) -> int | None:
        """Settle the killed worker's current item (``reason``; None: preempted, it is retried
        once more); return its chunk position (None if between items)."""
        chunk, answered = worker.chunk, worker.answered or set()
        assert chunk is not None
        position, start = int(worker.clock[0]), worker.clock[1]
        if not start or position in answered or position >= len(chunk.indices):
            return None
        index = chunk.indices[position]
        batch = chunk.batch
        ran = time.monotonic() - start
        if reason is None:
            batch.preempted.add(index)
        elif reason is not Reason.TIMEOUT or ran > self._timeout:
            verdict = Verdict(0.0, reason, _safe_extract(batch.items[index][0]))
            self._set_result(batch, index, PoolResult(verdict, ran))
        # else: the worker moved on to a fresh item just before the kill; it is retried
        return position

    def _requeue(self, worker: _Worker, split: int | None) -> None:
        """Give the chunk's unanswered items back to its batch, first in line, as two chunks:
        those before position ``split`` (the killed item; graded, maybe, but unsent) and the
        rest (``split`` None: one chunk)."""
        chunk = worker.chunk
        assert chunk is not None
        split = len(chunk.indices) if split is None else split
        for part in (chunk.indices[split:], chunk.indices[:split]):  # each pushed to the front
            rest = [i for i in part if chunk.batch.results[i] is None]
            if rest:
                chunk.batch.retry.appendleft(rest)
        self._release(worker)

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
        self._active.clear()
        for batch in batches:
            _settle(batch.future, error=error)


def _has_work(batch: _Batch) -> bool:
    return bool(batch.queue or batch.retry) and not batch.future.done()


def _holders(worker: _Worker) -> int:
    return worker.chunk.batch.holders if worker.chunk is not None else 0


def _job(item: Item) -> tuple[str, str, str]:
    """What a worker grades: (response, ground truth, data_source)."""
    response, ground_truth, *source = item
    return response, ground_truth, source[0] if source else DEFAULT_SOURCE


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
