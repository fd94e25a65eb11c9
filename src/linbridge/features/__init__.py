"""Image -> ANN features (EfficientNet-Lite0 offline, CLIP-ViT via transformers), disk-cached."""
from ._cache import cached_features, default_cache_dir
from .clip import (DEFAULT_CLIP_MODEL, ClipVision, build_tiny_clip, cached_clip_features,
                   extract_clip_features, load_clip_vision)
from .efficientnet import (
    N_FEATURES,
    cached_efficientnet_features,
    efficientnet_cache_key,
    extract_efficientnet_features,
    extractor_info,
    load_efficientnet_lite0,
    preprocess,
)

__all__ = ["N_FEATURES", "cached_efficientnet_features", "cached_features", "default_cache_dir",
           "efficientnet_cache_key", "extract_efficientnet_features", "extractor_info",
           "load_efficientnet_lite0", "preprocess", "DEFAULT_CLIP_MODEL", "ClipVision",
           "build_tiny_clip", "cached_clip_features", "extract_clip_features", "load_clip_vision"]
