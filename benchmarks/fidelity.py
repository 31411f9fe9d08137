"""Print the fidelity table of the README: max|Δ| and min cosine of mobilevec against
independent references, measured now (same comparisons as the tests).

    .venv/bin/python benchmarks/fidelity.py [--weights-dir ../shared/weights]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import keras_reference as kr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from test_real_weights import inputs, litert_features  # noqa: E402

import mobilevec  # noqa: E402


def compare(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    return float(np.abs(ours - ref).max()), float(cos.min())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights-dir", type=Path, default=Path("../shared/weights"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, alpha, minimal, name, size in [
                ("v2", 1.0, False, "mobilenet_v2_100_224", 224),
                ("v2", 1.0, False, "mobilenet_v2_100_224", 193),
                ("v3_small", 0.75, False, "mobilenet_v3_small_075_224", 224),
                ("v3_small", 0.75, False, "mobilenet_v3_small_075_224", 193),
                ("v3_large", 1.0, False, "mobilenet_v3_large_100_224", 224),
                ("v3_small", 1.0, True, "mobilenet_v3_small_minimalistic_100_224", 224),
                ("v2", 0.35, False, "mobilenet_v2_035_224", 224),
                ("v2", 1.4, False, "mobilenet_v2_140_224", 224)]:
            keras_model, heads = kr.build(family, alpha, size, minimal)
            kr.set_tf_variables(keras_model, kr.calibrated_variables(name, size),
                                mobilevec.get_config(name).spec.root_scope)
            path = Path(tmp) / "k.h5"
            keras_model.save(path)
            model = mobilevec.create(name, weights=path)
            kr.use_keras_gate(model)
            x = kr.structured_images(2, size, size)
            ref_f, ref_l = kr.run(heads, x)
            with torch.no_grad():
                f = model(torch.from_numpy(x))
                logits = model.classifier(f).numpy()
            d_f, c_f = compare(f.numpy(), ref_f)
            rows.append((f"{name} @{size}", "Keras 3 (random weights, .h5)", d_f, c_f,
                         float(np.abs(logits - ref_l).max())))
    x = inputs(args.data_dir)
    v2 = args.weights_dir / "mobilenet_v2_1.0_224_tfslim_npy"
    keras_model, heads = kr.build("v2", 1.0, 224)
    kr.set_tf_variables(keras_model, mobilevec.read_weights(v2).variables, "MobilenetV2")
    with torch.no_grad():
        ours = mobilevec.create("mobilenet_v2_100_224", weights=v2)(torch.from_numpy(x)).numpy()
    rows.append(("mobilenet_v2_100_224 (real)", "Keras 3 + TF-Slim .npy", *compare(
        ours, kr.run(heads, x)[0]), None))
    v3 = args.weights_dir / "mobilenet_v3_small_075_224_embedder.tflite"
    with torch.no_grad():
        ours = mobilevec.create("mobilenet_v3_small_075_224", weights=v3)(
            torch.from_numpy(x)).numpy()
    rows.append(("mobilenet_v3_small_075_224 (real)", "LiteRT running the TF Hub .tflite",
                 *compare(ours, litert_features(v3, x)), None))
    print("| model | reference | max abs Δ features | min cosine | max abs Δ logits |")
    print("|---|---|---|---|---|")
    for name, ref, d, c, dl in rows:
        print(f"| {name} | {ref} | {d:.1e} | {c:.7f} | {'' if dl is None else f'{dl:.1e}'} |")


if __name__ == "__main__":
    main()
