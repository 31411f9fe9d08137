"""Request bodies -> model inputs, and every way they can be wrong.

Each protocol's payload becomes one ``(N, 3, H, W)`` float32 array in [0, 1] (the
engines' contract) before it is queued, so a bad request fails alone with a
:class:`RequestError` (status, kind, message) and never reaches a batch that other
requests share. Encoded images go through :func:`mobilevec.data.images.load_array_bytes`,
the decode ``mobilevec embed`` uses, with the same pixel limit. Nothing here fetches a
URL: a string is only ever base64 data.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.images import load_array_bytes
from ..errors import ImageError


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx/5xx), ``kind`` (the metrics label
    and the ``kind`` field of the JSON error), and a message naming the problem."""

    def __init__(self, status: int, kind: str, message: str,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}


def bad(kind: str, message: str) -> RequestError:
    return RequestError(400, kind, message)


@dataclass(frozen=True)
class Decoder:
    """How encoded images become inputs: ``size`` (H, W), ``crop``, ``draft`` (JPEG DCT
    scaling, ``embed``'s default) and ``max_pixels``, as :class:`~mobilevec.embedding.
    batching.Preprocessing` of ``embed``."""

    size: tuple[int, int]
    crop: str
    draft: bool
    max_pixels: int

    def image(self, data: bytes, name: str) -> np.ndarray:
        """``(3, H, W)`` float32 of one encoded image; :class:`RequestError` 400 if it is
        not one (kind ``image_too_large`` for decompression bombs)."""
        if not data:
            raise bad("not_an_image", f"{name}: empty (0 bytes), not an image")
        try:
            return load_array_bytes(data, self.size, self.crop, draft=self.draft,
                                    max_pixels=self.max_pixels, name=name)
        except ImageError as e:
            kind = "image_too_large" if ("exceeds the limit" in e.cause
                                         or "bomb" in e.cause) else "not_an_image"
            raise bad(kind, str(e)) from None
        except Exception as e:  # noqa: BLE001 - a codec bug in one upload fails it alone
            raise bad("not_an_image", f"{name}: cannot decode image "
                                      f"({type(e).__name__}: {e})") from None

    def images(self, blobs: list[tuple[str, bytes]]) -> np.ndarray:
        if not blobs:
            raise bad("empty", "no images in the request")
        return np.stack([self.image(data, name) for name, data in blobs])

    def pixels(self, x: np.ndarray, what: str) -> np.ndarray:
        """``(N, H, W, 3)`` float32 in [0, 1] (the hub modules' layout) -> NCHW."""
        h, w = self.size
        if x.ndim != 4 or x.shape[1:] != (h, w, 3):
            raise bad("wrong_shape", f"{what}: shape {list(x.shape)}; this model takes FP32 "
                                     f"[N, {h}, {w}, 3] (NHWC, RGB in [0, 1])")
        if len(x) == 0:
            raise bad("empty", f"{what}: no images (batch of 0)")
        if not np.isfinite(x).all():
            raise bad("out_of_range", f"{what}: holds NaN or infinite values; pixels are RGB "
                                      "floats in [0, 1]")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise bad("out_of_range", f"{what}: values from {lo:g} to {hi:g}; pixels are RGB "
                                      "floats in [0, 1] (divide 8-bit values by 255)")
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)


def parse_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad("bad_json", f"{what}: the body is not JSON ({e})") from None
    except RecursionError:
        raise bad("bad_json", f"{what}: JSON nested too deeply") from None


def floats(data: Any, what: str) -> np.ndarray:
    """Nested lists of numbers -> float32 array; strings, ragged lists, non-finite
    values are refused."""
    try:
        x = np.asarray(data, dtype=np.float32)
    except RecursionError:
        raise bad("wrong_shape", f"{what}: lists nested too deeply") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise bad("wrong_dtype", f"{what}: expected numbers (FP32), nested as the shape "
                                 f"says ({type(e).__name__}: {e})") from None
    if x.dtype != np.float32 or x.dtype.kind != "f":
        raise bad("wrong_dtype", f"{what}: expected numbers (FP32)")
    return x


def b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise bad("wrong_dtype", f"{what}: expected a base64 string, got "
                                 f"{type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad("bad_base64", f"{what}: not base64 ({e}); images are sent as base64 "
                                "data, never as URLs") from None


# --- Open Inference Protocol v2 -------------------------------------------------------
@dataclass
class OipRequest:
    id: str | None
    images: np.ndarray
    output_name: str
    binary_output: bool


