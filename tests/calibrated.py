"""Random TF-Slim weights that behave like trained ones, and images that tell them apart.

Independent of Keras: the Keras reference tests and the export tests both use them.
"""

from __future__ import annotations

import numpy as np


def structured_images(count: int, size: int, seed: int) -> np.ndarray:
    """[0,1] NCHW images with different coarse content: iid noise would average out in the
    global pool and make every image's features nearly the same."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 3, 6, 6))
    index = np.minimum(np.arange(size) * 6 // size, 5)
    images = coarse[:, :, index][:, :, :, index] * 0.8 + rng.random((count, 3, size, size)) * 0.2
    return images.astype(np.float32)


def calibrated_variables(name: str, seed: int, size: int = 96) -> dict[str, np.ndarray]:
    """Random TF-Slim variables with BN statistics close to real activation statistics.

    Random BN statistics let the signal fade layer by layer until every image gives the
    same vector, which would make any comparison vacuous. So the moving mean/variance are
    measured on calibration images (then jittered), as in a trained network.
    """
    import torch

    import mobilevec
    from mobilevec.models.names import to_tf_variables

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = mobilevec.create(name)
    model.set_num_classes(1000)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    with torch.no_grad():
        for n, bn in bns.items():
            low, high = (0.2, 0.6) if "project" in n else (0.5, 1.5)  # tame residual sums
            bn.weight.copy_(torch.from_numpy(rng.uniform(low, high, bn.num_features)))
            bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, bn.num_features)))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: running stats = calibration batch stats
        model.train()
        model(torch.from_numpy(structured_images(8, size, seed)))
        model.eval()
        for bn in bns.values():
            bn.running_var.mul_(torch.from_numpy(rng.uniform(0.8, 1.25, bn.num_features)))
            bn.running_mean.add_(torch.from_numpy(rng.normal(0, 0.05, bn.num_features)))
    return to_tf_variables(model)
