"""``mobilevec serve --runner ray``: the same clients, unchanged, against Ray Serve on a
local Ray instance; vectors equal offline ``embed``'s. Skipped, with the reason shown, when
Ray Serve is not installed (``pip install 'mobilevec[serve-ray]'``)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from serve_support import Served
from shared_paths import DATA_DIR, V3_TFLITE, require

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install "
                                        "'mobilevec[serve-ray]'")
requests = pytest.importorskip("requests")
httpclient = pytest.importorskip("tritonclient.http")

V3 = "mobilenet_v3_small_075_224"


def test_ray_serve_answers_tritonclient_and_tf_serving_with_embeds_vectors(tmp_path):
    import mobilevec

    photos = sorted(require(DATA_DIR / "imagenet-samples").glob("*.JPEG"))[:4]
    offline = mobilevec.embedder(V3, require(V3_TFLITE)).embed_files(
        photos, draft=True, workers=0).vectors
    served = Served(["--runner", "ray", "--model", f"v3={V3}", "--weights",
                     str(require(V3_TFLITE)), "--max-batch", "8"], tmp_path / "server.log")
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{served.port}")
        encoded = httpclient.InferInput("images", [len(photos)], "BYTES")
        encoded.set_data_from_numpy(np.array([p.read_bytes() for p in photos], np.object_))
        vectors = client.infer("v3", [encoded]).as_numpy("feature_vector")
        assert np.abs(vectors - offline).max() <= 1e-4

        body = {"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()}
                              for p in photos]}
        answer = requests.post(f"{served.url}/v1/models/v3:predict", json=body, timeout=120)
        assert np.abs(np.array(answer.json()["predictions"], np.float32) - offline).max() <= 1e-4

        refused = requests.post(f"{served.url}/v1/models/v3:predict",
                                json={"instances": [{"b64": "not base64!"}]}, timeout=60)
        assert refused.status_code == 400 and refused.json()["kind"] == "bad_base64"
    finally:
        assert served.stop() == 0, served.log
