"""Differentiable mutual information of two intensity samples (Parzen windows, torch).

The intensity similarity that ANTs, elastix and SimpleITK optimise across contrasts: Mattes et al.'s
formulation (*IEEE TMI* 2003) — a joint histogram of the fixed and moving intensities at a fixed set of
sample points, each intensity spread over the bins by a cubic B-spline window, so the histogram (and the
mutual information) is a smooth function of the moving intensities. Each window touches four bins, so the
histogram is built from 16 weighted entries per point (``index_add``), not a dense (N × bins²) product.
``registration_models`` uses it for its last, full-resolution refinement of a linear transform
(``registration_models._polish_linear``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["bspline_window", "mutual_information", "sample_with_gradient"]


def bspline_window(values: Any, bins: int) -> tuple[Any, Any]:
    """The four bins each value in [0, 1] touches and their cubic B-spline weights: (N, 4) int64, (N, 4).

    Values are mapped to bin coordinates ``2 … bins − 3``, so a window (support ± 2 bins) never leaves the
    histogram; the weights of a value sum to 1 and are differentiable in the value.
    """
    import torch

    u = 2.0 + values.clamp(0.0, 1.0) * (bins - 5)
    first = torch.floor(u.detach()).long() - 1
    idx = first[:, None] + torch.arange(4)
    t = (u[:, None] - idx.to(u.dtype)).abs()
    inner = 2.0 / 3.0 - t * t + 0.5 * t ** 3
    outer = (2.0 - t).clamp_min(0.0) ** 3 / 6.0
    return idx, torch.where(t < 1.0, inner, outer)


def mutual_information(fixed_window: tuple[Any, Any], moving: Any, mask: Any, bins: int = 32) -> Any:
    """Mutual information (nats) of fixed and moving intensities at the points where ``mask`` is 1.

    Parameters
    ----------
    fixed_window : (torch.Tensor, torch.Tensor)
        :func:`bspline_window` of the fixed intensities (computed once per registration).
    moving : torch.Tensor, (N,)
        Moving intensities in [0, 1] at the same points (differentiable).
    mask : torch.Tensor, (N,)
        1 for points that count (inside both images), else 0.
    bins : int

    Returns
    -------
    torch.Tensor
        A scalar, ≥ 0; larger = more mutually predictable.
    """
    import torch

    fi, fw = fixed_window
    mi_, mw = bspline_window(moving, bins)
    flat = (fi[:, :, None] * bins + mi_[:, None, :]).reshape(-1)
    w = ((fw * mask[:, None])[:, :, None] * mw[:, None, :]).reshape(-1)
    joint = torch.zeros(bins * bins, dtype=w.dtype).index_add(0, flat, w).view(bins, bins)
    joint = joint / joint.sum().clamp_min(1e-12)
    pf, pm = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    ratio = joint / (pf * pm).clamp_min(1e-12)
    return (joint * torch.log(ratio.clamp_min(1e-12))).sum()


def sample_with_gradient(image: Any, grad: Any, coords: Any) -> Any:
    """Linear interpolation of ``image`` (1, 1, *S) at pixel coordinates ``coords`` (N, d), differentiable in
    ``coords`` through the interpolated central-difference gradient ``grad`` (1, d, *S) rather than through
    the piecewise-constant slope of the linear interpolant — the smooth derivative that ITK's metrics use.
    """
    import torch
    import torch.nn.functional as F

    d = coords.shape[-1]
    size = torch.tensor([max(s - 1, 1) for s in image.shape[2:]], dtype=coords.dtype)
    g = (2.0 * coords.detach() / size - 1.0).flip(-1).view(1, *([1] * (d - 1)), -1, d)
    val = F.grid_sample(image, g, mode="bilinear", padding_mode="border", align_corners=True).reshape(-1)
    slope = F.grid_sample(grad, g, mode="bilinear", padding_mode="border", align_corners=True)
    slope = slope.reshape(d, -1).T
    return val + ((coords - coords.detach()) * slope).sum(-1)
