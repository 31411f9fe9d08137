"""A local HTTP server for download tests (127.0.0.1, a free port, nothing else).

It serves bytes the test puts in ``files`` (path -> bytes; the query string is ignored),
logs every request, answers ``Range: bytes=N-`` with 206 (honouring ``If-Range`` against
its ETag), follows ``redirects`` (path -> path or URL, answered with 302), and can cut or
stall one response mid-stream (:meth:`LocalServer.cut`). Hostile servers for the tests of
issue 18: ``types`` (a Content-Type such as text/html), ``lengths`` (a Content-Length that
cuts the body short), ``drip`` (one byte per interval), ``endless`` (no length, zeros
forever)::

    with LocalServer() as server:
        server.files["/model.tgz"] = data
        url = server.url("/model.tgz")
        ...
        assert server.count("/model.tgz") == 1
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CHUNK = 64 * 1024


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Cut:
    after: int  # bytes of the body sent before the connection is dropped
    stall: float = 0.0  # seconds to wait (silently) before dropping it


@dataclass
class LocalServer:
    """Threaded server; configure the public dicts and flags, then point URLs at it."""

    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # path -> Content-Disposition name
    delay: dict[str, float] = field(default_factory=dict)  # path -> seconds per 64 KiB
    types: dict[str, str] = field(default_factory=dict)  # path -> Content-Type
    lengths: dict[str, int] = field(default_factory=dict)  # path -> a lying Content-Length
    drip: dict[str, float] = field(default_factory=dict)  # path -> seconds per byte
    endless: set[str] = field(default_factory=set)  # paths streamed forever, no length
    ranges: bool = True  # False: ignore Range and always send the whole file (200)
    log: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cuts: dict[str, _Cut] = {}
        self._guard = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._stopped = False

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cut(self, path: str, after: int, stall: float = 0.0) -> None:
        """The next GET of ``path`` sends full headers, ``after`` body bytes, then drops."""
        self._cuts[path] = _Cut(after, stall)

    def requests(self, path: str, method: str = "GET") -> list[Request]:
        with self._guard:
            return [r for r in self.log if r.path == path and r.method == method]

    def count(self, path: str, method: str = "GET") -> int:
        return len(self.requests(path, method))

    def stop(self) -> None:
        """Close the port: later connections are refused."""
        if not self._stopped:
            self._stopped = True
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # used by the handler
    def _record(self, request: Request) -> None:
        with self._guard:
            self.log.append(request)

    def _take_cut(self, path: str) -> _Cut | None:
        with self._guard:
            return self._cuts.pop(path, None)


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        owner: LocalServer = self.server.owner  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        owner._record(Request(self.command, path, dict(self.headers.items())))
        if path in owner.redirects:
            target = owner.redirects[path]
            self.send_response(302)
            self.send_header("Location", target if "://" in target else owner.url(target))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in owner.endless:
            self._send_endless()
            return
        data = owner.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start = self._range_start(owner, data)
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        start = start or 0
        if path in owner.lengths:  # the server lies: the body ends where it says
            data = data[:start + owner.lengths[path]]
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", etag_of(data))
        self.send_header("Content-Type", owner.types.get(path, "application/octet-stream"))
        if path in owner.names:
            self.send_header("Content-Disposition", f'attachment; filename="{owner.names[path]}"')
        self.end_headers()
        if body:
            self._send_body(owner, path, data[start:])

    def _range_start(self, owner: LocalServer, data: bytes) -> int | None:
        """Where a honoured Range starts, or None to send the whole file."""
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if not owner.ranges or not m:
            return None
        if_range = self.headers.get("If-Range")
        if if_range and if_range != etag_of(data):
            return None  # the file changed: the client gets it whole
        return int(m[1])

    def _send_endless(self) -> None:
        """200 with no Content-Length, then zeros until the client hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.close_connection = True
        try:
            while True:
                self.wfile.write(bytes(CHUNK))
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    def _send_body(self, owner: LocalServer, path: str, payload: bytes) -> None:
        cut = owner._take_cut(path)
        if cut is not None:
            payload = payload[:cut.after]
        delay = owner.delay.get(path, 0.0)
        if path in owner.drip:
            try:
                for i in range(len(payload)):
                    self.wfile.write(payload[i:i + 1])
                    self.wfile.flush()
                    time.sleep(owner.drip[path])
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            return
        try:
            for i in range(0, len(payload), CHUNK):
                self.wfile.write(payload[i:i + CHUNK])
                if delay:
                    time.sleep(delay)
            self.wfile.flush()
            if cut is not None:
                time.sleep(cut.stall)
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
