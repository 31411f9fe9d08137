"""Dynamic batching, as Triton does it: requests of one model wait in a bounded queue and
are grouped into one engine call of up to ``max_batch`` images, for at most
``max_delay_ms`` after the first of them arrived.

Engine calls use a few sizes only (:func:`batch_sizes`: powers of two up to
``max_batch``), all run once at start-up: engines compile each input shape they see
(OpenVINO keeps a compiled model per shape, ~100-200 MB each for V2), so arbitrary sizes
would compile during requests and hold 1.9 GB (V2, all 32 sizes) instead of 0.7 GB. A
batch of another size runs as the cheapest sequence of those sizes by their start-up
timings (:func:`call_plans`: 17 images as 16 + 1, not padded to 32, which cost V2 twice
the time), the last call padded.

One thread per model runs the engine (engines are called from one thread at a time);
requests are decoded before they are queued, in other threads, so decoding overlaps
inference. The queue is bounded in images: a request that does not fit is refused at
once (:class:`QueueFull`, answered 503) and memory never grows with the load. A request
whose caller gave up (timeout, closed connection) is dropped from the queue unrun.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def batch_sizes(max_batch: int) -> list[int]:
    """The sizes every engine call is padded to: 1, 2, 4, ... up to ``max_batch`` (and
    ``max_batch`` itself)."""
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return [*sizes, max_batch]


def call_plans(sizes: list[int], seconds: dict[int, float] | None = None) -> list[list[int]]:
    """For each batch of 0..max(sizes) images, the engine calls (sizes, in order) that
    cost least, the last one padded.

    ``seconds`` is one call's time at each size (measured at start-up); without it a call
    costs its size plus one image's worth of overhead.
    """
    cost = {s: (seconds or {}).get(s, s + 1.0) for s in sizes}
    largest_first = sorted(sizes, reverse=True)  # on a tie the larger call (min keeps the first)
    best: list[tuple[float, list[int]]] = [(0.0, [])]
    for n in range(1, max(sizes) + 1):
        total, size = min(((cost[s] + best[max(n - s, 0)][0], s) for s in largest_first),
                          key=lambda option: option[0])
        best.append((total, [size, *best[max(n - size, 0)][1]]))
    plans = [plan for _, plan in best]
    plans[0] = [min(sizes)]  # an empty request still makes one call (for the output width)
    return plans


WARM_TIMINGS = 3  # timed calls per size at start-up (the fastest counts)


def time_call_sizes(run: Callable[[np.ndarray], np.ndarray], image_shape: tuple[int, ...],
                    max_batch: int) -> dict[int, float]:
    """Runs every call size once (engines compile a shape the first time they see it, so
    no request waits for that), then times it: ``{size: seconds of its fastest call}``."""
    seconds = {}
    for n in batch_sizes(max_batch):
        x = np.zeros((n, *image_shape), np.float32)
        run(x)
        times = []
        for _ in range(WARM_TIMINGS):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
        seconds[n] = min(times)
    return seconds


class CallPlan:
    """Runs any number of images through ``run`` in calls of :func:`batch_sizes` only, each
    batch as the cheapest sequence of them (:func:`call_plans`)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], image_shape: tuple[int, ...],
                 max_batch: int, seconds: dict[int, float] | None = None):
        self.run, self.max_batch = run, max_batch
        self.plans = call_plans(batch_sizes(max_batch), seconds)
        # padding rows keep what an earlier batch left (valid images) or zeros: rows of a
        # batch never mix, so they only cost time
        self.staging = np.zeros((max(sum(plan) for plan in self.plans), *image_shape),
                                np.float32)

    def __call__(self, images: np.ndarray, staged: bool = False) -> np.ndarray:
        """The vectors of ``images``; ``staged``: they are ``staging[:n]`` already."""
        n = len(images)
        if n > self.max_batch:
            return np.concatenate([self(images[i:i + self.max_batch])
                                   for i in range(0, n, self.max_batch)])
        parts, start = [], 0
        for size in self.plans[n]:
            if start + size <= n:
                parts.append(np.asarray(self.run(images[start:start + size]), np.float32))
            else:  # the last call: padded in the staging rows
                if not staged:
                    self.staging[start:n] = images[start:]
                out = np.asarray(self.run(self.staging[start:start + size]), np.float32)
                parts.append(out[:n - start])
            start += size
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class QueueFull(Exception):
    """The model's queue has no room for this request: answer 503, retry later."""


