"""Image -> ANN features (EfficientNet-Lite0 offline) and their disk cache."""
from ._cache import cached_features, default_cache_dir
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
           "load_efficientnet_lite0", "preprocess"]
