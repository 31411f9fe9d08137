"""The OpenAPI 3.0 document of the server's HTTP API (``GET /openapi.json``), made from
the models it serves (their names are the only values of ``{name}``)."""

from __future__ import annotations

from typing import Any

from .._version import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    reasons = {400: "bad input, named in the error", 401: "missing or wrong bearer token",
               404: "no such model", 413: "body over --max-body-bytes",
               415: "unsupported Content-Type", 503: "queue full or shutting down "
               "(Retry-After)", 504: "no answer within the request timeout"}
    out = {"200": ok}
    for code in codes:
        out[str(code)] = {"description": reasons[code],
                          "content": {"application/json": {"schema": _ERROR}}}
    return out


def _json_ok(description: str, schema: dict | None = None) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def openapi_document(state: Any) -> dict[str, Any]:
    """``state``: the app's :class:`~mobilevec.serve.app.State` (models, limits, token)."""
    names = sorted(state.models)
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "enum": names}}
    load = (400, 404, 413, 503, 504)
    tensor = {"type": "object", "required": ["name", "shape", "datatype"],
              "properties": {"name": {"type": "string"},
                             "shape": {"type": "array", "items": {"type": "integer"}},
                             "datatype": {"type": "string", "enum": ["FP32", "BYTES"]},
                             "parameters": {"type": "object"},
                             "data": {"type": "array"}}}
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "mobilevec serve", "version": __version__,
                 "description": "MobileNet feature vectors over the Open Inference Protocol "
                                "v2 (Triton, KServe), TF Serving REST, and /embed. See "
                                "docs/serve.md."},
        "paths": {
            "/v2/health/live": {"get": {"summary": "liveness",
                                        "responses": _responses(_json_ok("live"))}},
            "/v2/health/ready": {"get": {"summary": "readiness (503 while shutting down)",
                                         "responses": _responses(_json_ok("ready"), 503)}},
            "/v2": {"get": {"summary": "server metadata",
                            "responses": _responses(_json_ok("metadata"))}},
            "/v2/models/{name}": {"get": {"summary": "model metadata", "parameters": [name],
                                          "responses": _responses(_json_ok("metadata"),
                                                                  404)}},
            "/v2/models/{name}/ready": {"get": {
                "summary": "model readiness", "parameters": [name],
                "responses": _responses(_json_ok("ready"), 404, 503)}},
            "/v2/models/{name}/infer": {"post": {
                "summary": "inference: FP32 [N, H, W, 3] in [0, 1], or BYTES [N] of encoded "
                           "images (base64 in JSON; raw with the binary tensor extension)",
                "parameters": [name],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["inputs"],
                        "properties": {"id": {"type": "string"},
                                       "inputs": {"type": "array", "items": tensor},
                                       "outputs": {"type": "array",
                                                   "items": {"type": "object"}},
                                       "parameters": {"type": "object"}}}}}},
                "responses": _responses(_json_ok("the feature vectors, output "
                                                 "'feature_vector'"), *load)}},
            "/v1/models/{name}": {"get": {"summary": "TF Serving model status",
                                          "parameters": [name],
                                          "responses": _responses(_json_ok("status"), 404)}},
            "/v1/models/{name}/metadata": {"get": {
                "summary": "TF Serving signature", "parameters": [name],
                "responses": _responses(_json_ok("metadata"), 404)}},
            "/v1/models/{name}:predict": {"post": {
                "summary": "TF Serving predict: instances of nested floats [H][W][3] in "
                           "[0, 1] or {\"b64\": encoded image}",
                "parameters": [name],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "properties": {
                        "signature_name": {"type": "string"},
                        "instances": {"type": "array"},
                        "inputs": {}}}}}},
                "responses": _responses(_json_ok("predictions", {
                    "type": "object", "properties": {"predictions": {"type": "array"}}}),
                    *load)}},
            "/embed": {"post": {
                "summary": "vectors of uploaded image files (JSON, or raw float32 with "
                           "Accept: application/octet-stream)",
                "parameters": [{"name": "model", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": names}}],
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {
                        "type": "object", "properties": {
                            "image": {"type": "string", "format": "binary"}}}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}}},
                "responses": _responses(_json_ok("vectors", {
                    "type": "object", "properties": {"vectors": {"type": "array"},
                                                     "dim": {"type": "integer"}}}),
                    *load, 415)}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "this document",
                                      "responses": _responses(_json_ok("OpenAPI"))}},
        },
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error", "kind"],
            "properties": {"error": {"type": "string"}, "kind": {"type": "string"}}}}},
    }
    if state.config.token is not None:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                           "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        for path, item in doc["paths"].items():
            for operation in item.values():
                if path in ("/v2/health/live", "/v2/health/ready"):
                    operation["security"] = []
                else:
                    operation["responses"]["401"] = {
                        "description": "missing or wrong bearer token",
                        "content": {"application/json": {"schema": _ERROR}}}
    return doc
