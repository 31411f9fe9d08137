"""The BentoML peer of benchmarks/serve.py: a batchable service, as BentoML's guide writes
one, taking the same TF Serving-style body (``{"instances": [{"b64": ...}]}``). Run by
``serve.py --peer bentoml`` through ``bentoml serve``; the model and weights come in
``MOBILEVEC_BENCH_MODEL`` and ``MOBILEVEC_BENCH_WEIGHTS``."""

from __future__ import annotations

import base64
import os

import bentoml
import numpy as np

MAX_BATCH = 32  # as serve.py's other servers


@bentoml.service(workers=1)
class Embed:
    def __init__(self) -> None:
        import mobilevec

        self.emb = mobilevec.embedder(os.environ["MOBILEVEC_BENCH_MODEL"],
                                      os.environ["MOBILEVEC_BENCH_WEIGHTS"])

    # Requests are merged along their "instances" lists (one image each here) into one call
    # of up to MAX_BATCH, waiting up to the latency budget BentoML's batcher works towards.
    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=1000)
    def predict(self, instances: list[dict]) -> list[list[float]]:
        from mobilevec.data.images import load_array_bytes

        x = np.stack([load_array_bytes(base64.b64decode(i["b64"]), 224, draft=True)
                      for i in instances])
        return self.emb(x).tolist()
