"""The one object every stage takes: features, responses, units, split, ground truth."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class Split:
    """Index arrays into the sample axis. No sample may appear in two parts."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.int64))

    def check(self, n_samples: int) -> None:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        for name, idx in parts.items():
            if idx.size and (idx.min() < 0 or idx.max() >= n_samples):
                raise ValueError(
                    f"split '{name}' indexes samples outside [0, {n_samples}): "
                    f"min {idx.min()}, max {idx.max()}"
                )
        seen = np.concatenate([self.train, self.val, self.test])
        if np.unique(seen).size != seen.size:
            raise ValueError("split parts overlap: a sample is in more than one of train/val/test")
        if self.train.size == 0 or self.test.size == 0:
            raise ValueError(
                f"split needs training and test samples (train {self.train.size}, "
                f"test {self.test.size})"
            )


@dataclass
class GroundTruth:
    """What a synthetic dataset planted, in the z-scored units the encoder sees.

    planted_linear : (n_units, n_features)  E_test[grad g_v(x)]
    planted_strength : (n_units,)  1 - R^2 of the best linear fit of noise-free g_v on test inputs
    """

    planted_linear: np.ndarray
    planted_strength: np.ndarray


@dataclass
class Dataset:
    """Features, responses and their metadata, ready for the encoders.

    X : (n_samples, n_features) float32, z-scored with training statistics
    Y : (n_samples, n_units) float32, z-scored with training statistics
    unit_ids : (n_units,) str
    unit_labels : (n_units,) str  ROI / tier of each unit ("" when unknown)
    sample_ids : (n_samples,) str  stimulus identifiers
    split : Split
    ground_truth : planted answers (synthetic data only)
    images : optional callable ``images(indices) -> (n, H, W, 3) uint8`` for thumbnails
    meta : free-form provenance (source files, hashes, z-scoring statistics)
    """

    name: str
    X: np.ndarray
    Y: np.ndarray
    unit_ids: np.ndarray
    unit_labels: np.ndarray
    sample_ids: np.ndarray
    split: Split
    ground_truth: GroundTruth | None = None
    images: Callable[[np.ndarray], np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_units(self) -> int:
        return int(self.Y.shape[1])

    def validate(self) -> None:
        """Check shapes and values at the boundary; errors say what and where."""
        from .preprocessing import check_finite, check_same_samples

        if self.X.ndim != 2:
            raise ValueError(f"X must be (n_samples, n_features), got shape {self.X.shape}")
        if self.Y.ndim != 2:
            raise ValueError(f"Y must be (n_samples, n_units), got shape {self.Y.shape}")
        check_same_samples(X=self.X, Y=self.Y, sample_ids=self.sample_ids)
        if len(self.unit_ids) != self.Y.shape[1] or len(self.unit_labels) != self.Y.shape[1]:
            raise ValueError(
                f"unit table has {len(self.unit_ids)} ids and {len(self.unit_labels)} labels "
                f"but Y has {self.Y.shape[1]} units"
            )
        check_finite(self.X, "X (features)", axis_names=("sample", "feature"))
        check_finite(self.Y, "Y (responses)", axis_names=("sample", "unit"),
                     names=(self.sample_ids, self.unit_ids))
        self.split.check(self.X.shape[0])
        if self.ground_truth is not None:
            gt = self.ground_truth
            if gt.planted_linear.shape != (self.n_units, self.n_features):
                raise ValueError(
                    f"planted_linear is {gt.planted_linear.shape}, expected "
                    f"({self.n_units}, {self.n_features})"
                )

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y) of the 'train', 'val' or 'test' samples."""
        idx = getattr(self.split, name)
        return self.X[idx], self.Y[idx]

    def summary(self) -> dict[str, Any]:
        labels, counts = np.unique(self.unit_labels, return_counts=True)
        return {
            "name": self.name,
            "n_samples": self.n_samples,
            "n_features": self.n_features,
            "n_units": self.n_units,
            "n_train": int(self.split.train.size),
            "n_val": int(self.split.val.size),
            "n_test": int(self.split.test.size),
            "unit_labels": {str(k): int(c) for k, c in zip(labels, counts)},
        }
