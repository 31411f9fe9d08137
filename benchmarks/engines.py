"""Inference engines side by side: mobilevec's engines against real peers, in one run.

Not a test. For both seed models, each case runs in a fresh process (so peak RSS and load
time are its own, and thread settings do not leak) with every runtime limited to the
machine's physical cores:

- mobilevec: ``torch`` (the trainable module, channels-last, inference mode: the plain
  eager baseline), ``torch-fused``, ``onnxruntime``, ``openvino`` and ``litert`` (its own
  ``.tflite``) fp32, OpenVINO bf16, int8 (QDQ, calibrated on 300 photos) on onnxruntime
  and openvino;
- peers: a standard PyTorch MobileNet (torchvision's layout, ``plain_mobilenets.py``) in
  eager channels-last; ONNX Runtime and OpenVINO with default settings on a plain
  ``torch.onnx.export`` of it; Keras 3 applications on the torch backend; LiteRT/XNNPACK on
  the official V3 ``.tflite``; timm where installed.

Measured: img/s at batch 32 (median of timed runs after warm-up), batch-1 latency p50/p99,
load time, peak RSS; for int8 also cosine to fp32 and leave-one-out 1-NN on tf_flowers5.
Writes its section of docs/benchmarks.md (between the ``engines`` markers).

    python benchmarks/engines.py [--runs 7] [--no-doc] [--only SUBSTRING]

Other processes' load makes figures lower and noisier: the load average before and after
is printed and recorded; re-run on a quiet machine for figures worth quoting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

WEIGHTS = Path(os.environ.get("MOBILEVEC_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
DATA = Path(os.environ.get("MOBILEVEC_DATA_DIR", REPO.parent / "shared" / "data"))
SEEDS = {"mobilenet_v2_100_224": WEIGHTS / "mobilenet_v2_1.0_224_tfslim_npy",
         "mobilenet_v3_small_075_224": WEIGHTS / "mobilenet_v3_small_075_224_embedder.tflite"}
OFFICIAL_TFLITE = WEIGHTS / "mobilenet_v3_small_075_224_embedder.tflite"
BATCH, DOC = 32, REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- engines:begin -->", "<!-- engines:end -->"

# (case id, label, kind "mobilevec"/"peer", precision)
CASES = [
    ("mv-torch", "mobilevec torch module (eager, channels-last, FTZ)", "mobilevec", "fp32"),
    ("mv-torch-fused", "mobilevec torch-fused (folded, channels-last)", "mobilevec", "fp32"),
    ("mv-ort", "mobilevec onnxruntime", "mobilevec", "fp32"),
    ("mv-ov", "mobilevec openvino", "mobilevec", "fp32"),
    ("mv-litert", "mobilevec litert (own .tflite, XNNPACK)", "mobilevec", "fp32"),
    ("mv-ov-bf16", "mobilevec openvino precision=bf16 (int8 first conv)", "mobilevec", "bf16"),
    ("mv-ort-int8", "mobilevec onnxruntime int8", "mobilevec", "int8"),
    ("mv-ov-int8", "mobilevec openvino int8", "mobilevec", "int8"),
    ("peer-torch", "plain PyTorch eager (torchvision layout, channels-last)", "peer", "fp32"),
    ("peer-ort", "ONNX Runtime defaults, plain torch.onnx export", "peer", "fp32"),
    ("peer-ov", "OpenVINO defaults, plain torch.onnx export", "peer", "bf16 (default)"),
    ("peer-keras", "Keras 3 applications, torch backend", "peer", "fp32"),
    ("peer-litert", "LiteRT/XNNPACK, official .tflite", "peer", "fp32"),
    ("peer-timm", "timm (channels-last)", "peer", "fp32"),
]


# --- one case, in its own process ----------------------------------------------------
def _physical_cores() -> int:
    from mobilevec.engines import physical_cores

    return physical_cores()


def _plain_onnx(model_name: str, path: Path) -> None:
    import torch
    from plain_mobilenets import PLAIN

    torch.onnx.export(PLAIN[model_name]().eval(), (torch.rand(1, 3, 224, 224),), str(path),
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}},
                      opset_version=17, dynamo=False)


def _build(case: str, model_name: str, files: dict[str, str], threads: int):
    """A callable taking float32 NCHW (N, 3, 224, 224) numpy, or None when unavailable."""
    import mobilevec

    weights = SEEDS[model_name]
    if case == "mv-torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)  # as torch-fused does; else real V2 weights crawl
        m = mobilevec.create(model_name, weights, trainable=False)
        m = m.to(memory_format=torch.channels_last)

        def run(x):
            with torch.inference_mode():
                t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
                return m(t).numpy()
        return run
    if case.startswith("mv-"):
        backend = {"mv-torch-fused": "torch-fused", "mv-ort": "onnxruntime",
                   "mv-ov": "openvino", "mv-ov-bf16": "openvino", "mv-litert": "litert"}.get(case)
        if case.endswith("int8"):
            from mobilevec.engines import load_engine

            if "-ov-" in case:
                return load_engine(files["int8-ov"], "openvino", threads=threads)
            return load_engine(files["int8-ort"], "onnxruntime", threads=threads)
        options = {"precision": "bf16"} if case == "mv-ov-bf16" else {}
        return mobilevec.create(model_name, weights, backend=backend, threads=threads,
                                **options)
    if case == "peer-torch":
        import torch
        from plain_mobilenets import PLAIN

        torch.set_num_threads(threads)
        m = PLAIN[model_name]().eval().to(memory_format=torch.channels_last)

        def run(x):
            with torch.inference_mode():
                return m(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
        return run
    if case == "peer-ort":
        import onnxruntime as ort

        s = ort.InferenceSession(files["plain"], providers=["CPUExecutionProvider"])
        return lambda x: s.run(None, {"x": x})[0]
    if case == "peer-ov":
        import openvino as ov

        c = ov.Core().compile_model(files["plain"], "CPU")
        r = c.create_infer_request()
        return lambda x: r.infer({0: x})[0]
    if case == "peer-keras":
        os.environ["KERAS_BACKEND"] = "torch"
        import keras
        import torch

        torch.set_num_threads(threads)
        if "v2" in model_name:
            m = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False,
                                               weights=None, pooling="avg")
        else:
            m = keras.applications.MobileNetV3Small(
                input_shape=(224, 224, 3), alpha=0.75, include_top=False, weights=None,
                pooling="avg", include_preprocessing=False)

        def run(x):
            with torch.inference_mode():
                return m(torch.from_numpy(x.transpose(0, 2, 3, 1)), training=False)
        return run
    if case == "peer-litert":
        if "v3" not in model_name or not OFFICIAL_TFLITE.exists():
            return None
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(str(OFFICIAL_TFLITE), num_threads=threads)
        index = it.get_input_details()[0]["index"]
        out = it.get_output_details()[0]["index"]
        shape = [None]

        def run(x):
            nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            if shape[0] != nhwc.shape:
                it.resize_tensor_input(index, nhwc.shape)
                it.allocate_tensors()
                shape[0] = nhwc.shape
            it.set_tensor(index, nhwc)
            it.invoke()
            return it.get_tensor(out)
        return run
    if case == "peer-timm":
        try:
            import timm  # noqa: F401
        except ImportError:
            return None
    return None


def run_case(case: str, model_name: str, files: dict[str, str], runs: int) -> dict:
    threads = _physical_cores()
    start = time.perf_counter()
    try:
        fn = _build(case, model_name, files, threads)
    except ImportError as e:
        return {"skip": f"not installed ({e.name})"}
    if fn is None:
        return {"skip": "not applicable or not installed"}
    rng = np.random.default_rng(0)
    x32 = rng.random((BATCH, 3, 224, 224), dtype=np.float32)
    x1 = np.ascontiguousarray(x32[:1])
    fn(x1)
    load = time.perf_counter() - start
    for _ in range(3):
        fn(x32)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x32)
        times.append(time.perf_counter() - t)
    for _ in range(10):
        fn(x1)
    lat = []
    for _ in range(max(50, 10 * runs)):
        t = time.perf_counter()
        fn(x1)
        lat.append(time.perf_counter() - t)
    return {"img_s": BATCH / float(np.median(times)), "p50_ms": 1e3 * np.percentile(lat, 50),
            "p99_ms": 1e3 * np.percentile(lat, 99), "load_s": load,
            "rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """VmHWM: unlike ru_maxrss it is not inherited across fork + exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the parent: prepare files, run cases, int8 quality, table ----------------------
