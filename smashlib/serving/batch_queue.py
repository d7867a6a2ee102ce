"""Collect work items from many threads into batches that one worker thread runs.

Why one worker: a model on a CPU (or one GPU) runs one batch at a time anyway, and a single thread
that owns the model needs no locking inside it. A batch starts when it is full (``max_batch_size``
rows) or when its oldest item has waited ``max_wait_ms``. Items carry a key (the generation settings):
only items with equal keys share a batch, the others wait for the next one, in arrival order.

Each item has its own Future. When a batch fails, its items are run again one by one, so the item that
caused the failure fails alone and the others get their results. The worker stops after a second
without work (so an unused model is freed) and starts again with the next item.
"""
from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

#: Seconds the worker waits for work before it exits (it restarts on the next submit).
IDLE_EXIT_SECONDS = 1.0

#: Every queue alive, so that interpreter exit can stop their workers first: a daemon thread still inside
#: torch while Python finalizes aborts the process ("terminate called without an active exception").
_LIVE_QUEUES: weakref.WeakSet[BatchQueue] = weakref.WeakSet()


@atexit.register
def _stop_workers_at_exit() -> None:
    for queue in list(_LIVE_QUEUES):
        queue.close(wait=True)


@dataclass
class WorkItem:
    """One caller's request: its batch key, its payload, how many batch rows it fills, its Future."""

    key: Hashable
    payload: Any
    rows: int = 1
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class BatchQueue:
    """Runs ``run_batch(key, payloads) -> results`` (one result per payload) on batches of submitted items."""

    def __init__(
        self,
        run_batch: Callable[[Hashable, Sequence[Any]], Sequence[Any]],
        max_batch_size: int,
        max_wait_ms: float,
        name: str = "smashlib-batcher",
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._name = name
        self._pending: list[WorkItem] = []
        self._condition = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        #: sizes (in rows) of the batches run so far: what the tests and benchmarks read
        self.batch_sizes: list[int] = []
        _LIVE_QUEUES.add(self)

    def submit(self, key: Hashable, payload: Any, rows: int = 1) -> Future:
        """Queue one item; its Future gets the result (or the exception) of that item alone."""
        return self.submit_many([(key, payload, rows)])[0]

    def submit_many(self, entries: Sequence[tuple[Hashable, Any, int]]) -> list[Future]:
        """Queue (key, payload, rows) items at once, so one caller's list of prompts is never split by the
        worker waking between two of them (with ``max_wait_ms=0`` it would run the first alone)."""
        items = [WorkItem(key, payload, rows) for key, payload, rows in entries]
        with self._condition:
            if self._closed:
                raise RuntimeError("this batcher is closed")
            self._pending.extend(items)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._worker.start()
            self._condition.notify_all()
        return [item.future for item in items]

    def close(self, wait: bool = False) -> None:
        """Refuse new items; the worker finishes what is queued and exits (``wait``: join it, up to a minute)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            worker = self._worker
        if wait and worker is not None and worker is not threading.current_thread():
            worker.join(timeout=60)

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[WorkItem] | None:
        with self._condition:
            while not self._pending:
                woken = not self._closed and self._condition.wait(IDLE_EXIT_SECONDS)
                if not woken and not self._pending:  # closed, or idle for IDLE_EXIT_SECONDS
                    self._worker = None
                    return None
            first = self._pending[0]
            while True:
                batch = self._matching(first.key)
                remaining = first.arrived + self.max_wait - time.monotonic()
                if sum(item.rows for item in batch) >= self.max_batch_size or remaining <= 0 or self._closed:
                    break
                self._condition.wait(remaining)
            for item in batch:
                self._pending.remove(item)
            return batch

    def _matching(self, key: Hashable) -> list[WorkItem]:
        """The oldest items with ``key`` that fit in one batch (an oversized first item runs alone)."""
        batch: list[WorkItem] = []
        rows = 0
        for item in self._pending:
            if item.key != key:
                continue
            if batch and rows + item.rows > self.max_batch_size:
                break
            batch.append(item)
            rows += item.rows
        return batch

    def _run(self, batch: list[WorkItem]) -> None:
        self.batch_sizes.append(sum(item.rows for item in batch))
        try:
            results = self._run_batch(batch[0].key, [item.payload for item in batch])
        except BaseException as error:  # noqa: BLE001 - every failure goes to the callers, never kills the worker
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            for item in batch:  # find the item that broke the batch: it alone gets the error
                self._run([item])
            return
        for item, result in zip(batch, results):
            item.future.set_result(result)
