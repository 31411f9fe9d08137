"""The raw datasets of a Keras ``.h5``, read in a child process under time and memory limits.

HDF5 is a large C library, and crafted files can make it loop while holding the GIL or
allocate without bound (docs/security.md), so :mod:`mobilevec.formats.keras_h5` never
opens an ``.h5`` in the calling process. It runs this file as a script::

    python -P _h5_child.py FILE MEMORY_BYTES CPU_SECONDS

which limits its own address space and CPU time (``resource.setrlimit``), reads the file,
and writes one answer to stdout: ``OK`` and a safetensors blob (the datasets keyed
``<layer index>/<weight index>``, the layer and weight names in its metadata), or ``ER``
and a JSON ``{"message", "variable"}``. Everything is checked before any data is read:
every link on the way is a hard link (no soft or external links), datasets keep their
bytes inside the file (no external storage, no virtual datasets) and have storage
allocated (no fill-value datasets), use only the built-in filters, and hold plain numbers
of a bounded shape. Plugins are never loaded (``HDF5_PLUGIN_PRELOAD=::``, set by the
parent).

This file imports nothing from mobilevec (it starts in a fresh interpreter: the import
of the package would cost more than the read); its caps repeat those of
:mod:`mobilevec.formats._limits`.
"""

from __future__ import annotations

import json
import math
import os
import sys

MAX_TENSORS = 20_000
MAX_NAME_BYTES = 4096
MAX_RANK = 8
MAX_TOTAL_BYTES = 1 << 30
# deflate, shuffle, fletcher32, scale-offset, and h5py's built-in lzf: no plugins.
ALLOWED_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 6: "scaleoffset",
                   32000: "lzf"}


class Refused(Exception):
    """The file is not a Keras weights file this reader accepts; carries the variable."""

    def __init__(self, message: str, variable: str | None = None):
        super().__init__(message)
        self.variable = variable


