"""1-D orderings of the test samples (for AFD), and AFD's robustness to the ordering.

AFD fits a line to the projected mapping bias along an ordering of the samples. The
paper orders by a 1-D t-SNE, which is random; here AFD is also computed along
orderings that are not t-SNE: the first principal component of the features, image
luminance and RMS contrast (when images exist), and random permutations. The random
permutations give each unit a null distribution: an AFD that does not exceed what a
random order gives says nothing about smooth variation along the ordering.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from sklearn.manifold import TSNE

from ..metrics import afd


def tsne_order(X: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """1-D t-SNE coordinate of every sample, (n_samples,). Random: report several seeds.

    The start is random (``init="random"``, seeded): with scikit-learn's PCA start the
    optimisation is deterministic and every seed gives the same order (the first principal
    component, refined), which would hide exactly the dependence on the seed that AFD has.
    """
    X = np.asarray(X, dtype=np.float64)
    perp = min(perplexity, max(2.0, (X.shape[0] - 1) / 3))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # faster here: torch's and sklearn's OpenMP contend
        emb = TSNE(n_components=1, perplexity=perp, random_state=seed, init="random",
                   max_iter=500).fit_transform(X)
    return emb[:, 0]


def random_order(n: int, seed: int = 0) -> np.ndarray:
    """A uniformly random order of n samples (positions 0..n-1)."""
    return np.random.default_rng(seed).permutation(n).astype(np.float64)


def pc1_order(X: np.ndarray) -> np.ndarray:
    """Projection of the (centred) features on their first principal component."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    return Xc @ vt[0]


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean luminance and RMS contrast (std of luminance) of uint8 RGB images, in [0, 1].

    images : (n, H, W, 3) uint8 (or (n, H, W) grey). Luminance uses Rec. 601 weights.
    """
    im = np.asarray(images)
    if im.ndim not in (3, 4):
        raise ValueError(f"images must be (n, H, W[, 3]), got shape {im.shape}")
    im = im.astype(np.float64) / (255.0 if im.dtype == np.uint8 else 1.0)
    lum = im @ np.array([0.299, 0.587, 0.114]) if im.ndim == 4 else im
    flat = lum.reshape(lum.shape[0], -1)
    return {"luminance": flat.mean(1), "contrast": flat.std(1)}


def afd_robustness(dev_down: np.ndarray, orderings: Mapping[str, np.ndarray],
                   n_random: int = 100, seed: int = 0,
                   extra: Mapping[str, np.ndarray] | None = None) -> dict:
    """AFD of every unit under each ordering, against a null of random orderings.

    dev_down : (n_samples, n_units[, e]) projected mapping biases
    orderings : {name: (n_samples,) position}; ``extra`` : {name: (n_units,) AFD already
        computed (e.g. the pipeline's t-SNE seeds)} joins them.
    Returns {"afd": {name: (n_units,)}, "null_mean", "null_q95": (n_units,),
    "p": {name: (n_units,) permutation p-value of AFD >= null}, "summary": {...},
    "rank_agreement": (names, matrix of Spearman correlations between orderings)}.
    """
    from scipy.stats import spearmanr

    d = np.asarray(dev_down, dtype=np.float64)
    n = d.shape[0]
    res: dict[str, np.ndarray] = {k: np.asarray(v, dtype=np.float64)
                                  for k, v in (extra or {}).items()}
    for name, order in orderings.items():
        order = np.asarray(order)
        if order.shape[0] != n:
            raise ValueError(f"ordering {name!r} has {order.shape[0]} samples, biases {n}")
        res[name] = afd(d, order)
    rng = np.random.default_rng(seed)
    null = np.stack([afd(d, rng.permutation(n)) for _ in range(n_random)]) if n_random else None
    out: dict = {"afd": res, "n_random": int(n_random)}
    if null is not None:
        out["null_mean"] = null.mean(0)
        out["null_q95"] = np.percentile(null, 95, axis=0)
        out["p"] = {k: (1 + (null >= v[None]).sum(0)) / (1 + n_random) for k, v in res.items()}
        out["random_example"] = null[0]
    names = list(res)
    M = np.eye(len(names))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = res[names[i]], res[names[j]]
            ok = np.isfinite(a) & np.isfinite(b)
            M[i, j] = M[j, i] = spearmanr(a[ok], b[ok])[0] if ok.sum() > 2 else np.nan
    out["rank_agreement"] = {"names": names, "spearman": M}
    summ = {}
    for k, v in res.items():
        s = {"median": float(np.nanmedian(v)), "mean": float(np.nanmean(v))}
        if null is not None:
            s["fraction_above_random_q95"] = float(np.mean(v > out["null_q95"]))
            s["median_ratio_to_random"] = float(np.nanmedian(v / np.maximum(out["null_mean"],
                                                                            1e-300)))
        summ[k] = s
    if null is not None:
        summ["random (null mean)"] = {"median": float(np.median(out["null_mean"])),
                                      "mean": float(np.mean(out["null_mean"])),
                                      "fraction_above_random_q95": 0.05,
                                      "median_ratio_to_random": 1.0}
    out["summary"] = summ
    return out
