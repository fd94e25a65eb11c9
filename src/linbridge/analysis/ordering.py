"""1-D orderings of the test samples (for AFD)."""
from __future__ import annotations

import numpy as np
from sklearn.manifold import TSNE


def tsne_order(X: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """1-D t-SNE coordinate of every sample, (n_samples,). Random: report several seeds."""
    X = np.asarray(X, dtype=np.float64)
    perp = min(perplexity, max(2.0, (X.shape[0] - 1) / 3))
    emb = TSNE(n_components=1, perplexity=perp, random_state=seed, init="pca",
               max_iter=500).fit_transform(X)
    return emb[:, 0]
