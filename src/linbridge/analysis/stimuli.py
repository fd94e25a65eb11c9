"""Stimulus analyses: clusters of the test images and the images with extreme mapping bias.

Following the JNE follow-up: a 2-D t-SNE of the test features, k-means on that map with
k chosen by the silhouette score, and the mean JNE-SS of every (cluster, tier). For
each tier, the samples whose mapping bias is largest and smallest (per-unit bias sizes
divided by the unit's mean first, so units with large Jacobians do not dominate).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def tsne_2d(X: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    from sklearn.manifold import TSNE

    X = np.asarray(X, dtype=np.float64)
    perp = min(perplexity, max(2.0, (X.shape[0] - 1) / 3))
    return TSNE(n_components=2, perplexity=perp, random_state=seed, init="pca",
                max_iter=500).fit_transform(X)


def kmeans_by_silhouette(Z: np.ndarray, k_range: Sequence[int] | None = None, seed: int = 0
                         ) -> dict:
    """k-means on Z for each k; the k with the largest silhouette score wins.

    Default k_range: 2 .. min(50, n // 10) (clusters of ten images on average at most; on
    NSD's 1000 test images the follow-up's k = 43 is in range). Returns {"k", "labels",
    "k_values", "silhouette", "centers"}.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    Z = np.asarray(Z, dtype=np.float64)
    n = Z.shape[0]
    if k_range is None:
        k_range = range(2, max(3, min(50, n // 10) + 1))
    ks = [k for k in k_range if 2 <= k < n]
    if not ks:
        return {"k": 1, "labels": np.zeros(n, np.int64), "k_values": [], "silhouette": [],
                "centers": Z.mean(0, keepdims=True)}
    best, scores = None, []
    for k in ks:
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(Z)
        s = float(silhouette_score(Z, km.labels_)) if len(set(km.labels_)) > 1 else -1.0
        scores.append(s)
        if best is None or s > best[0]:
            best = (s, k, km)
    _, k, km = best
    return {"k": int(k), "labels": km.labels_.astype(np.int64), "k_values": list(ks),
            "silhouette": scores, "centers": km.cluster_centers_}


def cluster_tier_means(per_sample_unit: np.ndarray, clusters: np.ndarray, labels: np.ndarray,
                       order: Sequence[str]) -> np.ndarray:
    """Mean of a (n_samples, n_units) array over the samples of each cluster and the units
    of each tier: (n_clusters, n_tiers), NaN where a tier has no units."""
    A = np.asarray(per_sample_unit, dtype=np.float64)
    cl, labs = np.asarray(clusters), np.asarray(labels).astype(str)
    if A.shape[0] != cl.shape[0] or A.shape[1] != labs.shape[0]:
        raise ValueError(f"array {A.shape} vs {cl.shape[0]} cluster labels, "
                         f"{labs.shape[0]} unit labels")
    K = int(cl.max()) + 1 if cl.size else 0
    out = np.full((K, len(order)), np.nan)
    for c in range(K):
        rows = A[cl == c]
        for j, t in enumerate(order):
            u = labs == t
            if rows.size and u.any():
                out[c, j] = np.nanmean(rows[:, u])
    return out


def sample_bias_by_tier(bias: np.ndarray, labels: np.ndarray, order: Sequence[str]
                        ) -> np.ndarray:
    """Per-sample mapping-bias size of each tier, (n_samples, n_tiers).

    bias : (n_samples, n_units) e.g. ||dJ_k[v]||_1. Each unit's column is divided by its mean
    over samples (so every unit weighs the same), then averaged over the tier's units. A
    value of 1 is the tier's typical sample.
    """
    B = np.asarray(bias, dtype=np.float64)
    labs = np.asarray(labels).astype(str)
    if B.shape[1] != labs.shape[0]:
        raise ValueError(f"bias has {B.shape[1]} units, labels {labs.shape[0]}")
    m = B.mean(0)
    R = np.where(m > 0, B / np.where(m > 0, m, 1.0), np.nan)
    out = np.full((B.shape[0], len(order)), np.nan)
    for j, t in enumerate(order):
        u = labs == t
        if u.any():
            out[:, j] = np.nanmean(R[:, u], axis=1)
    return out


def extremes(score: np.ndarray, n: int = 8) -> dict[str, np.ndarray]:
    """Positions of the n highest (descending) and n lowest (ascending) finite scores."""
    s = np.asarray(score, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(s))
    o = ok[np.argsort(s[ok], kind="stable")]
    n = min(n, o.size // 2) if o.size >= 2 else o.size
    return {"highest": o[::-1][:n], "lowest": o[:n]}


def thumbnails(images: np.ndarray, size: int = 64) -> np.ndarray:
    """Downsample uint8 (n, H, W, 3) images to at most size x size (area averaging)."""
    im = np.asarray(images)
    if im.ndim == 3:
        im = np.repeat(im[..., None], 3, axis=-1)
    n, H, W = im.shape[:3]
    f = max(1, int(np.ceil(max(H, W) / size)))
    h, w = H // f, W // f
    im = im[:, :h * f, :w * f].astype(np.float64)
    im = im.reshape(n, h, f, w, f, im.shape[-1]).mean((2, 4))
    return np.clip(np.round(im), 0, 255).astype(np.uint8)
