"""Benchmark metrics: accuracy, confusion matrix and great-circle direction errors.

Angles are radians in code; only the user-facing DOA summaries are in degrees.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dataloading.foa import direction_vector

# DCASE SELD counts a direction estimate as correct within 20°.
DOA_THRESHOLD_DEG = 20.0


def accuracy(predicted: Tensor, target: Tensor) -> float:
    """Fraction of equal labels, in [0, 1]."""
    return float((predicted == target).float().mean())


def confusion_matrix(predicted: Tensor, target: Tensor, classes: int) -> np.ndarray:
    """``[classes, classes]`` counts; row = true class, column = predicted class."""
    flat = target.long() * classes + predicted.long()
    return torch.bincount(flat, minlength=classes * classes).view(classes, classes).numpy()


def angular_error(az: Tensor, el: Tensor, az_true: Tensor, el_true: Tensor) -> Tensor:
    """Great-circle angle in radians, in [0, π], between directions given as azimuth/elevation (radians).

    Computed with atan2(|u × v|, u · v), which stays accurate for tiny and near-antipodal errors
    where acos of the dot product loses precision.
    """
    u = direction_vector(az, el).double()
    v = direction_vector(az_true, el_true).double()
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def vector_to_angles(vector: Tensor) -> tuple[Tensor, Tensor]:
    """Azimuth and elevation in radians of (not necessarily unit) vectors ``[..., 3]`` (x, y, z)."""
    x, y, z = vector.unbind(-1)
    return torch.atan2(y, x), torch.atan2(z, torch.hypot(x, y))


def doa_summary(errors: Tensor) -> dict[str, float]:
    """``mean_error_deg`` and ``acc20`` (fraction of errors within 20°) of errors in radians."""
    degrees = torch.rad2deg(errors.double())
    return {
        "mean_error_deg": float(degrees.mean()),
        "acc20": float((degrees <= DOA_THRESHOLD_DEG).double().mean()),
    }
