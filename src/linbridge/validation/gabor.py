"""Simple vs complex cells: linear Gabor filters vs the energy of quadrature Gabor pairs.

Stimuli are image patches: from scikit-image's bundled natural images when scikit-image
is installed, else synthetic 1/f noise images with gratings (``source`` in the result
says which). Features are the patch pixels (patch mean removed), z-scored with training
statistics; units read them through unit-norm Gabor filters g:

* simple cell:  y = g . x
* complex cell: y = (g_even . x)^2 + (g_odd . x)^2

Noisy responses (noise sd U(0.2, 0.8) x the unit's signal sd) are z-scored with training
statistics. The exact functions (a torch module) give exact Jacobians; an MLP encoder
trained on the noisy responses gives the trained level.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

_SKIMAGE_IMAGES = ("camera", "moon", "coins", "astronaut", "coffee", "chelsea", "rocket",
                   "grass", "gravel", "brick", "clock", "page")


def natural_images() -> tuple[list[np.ndarray], str]:
    """Grayscale float images in [0, 1] from scikit-image's bundled data, or synthetic ones."""
    try:
        from skimage import color, data, img_as_float
    except ImportError:
        return synthetic_images(), "synthetic (scikit-image not installed)"
    imgs, names = [], []
    for name in _SKIMAGE_IMAGES:
        try:
            im = img_as_float(getattr(data, name)())
        except Exception:  # an image that needs a download, or is missing: skip it
            continue
        if im.ndim == 3:
            im = color.rgb2gray(im[..., :3])
        imgs.append(np.asarray(im, dtype=np.float64))
        names.append(name)
    if len(imgs) < 3:
        return synthetic_images(), "synthetic (scikit-image data unavailable)"
    return imgs, "scikit-image natural images: " + ", ".join(names)


def synthetic_images(n: int = 8, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """1/f (pink) noise images with a few superposed gratings."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        spec = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) / f
        im = np.real(np.fft.ifft2(spec))
        for _ in range(3):
            th, fr = rng.uniform(0, np.pi), rng.uniform(0.03, 0.2)
            im += 0.5 * im.std() * np.cos(2 * np.pi * fr * (xx * np.cos(th) + yy * np.sin(th))
                                          + rng.uniform(0, 2 * np.pi))
        out.append((im - im.min()) / (im.max() - im.min()))
    return out


def sample_patches(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """n random size x size patches (mean removed), flattened: (n, size * size)."""
    out = np.empty((n, size * size))
    which = rng.integers(0, len(images), n)
    for i, k in enumerate(which):
        im = images[k]
        r0 = rng.integers(0, im.shape[0] - size + 1)
        c0 = rng.integers(0, im.shape[1] - size + 1)
        p = im[r0:r0 + size, c0:c0 + size].ravel()
        out[i] = p - p.mean()
    return out


def gabor(size: int, theta: float, freq: float, phase: float, sigma: float, cx: float,
          cy: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    xr = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    env = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
    g = env * np.cos(2 * np.pi * freq * xr + phase)
    g -= g.mean()
    return (g / np.linalg.norm(g)).ravel()


class GaborCells(nn.Module):
    """Simple cells (linear) then complex cells (quadrature energy), in z-scored units."""

    def __init__(self, G_simple: np.ndarray, G_even: np.ndarray, G_odd: np.ndarray,
                 offset: np.ndarray, scale: np.ndarray):
        super().__init__()
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        self.register_buffer("Gs", t(G_simple))
        self.register_buffer("Ge", t(G_even))
        self.register_buffer("Go", t(G_odd))
        self.register_buffer("offset", t(offset))
        self.register_buffer("scale", t(scale))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.Gs.dtype)
        simple = x @ self.Gs.T
        complex_ = (x @ self.Ge.T) ** 2 + (x @ self.Go.T) ** 2
        return torch.cat([simple, complex_], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.offset) / self.scale


@dataclass
class GaborData:
    X: np.ndarray
    Y: np.ndarray
    is_complex: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    cells: GaborCells
    source: str


def make_gabor_data(n_per_class: int = 32, patch: int = 16, n_train: int = 4000,
                    n_val: int = 1000, n_test: int = 1000, seed: int = 0) -> GaborData:
    rng = np.random.default_rng(seed)
    images, src = natural_images()
    n = n_train + n_val + n_test
    P = sample_patches(images, n, patch, rng)
    train, val, test = np.arange(n_train), np.arange(n_train, n_train + n_val), \
        np.arange(n_train + n_val, n)
    mu, sd = P[train].mean(0), P[train].std(0)
    X = (P - mu) / np.where(sd > 0, sd, 1.0)

    def params():
        freq = rng.uniform(0.1, 0.25)
        return dict(theta=rng.uniform(0, np.pi), freq=freq, sigma=min(0.45 / freq, patch / 4),
                    cx=(patch - 1) / 2 + rng.uniform(-patch / 8, patch / 8),
                    cy=(patch - 1) / 2 + rng.uniform(-patch / 8, patch / 8))

    Gs = np.stack([gabor(patch, phase=rng.uniform(0, 2 * np.pi), **params())
                   for _ in range(n_per_class)])
    pairs = [params() for _ in range(n_per_class)]
    Ge = np.stack([gabor(patch, phase=0.0, **p) for p in pairs])
    Go = np.stack([gabor(patch, phase=np.pi / 2, **p) for p in pairs])
    V = 2 * n_per_class
    cells = GaborCells(Gs, Ge, Go, np.zeros(V), np.ones(V))
    with torch.no_grad():
        g = cells.raw(torch.as_tensor(X)).numpy()
    y = g + rng.uniform(0.2, 0.8, V) * g.std(0) * rng.standard_normal(g.shape)
    y_mu, y_sd = y[train].mean(0), y[train].std(0)
    cells.offset.copy_(torch.as_tensor(y_mu))
    cells.scale.copy_(torch.as_tensor(y_sd))
    Y = (y - y_mu) / y_sd
    is_complex = np.repeat([False, True], n_per_class)
    return GaborData(X.astype(np.float32), Y.astype(np.float32), is_complex, train, val, test,
                     cells.eval(), src)
