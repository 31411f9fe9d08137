"""Self-contained HTML pages of ``dedup`` groups and ``search`` results.

One file that opens from disk with no server and no network: the CSS is inline, every
picture is a JPEG thumbnail (at most :data:`THUMB_PX` pixels a side) inlined as a base64
``data:`` URI, there is no script, and a Content-Security-Policy forbids loading anything
else. Paths are shown as text (``\\xNN`` for bytes of a name that is not UTF-8) and escaped.
A file that no longer decodes is shown as a grey box with its path, not an error.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .._io import atomic_write_text

log = logging.getLogger(__name__)

THUMB_PX = 128
MAX_GROUPS = 500  # a page of more groups is slow to open; the CSV / JSON hold them all
_THUMB_QUALITY = 80
_THUMB_MAX_PIXELS = 100_000_000  # a larger image is not decoded for its thumbnail

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}
.summary{color:#555;margin:0 0 16px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0 0 12px;padding:8px 10px}
h2{font-size:15px;margin:0 0 6px}
.items{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:140px;padding:4px;border:2px solid #ccc;border-radius:4px;background:#fff}
figure img,figure .missing{display:block;width:128px;height:128px;object-fit:contain;
 background:#eee;margin:0 auto}
figcaption{font-size:11px;word-break:break-all;margin-top:3px}
.keep,.query-image{border-color:#2a7}
.remove{border-color:#c33}
.decision{font-weight:bold;text-transform:uppercase}
.keep .decision,.query-image .decision{color:#2a7}
.remove .decision{color:#c33}
.score{font-family:monospace;margin-left:4px}
.omitted{color:#a60}
"""


def _text(path: object) -> str:
    return html.escape(os.fsencode(str(path)).decode("utf-8", "backslashreplace"))


class _Thumbnails:
    """JPEG thumbnails as data URIs, made once per path."""

    def __init__(self, size: int = THUMB_PX):
        self.size = size
        self._done: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self._done:
            self._done[path] = self._make(path)
        return self._done[path]

    def _make(self, path: str) -> str | None:
        from PIL import Image

        try:
            with Image.open(path) as image:
                if image.width * image.height > _THUMB_MAX_PIXELS:
                    raise ValueError(f"{image.width}x{image.height} is too large to preview")
                # JPEGs decode DCT-scaled to about twice the thumbnail: fast, never full size.
                image.draft("RGB", (2 * self.size, 2 * self.size))
                image = image.convert("RGB")
                image.thumbnail((self.size, self.size))
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=_THUMB_QUALITY)
        except Exception as e:  # any undecodable file: the page shows its path instead
            log.info("no thumbnail for %s: %s", path, e)
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(thumbs: _Thumbnails, path: str, kind: str, decision: str,
            score: float | None) -> str:
    uri = thumbs(path)
    picture = (f'<img src="{uri}" alt="{_text(Path(path).name)}">' if uri
               else '<div class="missing" title="not readable as an image"></div>')
    shown = "" if score is None else f'<span class="score">{score:.4f}</span>'
    return (f'<figure class="item {kind}">{picture}<figcaption><span class="decision">'
            f'{html.escape(decision)}</span>{shown}<br><span class="path">{_text(path)}</span>'
            "</figcaption></figure>")


def _page(title: str, summary: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"summary\">{summary}</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def dedup_report(path: str | Path, stored, result, title: str = "mobilevec dedup",
                 max_groups: int = MAX_GROUPS) -> Path:
    """Write ``result`` (:class:`~mobilevec.embedding.dedup.DedupResult` of ``stored``) as one
    HTML page at ``path``: each group's kept image, then those to remove with their scores
    to it. At most ``max_groups`` groups (the largest first) are shown."""
    thumbs = _Thumbnails()
    sections = []
    for number, group in enumerate(result.groups[:max_groups], 1):
        items = [_figure(thumbs, stored.paths[group.keep], "keep", "keep", None)]
        items += [_figure(thumbs, stored.paths[row], "remove", "remove", score)
                  for row, score in zip(group.remove, group.scores, strict=True)]
        sections.append(f'<section class="group"><h2>Group {number}: '
                        f'{len(group.members)} images</h2><div class="items">'
                        + "".join(items) + "</div></section>")
    summary = (f"{len(result.groups)} groups, {result.duplicates} images to remove, among "
               f"{result.images} images; rule: {html.escape(result.rule.describe())}; "
               f"scores are to the kept image")
    if len(result.groups) > max_groups:
        summary += (f' <span class="omitted">(the first {max_groups} groups are shown; the '
                    "CSV and JSON outputs list them all)</span>")
    return _write(path, _page(title, summary, sections))


def search_report(path: str | Path, results: Sequence[tuple[str, Sequence[tuple[str, float]]]],
                  title: str = "mobilevec search") -> Path:
    """Write search results, ``[(query path, [(stored path, score), ...]), ...]`` (best
    first), as one HTML page at ``path``."""
    thumbs = _Thumbnails()
    sections = []
    for number, (query, hits) in enumerate(results, 1):
        items = [_figure(thumbs, query, "query-image", "query", None)]
        items += [_figure(thumbs, hit, "neighbour", f"#{rank}", score)
                  for rank, (hit, score) in enumerate(hits, 1)]
        sections.append(f'<section class="query"><h2>Query {number}: {_text(query)}</h2>'
                        '<div class="items">' + "".join(items) + "</div></section>")
    summary = f"{len(results)} queries; scores are cosines to the query"
    return _write(path, _page(title, summary, sections))


def _write(path: str | Path, page: str) -> Path:
    target = Path(path)
    atomic_write_text(target, page)
    return target
