"""Prometheus metrics in the text exposition format (version 0.0.4), written here: a few
counters and histograms do not need a client library.

- ``mobilevec_requests_total{endpoint, model, code}``
- ``mobilevec_request_duration_seconds{endpoint}`` (histogram)
- ``mobilevec_batch_size{model}`` (histogram of images per engine call)
- ``mobilevec_batch_duration_seconds{model}`` (histogram)
- ``mobilevec_queue_depth{model}`` (gauge: images waiting)
- ``mobilevec_errors_total{kind}`` (refused requests, by the ``kind`` of the JSON error)
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    def escape(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{n}="{escape(v)}"' for n, v in zip(names, values, strict=True))


def _number(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    def __init__(self, name: str, help_: str, labels: Sequence[str]):
        self.name, self.help, self.labels = name, help_, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[values] = self._values.get(values, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, value in sorted(self._values.items()):
                lines.append(f"{self.name}{{{_labels(self.labels, key)}}} {_number(value)}")
        return lines


class Histogram:
    def __init__(self, name: str, help_: str, labels: Sequence[str],
                 buckets: Sequence[float]):
        self.name, self.help, self.labels = name, help_, tuple(labels)
        self.buckets = tuple(buckets)
        self._series: dict[tuple[str, ...], list] = {}  # key -> [counts per bucket, sum, n]
        self._lock = threading.Lock()

    def observe(self, value: float, *values: str) -> None:
        with self._lock:
            series = self._series.setdefault(values, [[0] * len(self.buckets), 0.0, 0])
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                series[0][i] += 1
            series[1] += value
            series[2] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for key, (counts, total, n) in sorted(self._series.items()):
                base = _labels(self.labels, key)
                sep = "," if base else ""
                running = 0
                for bound, count in zip(self.buckets, counts, strict=True):
                    running += count
                    lines.append(f'{self.name}_bucket{{{base}{sep}le="{_number(bound)}"}} '
                                 f"{running}")
                lines.append(f'{self.name}_bucket{{{base}{sep}le="+Inf"}} {n}')
                lines.append(f"{self.name}_sum{{{base}}} {_number(total)}")
                lines.append(f"{self.name}_count{{{base}}} {n}")
        return lines


class Metrics:
    """The server's metrics; ``queue_depths()`` gives each model's waiting images at
    scrape time."""

    def __init__(self, max_batch: int, queue_depths: Callable[[], dict[str, int]]):
        self.requests = Counter("mobilevec_requests_total", "HTTP requests answered.",
                                ("endpoint", "model", "code"))
        self.latency = Histogram("mobilevec_request_duration_seconds",
                                 "Time from a request's arrival to its answer.",
                                 ("endpoint",), LATENCY_BUCKETS)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
        self.batch_size = Histogram("mobilevec_batch_size", "Images per engine call.",
                                    ("model",), [s for s in sizes if s <= max_batch])
        self.batch_seconds = Histogram("mobilevec_batch_duration_seconds",
                                       "Engine time per batch.", ("model",), LATENCY_BUCKETS)
        self.errors = Counter("mobilevec_errors_total", "Refused or failed requests, by kind.",
                              ("kind",))
        self._queue_depths = queue_depths

    def render(self) -> str:
        lines = [*self.requests.render(), *self.latency.render(), *self.batch_size.render(),
                 *self.batch_seconds.render(), *self.errors.render(),
                 "# HELP mobilevec_queue_depth Images waiting for an engine call.",
                 "# TYPE mobilevec_queue_depth gauge"]
        for model, depth in sorted(self._queue_depths().items()):
            lines.append(f'mobilevec_queue_depth{{model="{model}"}} {depth}')
        return "\n".join(lines) + "\n"
