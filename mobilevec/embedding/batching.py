"""Embedding many image files: parallel decode, batched inference, bad files reported.

Decoding runs in worker processes (or inline with ``workers=0``) a bounded number of files
ahead of the model, so decode and inference overlap and memory stays flat however many
files there are. A file that cannot be decoded is reported as ``(path, reason)`` and never
stops the run; a decoder process that dies (a crashing codec, the kernel's OOM killer) is
replaced and the files it held are retried one by one, so only the culprit is reported.

Bounds, with decode processes (the default):

- **time**: a file whose read and decode take longer than ``file_timeout`` seconds (default
  :data:`DEFAULT_FILE_TIMEOUT`: a hung network mount, a file that never ends) is reported
  as such; the workers are killed and replaced, and the files they held are decoded again.
  Threads cannot be stopped, so ``threads=True`` and inline decoding (``workers=0``) have
  no time bound; only regular files are ever opened (FIFOs, sockets and devices are
  refused at once, see :mod:`mobilevec.data.images`).
- **memory**: decodes whose Pillow image is larger than
  :data:`mobilevec.data.images.LARGE_DECODE_BYTES` share a budget of
  :data:`DECODE_MEMORY_BUDGET` bytes between the workers of a pool: one that does not fit
  waits for the others, one larger than the whole budget runs alone.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.images import MAX_PIXELS, Crop, ImageError, load_array, use_decode_gate
from .search import l2_normalize

if TYPE_CHECKING:
    import torch

    from ..engines import Engine

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
# Decode processes run at a lower priority: when inference is the slow stage, a decoder
# that takes a core from one of torch's threads stalls the whole parallel region; niced,
# decoders still get every idle cycle (docs/benchmarks.md, "Measurements behind the code").
DECODE_NICENESS = 10
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_DIED = "the decoder process died on this file (codec crash or out of memory)"
# A file's read and decode may take this long (s) before it is reported as hung: far above
# the decode of Pillow's largest image on a slow core, far below a job's patience.
DEFAULT_FILE_TIMEOUT = 120.0
# Bytes of large decoded images (see the module doc) in flight at once in one pool: three
# images at the default pixel limit.
DECODE_MEMORY_BUDGET = 2 << 30
_FORK = "fork" in multiprocessing.get_all_start_methods()
_CHUNK = 4  # files per task sent to a worker: amortises IPC, limits what a crash takes along


@dataclass(frozen=True)
class Preprocessing:
    """How files become model inputs (see :mod:`mobilevec.data.images`); recorded with vectors.

    ``size`` is (height, width); ``draft`` allows JPEG DCT scaling (faster, not TF's
    full decode); ``max_pixels`` refuses larger images before decoding.
    """

    size: tuple[int, int] = (224, 224)
    crop: Crop = "none"
    draft: bool = False
    max_pixels: int = MAX_PIXELS

    def load(self, path: str | Path) -> np.ndarray:
        """``(3, h, w)`` float32 in [0, 1]; raises :class:`ImageError`."""
        return load_array(path, self.size, self.crop, draft=self.draft,
                          max_pixels=self.max_pixels)

    def as_dict(self) -> dict:
        return {**asdict(self), "size": list(self.size)}


@dataclass
class Batch:
    """One inference batch: ``vectors[i]`` belongs to ``paths[i]``; ``errors`` are the files
    that failed since the previous batch, as (path, reason)."""

    paths: list[Path]
    vectors: np.ndarray  # (len(paths), D) float32
    errors: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class EmbedResult:
    """Vectors of the images that decoded, and (path, reason) for those that did not."""

    paths: list[Path]
    vectors: np.ndarray  # (len(paths), D) float32
    errors: list[tuple[Path, str]] = field(default_factory=list)


def default_workers() -> int:
    """One decode worker per core available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _decode_chunk(paths: list[Path], prep: Preprocessing) -> list[tuple[np.ndarray | None, str]]:
    results: list[tuple[np.ndarray | None, str]] = []
    for path in paths:
        try:
            results.append((prep.load(path), ""))
        except ImageError as e:
            results.append((None, e.cause))
        except Exception as e:  # noqa: BLE001 - a codec bug in one file must not stop the run
            results.append((None, f"unexpected decoder error ({type(e).__name__}: {e})"))
    return results


