"""Known models: name → architecture, depth multiplier, input size and hub contract.

Names follow TF Hub (``mobilenet_v2_100_224``, ``mobilenet_v3_small_075_224``). Every
variant is a row of data over the tables in :mod:`mobilevec.specs`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnknownModelError
from .names import model_variables
from .specs import ARCHITECTURES, ArchSpec, ResolvedLayer, resolve


@dataclass(frozen=True)
class ModelConfig:
    """What a model name means.

    ``image_size`` is the size the TF Hub module was trained and published for; the
    PyTorch module accepts any H, W ≥ 32. Inputs are RGB floats in [0, 1] (the hub
    contract), scaled to [-1, 1] inside the model.
    """

    name: str
    arch: str
    multiplier: float
    image_size: int
    # TF convention (decay of the moving averages) used when fine-tuning; TF Hub's
    # V3 cards default to 0.99, TF-Slim's training scope (V2) to 0.997.
    batch_norm_momentum: float

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
                                       int(mult) / 100, size, 0.997))
    for kind in ("small", "large"):
        for mult in ("075", "100"):
            configs.append(ModelConfig(f"mobilenet_v3_{kind}_{mult}_224", f"mobilenet_v3_{kind}",
                                       int(mult) / 100, 224, 0.99))
        configs.append(ModelConfig(f"mobilenet_v3_{kind}_minimalistic_100_224",
                                   f"mobilenet_v3_{kind}_minimalistic", 1.0, 224, 0.99))
    return {c.name: c for c in configs}


MODELS: dict[str, ModelConfig] = _build_registry()


def list_models() -> list[str]:
    """Names accepted by :func:`mobilevec.create`, sorted."""
    return sorted(MODELS)


def get_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a model name; unknown names list the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


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
