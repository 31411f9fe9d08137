"""Known models: name → architecture, depth multiplier and the contract of its vectors.

Names follow TF Hub (``mobilenet_v2_100_224``, ``mobilenet_v3_small_075_224``). Every
variant is a row of data over the tables in :mod:`mobilevec.models.specs`. A
:class:`ModelConfig` carries what users of the vectors need to know: the input contract
(size, value range, resize rule), the output size and the near-duplicate rule
(:class:`DedupRule`: how ``dedup`` scores a pair and the calibrated threshold);
weights artifacts (:mod:`mobilevec.hub.artifacts`) point at a config, so that ``load``,
``embed`` and ``export`` read the contract instead of guessing it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from ..errors import UnknownModelError
from .names import model_variables
from .specs import ARCHITECTURES, ArchSpec, ResolvedLayer, resolve


@dataclass(frozen=True)
class InputContract:
    """What the module takes, as the TF Hub modules define it.

    ``size`` (H, W) is what the module was trained and published for (the PyTorch module
    accepts any H, W ≥ 32); values are RGB floats in ``value_range`` (scaled to [-1, 1]
    inside the model); files become inputs by ``resize`` (:mod:`mobilevec.data.images`)
    with ``crop``.
    """

    size: tuple[int, int]
    value_range: tuple[float, float] = (0.0, 1.0)
    color: str = "RGB"
    resize: str = "tf.image.resize bilinear, half-pixel centres, no antialias"
    crop: str = "none"

    def describe(self) -> str:
        """The contract in words (what exported models record as their ``input``)."""
        lo, hi = self.value_range
        h, w = self.size
        return (f"float32 {self.color} in [{lo:g}, {hi:g}], scaled to [-1, 1] inside; "
                f"published at {h}x{w}; files resized by {self.resize}, crop {self.crop}")


SCORES = ("cosine", "centred")


@dataclass(frozen=True)
class DedupRule:
    """How ``dedup`` compares two images of one collection, and where it draws the line.

    ``score`` "cosine": the cosine of the two vectors; "centred": the cosine of the two
    vectors after subtracting the collection's mean vector (collection-adaptive: V2's
    pooled ReLU6 features are all non-negative, so every plain cosine is high and only the
    part that differs from the average photo tells duplicates apart). ``threshold``: pairs
    scoring at or above it are near-duplicates. ``benchmarks/dedup_quality.py`` sweeps it on
    transformed copies of real photos.
    """

    score: str
    threshold: float

    def describe(self) -> str:
        what = "cosine" if self.score == "cosine" else "cosine of collection-centred vectors"
        return f"{what} >= {self.threshold:g}"


# Calibrated by benchmarks/dedup_quality.py (docs/benchmarks.md, "Dedup and search"): the
# lowest threshold whose pairwise precision is >= 0.99 on both halves of its transformed
# set (two sets with no photo in common). V3: centring finds more (recall 0.74 vs 0.70 for
# plain cosine at that precision); V2: plain cosine keeps its precision on both halves,
# centred does not.
_V2_DEDUP = DedupRule("cosine", 0.82)
_V3_DEDUP = DedupRule("centred", 0.68)


@dataclass(frozen=True)
class ModelConfig:
    """What a model name means: architecture, multiplier and the contract of its vectors.

    ``image_size`` is the size the TF Hub module was trained and published for (see
    :attr:`input`). ``batch_norm_momentum`` is TF's convention (decay of the moving
    averages) used when fine-tuning: TF Hub's V3 cards default to 0.99, TF-Slim's training
    scope (V2) to 0.997. ``dedup`` is the :class:`DedupRule` ``mobilevec dedup`` applies by
    default (:mod:`mobilevec.embedding.dedup`; see docs/dedup.md).
    """

    name: str
    arch: str
    multiplier: float
    image_size: int
    batch_norm_momentum: float
    dedup: DedupRule = _V3_DEDUP

    @property
    def input(self) -> InputContract:
        return InputContract((self.image_size, self.image_size))

    @property
    def spec(self) -> ArchSpec:
        return ARCHITECTURES[self.arch]

    def resolved_layers(self) -> tuple[ResolvedLayer, ...]:
        return resolve(self.spec, self.multiplier)

    @property
    def num_features(self) -> int:
        last = self.resolved_layers()[-1]
        return getattr(last, "out_channels", getattr(last, "channels", 0))


def _build_registry() -> dict[str, ModelConfig]:
    configs: list[ModelConfig] = []
    for mult in ("035", "050", "075", "100", "130", "140"):
        for size in (96, 128, 160, 192, 224):
            configs.append(ModelConfig(f"mobilenet_v2_{mult}_{size}", "mobilenet_v2",
                                       int(mult) / 100, size, 0.997, _V2_DEDUP))
    for kind in ("small", "large"):
        for mult in ("075", "100"):
            configs.append(ModelConfig(f"mobilenet_v3_{kind}_{mult}_224", f"mobilenet_v3_{kind}",
                                       int(mult) / 100, 224, 0.99, _V3_DEDUP))
        configs.append(ModelConfig(f"mobilenet_v3_{kind}_minimalistic_100_224",
                                   f"mobilenet_v3_{kind}_minimalistic", 1.0, 224, 0.99,
                                   _V3_DEDUP))
    return {c.name: c for c in configs}


MODELS: dict[str, ModelConfig] = _build_registry()


def _natural_key(name: str) -> list[int | str]:
    """Numbers compared as numbers: ``..._96`` before ``..._224``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models() -> list[str]:
    """Names accepted by :func:`mobilevec.create`, in natural order (V2 before V3, smaller
    multipliers and sizes first: ``mobilenet_v2_035_96`` before ``mobilenet_v2_035_224``)."""
    return sorted(MODELS, key=_natural_key)


def get_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a model name; an unknown name gets the closest known
    ones ("did you mean") and the list of all."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(MODELS), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint}; known models (`mobilevec "
                                f"list`): {', '.join(list_models())}") from None


def infer_model(shapes: dict[str, tuple[int, ...]], image_size: int | None = None) -> str:
    """The registered model whose variables have exactly these TF-Slim names and shapes.

    ``shapes`` maps variable names to shapes (extra variables, such as logits, are
    allowed). Variants that differ only in input size share weights: the published
    ``image_size`` (default 224) picks among them. The expected shapes come from the
    architecture tables (:func:`~mobilevec.models.names.model_variables`); no module is
    built. Raises :class:`UnknownModelError`.
    """
    wanted = image_size or 224
    candidates = sorted(MODELS.values(), key=lambda c: (c.image_size != wanted, c.name))
    seen_archs: set[tuple[str, float]] = set()
    for config in candidates:
        if (config.arch, config.multiplier) in seen_archs:
            continue
        seen_archs.add((config.arch, config.multiplier))
        if not any(name.startswith(config.spec.root_scope + "/") for name in shapes):
            continue
        if all(tuple(shapes.get(v.name.tf_name, ())) == v.tf_shape
               for v in model_variables(config)):
            return config.name
    raise UnknownModelError("these weights match no known MobileNet variant; pass the model "
                            f"name explicitly (known: {', '.join(list_models())})")