class _SharedSlots:
    """A ring of input-sized float32 slots in anonymous shared memory.

    Created before the worker processes are forked, so they inherit the mapping: a worker
    writes each decoded input into its slot and sends back only a status, and the 0.6 MB
    arrays never go through pickling and pipes, which capped decoding per worker. Only
    for forked workers.
    """

    def __init__(self, count: int, shape: tuple[int, ...]):
        self.count, self.shape = count, shape
        self.floats = int(np.prod(shape))
        self.buffer = mmap.mmap(-1, count * self.floats * 4)  # MAP_SHARED | MAP_ANONYMOUS
        # one array over the ring: every slot's view shares it, so views side by side can
        # be joined into a batch without a copy (embed_batches)
        self.ring = np.frombuffer(self.buffer, np.float32).reshape(count, *shape)
        self.key = id(self)
        self._next = 0
        _SHARED[self.key] = self  # module state is what forked children see

    def take(self, n: int) -> list[int]:
        slots = [(self._next + i) % self.count for i in range(n)]
        self._next += n
        return slots

    def view(self, slot: int) -> np.ndarray:
        return self.ring[slot]

    def close(self) -> None:
        _SHARED.pop(self.key, None)
        self.ring = None
        with suppress(BufferError):  # a view still alive somewhere: the GC frees it later
            self.buffer.close()


_SHARED: dict[int, _SharedSlots] = {}


def _ring_slots(window: int, hold: int) -> int:
    """Slots for ``window`` chunks in flight plus ``hold`` views the consumer keeps, as a
    multiple of ``hold``: with no failed file, batch k of ``hold`` images then fills slots
    [k * hold, (k + 1) * hold), side by side, never across the end of the ring."""
    slots = (window + 1) * _CHUNK + hold
    return slots if hold <= 0 else -(-slots // hold) * hold


def _decode_chunk_shared(key: int, slots: list[int], paths: list[Path],
                         prep: Preprocessing) -> list[tuple[bool, str]]:
    shared = _SHARED[key]
    results = []
    for slot, (array, reason) in zip(slots, _decode_chunk(paths, prep), strict=True):
        if array is not None:
            shared.view(slot)[...] = array
        results.append((array is not None, reason))
    return results


class DecodeBudget:
    """Bytes of decoded images in flight, shared by the processes forked after it is made:
    ``with budget(nbytes):`` waits until ``nbytes`` fit (or nothing else is in flight)."""

    def __init__(self, total: int, context=None):
        self.total = total
        if context is None:  # one process (threads)
            self._cond, self._used = threading.Condition(), [0]
        else:
            self._cond = context.Condition()
            self._used = context.Array("q", 1, lock=False)

    @contextmanager
    def __call__(self, nbytes: int) -> Iterator[None]:
        with self._cond:
            while self._used[0] > 0 and self._used[0] + nbytes > self.total:
                self._cond.wait()
            self._used[0] += nbytes
        try:
            yield
        finally:
            with self._cond:
                self._used[0] -= nbytes
                self._cond.notify_all()


def _init_worker(budget: DecodeBudget) -> None:
    # Ctrl-C and SIGTERM are handled once, by the parent, which shuts the pool down (a
    # scheduler's SIGTERM to the whole process group must not look like decoder crashes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with suppress(OSError, AttributeError):
        os.nice(DECODE_NICENESS)
    # If the parent is killed (SIGKILL), take the workers along instead of orphaning them.
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    use_decode_gate(budget)


_THREAD_BUDGET = DecodeBudget(DECODE_MEMORY_BUDGET)


def _init_thread() -> None:
    use_decode_gate(_THREAD_BUDGET)  # one budget for every decode thread of this process


def _new_pool(workers: int, threads: bool) -> Executor:
    if threads:
        return ThreadPoolExecutor(workers, thread_name_prefix="mobilevec-decode",
                                  initializer=_init_thread)
    # fork: workers start instantly and need no re-import; they only run numpy and Pillow
    # (no torch, whose thread pools are not fork-safe).
    context = multiprocessing.get_context("fork" if _FORK else None)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(DecodeBudget(DECODE_MEMORY_BUDGET, context),))


