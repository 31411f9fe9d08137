"""Loading the models and running the server until SIGTERM or SIGINT.

Shutdown is graceful: on the signal the server stops listening, answers 503 to requests
that arrive on open connections, finishes the requests in flight (up to the request
timeout), then runs what is left in the queues and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from .app import Runtime, app_state, build_app
from .batching import DynamicBatcher, time_call_sizes
from .config import ServeConfig, ServedModel
from .inputs import Decoder

log = logging.getLogger(__name__)


def load_runtime(served: ServedModel, config: ServeConfig,
                 on_batch: Callable[[str, int, float], None] | None = None) -> Runtime:
    """``served`` on the default engine (the one ``embed`` uses, from the same engine
    cache), warmed up and timed at every call size."""
    from ..embedding.embedder import embedder

    emb = embedder(served.model, served.weights, handle=served.handle,
                   backend=served.backend, precision=served.precision)
    size = emb.image_size
    # Every call size, once, so that no request waits for a compilation (engines compile a
    # shape the first time they see it); then timed, for the batcher's call plans.
    call_seconds = time_call_sizes(emb, (3, *size), config.max_batch)
    log.debug("model %s: engine call seconds by batch size %s", served.name, call_seconds)

    def batch_done(n: int, seconds: float) -> None:
        if on_batch is not None:
            on_batch(served.name, n, seconds)

    batcher = DynamicBatcher(served.name, emb, image_shape=(3, *size),
                             max_batch=config.max_batch, max_delay_ms=config.max_delay_ms,
                             max_queue=config.queue_limit, on_batch=batch_done,
                             call_seconds=call_seconds)
    decoder = Decoder(size=size, crop=config.crop, draft=not config.exact_decode,
                      max_pixels=config.max_pixels)
    log.info("model %s: %s on %s (%s), %d-d, input %dx%d", served.name, emb.config.name,
             emb.backend, emb.precision, emb.num_features, *size)
    return Runtime(served.name, emb.config.name, emb.num_features, size, emb.precision,
                   emb.backend, batcher, decoder)


# Threads other than the event loop's (the engines' worker pools, the batchers) run this
# much lower in priority: on a saturated CPU the loop still reads requests, answers the
# excess with 503 and the health probes at once, and gives the workers back the rest.
WORKER_NICENESS = 5


def _workers_below_the_loop() -> None:
    """Lower every thread of this process but the calling one (Linux, best effort)."""
    import os
    import threading

    me = threading.get_native_id()
    try:
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return
    for tid in tasks:
        if tid != me:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid,
                               min(19, os.getpriority(os.PRIO_PROCESS, me) + WORKER_NICENESS))


def serve(config: ServeConfig, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``config.models`` on ``config.host``:``config.port`` until SIGTERM/SIGINT.
    ``on_ready(url)`` is called once the models are loaded and the port listens."""
    asyncio.run(_serve(config, on_ready))


async def _serve(config: ServeConfig, on_ready: Callable[[str], None] | None) -> None:
    from .._optional import require

    web = require("aiohttp.web", "serve", purpose="mobilevec serve")
    holder: dict = {}

    def on_batch(name: str, n: int, seconds: float) -> None:
        state = holder.get("state")
        if state is not None:
            state.metrics.batch_size.observe(n, name)
            state.metrics.batch_seconds.observe(seconds, name)

    loop = asyncio.get_running_loop()
    runtimes = {}
    for served in config.models:
        # loading compiles engines: off the loop, one model after the other
        runtimes[served.name] = await loop.run_in_executor(
            None, load_runtime, served, config, on_batch)
    _workers_below_the_loop()
    app = build_app(config, runtimes)
    state = holder["state"] = app_state(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=config.timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    caught: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        caught.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{config.port}"
    log.info("serving %s on %s", ", ".join(runtimes), url)
    if on_ready is not None:
        on_ready(url)
    try:
        await stop.wait()
    finally:
        log.info("%s: finishing %d request(s) in flight, refusing new ones",
                 caught[0] if caught else "stop", state.in_flight)
        state.stopping = True
        # Stop listening, then let the requests in flight finish, those still sending their
        # body too: aiohttp's own shutdown cancels a body being read, closing its
        # connection unanswered.
        await site.stop()
        await _drained(state, config.timeout_s)
        await runner.cleanup()
        for runtime in runtimes.values():
            await loop.run_in_executor(None, runtime.batcher.stop, config.timeout_s)
        state.pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")


async def _drained(state, timeout: float) -> None:
    """Until no request is in flight, or ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while state.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
