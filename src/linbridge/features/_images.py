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


def iter_image_batches(images: ImageSource, n: int, batch_size: int):
    """Yield (start, stop, uint8 batch) over an image source, checking each batch's size."""
    is_array = not callable(images) or isinstance(images, np.ndarray)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = np.asarray(images[start:stop] if is_array else images(np.arange(start, stop)))
        if batch.shape[0] != stop - start:
            raise ValueError(f"image source returned {batch.shape[0]} images for "
                             f"indices {start}..{stop - 1} ({stop - start} expected)")
        yield start, stop, batch