def _stop(pool: Executor) -> None:
    """Shut ``pool`` down without waiting, killing its worker processes (a worker stuck in a
    read would otherwise keep the pool, and this process's exit, waiting)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # gone after shutdown
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with suppress(Exception):
            process.kill()


def _restart(pool: Executor, workers: int) -> Executor:
    _stop(pool)
    return _new_pool(workers, threads=False)  # only process pools break or time out


def _chunks(paths: Iterable[Path], size: int) -> Iterator[list[Path]]:
    chunk: list[Path] = []
    for path in paths:
        chunk.append(Path(path))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def decode_files(paths: Iterable[str | Path], prep: Preprocessing, *, workers: int | None = None,
                 threads: bool = False, prefetch: int = 4 * DEFAULT_BATCH_SIZE,
                 file_timeout: float | None = DEFAULT_FILE_TIMEOUT
                 ) -> Iterator[tuple[Path, np.ndarray | None, str]]:
    """Decode ``paths`` in order: ``(path, (3, h, w) float32 array, "")`` or
    ``(path, None, reason)``.

    ``workers`` processes (None: one per core, 0: decode inline) run at most ``prefetch``
    files ahead of the consumer. ``threads=True`` uses threads instead (Pillow and numpy
    release the GIL): no inter-process copies, but a crashing codec takes the caller down.
    ``file_timeout``: seconds one file's read and decode may take in a worker process
    (None: no limit); a file that takes longer is reported, not waited for.
    """
    for path, array, reason in _decode_stream(paths, prep, workers, threads, prefetch,
                                              file_timeout):
        yield path, (None if array is None else np.array(array)), reason


def _decode_stream(paths: Iterable[str | Path], prep: Preprocessing, workers: int | None,
                   threads: bool, prefetch: int, file_timeout: float | None = None,
                   hold: int = 0) -> Iterator[tuple[Path, np.ndarray | None, str]]:
    """:func:`decode_files`, but an array may be a view into shared memory: it stays valid
    while the consumer has asked for at most ``hold`` more items, and a run of views with
    no failure between them lies side by side in one buffer (:func:`_contiguous_batch`)."""
    workers = default_workers() if workers is None else workers
    if workers <= 0:
        for path in paths:
            (array, reason), = _decode_chunk([Path(path)], prep)
            yield Path(path), array, reason
        return
    decoder = _PoolDecoder(prep, workers, threads, prefetch, file_timeout, hold)
    try:
        yield from decoder.decode(paths)
    finally:
        decoder.close()


class _PoolDecoder:
    """Decodes chunks of files on a worker pool, a bounded window ahead, in input order.

    When a worker process dies, or the chunk at the head of the window takes longer than
    the time allowed for its files, the pool is replaced and every file that was in flight
    becomes a *suspect*, decoded again alone, so that only the file that kills a worker
    (:data:`_DIED`) or hangs is reported. The head chunk's clock starts when the consumer
    begins waiting for it: every earlier chunk is done by then, so it has been running at
    least that long.
    """

    def __init__(self, prep: Preprocessing, workers: int, threads: bool, prefetch: int,
                 file_timeout: float | None = None, hold: int = 0):
        self.prep, self.workers, self.threads = prep, workers, threads
        self.timeout = None if threads else file_timeout  # threads cannot be stopped
        self.window = max(workers + 1, prefetch // _CHUNK)
        self.shared = (_SharedSlots(_ring_slots(self.window, hold), (3, *prep.size))
                       if not threads and _FORK else None)
        self.pool = _new_pool(workers, threads)
        self.pending: deque[tuple[list[Path], Future]] = deque()
        self.suspects: deque[Path] = deque()

    def decode(self, paths: Iterable[str | Path]
               ) -> Iterator[tuple[Path, np.ndarray | None, str]]:
        source = _chunks(paths, _CHUNK)
        while True:
            if self.suspects:
                yield self._decode_suspect(self.suspects.popleft())
                continue
            while len(self.pending) < self.window and (chunk := next(source, None)):
                self.pending.append((chunk, self._submit(chunk)))
            if not self.pending:
                return
            chunk, future = self.pending.popleft()
            try:
                decoded = self._results(future, len(chunk))
            except (BrokenProcessPool, TimeoutError) as e:  # find which file it was
                if isinstance(e, TimeoutError):
                    log.warning("decoding %s took over %.0f s per file; restarting the "
                                "decoders", ", ".join(map(str, chunk)), self.timeout)
                self._restart()
                self.suspects.extend(chunk + [p for c, _ in self.pending for p in c])
                self.pending.clear()
                continue
            for path, (array, reason) in zip(chunk, decoded, strict=True):
                yield path, array, reason

    def _decode_suspect(self, path: Path) -> tuple[Path, np.ndarray | None, str]:
        try:
            (array, reason), = self._results(self._submit([path]), 1)
        except BrokenProcessPool:
            self._restart()
            log.warning("decoder process died on %s", path)
            array, reason = None, _DIED
        except TimeoutError:
            self._restart()
            log.warning("gave up on %s after %.0f s", path, self.timeout)
            array, reason = None, (f"reading and decoding took longer than {self.timeout:g} s "
                                   "(a hung or very slow file system, or a file that never "
                                   "ends?)")
        return path, array, reason

    def _submit(self, chunk: list[Path]) -> Future:
        if self.shared is None:
            return self.pool.submit(_decode_chunk, chunk, self.prep)
        slots = self.shared.take(len(chunk))
        future = self.pool.submit(_decode_chunk_shared, self.shared.key, slots, chunk,
                                  self.prep)
        future.slots = slots
        return future

    def _results(self, future: Future, files: int) -> list[tuple[np.ndarray | None, str]]:
        timeout = None if self.timeout is None else self.timeout * files
        if self.shared is None:
            return future.result(timeout)
        # views: a slot is reused only once the ring comes round, after this chunk is consumed
        return [(self.shared.view(slot) if ok else None, reason)
                for slot, (ok, reason) in zip(future.slots, future.result(timeout),
                                              strict=True)]

    def _restart(self) -> None:
        self.pool = _restart(self.pool, self.workers)

    def close(self) -> None:
        _stop(self.pool)
        if self.shared is not None:
            self.shared.close()


def flush_denormals() -> None:
    """Compute with denormal floats flushed to zero on this thread from now on (left on, as
    the engines leave it: torch offers no way to read the previous setting back). It is
    per-thread CPU state that other code can reset, so it is set again before each batch.

    Denormal activations (< 1.2e-38: they do not change a vector) are computed far slower
    on x86, and some weights (randomly initialised nets) produce many.
    The engines do the same (``torch-fused``, ONNX Runtime's ``set_denormal_as_zero``).
    """
    import torch

    torch.set_flush_denormal(True)


def output_width(model: torch.nn.Module | Engine) -> int:
    """Width of ``model(x)``: ``num_outputs`` where a model has one (a classifier: its
    classes), else ``num_features``."""
    width = getattr(model, "num_outputs", None)
    return int(width if width is not None else model.num_features)


def _input_size(model: torch.nn.Module, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """``size``, else the published input size of the model's contract."""
    if size is None:
        return model.config.input.size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _batch_runner(model: torch.nn.Module | Engine, batch_size: int, size: tuple[int, int]
                  ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], bool]:
    """``(staging, run, takes_views)``: an input buffer of ``batch_size`` images, reused
    batch after batch, and ``run(x)``, the float32 vectors of the batch ``x``.

    An engine (:mod:`mobilevec.engines`) runs on any ``x`` as it lies, the decoders' shared
    buffer included (``takes_views``), and torch is not imported. A torch module reads
    only ``staging[:n]`` (a tensor buffer, pinned for fast, asynchronous copies to a GPU)
    and runs on its device.
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(model, torch.nn.Module):
        staging = np.empty((batch_size, 3, *size), np.float32)
        return staging, lambda x: np.asarray(model(x), np.float32), True
    model.eval()
    device = next(model.parameters()).device  # inputs follow the model (CPU or GPU)
    inputs = torch.empty((batch_size, 3, *size), pin_memory=device.type == "cuda")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = inputs[:len(x)].to(device, non_blocking=True)
            flush_denormals()  # per batch: decoding in this thread can reset the FPU flags
            return model(x).float().cpu().numpy()

    return inputs.numpy(), run, False


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _buffer_of(array: np.ndarray):
    """The object whose memory ``array`` views (an mmap, bytes...), or None if it owns it."""
    return _root(array).base


def _follows(previous: np.ndarray, array: np.ndarray) -> bool:
    """Whether ``array`` starts where ``previous`` ends, in the same buffer."""
    end = previous.__array_interface__["data"][0] + previous.nbytes
    return (array.__array_interface__["data"][0] == end and array.shape == previous.shape
            and array.dtype == previous.dtype and array.flags.c_contiguous
            and _buffer_of(array) is not None and _buffer_of(array) is _buffer_of(previous))


def _contiguous_batch(first: np.ndarray, count: int) -> np.ndarray:
    """The ``(count, *first.shape)`` view of ``count`` arrays that lie side by side from
    ``first`` on (each checked with :func:`_follows`): the batch, not copied."""
    root = _root(first)
    offset = first.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return np.ndarray((count, *first.shape), first.dtype, buffer=root, offset=offset)


def embed_batches(model: torch.nn.Module | Engine, paths: Iterable[str | Path], *,
                  prep: Preprocessing | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  workers: int | None = None, threads: bool = False,
                  normalize: bool = False, prefetch: int | None = None,
                  file_timeout: float | None = DEFAULT_FILE_TIMEOUT) -> Iterator[Batch]:
    """Embed ``paths`` batch by batch (files in input order, failed ones left out).

    ``model`` is a torch module or an engine (:mod:`mobilevec.engines`) of the same call
    contract.

    ``prep`` defaults to the exact TF rule at the model's published size. Each
    :class:`Batch` holds up to ``batch_size`` vectors, float32 ``(B, num_features)``, L2
    normalised when ``normalize``, and the files that failed since the previous batch. A
    last batch may hold errors only. Batches are moved to the model's device. Decoding
    runs up to ``prefetch`` files (default four batches) ahead of the model;
    ``file_timeout`` bounds one file's read and decode (see :func:`decode_files`).
    """
    prep = prep or Preprocessing(size=_input_size(model, None))
    staging, run, takes_views = _batch_runner(model, batch_size, prep.size)
    done: list[Path] = []
    errors: list[tuple[Path, str]] = []
    # While the batch's decoded images lie side by side in the decoders' shared buffer
    # (no failed file between them), the engine reads them there; otherwise they are
    # copied into ``staging`` as they come.
    first: np.ndarray | None = None
    last: np.ndarray | None = None

    def flush() -> Batch:
        if not done:
            vectors = np.zeros((0, output_width(model)), np.float32)
        else:
            vectors = run(_contiguous_batch(first, len(done)) if first is not None
                          else staging[:len(done)])
        return Batch(list(done), l2_normalize(vectors) if normalize else vectors, list(errors))

    def to_staging() -> None:
        nonlocal first
        if first is not None:
            staging[:len(done)] = _contiguous_batch(first, len(done))
            first = None

    for path, array, reason in _decode_stream(paths, prep, workers, threads,
                                              prefetch or 4 * batch_size, file_timeout,
                                              hold=batch_size if takes_views else 0):
        if array is None:
            log.warning("skipping %s: %s", path, reason)
            errors.append((path, reason))
            to_staging()  # the views after a failure no longer follow these
            last = None
            continue
        if takes_views and not done:
            first = array if _buffer_of(array) is not None else None
        elif first is not None and not _follows(last, array):
            to_staging()
        if first is None:
            staging[len(done)] = array
        last = array
        done.append(path)
        if len(done) == batch_size:
            yield flush()
            done, errors, first, last = [], [], None, None
    if done or errors:
        yield flush()


def iter_embeddings(model: torch.nn.Module, paths: Iterable[str | Path],
                    errors: list[tuple[Path, str]] | None = None,
                    **options) -> Iterator[tuple[Path, np.ndarray]]:
    """``(path, vector)`` for each file that decodes, in input order; vector float32 ``(D,)``.

    Failed files are logged and appended to ``errors`` when given. ``options`` are those of
    :func:`embed_batches`.
    """
    for batch in embed_batches(model, paths, **options):
        if errors is not None:
            errors.extend(batch.errors)
        yield from zip(batch.paths, batch.vectors, strict=True)


def embed_files(model: torch.nn.Module, paths: Sequence[str | Path], *,
                size: int | tuple[int, int] | None = None, crop: Crop = "none",
                draft: bool = False, batch_size: int = 32, workers: int | None = None,
                normalize: bool = False, progress=None) -> EmbedResult:
    """Embed ``paths`` into arrays; undecodable files are reported, not fatal.

    ``size`` defaults to the model's published input size; ``draft`` allows JPEG DCT
    scaling (see :mod:`mobilevec.data.images`). ``workers``: decode processes (0: inline, None:
    one per core). ``progress`` is an optional callable receiving the number of files
    handled after each batch. Returns float32 ``(N, num_features)`` vectors for the N files
    that decoded, in input order.
    """
    prep = Preprocessing(size=_input_size(model, size), crop=crop, draft=draft)
    result = EmbedResult([], np.zeros((0, output_width(model)), np.float32))
    chunks: list[np.ndarray] = []
    for batch in embed_batches(model, paths, prep=prep, batch_size=batch_size,
                               workers=workers, normalize=normalize):
        result.paths += batch.paths
        result.errors += batch.errors
        chunks.append(batch.vectors)
        if progress:
            progress(len(result.paths) + len(result.errors))
    if chunks:
        result.vectors = np.concatenate(chunks)
    return result
