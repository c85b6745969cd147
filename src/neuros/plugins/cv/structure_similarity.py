"""The structure-channel similarity of the linear registration's levels, and its gradient, in NumPy.

``registration_models._Level`` compares a fixed image with the moving image resampled at moving-image
coordinates ``y``: both as *structure channels* — the products ``n_i n_j`` of the normalised intensity gradient
``n = ∇I / sqrt(|∇I|² + ε²)``, which do not care about the sign or scale of the contrast — by the cosine of the
mean-removed channels inside the overlap. L-BFGS needs that value and its derivative with respect to ``y`` some
10–60 times per level. Through torch's autograd each evaluation was ~100 small operations and their backward
(3–9 ms on 58 × 49 … 175 × 148 levels, nearly all of it per-operation overhead); here the chain rule is
written out once (each step's transpose next to it) on NumPy arrays, whose operations cost a few µs each.
Equal to the autograd computation in value and gradient (tested); 2-D and 3-D.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["StructureLevel", "central_differences", "central_differences_transpose", "sample_linear"]


def sample_linear(image: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of ``image`` (*M) at pixel coordinates ``coords`` (d, *S) — axis first —, zero outside
    the image (``grid_sample``'s ``padding_mode="zeros"``, ``align_corners=True``), and its derivative with
    respect to the coordinates: values (*S), slopes (d, *S) — the slope of the interpolant itself, as autograd's."""
    d = image.ndim
    padded = np.pad(image, 1).reshape(-1)  # a corner outside the image reads a zero of the padding
    pshape = [n + 2 for n in image.shape]
    strides = np.cumprod((1, *pshape[::-1]))[:d][::-1].tolist()
    base = np.floor(coords)
    frac = (coords - base).astype(image.dtype, copy=False)
    base = base.astype(np.int64)
    far = np.zeros(coords.shape[1:], dtype=bool)  # every corner outside: 0
    start = np.zeros(coords.shape[1:], dtype=np.int64)
    for k in range(d):
        far |= (base[k] < -1) | (base[k] > pshape[k] - 3)
        start += (np.clip(base[k], -1, pshape[k] - 3) + 1) * strides[k]
    wts = [(1 - frac[k], frac[k]) for k in range(d)]
    out = np.zeros(coords.shape[1:], dtype=image.dtype)
    slope = np.zeros(coords.shape, dtype=image.dtype)
    for corner in itertools.product((0, 1), repeat=d):
        val = padded.take(start + sum(c * st for c, st in zip(corner, strides, strict=True)))
        ws = [wts[k][c] for k, c in enumerate(corner)]
        out += val * math.prod(ws)
        for k, c in enumerate(corner):  # ∂w/∂frac_k: the other axes' weights, signed
            others = math.prod(w for j, w in enumerate(ws) if j != k) if d > 1 else 1.0
            slope[k] += (val if c else -val) * others
    out[far] = 0
    slope[:, far] = 0
    return out, slope


def central_differences(x: np.ndarray) -> np.ndarray:
    """Central differences of ``x`` (*S) along each axis, replicate borders: (d, *S) — ``_gradients``'s."""
    out = np.empty((x.ndim, *x.shape), dtype=x.dtype)
    for ax in range(x.ndim):
        xp = np.concatenate([x.take([0], axis=ax), x, x.take([-1], axis=ax)], axis=ax)
        n = x.shape[ax]
        out[ax] = 0.5 * (xp.take(range(2, n + 2), axis=ax) - xp.take(range(n), axis=ax))
    return out


def central_differences_transpose(g: np.ndarray) -> np.ndarray:
    """The transpose of :func:`central_differences`: (d, *S) → (*S)."""
    d = g.shape[0]
    out = np.zeros(g.shape[1:], dtype=g.dtype)
    for ax in range(d):
        gk = np.moveaxis(g[ax], ax, 0)  # views: the sums go to out's own memory
        ok = np.moveaxis(out, ax, 0)
        # g[i] = ½ (x[min(i + 1, n − 1)] − x[max(i − 1, 0)])
        ok[1:] += 0.5 * gk[:-1]
        ok[-1] += 0.5 * gk[-1]
        ok[:-1] -= 0.5 * gk[1:]
        ok[0] -= 0.5 * gk[0]
    return out


def _pairs(d: int) -> list[tuple[int, int, float]]:
    return [(i, j, 1.0 if i == j else math.sqrt(2.0)) for i in range(d) for j in range(i, d)]


