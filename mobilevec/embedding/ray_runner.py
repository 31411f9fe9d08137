"""Embedding on Ray Data: the vectors and the store of ``mobilevec embed``, on a cluster.

The driver lists the files, stats them (the resume keys: path, size, mtime) and leaves out
those already stored. Ray Data then streams the keys through a pool of actors, each of which
gets the model once (from Ray's object store, so workers need no copy of the weights file)
and turns every batch of paths into vectors with :func:`mobilevec.embedding.batching.embed_batches`:
the same decode (:meth:`Preprocessing.load`, not Ray's image reader), the same batched
forward pass, the same reasons for bad files as the local runner. Only paths go in and
vectors come out; decoded pixels never enter the object store.

Every output block is a table with the store's part columns (path, size, mtime_ns, model,
vector), written by ``Dataset.write_parquet`` as shards into ``<store>/_ray/``. Once the
write is done (or interrupted, or at the next run after a crash) every shard whose Parquet
footer is whole is renamed into the store as one more part, so ``read_store``, ``search``,
``dedup`` and the local runner read and resume a Ray-made store like any other. Files
that fail are reported by the actors to a small tally actor, and become rows of the
store's errors table; they are never task failures.
"""

from __future__ import annotations

import copy
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._optional import require
from ..errors import MobilevecError
from .batching import DEFAULT_BATCH_SIZE, Preprocessing, embed_batches
from .pipeline import RunSummary, _keys
from .provenance import model_fingerprint
from .store import Key, StoreError, VectorStore, _ParquetParts, store_paths

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

STAGING = "_ray"  # shards being written; the leading "_" hides it from Parquet readers
ROWS_PER_FILE = 8192  # about 32 MiB of float32 V3 vectors per shard
_POLL_S = 0.5


def require_ray():
    """The ``ray`` module, or a clear error saying how to install it."""
    # The extra must bring Ray Data, not only Ray core.
    require("ray.data", "ray", purpose="--runner ray (Ray Data)")
    return require("ray", "ray")


class _Tally:
    """Ray actor: files handled so far and the failures, collected from every worker."""

    def __init__(self) -> None:
        self.done = 0
        self.failures: dict[str, str] = {}  # by path: a retried task reports a file once

    def report(self, done: int, failures: list[tuple[str, str]]) -> None:
        self.done += done
        self.failures.update(failures)

    def state(self) -> tuple[int, list[tuple[str, str]]]:
        return self.done, sorted(self.failures.items())


class FailureTally:
    """Counts and failures reported by :func:`embed_dataset`'s workers (a tiny actor).

    Read :meth:`state` while or after the dataset is consumed: ``(files handled, sorted
    [(path, reason)])``.
    """

    def __init__(self) -> None:
        ray = require_ray()
        self.actor = ray.remote(num_cpus=0)(_Tally).remote()

    def state(self) -> tuple[int, list[tuple[str, str]]]:
        return require_ray().get(self.actor.state.remote())


