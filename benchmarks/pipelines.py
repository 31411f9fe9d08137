"""Whole pipelines as a user runs them: `mobilevec embed` with defaults against the tools
users would pick instead, side by side in one run (issue 15). Not a test.

On ≥ 1,000 mixed JPEGs made from ../shared/data (long side 160–1,600 px, into a folder
outside the repo), each contender runs as a fresh process, in alternating rounds:

- ``mobilevec embed DIR --model M --weights W -o out.parquet`` (defaults: the fastest exact
  engine, warm engine cache), startup included; also ``--precision bf16`` and ``int8``,
  with the cosine of their vectors to the fp32 run's on every photo;
- MediaPipe Tasks ImageEmbedder on the V3 ``.tflite`` (the same file), one image per call,
  1 and 2 processes;
- tf.data (decode_jpeg, resize) + Keras 3 on the TensorFlow backend, ``MobileNetV2(alpha=1.0)``
  and ``MobileNetV3Small(alpha=0.75)``, pooled, ``model.predict`` (startup not counted, as
  the issue's figures: its own clock starts at predict).

Then single-image runs: ``mobilevec embed one.jpg`` on a cold and a warm engine cache
against MediaPipe's single-image script, and ``mobilevec --help``.

Peers live in their own environment (``pip install 'mobilevec[bench]'`` there: mediapipe,
tensorflow-cpu), named by ``--peer-python`` (default ``$MOBILEVEC_BENCH_PYTHON``, else this
interpreter). The table is printed and written to ``--json``.

    python benchmarks/pipelines.py [--images 1000] [--rounds 3] [--peer-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MOBILEVEC_DATA_DIR", REPO.parent / "shared" / "data"))
WEIGHTS = Path(os.environ.get("MOBILEVEC_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
V2, V3 = "mobilenet_v2_100_224", "mobilenet_v3_small_075_224"
SEEDS = {V2: WEIGHTS / "mobilenet_v2_1.0_224_tfslim_npy",
         V3: WEIGHTS / "mobilenet_v3_small_075_224_embedder.tflite"}
# The console script a user runs (``python -m mobilevec.cli`` where there is none).
_SCRIPT = Path(sys.executable).with_name("mobilevec")
MOBILEVEC = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "mobilevec.cli"]


def make_corpus(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs from the shared photos, long side log-uniform in [160, 1600] px."""
    done = sorted(folder.glob("*.jpg"))
    if len(done) >= count:
        return done[:count]
    sources = sorted(p for sub in ("imagenet-samples", "tf_flowers5")
                     for p in (DATA / sub).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not sources:
        sys.exit(f"no photos under {DATA}; set MOBILEVEC_DATA_DIR")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = Image.open(sources[i % len(sources)]).convert("RGB")
        side = float(np.exp(rng.uniform(np.log(160), np.log(1600))))
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        path = folder / f"{i:06d}.jpg"
        image.resize(size, Image.BILINEAR).save(path, quality=int(rng.integers(80, 96)))
        paths.append(path)
    return paths


def _run(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... failed ({done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return seconds, done.stdout


def mobilevec_embed(corpus: Path, name: str, out: Path, env: dict, *extra: str) -> float:
    """Seconds of a fresh ``mobilevec embed`` process, startup included."""
    shutil.rmtree(out, ignore_errors=True)
    seconds, _ = _run([*MOBILEVEC, "embed", str(corpus), "--model", name, "--weights",
                       str(SEEDS[name]), "-o", str(out), "--quiet", *extra], env)
    return seconds


MEDIAPIPE = textwrap.dedent("""
    import sys, time
    import mediapipe as mp
    from mediapipe.tasks import python as tasks
    from mediapipe.tasks.python import vision
    model, paths = sys.argv[1], sys.argv[2:]
    options = vision.ImageEmbedderOptions(
        base_options=tasks.BaseOptions(model_asset_path=model), l2_normalize=False)
    with vision.ImageEmbedder.create_from_options(options) as embedder:
        for path in paths:
            embedder.embed(mp.Image.create_from_file(path))
""")


def mediapipe(python: str, paths: list[Path], processes: int) -> float:
    """Seconds until ``processes`` MediaPipe processes (one image per call) are done."""
    shares = [paths[i::processes] for i in range(processes)]
    start = time.perf_counter()
    runs = [subprocess.Popen([python, "-c", MEDIAPIPE, str(SEEDS[V3]), *map(str, share)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for share in shares]
    for run in runs:
        _, err = run.communicate(timeout=1800)
        if run.returncode:
            raise RuntimeError(f"mediapipe failed: {err[-2000:]}")
    return time.perf_counter() - start


KERAS = textwrap.dedent("""
    import os, sys, time
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf, keras
    family, folder = sys.argv[1], sys.argv[2]
    if family == "v2":
        model = keras.applications.MobileNetV2(alpha=1.0, include_top=False, pooling="avg",
                                               weights=None, input_shape=(224, 224, 3))
    else:
        model = keras.applications.MobileNetV3Small(
            alpha=0.75, include_top=False, pooling="avg", weights=None,
            input_shape=(224, 224, 3), include_preprocessing=False)
    def load(path):
        image = tf.image.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), (224, 224)) * 2 - 1
    files = sorted(tf.io.gfile.glob(folder + "/*.jpg"))
    model.predict(tf.zeros((8, 224, 224, 3)), verbose=0)  # trace once: startup, not counted
    start = time.perf_counter()
    data = (tf.data.Dataset.from_tensor_slices(files)
            .map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(64)
            .prefetch(tf.data.AUTOTUNE))
    vectors = model.predict(data, verbose=0)
    print(len(vectors), time.perf_counter() - start)
""")


def keras_tf(python: str, corpus: Path, family: str) -> float:
    _, out = _run([python, "-c", KERAS, family, str(corpus)])
    count, seconds = out.split()[-2:]
    return float(seconds)


def cosines(fp32: Path, other: Path) -> tuple[float, float]:
    sys.path.insert(0, str(REPO))
    from mobilevec.embedding.store import read_store

    a, b = read_store(fp32), read_store(other)
    order = {p: i for i, p in enumerate(b.paths)}
    va = a.vectors.astype(np.float64)
    vb = b.vectors[[order[p] for p in a.paths]].astype(np.float64)
    c = np.sum(va * vb, 1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))
    return float(c.mean()), float(c.min())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-python", default=os.environ.get("MOBILEVEC_BENCH_PYTHON",
                                                                sys.executable))
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "mobilevec-pipelines")
    parser.add_argument("--no-precisions", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    corpus = args.workdir / f"mixed-{args.images}"
    paths = make_corpus(corpus, args.images)
    cache = args.workdir / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "MOBILEVEC_CACHE": str(cache)}
    out = args.workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(paths)} JPEGs in {corpus}; load average {os.getloadavg()}")

    results: dict[str, list[float]] = {}

    def record(label: str, seconds: float) -> None:
        results.setdefault(label, []).append(len(paths) / seconds)
        print(f"  {label:46} {len(paths) / seconds:8.1f} img/s  ({seconds:.1f} s)", flush=True)

    # The first default run of each model fills the engine cache: what a new user's very
    # first command costs. Every later run is warm.
    for name in (V3, V2):
        record(f"mobilevec embed {name} (cold cache)",
               mobilevec_embed(corpus, name, out / "cold.parquet", env))
        mobilevec_embed(corpus, name, out / "cold.parquet", env, "--backend", "onnxruntime")
    contenders = {
        "mobilevec embed V3 (defaults)": lambda: mobilevec_embed(
            corpus, V3, out / "v3.parquet", env),
        "mobilevec embed V2 (defaults)": lambda: mobilevec_embed(
            corpus, V2, out / "v2.parquet", env),
        # The runner-up exact engine, to check the default's order (engines.default).
        "mobilevec embed V3 --backend onnxruntime": lambda: mobilevec_embed(
            corpus, V3, out / "v3-ort.parquet", env, "--backend", "onnxruntime"),
        "mobilevec embed V2 --backend onnxruntime": lambda: mobilevec_embed(
            corpus, V2, out / "v2-ort.parquet", env, "--backend", "onnxruntime"),
        "MediaPipe ImageEmbedder V3, 1 process": lambda: mediapipe(args.peer_python, paths, 1),
        "MediaPipe ImageEmbedder V3, 2 processes": lambda: mediapipe(args.peer_python, paths,
                                                                     2),
        "tf.data + Keras 3 (TF) V3 Small 0.75": lambda: keras_tf(args.peer_python, corpus,
                                                                 "v3"),
        "tf.data + Keras 3 (TF) V2 1.0": lambda: keras_tf(args.peer_python, corpus, "v2"),
    }
    if not args.no_precisions:
        for precision in ("bf16", "int8"):
            for name, short in ((V3, "V3"), (V2, "V2")):
                label = f"mobilevec embed {short} --precision {precision}"
                target = out / f"{short}-{precision}.parquet"
                contenders[label] = (lambda n=name, t=target, p=precision:
                                     mobilevec_embed(corpus, n, t, env, "--precision", p))
        # int8 calibrates once, on the first run's photos: not part of the timed rounds.
        for name, short in ((V3, "V3"), (V2, "V2")):
            record(f"mobilevec embed {short} int8 (calibrating run)", mobilevec_embed(
                corpus, name, out / f"{short}-int8.parquet", env, "--precision", "int8"))
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}")
        for label, run in contenders.items():
            time.sleep(1.0)
            try:
                record(label, run())
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"  {label}: FAILED {e}")

    peers = {"V3": ["MediaPipe ImageEmbedder V3, 1 process",
                    "MediaPipe ImageEmbedder V3, 2 processes",
                    "tf.data + Keras 3 (TF) V3 Small 0.75"],
             "V2": ["tf.data + Keras 3 (TF) V2 1.0"]}
    summary: dict[str, object] = {"images": len(paths), "load_after": os.getloadavg(),
                                  "rates": {k: median(v) for k, v in results.items()},
                                  "rounds": results}
    print("\nmedian img/s and ratio to the best peer of the same model")
    for short, labels in peers.items():
        best = max(median(results.get(label, [])) for label in labels)
        for label, values in results.items():
            if f" {short}" in label and label.startswith("mobilevec"):
                print(f"  {label:46} {median(values):8.1f}  {median(values) / best:5.2f}x")
        for label in labels:
            print(f"  {label:46} {median(results.get(label, [])):8.1f}")
        summary[f"best_peer_{short}"] = best
    if not args.no_precisions:
        for short in ("V3", "V2"):
            for precision in ("bf16", "int8"):
                mean, low = cosines(out / f"{short.lower()}.parquet",
                                    out / f"{short}-{precision}.parquet")
                summary[f"cosine_{short}_{precision}"] = [mean, low]
                print(f"  {short} {precision}: cosine to fp32 mean {mean:.4f}, min {low:.4f} "
                      f"over {len(paths)} photos")

    single = paths[0]
    one = {}
    for state in ("cold", "warm"):
        if state == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        seconds = []
        for _ in range(1 if state == "cold" else 5):
            shutil.rmtree(out / "one.parquet", ignore_errors=True)
            seconds.append(_run([*MOBILEVEC, "embed", str(single), "--model", V3, "--weights",
                                 str(SEEDS[V3]), "-o", str(out / "one.parquet"), "--quiet"],
                                env)[0])
        one[f"mobilevec embed one image ({state} cache)"] = median(seconds)
    one["MediaPipe one-image script"] = median([mediapipe(args.peer_python, [single], 1)
                                               for _ in range(5)])
    one["mobilevec --help"] = median([_run([*MOBILEVEC, "--help"])[0] for _ in range(7)])
    print("\nsingle runs (median seconds, whole process)")
    for label, seconds in one.items():
        print(f"  {label:46} {seconds:6.2f} s")
    summary["single"] = one
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
