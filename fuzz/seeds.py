"""Small valid artifacts of every format, made by the real writers (h5py, safetensors, numpy,
the flatbuffers bindings) or taken from tests/fixtures (written by TensorFlow itself).

Each :class:`Seed` is a set of files, the path the reader is given, and, for TensorBundles,
the decoded table so that the fuzzer can re-encode mutants with valid checksums.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


@dataclass
class Bundle:
    """A TensorBundle of a seed: its index entries and where its files are."""

    index: str  # relative path of PREFIX.index
    entries: list[tuple[bytes, bytes]]
    shards: list[str]  # relative paths of PREFIX.data-*


@dataclass
class Seed:
    format: str
    name: str
    files: dict[str, bytes]
    entry: str  # what the reader is given, relative to the case folder
    model_bytes: int  # bytes of the variables it holds (the memory budget counts them)
    bundles: list[Bundle] = field(default_factory=list)


def _safetensors_seeds() -> list[Seed]:
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    tensors = {"MobilenetV2/Conv/weights": rng.standard_normal((3, 3, 3, 4)).astype(np.float32),
               "MobilenetV2/Conv/BatchNorm/gamma": np.ones(4, np.float16),
               "steps": np.arange(4, dtype=np.int64).reshape(2, 2),
               "flags": np.array([True, False])}
    blob = save(tensors, metadata={"format": "mobilevec", "model": "mobilenet_v2_035_224"})
    small = save({"x": np.float32([1.5])})
    return [Seed("safetensors", "four_tensors", {"w.safetensors": blob}, "w.safetensors",
                 sum(t.nbytes for t in tensors.values())),
            Seed("safetensors", "one_scalar", {"w.safetensors": small}, "w.safetensors", 4)]


def _npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    out = io.BytesIO()
    if version is None:
        np.save(out, array, allow_pickle=False)
    else:
        np.lib.format.write_array(out, array, version=version, allow_pickle=False)
    return out.getvalue()


def _npy_seeds() -> list[Seed]:
    import hashlib

    rng = np.random.default_rng(1)
    arrays = {
        "MobilenetV2/Conv/weights": rng.standard_normal((3, 3, 3, 4)).astype(np.float32),
        "MobilenetV2/Conv/BatchNorm/beta": rng.standard_normal(4).astype(np.float32),
        "MobilenetV2/Logits/Conv2d_1c_1x1/biases": np.arange(5, dtype=np.float64),
        "global_step": np.array(7, np.int64),
    }
    files: dict[str, bytes] = {}
    rows = ["file\ttf_slim_variable\tshape\tdtype\tsha256"]
    for i, (name, array) in enumerate(arrays.items()):
        if i == 2:
            array = np.asfortranarray(array)
        data = _npy_bytes(array, (2, 0) if i == 1 else None)
        file = name.replace("/", "_") + ".npy"
        files[f"w/{file}"] = data
        digest = hashlib.sha256(data).hexdigest() if i % 2 else ""
        rows.append(f"{file}\t{name}\t{list(array.shape)}\t{array.dtype}\t{digest}")
    files["w/MANIFEST.tsv"] = ("\n".join(rows) + "\n").encode()
    beside = {k.replace("w/MANIFEST.tsv", "w.MANIFEST.tsv"): v for k, v in files.items()}
    model = sum(a.nbytes for a in arrays.values())
    return [Seed("npy", "manifest_inside", files, "w", model),
            Seed("npy", "manifest_beside", beside, "w", model)]


def _h5_bytes(write, **kwargs) -> bytes:
    import h5py

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.h5"
        with h5py.File(path, "w", **kwargs) as f:
            write(f)
        return path.read_bytes()


def _keras_layers(root, rng, chunked: bool = False) -> int:
    layers = {"input_1": [], "Conv1": [("kernel", (3, 3, 3, 4))],
              "bn_Conv1": [(w, (4,)) for w in ("gamma", "beta", "moving_mean",
                                               "moving_variance")],
              "Conv1_relu": [], "block_1_expand": [("kernel", (1, 1, 4, 8))]}
    root.attrs["layer_names"] = [n.encode() for n in layers]
    total = 0
    for layer, weights in layers.items():
        group = root.create_group(layer)
        names = [f"{layer}/{w}:0" for w, _ in weights]
        group.attrs["weight_names"] = [n.encode() for n in names] if names else np.zeros(0)
        for name, (_, shape) in zip(names, weights, strict=True):
            data = rng.standard_normal(shape).astype(np.float32)
            extra = {"chunks": True, "compression": "gzip"} if chunked and data.ndim == 4 else {}
            group.create_dataset(name, data=data, **extra)
            total += data.nbytes
    return total


def _h5_seeds() -> list[Seed]:
    rng = np.random.default_rng(2)
    sizes = {}

    def keras2(f):
        sizes["k2"] = _keras_layers(f, rng)
        f.attrs["keras_version"] = b"2.21.0"

    def keras3(f):
        sizes["k3"] = _keras_layers(f.create_group("model_weights"), rng, chunked=True)

    k2, k3 = _h5_bytes(keras2), _h5_bytes(keras3)
    return [Seed("h5", "keras2_layers", {"w.h5": k2}, "w.h5", sizes["k2"]),
            Seed("h5", "keras3_model_weights_gzip", {"w.h5": k3}, "w.h5", sizes["k3"])]


def _tflite_seeds() -> list[Seed]:
    from tflite_builder import synthetic_block

    seeds = []
    for offset, fused in ((3.0, True), (2.5, False)):
        data, values = synthetic_block(offset, fused)
        seeds.append(Seed("tflite", f"v3_block_{'fused' if fused else 'relu6'}",
                          {"m.tflite": data}, "m.tflite",
                          sum(v.nbytes for v in values.values())))
    return seeds


def _bundle(folder: Path, prefix: str, rel: str) -> tuple[dict[str, bytes], Bundle]:
    from mobilevec.formats.tf_checkpoint import _read_table

    index = folder / f"{prefix}.index"
    files = {f"{rel}/{p.name}": p.read_bytes() for p in sorted(folder.glob(f"{prefix}.*"))}
    shards = sorted(k for k in files if ".data-" in k)
    return files, Bundle(f"{rel}/{index.name}", _read_table(index), shards)


def _checkpoint_seeds() -> list[Seed]:
    seeds = []
    for folder, prefix, entry in ((FIXTURES / "tf_bundle_misc", "dtypes", "ckpt/dtypes"),
                                  (FIXTURES / "tf_ckpt_v2_035", "model.ckpt", "ckpt")):
        files, bundle = _bundle(folder, prefix, "ckpt")
        if (folder / "checkpoint").is_file():
            files["ckpt/checkpoint"] = (folder / "checkpoint").read_bytes()
        model = sum(len(v) for k, v in files.items() if ".data-" in k)
        seeds.append(Seed("tf_checkpoint", folder.name, files, entry, model, [bundle]))
    return seeds


def _saved_model_seeds() -> list[Seed]:
    root = FIXTURES / "tf_saved_model_v2_035"
    files, bundle = _bundle(root / "variables", "variables", "sm/variables")
    files["sm/saved_model.pb"] = (root / "saved_model.pb").read_bytes()
    model = sum(len(v) for k, v in files.items() if ".data-" in k)
    return [Seed("saved_model", root.name, files, "sm", model, [bundle])]


BUILDERS = {"safetensors": _safetensors_seeds, "npy": _npy_seeds, "h5": _h5_seeds,
            "tflite": _tflite_seeds, "tf_checkpoint": _checkpoint_seeds,
            "saved_model": _saved_model_seeds}
FORMATS = tuple(BUILDERS)


def build(fmt: str) -> list[Seed]:
    return BUILDERS[fmt]()
