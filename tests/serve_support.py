"""Starting a real ``mobilevec serve`` in a subprocess on a free 127.0.0.1 port, for the
serve tests (one server per test module, shared by its tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

STARTUP_TIMEOUT = 240  # a cold engine cache exports and compiles both seed models


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A ``mobilevec serve`` process: ``url``, ``port``, ``log`` (its stderr so far)."""

    def __init__(self, args: list[str], log_path: Path, token: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mobilevec.cli", "serve", "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ,
                                                              "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mobilevec serve exited ({self.proc.returncode}):\n"
                                   f"{self.log}")
            try:
                if requests.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or still starting
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mobilevec serve did not become ready:\n{self.log}")

    @property
    def log(self) -> str:
        if not self._log.closed:  # stop() closes it; the log is still on disk
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