class _Embedder:
    """Ray Data actor: the model loaded once, then batch after batch of paths → part rows."""

    def __init__(self, model_ref: list, meta: dict, prep: Preprocessing, batch_size: int,
                 cpus: int, tally: Any, base: str | None = None) -> None:
        import ray

        torch.set_num_threads(max(1, cpus))
        model = ray.get(model_ref[0])
        if model_fingerprint(model) != meta["fingerprint"]:  # e.g. another mobilevec version
            raise StoreError("the model a Ray worker rebuilt differs from the driver's; "
                             "install the same mobilevec version on every node")
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.model = model.to(device).eval()
        self.meta, self.prep, self.batch_size = meta, prep, batch_size
        self.decoders = cpus if cpus > 1 else 0  # decode threads; 0: inline
        self.codec = _ParquetParts(meta["dim"], meta["dtype"], meta)
        self.tally, self.wait, self.base = tally, ray.get, base

    def __call__(self, batch: dict[str, np.ndarray]):
        keys = {Path(p): (str(p), int(s), int(m))
                for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"], strict=True)}
        done: list[Key] = []
        vectors = [np.zeros((0, self.meta["dim"]), np.float32)]
        failures: list[tuple[str, str]] = []
        for b in embed_batches(self.model, list(keys), prep=self.prep,
                               batch_size=self.batch_size, workers=self.decoders,
                               threads=True, normalize=self.meta["normalize"]):
            done += [keys[p] for p in b.paths]
            vectors.append(b.vectors)
            failures += [(str(p), reason) for p, reason in b.errors]
        # waited for: the driver reads the tally once the write ends, and must see this
        self.wait(self.tally.report.remote(len(keys), failures))
        return self.codec.table(done, np.concatenate(vectors), self.base)


def embed_dataset(files: ray.data.Dataset | Sequence[Key], model: torch.nn.Module, *,
                  meta: dict, prep: Preprocessing, batch_size: int = DEFAULT_BATCH_SIZE,
                  num_workers: int | None = None, cpus_per_worker: int = 1,
                  tally: FailureTally | None = None, base: str | None = None
                  ) -> ray.data.Dataset:
    """A lazy Ray dataset of the vectors of ``files``: one row per file that decodes.

    ``files``: (absolute path, size, mtime_ns) keys, or a dataset with columns ``path``,
    ``size``, ``mtime_ns`` (e.g. read from a Parquet listing: no list on the driver).
    Paths must be readable by every worker. Rows have the store's part columns: ``path``,
    ``size``, ``mtime_ns``, ``model`` and ``vector`` (``meta["dim"]`` floats, float32 or
    float16 as ``meta["dtype"]``, L2-normalised if ``meta["normalize"]``); ``meta`` comes
    from :func:`mobilevec.embedding.pipeline.store_meta`. ``num_workers`` actors (default: as
    many as the cluster has CPUs, or GPUs for a CUDA model, per worker) each hold the model and use
    ``cpus_per_worker`` cores; ``batch_size`` files per forward pass. Files that fail are
    reported to ``tally`` as (path, reason) (and logged by the worker), never raised.
    ``base``: the folder that rows' ``relpath`` is relative to (the store's; None: no
    relative paths).
    """
    ray = require_ray()
    gpu = next(model.parameters()).device.type == "cuda"
    if num_workers is None:
        resources = ray.cluster_resources()
        num_workers = max(1, int(resources.get("GPU", 0)) if gpu
                          else int(resources.get("CPU", 1) // cpus_per_worker))
    if not isinstance(files, ray.data.Dataset):
        # fewer files than a batch per worker: smaller batches, so that every worker has some
        batch_size = max(1, min(batch_size, -(-len(files) // num_workers)))
        files = ray.data.from_items([{"path": p, "size": s, "mtime_ns": m} for p, s, m in files],
                                    override_num_blocks=max(1, -(-len(files) // batch_size)))
    # One copy in the object store, fetched once by each actor; on the CPU so that workers
    # without a GPU can read it too.
    model_ref = ray.put(copy.deepcopy(model).cpu())
    tally = tally or FailureTally()
    return files.map_batches(
        _Embedder, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker, num_gpus=1 if gpu else None,
        fn_constructor_kwargs={"model_ref": [model_ref], "meta": meta, "prep": prep,
                               "batch_size": batch_size, "cpus": cpus_per_worker,
                               "tally": tally.actor, "base": base})


def _commit_shards(store: VectorStore, staging: Path) -> int:
    """Rename every whole shard in ``staging`` into ``store`` as a part; rows committed.

    A shard is whole when its Parquet footer reads and its columns are the store's; the
    rest (a write cut short) is deleted, and its files are embedded again by the next run.
    """
    import pyarrow.parquet as pq

    rows = 0
    expected = store.codec.schema.remove_metadata()
    for shard in sorted(staging.rglob("*.parquet")) if staging.is_dir() else ():
        try:
            metadata = pq.read_metadata(shard)
            whole = metadata.schema.to_arrow_schema().remove_metadata().equals(expected)
        except Exception as e:  # noqa: BLE001 - any unreadable shard is simply not kept
            log.info("dropping %s: %s", shard, e)
            whole = False
        if whole and metadata.num_rows:
            store.adopt(shard)
            rows += metadata.num_rows
    shutil.rmtree(staging, ignore_errors=True)
    return rows


def _connect(address: str | None, quiet: bool) -> bool:
    """Start or join Ray unless this process already did; True if we must shut it down."""
    ray = require_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours instead
    if quiet:  # Ray Data logs every execution's plan and end at INFO
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    if address is None:  # a new local instance for this run only, never a cluster that a
        address = "local"  # `ray start` left running on this machine
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except ConnectionError as e:
        raise MobilevecError(f"cannot join the Ray cluster at {address}: {e}") from None
    return True


def run_ray_embed(model: torch.nn.Module, paths: Sequence[Path], output: str | Path, *,
                  prep: Preprocessing, meta: dict, batch_size: int = DEFAULT_BATCH_SIZE,
                  address: str | None = None, num_workers: int | None = None,
                  cpus_per_worker: int = 1, missing: Sequence[tuple[str, str]] = (),
                  rows_per_file: int = ROWS_PER_FILE, quiet: bool = True, prune: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> RunSummary:
    """:func:`mobilevec.embedding.pipeline.run_embed` on Ray Data: same store, vectors and errors.

    ``output`` must be a ``.parquet`` store (created or resumed; files stored with the same
    path, size and mtime are skipped). ``address``: ``None`` starts a local Ray instance for
    this call, ``"auto"`` or ``"host:6379"`` joins a cluster (unless this process has called
    ``ray.init`` already), ``"ray://host:10001"`` runs the whole call as a task on the
    cluster behind that Ray Client address; the store folder must then be on storage every
    node sees. ``rows_per_file``: least rows per shard. ``prune``: as for ``run_embed``.
    ``progress(done, total)`` is called about twice a second. Ctrl-C keeps every shard
    already written whole.
    """
    if store_paths(output)[1] != "parquet":
        raise StoreError(f"{output}: the Ray runner writes Parquet shards; use -o NAME.parquet")
    ray = require_ray()
    if address is not None and address.startswith("ray://"):
        return _run_on_cluster(model, paths, output, address, prep=prep, meta=meta,
                               batch_size=batch_size, num_workers=num_workers,
                               cpus_per_worker=cpus_per_worker, missing=missing,
                               rows_per_file=rows_per_file, quiet=quiet, prune=prune)
    summary = RunSummary()
    start = time.perf_counter()
    with VectorStore.open(output, meta) as store:
        summary.errors_file = store.errors_csv
        staging = store.root / STAGING
        adopted = _commit_shards(store, staging)  # shards a killed run had finished
        if adopted:
            log.info("kept %d vectors a killed run had written", adopted)
        todo, keys, early = _keys(paths, store.done_keys(), summary)
        early = list(missing) + early
        if todo and not store.writable:
            raise StoreError(f"{output} is read-only: {len(todo)} images are not stored yet "
                             "and cannot be; nothing was embedded")
        if progress:
            progress(0, len(todo))
        shutdown = _connect(address, quiet) if todo else False
        tally = FailureTally() if todo else None
        try:
            if todo:
                dataset = embed_dataset([keys[p] for p in todo], model, meta=meta, prep=prep,
                                        batch_size=batch_size, num_workers=num_workers,
                                        cpus_per_worker=cpus_per_worker, tally=tally,
                                        base=store.base)
                with _Reporting(tally, len(todo), progress):
                    # writes take no CPU slot: the actors may hold them all, and vectors
                    # must leave the object store while they embed, not at the end
                    dataset.write_parquet(str(staging), min_rows_per_file=rows_per_file,
                                          ray_remote_args={"num_cpus": 0})
        except KeyboardInterrupt:
            summary.interrupted = True
            log.warning("interrupted: keeping the shards written whole so far")
        finally:
            summary.ok = _commit_shards(store, staging)
            failures = list(early)
            if tally is not None:
                with suppress(Exception):  # Ray already gone: the files are retried next run
                    failures += tally.state()[1]
            if failures and store.writable:
                store.append([], np.zeros((0, meta["dim"])), failures)
            summary.failed, summary.errors = len(failures), failures
            if shutdown:
                ray.shutdown()
        if not summary.interrupted and store.writable:
            # shards are large already; merging would re-read all
            report = store.finish(merge=False, prune=prune)
            summary.warnings += report.warnings
            summary.pruned = report.pruned
    summary.seconds = time.perf_counter() - start
    return summary


def _run_on_cluster(model: torch.nn.Module, paths: Sequence[Path], output: str | Path,
                    address: str, **options) -> RunSummary:
    """:func:`run_ray_embed` as a task on the cluster behind a Ray Client address.

    Ray Data cannot drive its execution through Ray Client, so the whole run goes to the
    cluster (taking no CPU slot) and only its summary comes back; no progress meanwhile.
    """
    ray = require_ray()
    _connect(address, options["quiet"])
    try:
        run = ray.remote(num_cpus=0)(run_ray_embed).remote(model, paths, output, **options)
        try:
            return ray.get(run)
        except KeyboardInterrupt:
            ray.cancel(run)  # the task then commits the shards written whole, as for Ctrl-C
            raise
    finally:
        ray.shutdown()


class _Reporting:
    """While a write runs: poll the tally and call ``progress(done, total)``."""

    def __init__(self, tally: FailureTally, total: int,
                 progress: Callable[[int, int], None] | None):
        self.tally, self.total, self.progress = tally, total, progress
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(_POLL_S):
            with suppress(Exception):
                self.progress(min(self.tally.state()[0], self.total), self.total)

    def __enter__(self) -> _Reporting:
        if self.progress:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.progress:
            self.thread.join()
            with suppress(Exception):
                self.progress(min(self.tally.state()[0], self.total), self.total)