def _text(value) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(f"name {value[:80]!r} is not UTF-8") from None
    if not isinstance(value, str):
        raise Refused(f"name of type {type(value).__name__}, expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # h5py keeps undecodable bytes as surrogates
        raise Refused(f"name {value[:80]!r} is not UTF-8") from None
    return value


def _names(node, attr: str) -> list[str]:
    """A 1-D string attribute (``layer_names``, ``weight_names``), its type checked first."""
    import h5py

    if attr not in node.attrs:
        return []
    aid = h5py.h5a.open(node.id, attr.encode())
    if aid.shape is not None and len(aid.shape) == 1 and aid.shape[0] == 0:
        return []  # Keras writes an empty float64 array for layers without weights
    if aid.dtype.kind not in "SUO" or aid.shape is None or len(aid.shape) > 1:
        raise Refused(f"attribute {attr!r} of type {aid.dtype} and shape {aid.shape}, "
                      "expected a list of strings")
    count = math.prod(aid.shape)
    if count > MAX_TENSORS:
        raise Refused(f"attribute {attr!r} lists {count} names (at most {MAX_TENSORS})")
    values = node.attrs[attr]
    names = [_text(v) for v in (values.reshape(-1) if hasattr(values, "reshape") else [values])]
    for name in names:
        if len(name) > MAX_NAME_BYTES:
            raise Refused(f"a {len(name)}-character name in {attr!r}")
    return names


def _hard_child(group, path: str, what: str):
    """``group[path]`` reached through hard links only (one component at a time)."""
    import h5py

    node = group
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if not isinstance(node, h5py.Group):
            raise Refused(f"{what}: {part!r} lies under a dataset", path)
        link = node.get(part, getlink=True)
        if link is None:
            raise Refused(f"{what} is missing", path)
        if not isinstance(link, h5py.HardLink):
            kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise Refused(f"{what} is reached through {kind}: refused (a weights file must "
                          "hold its data itself)", path)
        node = node[part]
    return node


def _check_dataset(ds, name: str, file_size: int) -> int:
    """Bytes the dataset decodes to, after refusing anything that reads outside the file."""
    import h5py

    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise Refused("virtual dataset (its data lives in other files): refused", name)
    if dcpl.get_external_count():
        raise Refused("dataset with external storage (its data lives in another file): "
                      "refused", name)
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in ALLOWED_FILTERS:
            raise Refused(f"dataset uses HDF5 filter {code}, not a built-in one", name)
    dtype = ds.dtype
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise Refused(f"dataset of type {dtype}, expected plain numbers", name)
    shape = ds.shape
    if shape is None or len(shape) > MAX_RANK:
        raise Refused(f"dataset of shape {shape}", name)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_TOTAL_BYTES:
        raise Refused(f"dataset of shape {list(shape)} would take {nbytes} bytes", name)
    stored = ds.id.get_storage_size()
    if nbytes and not stored:
        raise Refused("dataset has no storage allocated (only a fill value): not weights",
                      name)
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if stored != nbytes or offset is None or offset + stored > file_size:
            raise Refused(f"dataset stores {stored} bytes at {offset} for {nbytes} bytes of "
                          f"data in a {file_size}-byte file", name)
    elif not dcpl.get_nfilters() and stored < nbytes:  # unallocated chunks: fill values
        raise Refused(f"dataset stores {stored} bytes for {nbytes} bytes of data", name)
    return nbytes


def read_raw(path: str) -> tuple[list[tuple[str, list[str]]], dict[str, object], bool]:
    """``(layers, arrays, keras3_weights_file)`` of a Keras ``.h5``: ``layers`` lists
    ``(layer name, weight names)``, ``arrays`` maps ``"<i>/<j>"`` to the j-th weight of the
    i-th layer. Raises :class:`Refused`, or whatever h5py raises on a corrupt file."""
    import h5py
    import numpy as np

    file_size = os.path.getsize(path)
    with h5py.File(path, "r") as f:
        root = f
        if "model_weights" in f:
            root = _hard_child(f, "model_weights", "the model_weights group")
            if not isinstance(root, h5py.Group):
                raise Refused("model_weights is not a group")
        names = _names(root, "layer_names")
        if not names:
            link = f.get("layers", getlink=True)
            return [], {}, isinstance(link, h5py.HardLink)
        layers: list[tuple[str, list[str]]] = []
        arrays: dict[str, object] = {}
        total = 0
        for i, layer in enumerate(names):
            group = _hard_child(root, layer, f"layer group {layer!r}")
            if not isinstance(group, h5py.Group):
                raise Refused(f"layer {layer!r} is not a group", layer)
            weights = _names(group, "weight_names")
            layers.append((layer, weights))
            for j, weight in enumerate(weights):
                ds = _hard_child(group, weight, f"weight {weight!r}")
                if not isinstance(ds, h5py.Dataset):
                    raise Refused("weight is not a dataset", weight)
                total += _check_dataset(ds, weight, file_size)
                if total > MAX_TOTAL_BYTES:
                    raise Refused(f"datasets add up to more than {MAX_TOTAL_BYTES} bytes",
                                  weight)
                array = np.empty(ds.shape, dtype=ds.dtype.newbyteorder("="))
                if array.size:
                    ds.read_direct(array)
                arrays[f"{i}/{j}"] = array
    return layers, arrays, False


def _limit(memory: int, cpu: float) -> None:
    """Cap this process: ``memory`` bytes of address space beyond what it holds now, and
    ``cpu`` seconds of CPU beyond what it used so far."""
    try:
        import resource
    except ImportError:  # Windows: the parent's wall-clock timeout is the only bound
        return
    try:
        with open("/proc/self/statm") as f:
            held = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        held = 0
    if held:  # RLIMIT_AS counts the interpreter and libraries too: give the budget on top
        resource.setrlimit(resource.RLIMIT_AS, (held + memory, held + memory))
    used = resource.getrusage(resource.RUSAGE_SELF)
    seconds = math.ceil(used.ru_utime + used.ru_stime + cpu)
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))


# What h5py raises for a file that HDF5 cannot read (corrupt structures, bad offsets).
HDF5_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


def encode_answer(layers: list[tuple[str, list[str]]], arrays: dict, keras3: bool) -> bytes:
    from safetensors.numpy import save

    return b"OK" + save(arrays, metadata={"layers": json.dumps(layers), "keras3": str(keras3)})


def answer(path: str) -> bytes:
    """What the child writes to stdout for ``path``: ``OK`` + safetensors, or ``ER`` + JSON."""
    try:
        return encode_answer(*read_raw(path))
    except Refused as e:
        error = {"message": str(e), "variable": e.variable}
    except MemoryError:
        error = {"message": "ran out of its memory limit reading the file (a crafted or "
                            "corrupt file)"}
    except Exception as e:  # h5py raises OSError, KeyError, ValueError, RuntimeError ...
        error = {"message": f"not a readable HDF5 file ({type(e).__name__}: {e})"[:2000]}
    return b"ER" + json.dumps(error).encode()


def main(argv: list[str]) -> int:
    path, memory, cpu = argv[1], int(argv[2]), float(argv[3])
    import h5py  # noqa: F401  (imported before the limits: its libraries are not the budget)
    import numpy as np  # noqa: F401
    import safetensors.numpy  # noqa: F401

    _limit(memory, cpu)
    sys.stdout.buffer.write(answer(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