def _shape(value: Any, what: str) -> list[int]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                       for d in value)):
        raise bad("wrong_shape", f"{what}: 'shape' must be a list of sizes, got {value!r}")
    return value


def _split_bytes(blob: bytes, what: str) -> list[bytes]:
    """BYTES tensor data in the binary extension: each element a little-endian uint32
    length, then that many bytes."""
    out, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise bad("bad_binary", f"{what}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + n > len(blob):
            raise bad("bad_binary", f"{what}: BYTES element of {n} bytes runs past the data")
        out.append(blob[offset:offset + n])
        offset += n
    return out


def parse_oip(body: bytes, header_length: str | None, decoder: Decoder, *,
              output_name: str) -> OipRequest:
    """A ``POST /v2/models/{name}/infer`` body (JSON, or JSON + binary tensors with the
    ``Inference-Header-Content-Length`` header) -> the input images."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise bad("bad_binary", f"Inference-Header-Content-Length {header_length!r} is "
                                    f"not a length within the body of {len(body)} bytes")
        body, binary = body[:n], body[n:]
    request = parse_json(body, "inference request")
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise bad("bad_request", "inference request: expected a JSON object with an "
                                 "'inputs' list")
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad("bad_request", f"inference request: this model has one input; got "
                                 f"{len(inputs)}")
    tensor = inputs[0]
    what = f"input {tensor.get('name', '?')!r}"
    shape = _shape(tensor.get("shape"), what)
    datatype = tensor.get("datatype")
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad("bad_request", f"{what}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise bad("bad_binary", f"{what}: binary_data_size {size!r} but "
                                    f"{len(binary)} bytes of binary data follow the header")
        raw: bytes | None = binary
    else:
        if binary:
            raise bad("bad_binary", f"{what}: binary data after the JSON header, but no "
                                    "'binary_data_size' names it")
        raw = None
        if "data" not in tensor:
            raise bad("bad_request", f"{what}: no 'data' (nor binary_data_size)")
    count = math.prod(shape)
    if datatype == "FP32":
        if raw is not None:
            if len(raw) != 4 * count:
                raise bad("wrong_shape", f"{what}: {len(raw)} bytes of FP32 data for shape "
                                         f"{shape} ({4 * count} bytes)")
            x = np.frombuffer(raw, "<f4")
        else:
            x = floats(tensor["data"], what).reshape(-1)
            if x.size != count:
                raise bad("wrong_shape", f"{what}: {x.size} values for shape {shape}")
        images = decoder.pixels(x.reshape(shape), what)
    elif datatype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise bad("wrong_shape", f"{what}: BYTES (encoded images) take shape [N] or "
                                     f"[N, 1], got {shape}")
        if raw is not None:
            blobs = _split_bytes(raw, what)
        else:
            data = tensor["data"]
            if not isinstance(data, list):
                raise bad("bad_request", f"{what}: 'data' must be a list")
            flat = [d for row in data for d in (row if isinstance(row, list) else [row])]
            blobs = [b64(d, f"{what}[{i}]") for i, d in enumerate(flat)]
        if len(blobs) != count:
            raise bad("wrong_shape", f"{what}: {len(blobs)} images for shape {shape}")
        images = decoder.images([(f"{what}[{i}]", b) for i, b in enumerate(blobs)])
    else:
        raise bad("wrong_dtype", f"{what}: datatype {datatype!r}; this model takes FP32 "
                                 "[N, H, W, 3] in [0, 1] or BYTES (encoded images)")
    binary_output = False
    request_params = request.get("parameters") or {}
    if isinstance(request_params, dict) and request_params.get("binary_data_output") is True:
        binary_output = True
    outputs = request.get("outputs")
    if outputs is not None:
        if (not isinstance(outputs, list) or len(outputs) != 1
                or not isinstance(outputs[0], dict)
                or outputs[0].get("name") != output_name):
            raise bad("bad_request", f"inference request: the only output is "
                                     f"{output_name!r}; got outputs {outputs!r}"[:500])
        out_params = outputs[0].get("parameters") or {}
        if isinstance(out_params, dict) and "binary_data" in out_params:
            binary_output = out_params["binary_data"] is True
    request_id = request.get("id")
    return OipRequest(request_id if isinstance(request_id, str) else None, images,
                      output_name, binary_output)


# --- answers ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _row_format(width: int) -> str:
    return ",".join(["%.9g"] * width)


def float32_json(values: np.ndarray) -> str:
    """JSON text of a float32 array (nested lists of its shape), each value a JSON float of
    9 significant digits: every float32 reads back exactly, and for 1,024 values it takes
    0.16 ms against 0.44 ms for ``json.dumps(values.tolist())`` (17 digits, 40 % longer),
    the largest cost of the event loop under load (docs/benchmarks.md, "Serving")."""
    values = np.asarray(values, np.float32)
    if not np.isfinite(values).all():  # NaN and inf as json writes them
        return json.dumps(values.tolist())
    if values.ndim == 0:
        return f"{float(values):.9g}"
    if values.ndim == 1:
        if not len(values):
            return "[]"
        text = _row_format(len(values)) % tuple(values.tolist())
        # "%.9g" writes whole numbers below 1e9 without a point ("0", "-0", "7"), which JSON
        # reads as integers: -0.0 would lose its sign, an all-zero row its float type
        whole = np.flatnonzero((values == np.trunc(values)) & (np.abs(values) < 1e9))
        if len(whole):
            tokens = text.split(",")
            for i in whole.tolist():
                tokens[i] += ".0"
            text = ",".join(tokens)
        return "[" + text + "]"
    return "[" + ",".join(float32_json(row) for row in values) + "]"


def json_document(doc: Any) -> str:
    """``json.dumps(doc)``, with numpy arrays anywhere in it written by :func:`float32_json`."""
    if isinstance(doc, np.ndarray):
        return float32_json(doc)
    if isinstance(doc, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {json_document(v)}"
                               for k, v in doc.items()) + "}"
    if isinstance(doc, list | tuple):
        return "[" + ", ".join(json_document(v) for v in doc) + "]"
    return json.dumps(doc)


def oip_response(model: str, request: OipRequest, vectors: np.ndarray
                 ) -> tuple[bytes, dict[str, str]]:
    """The response body and headers (binary extension when asked)."""
    output = {"name": request.output_name, "datatype": "FP32", "shape": list(vectors.shape)}
    head = {"model_name": model, "model_version": "1", "outputs": [output]}
    if request.id is not None:
        head["id"] = request.id
    if not request.binary_output:
        output["data"] = vectors.reshape(-1)
        return json_document(head).encode(), {"Content-Type": "application/json"}
    raw = np.ascontiguousarray(vectors, "<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(head).encode()
    return header + raw, {"Content-Type": "application/octet-stream",
                          "Inference-Header-Content-Length": str(len(header))}


# --- TF Serving REST -------------------------------------------------------------------
def _instance(value: Any, decoder: Decoder, what: str) -> np.ndarray:
    """One TF Serving instance: ``{"b64": ...}`` (an encoded image), nested floats
    ``[H][W][3]``, or either under the input's name (``{"images": ...}``)."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return decoder.image(b64(value["b64"], what), what)
        if len(value) == 1:
            (name, inner), = value.items()
            return _instance(inner, decoder, f"{what}.{name}")
        raise bad("bad_request", f"{what}: an instance object holds one input "
                                 f"('b64' or the input name), got keys {sorted(value)[:5]}")
    x = floats(value, what)
    return decoder.pixels(x[None], what)[0]


def parse_predict(body: bytes, decoder: Decoder) -> tuple[np.ndarray, str]:
    """A ``:predict`` body -> (images, the response key: "predictions" for the row
    format, "outputs" for the columnar one)."""
    request = parse_json(body, "predict request")
    if not isinstance(request, dict):
        raise bad("bad_request", "predict request: expected a JSON object")
    if "instances" in request:
        rows, key = request["instances"], "predictions"
    elif "inputs" in request:
        rows, key = request["inputs"], "outputs"
        if isinstance(rows, dict):
            if len(rows) != 1:
                raise bad("bad_request", f"predict request: one input, got {sorted(rows)}")
            (rows,) = rows.values()
    else:
        raise bad("bad_request", "predict request: expected 'instances' (row format) or "
                                 "'inputs' (columnar format)")
    if isinstance(rows, dict) and set(rows) == {"b64"}:
        rows = [rows]
    if not isinstance(rows, list) or not rows:
        raise bad("empty", "predict request: the instances must be a non-empty list")
    return np.stack([_instance(row, decoder, f"instances[{i}]")
                     for i, row in enumerate(rows)]), key