class Stopped(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass(eq=False)
class _Job:
    images: np.ndarray  # (n, 3, H, W) float32
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Batches ``run((n, 3, H, W) float32) -> (n, D)`` calls of many requests.

    ``on_batch(size, seconds)`` is told of every engine call (metrics).
    """

    def __init__(self, name: str, run: Callable[[np.ndarray], np.ndarray], *,
                 image_shape: tuple[int, int, int], max_batch: int, max_delay_ms: float,
                 max_queue: int, on_batch: Callable[[int, float], None] | None = None,
                 call_seconds: dict[int, float] | None = None):
        self.name, self.image_shape = name, image_shape
        self.max_batch, self.max_delay = max_batch, max_delay_ms / 1000.0
        self.max_queue = max(max_queue, 1)
        self._on_batch = on_batch
        # How many requests are on their way (admitted, still being read or decoded): the
        # server sets it. With none coming, waiting for company only adds latency.
        self.incoming: Callable[[], int] = lambda: 0
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # images in _jobs
        self._cond = threading.Condition()
        self._stopping = False
        self._calls = CallPlan(run, image_shape, max_batch, call_seconds)
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}",
                                        daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Images waiting (not yet in an engine call)."""
        return self._queued

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """The vectors of ``images`` ``(n, 3, H, W)``, run in some batch. Raises
        :class:`QueueFull` at once when they do not fit in the queue."""
        n = len(images)
        loop = asyncio.get_running_loop()
        job = _Job(images, loop.create_future(), loop)
        with self._cond:
            if self._stopping:
                raise Stopped(self.name)
            # a request larger than the whole queue still runs when the queue is empty
            if self._queued and self._queued + n > self.max_queue:
                raise QueueFull(self.name)
            self._jobs.append(job)
            self._queued += n
            self._cond.notify()
        try:
            return await job.future
        finally:
            # cancelled (a timeout, the client gone; cancelling this task cancels the
            # future too): drop it unrun
            if not job.future.done() or job.future.cancelled():
                self._drop(job)

    def _drop(self, job: _Job) -> None:
        with self._cond:
            try:
                self._jobs.remove(job)
            except ValueError:
                return  # already taken into a batch
            self._queued -= len(job.images)

    def _take(self) -> list[_Job] | None:
        """The next batch: jobs totalling <= max_batch images (one larger job alone),
        waiting up to max_delay after the first one for more while more are on their way
        (:attr:`incoming`)."""
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].arrived + self.max_delay
            while self._queued < self.max_batch and not self._stopping and self.incoming():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # a submit wakes us; a request that fails its decode does not: poll
                self._cond.wait(min(left, 0.002))
                if not self._jobs:  # all dropped meanwhile
                    return []
            batch, total = [], 0
            while self._jobs and (not batch or total + len(self._jobs[0].images)
                                  <= self.max_batch):
                job = self._jobs.popleft()
                batch.append(job)
                total += len(job.images)
            self._queued -= total
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[_Job]) -> None:
        total = sum(len(j.images) for j in batch)
        start = time.perf_counter()
        try:
            if len(batch) == 1:
                vectors = self._calls(batch[0].images)
            else:
                staging, offset = self._calls.staging, 0
                for job in batch:
                    staging[offset:offset + len(job.images)] = job.images
                    offset += len(job.images)
                vectors = self._calls(staging[:total], staged=True)
        except Exception as e:  # noqa: BLE001 - an engine failure fails this batch only
            log.exception("model %s: a batch of %d images failed", self.name, total)
            for job in batch:
                _resolve(job, error=e)
            return
        seconds = time.perf_counter() - start
        if self._on_batch is not None:
            self._on_batch(total, seconds)
        offset = 0
        for job in batch:
            _resolve(job, vectors[offset:offset + len(job.images)].copy())
            offset += len(job.images)

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the thread; new submits raise :class:`Stopped`."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)


def _resolve(job: _Job, result: np.ndarray | None = None,
             error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():  # the caller gave up meanwhile
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with suppress(RuntimeError):  # a closed event loop: nobody waits any more
        job.loop.call_soon_threadsafe(settle)