@dataclass
class StructureLevel:
    """One pyramid level's fixed side, for :meth:`value_and_gradient`.

    Parameters
    ----------
    fixed_channels : ndarray, (C, *S)
        The fixed image's structure channels (zero outside ``fixed_mask``).
    fixed_mask : ndarray, (*S)
        1 inside the fixed image (eroded by one pixel), else 0.
    moving : ndarray, (*M)
        The moving image at this level (smoothed as the fixed one).
    eps : float
        ε of the moving image's normalised gradient.
    f : int
        The level's downsampling factor: coordinates ``y`` are full-resolution ones.
    """

    fixed_channels: np.ndarray
    fixed_mask: np.ndarray
    moving: np.ndarray
    eps: float
    f: int

    def value_and_gradient(self, y: np.ndarray, gradient: bool = True
                           ) -> tuple[float, float, np.ndarray | None, np.ndarray | None]:
        """(similarity, overlap, ∂similarity/∂y, ∂overlap/∂y) at full-resolution moving coordinates ``y`` (*S, d).

        The similarity is the cosine of the mean-removed channels inside the valid pixels (inside both
        images, one pixel from the moving image's border); the overlap a differentiable fraction of the
        level's pixels inside the moving image (a ramp one level pixel wide at its border), for the
        optimiser's overlap penalty."""
        f, d, dt = self.f, y.shape[-1], self.moving.dtype
        yl = np.ascontiguousarray(np.moveaxis((y - (f - 1) / 2.0) / f, -1, 0), dtype=dt)  # (d, *S)
        hi = [float(n - 1) for n in self.moving.shape]
        warped, slope = sample_linear(self.moving, yl)
        inside = self.fixed_mask.astype(bool)
        for k in range(d):
            inside = inside & (yl[k] >= 1.0) & (yl[k] <= hi[k] - 1.0)
        valid = inside.astype(dt)
        g = central_differences(warped)
        r = np.sqrt((g * g).sum(0) + self.eps * self.eps + 1e-12)
        n = g / r
        pairs = _pairs(d)
        ch = np.stack([c * n[i] * n[j] for i, j, c in pairs]) * valid
        cnt = max(float(valid.sum()), 1.0)
        axes = tuple(range(1, d + 1))
        fv = self.fixed_channels * valid
        a = (fv - (fv * valid).sum(axes, keepdims=True) / cnt) * valid
        b = (ch - (ch * valid).sum(axes, keepdims=True) / cnt) * valid
        num, aa, bb = float((a * b).sum()), float((a * a).sum()), float((b * b).sum())
        den = max(math.sqrt(aa * bb), 1e-12)
        s = num / den
        # overlap ramp: clamp(min(yl, hi − yl) + ½, 0, 1), multiplied over the axes, averaged
        far_side = [hi[k] - yl[k] for k in range(d)]
        q = [np.minimum(yl[k], far_side[k]) + 0.5 for k in range(d)]
        ramp = [np.clip(qk, 0.0, 1.0) for qk in q]
        prod = math.prod(ramp)
        ov = float(prod.mean())
        if not gradient:
            return s, ov, None, None
        # similarity → b → channels (the mean's share included) → n → g → warped → yl → y
        gb = (a / den - (s / bb) * b if den > 1e-12 and bb > 0 else np.zeros_like(b)) * valid
        gch = (gb - valid * (gb.sum(axes, keepdims=True) / cnt)) * valid
        gn = np.zeros_like(n)
        for k, (i, j, c) in enumerate(pairs):
            gn[i] += c * gch[k] * n[j]
            gn[j] += c * gch[k] * n[i]
        gg = gn / r - g * ((gn * g).sum(0) / (r * r * r))
        gw = central_differences_transpose(gg)
        ds = slope * (gw / f)
        # the ramp: ∂/∂yl_k = ±1 inside [0, 1] (torch's clamp passes its bounds; minimum splits a tie: 0)
        dov = np.empty_like(yl)
        scale = 1.0 / (f * prod.size)
        for k in range(d):
            sign = (np.sign(far_side[k] - yl[k]) * ((q[k] >= 0.0) & (q[k] <= 1.0))).astype(dt)
            others = math.prod(rj for j, rj in enumerate(ramp) if j != k) if d > 1 else 1.0
            dov[k] = others * sign * scale
        ds, dov = np.moveaxis(ds, 0, -1), np.moveaxis(dov, 0, -1)
        return s, ov, ds, dov
