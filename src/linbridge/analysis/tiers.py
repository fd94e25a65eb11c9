"""Per-label (ROI / tier) summaries of per-unit values."""
from __future__ import annotations

import numpy as np


def label_order(labels: np.ndarray) -> list[str]:
    """Labels in first-seen order (dataset order is the tier order), 'other' last."""
    seen: list[str] = []
    for lab in np.asarray(labels).astype(str):
        if lab not in seen:
            seen.append(lab)
    return sorted(seen, key=lambda s: (s == "other", seen.index(s)))


def tier_medians(values: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Median of a per-unit value within each label, NaN ignored."""
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels).astype(str)
    if values.shape[0] != labels.shape[0]:
        raise ValueError(f"{values.shape[0]} values but {labels.shape[0]} labels")
    return {lab: float(np.nanmedian(values[labels == lab])) for lab in label_order(labels)}
