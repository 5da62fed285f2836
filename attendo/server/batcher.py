"""Concurrent requests merged into few translator calls, made one at a time by a worker
thread (:class:`MicroBatcher`)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

log = logging.getLogger("attendo")


@dataclass
class _Job:
    texts: list[str]
    key: tuple  # decoding options; only jobs with equal keys share a translator call
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Merge concurrent requests into few calls of ``run(texts, *key) -> list`` (one result
    per text), made one at a time by a worker thread.

    The first job waits at most ``max_wait_ms`` for others; a window closes early once it
    holds ``max_batch`` sentences (a job that would overflow it starts the next window; a
    single larger job goes alone). Jobs of a window are grouped by key, one call per group;
    a group whose call fails is run again job by job (see :meth:`_run_group`). A job whose
    future was cancelled before its call (the client gave up) is skipped. ``texts`` are
    opaque here: any items, one result each (the server's carry a sentence's prefix and
    constraints with it).
    """

    def __init__(self, run: Callable[..., list], max_batch: int = 32, max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{max_wait_ms}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000.0
        self.calls = self.jobs = self.sentences = 0  # counters, for /health and tests
        self.queued = 0  # sentences submitted and not yet answered
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None
        self._thread = threading.Thread(target=self._loop, name="attendo-batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: list[str], key: tuple = ()) -> Future:
        job = _Job(list(texts), key)
        with self._lock:
            self.queued += len(job.texts)
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _next_window(self) -> tuple[list[_Job], bool]:
        """Block for a first job, then gather more for max_wait; (jobs, stop requested)."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is None:
            return [], True
        jobs, n = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if n + len(job.texts) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            n += len(job.texts)
        return jobs, False

    def _loop(self) -> None:
        while True:
            jobs, stop = self._next_window()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._run_group(key, group)
            if stop:
                return

    def _run_group(self, key: tuple, group: list[_Job]) -> None:
        """One call for the live jobs of a group. If it fails and the group has several jobs,
        each is run again alone, so that the input of one request (or a batch too large for
        memory) fails only that request, not the others merged with it."""
        live = [j for j in group if j.future.set_running_or_notify_cancel()]
        try:
            if len(live) > 1:
                try:
                    self._call(key, live)
                except Exception as e:
                    log.warning("a call of %d merged requests failed (%s: %s); running each "
                                "alone", len(live), type(e).__name__, e)
                    for j in live:
                        if not j.future.done():
                            self._call_or_fail(key, [j])
            elif live:
                self._call_or_fail(key, live)
        finally:
            with self._lock:
                self.queued -= sum(len(j.texts) for j in group)

    def _call_or_fail(self, key: tuple, jobs: list[_Job]) -> None:
        try:
            self._call(key, jobs)
        except Exception as e:  # the caller answers (a 500, or a 4xx for a user error)
            log.exception("translation failed")
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)

    def _call(self, key: tuple, jobs: list[_Job]) -> None:
        """``run`` on the texts of ``jobs``, in order; each job's results to its future."""
        texts = [t for j in jobs for t in j.texts]
        results = self.run(texts, *key)
        if len(results) != len(texts):
            raise RuntimeError(f"translator gave {len(results)} results for {len(texts)}")
        with self._lock:
            self.calls += 1
            self.jobs += len(jobs)
            self.sentences += len(texts)
        k = 0
        for j in jobs:
            j.future.set_result(results[k : k + len(j.texts)])
            k += len(j.texts)
