"""What the feature extractors accept as images."""
from __future__ import annotations

from typing import Callable

import numpy as np

#: uint8 (n, H, W, 3) array, or a callable ``images(indices) -> (k, H, W, 3)`` with len()
ImageSource = np.ndarray | Callable[[np.ndarray], np.ndarray]


def count_images(images: ImageSource, n_images: int | None = None) -> int:
    """Number of images in a source (``n_images`` wins; a callable needs len())."""
    if n_images is not None:
        return int(n_images)
    if callable(images) and not isinstance(images, np.ndarray):
        try:
            return len(images)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError("images is a callable without len(); pass n_images=") from None
    return int(np.asarray(images).shape[0])