def _int8_files(model_name: str, tmp: Path) -> tuple[dict[str, str], dict[str, float]]:
    """The int8 exports of ``model_name``, each with its runtime's placement: ``.onnx``
    (all-ops) for ONNX Runtime, OpenVINO IR (conv-inputs) for OpenVINO; and seconds each
    export took."""
    import mobilevec
    from mobilevec.export import calibration_paths, export

    paths = calibration_paths(DATA / "imagenet-samples", 200) + \
        calibration_paths(DATA / "flowers5", 100)
    model = mobilevec.create(model_name, SEEDS[model_name], trainable=False)
    files, seconds = {}, {}
    for key, out, fmt in (("int8-ort", tmp / f"{model_name}_int8.onnx", "onnx"),
                          ("int8-ov", tmp / f"{model_name}_int8.xml", "openvino")):
        start = time.perf_counter()
        files[key] = str(export(model, out, fmt, source=SEEDS[model_name],
                                calibration=paths)[0])
        seconds[key] = time.perf_counter() - start
    return files, seconds


def _quality(model_name: str, int8: dict[str, str]) -> dict[str, dict]:
    """Cosine int8 vs fp32 and leave-one-out 1-NN on tf_flowers5, per int8 engine."""
    import mobilevec
    from mobilevec.data.images import load_array
    from mobilevec.embedding.search import leave_one_out_accuracy
    from mobilevec.engines import load_engine

    files = sorted((DATA / "tf_flowers5").rglob("*.jpg"))
    labels = np.array([p.parent.name for p in files])
    x = np.stack([load_array(p, 224) for p in files])
    fp32 = mobilevec.create(model_name, SEEDS[model_name], backend="onnxruntime")
    ref = np.concatenate([fp32(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
    out = {"fp32": {"knn": leave_one_out_accuracy(ref, labels)}}
    candidates = {
        "mv-ort-int8": lambda: load_engine(int8["int8-ort"], "onnxruntime"),
        "mv-ov-int8": lambda: load_engine(int8["int8-ov"], "openvino"),
        "mv-ov-bf16": lambda: mobilevec.create(model_name, SEEDS[model_name],
                                               backend="openvino", precision="bf16"),
    }
    for case, make in candidates.items():
        try:
            engine = make()
        except ImportError:
            continue
        v = np.concatenate([engine(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
        cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
        out[case] = {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                     "knn": leave_one_out_accuracy(v, labels)}
    return out


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 ** 2 for line in
                Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    versions = []
    for mod in ("torch", "onnxruntime", "openvino", "keras", "ai_edge_litert"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            versions.append(f"{mod} absent")
    return (f"{cpu}, {_physical_cores()} physical cores, {mem} GiB RAM, "
            f"Python {platform.python_version()}; " + ", ".join(versions))


def _table(results: dict, quality: dict) -> list[str]:
    rows = ["| model | engine | precision | img/s @32 | × best fp32 peer | × best peer "
            "| p50 ms @1 | p99 ms @1 | load s | peak RSS MB | cos vs fp32 (mean/min) "
            "| 1-NN tf_flowers5 |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model_name, by_case in results.items():
        peers = {c: r["img_s"] for c, r in by_case.items() if c.startswith("peer") and "img_s" in r}
        best = max(peers.values(), default=float("nan"))
        # OpenVINO's defaults run bf16 on this CPU: not an fp32 peer
        best32 = max((v for c, v in peers.items() if c != "peer-ov"), default=float("nan"))
        q = quality.get(model_name, {})
        for case, label, kind, precision in CASES:
            r = by_case.get(case)
            if r is None:
                continue
            short = model_name.replace("mobilenet_", "").replace("_224", "")
            if "skip" in r:
                rows.append(f"| {short} | {label} | {precision} | skipped: {r['skip']} "
                            "| | | | | | | | |")
                continue
            qc = q.get(case, {})
            cos = f"{qc['cos_mean']:.4f} / {qc['cos_min']:.4f}" if qc else ""
            knn = f"{qc['knn']:.3f}" if qc else (f"{q['fp32']['knn']:.3f}"
                                                 if case == "mv-ort" and q else "")
            name = f"**{label}**" if kind == "mobilevec" else label
            rows.append(f"| {short} | {name} | {precision} | {r['img_s']:.0f} | "
                        f"{r['img_s'] / best32:.2f} | {r['img_s'] / best:.2f} | "
                        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                        f"{r['load_s']:.2f} | {r['rss_mb']:.0f} | {cos} | {knn} |")
    return rows


def _write_doc(section: str) -> None:
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Inference engines (issue 7)\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7, help="timed batch-32 runs per case")
    p.add_argument("--only", help="run only cases whose id contains this")
    p.add_argument("--no-doc", action="store_true", help="print, do not write the doc")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 without TensorFlow
    if args.case:  # child process
        print(json.dumps(run_case(args.case, args.model, json.loads(args.files), args.runs)))
        return 0

    from mobilevec.export import exported_metadata

    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}", file=sys.stderr)
    results: dict[str, dict] = {}
    quality: dict[str, dict] = {}
    notes = []
    with tempfile.TemporaryDirectory(prefix="mobilevec-bench-") as tmp:
        for model_name in SEEDS:
            files = {"plain": str(Path(tmp) / f"{model_name}_plain.onnx")}
            _plain_onnx(model_name, Path(files["plain"]))
            if not args.only or "int8" in args.only:
                int8, seconds = _int8_files(model_name, Path(tmp))
                files.update(int8)
                for key, what in (("int8-ort", "all-ops .onnx"),
                                  ("int8-ov", "conv-inputs OpenVINO IR")):
                    meta = exported_metadata(int8[key])
                    notes.append(
                        f"{model_name} int8 {what}: export with calibration took "
                        f"{seconds[key]:.0f} s; fp32 blocks: "
                        f"{meta.get('int8_fp32_blocks') or 'none'}; cosine on the "
                        f"held-out calibration photos {meta.get('int8_cosine_mean')}")
                quality[model_name] = _quality(model_name, int8)
            results[model_name] = {}
            for case, label, _, _ in CASES:
                if args.only and args.only not in case:
                    continue
                cmd = [sys.executable, __file__, "--case", case, "--model", model_name,
                       "--files", json.dumps(files), "--runs", str(args.runs)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                try:
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                except (IndexError, json.JSONDecodeError):
                    r = {"skip": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]}
                results[model_name][case] = r
                shown = r.get("skip") or f"{r['img_s']:.0f} img/s, p50 {r['p50_ms']:.2f} ms"
                print(f"{model_name:28} {label:58} {shown}", file=sys.stderr)
    load_after = os.getloadavg()
    rows = _table(results, quality)
    print("\n".join(rows))
    section = "\n".join([
        "### Measured by `benchmarks/engines.py` (this block is rewritten by each run)",
        "",
        f"Machine: {_machine()}.",
        f"Load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/"
        f"{load_after[2]:.2f}: this machine is shared by other engineers, so figures taken "
        "under load are low and noisy; every row of one table comes from the same run.",
        "",
        f"Batch {BATCH} at 224×224, float32 NCHW input already in memory, every runtime on "
        f"{_physical_cores()} threads (physical cores), each case in a fresh process; img/s "
        f"is the median of {args.runs} timed runs after warm-up, latency over ≥ 50 batch-1 "
        "runs; load time is from building the engine to the first result; peak RSS of the "
        "case's process. × best peer: ratio to the fastest peer row of the same model. "
        "Peers run random weights (speed does not depend on values); mobilevec rows run the "
        "real weights. OpenVINO's default precision on this CPU (avx512_bf16) is bf16, so its "
        "default-settings peer row is bf16. int8 rows: QDQ calibrated on 300 photos "
        "(200 imagenet-samples + 100 flowers5), each runtime's placement (ONNX Runtime: "
        "all-ops `.onnx`; OpenVINO: conv-inputs IR with per-channel equalization and bias "
        "correction); blocks kept fp32 are listed under the table; cosine and "
        "leave-one-out 1-NN on the 191 tf_flowers5 photos (fp32 1-NN in the onnxruntime row).",
        "",
        *rows,
        "",
        *[f"- {n}" for n in notes],
    ])
    if not args.no_doc and not args.only:
        _write_doc(section)
        print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
