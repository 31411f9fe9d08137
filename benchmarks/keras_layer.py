"""KerasLayer against the torch module: max|Δ| on real photos and odd sizes, and time per batch.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/keras_layer.py
    KERAS_BACKEND=jax   .venv/bin/python benchmarks/keras_layer.py

Prints one row per (model, input): the backend, max|Δ| of the feature vectors, build time
of the layer, and the median time of a batch through ``keras.Model.predict`` (compiled on
JAX/TF) and through the torch module.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import mobilevec.hub  # noqa: E402
from mobilevec import keras as hub  # noqa: E402
from mobilevec.data.images import load_image  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights-dir", type=Path, default=Path("../shared/weights"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    files = sorted((args.data_dir / "imagenet-samples").glob("*.JPEG"))[::15][:args.batch]
    photos = torch.stack([load_image(f) for f in files]).permute(0, 2, 3, 1).numpy()
    rng = np.random.default_rng(0)
    inputs = {"photos @224": photos, "random @193×161": rng.random(
        (args.batch, 193, 161, 3), dtype=np.float32)}
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}, "
          f"batch {args.batch}, {os.cpu_count()} CPUs")
    print("| model | input | max abs Δ | build s | Keras s/batch | torch s/batch |")
    print("|---|---|---|---|---|---|")
    for path in (args.weights_dir / "mobilenet_v2_1.0_224_tfslim_npy",
                 args.weights_dir / "mobilenet_v3_small_075_224_embedder.tflite"):
        start = time.perf_counter()
        layer = hub.KerasLayer(str(path))
        build = time.perf_counter() - start
        net = mobilevec.hub.load(path)
        model = keras.Sequential([layer])
        for label, x in inputs.items():
            got = np.asarray(model.predict(x, verbose=0, batch_size=len(x)))
            with torch.no_grad():
                want = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
            keras_s = median_seconds(
                lambda m=model, x=x: m.predict(x, verbose=0, batch_size=len(x)), args.repeats)
            with torch.no_grad():
                torch_s = median_seconds(
                    lambda n=net, x=x: n(torch.from_numpy(x).permute(0, 3, 1, 2)), args.repeats)
            print(f"| {layer.model_name} | {label} | {np.abs(got - want).max():.1e} | "
                  f"{build:.1f} | {keras_s:.2f} | {torch_s:.2f} |")


if __name__ == "__main__":
    main()
