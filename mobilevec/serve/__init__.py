"""``mobilevec serve``: the feature vectors over HTTP, with dynamic batching.

Protocols: the Open Inference Protocol v2 (Triton, KServe, MLServer; ``tritonclient``
works unchanged, binary tensor extension included), TF Serving's REST API
(``:predict`` with ``instances`` of floats or ``{"b64": ...}``), and ``POST /embed`` for
multipart uploads. Models run on the default engine with the engine cache and
``--precision`` of ``mobilevec embed``; encoded images decode exactly as ``embed``
decodes files, so the served vectors are ``embed``'s. See docs/serve.md.

>>> from mobilevec.serve import ServeConfig, ServedModel, serve
>>> serve(ServeConfig(models=(ServedModel("v3", "mobilenet_v3_small_075_224",
...                                       weights="v3.tflite"),)))   # doctest: +SKIP

aiohttp (the ``serve`` extra) is imported when a server starts.
"""

from .config import ServeConfig, ServedModel, read_config_file
from .server import load_runtime, serve

__all__ = ["ServeConfig", "ServedModel", "load_runtime", "read_config_file", "serve"]
