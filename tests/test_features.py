"""EfficientNet-Lite0 features and their disk cache (small images, a few seconds)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from linbridge.features import _cache, efficientnet
from linbridge.features import cached_features, extract_efficientnet_features


def _images(n: int, seed: int = 0, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth random images (low-frequency noise, upsampled) look more like photographs
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, size // 8, axis=1), size // 8, axis=2)


@pytest.fixture(scope="module")
def imgs3():
    return _images(3)


@pytest.fixture(scope="module")
def feats3(imgs3):
    return extract_efficientnet_features(imgs3, batch_size=2, progress=False)


def test_shape_dtype_and_determinism(imgs3, feats3):
    again = extract_efficientnet_features(imgs3, batch_size=2, progress=False)
    assert feats3.shape == (3, 1280) and feats3.dtype == np.float32
    assert np.isfinite(feats3).all()
    np.testing.assert_array_equal(feats3, again)
    # ReLU6 then averaging: features lie in [0, 6] and are not all zero
    assert feats3.min() >= 0 and feats3.max() <= 6 and (feats3 > 0).mean() > 0.1


def test_different_images_give_different_features(imgs3, feats3):
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert np.abs(feats3[i] - feats3[j]).max() > 0.1
    # the same image gives the same features whatever batch it is in (up to float rounding)
    alone = extract_efficientnet_features(imgs3[2:3], batch_size=1, progress=False)
    np.testing.assert_allclose(alone[0], feats3[2], atol=1e-4)


def test_callable_source_matches_array(imgs3, feats3):
    class Source:
        def __len__(self):
            return len(imgs3)

        def __call__(self, idx):
            return imgs3[idx]

    from_callable = extract_efficientnet_features(Source(), batch_size=2, progress=False)
    np.testing.assert_array_equal(from_callable, feats3)
    with pytest.raises(ValueError, match="n_images"):
        extract_efficientnet_features(lambda idx: imgs3[idx], progress=False)


def test_preprocess_checks_and_normalises():
    x = efficientnet.preprocess(np.full((1, 112, 112, 3), 255, dtype=np.uint8))
    assert tuple(x.shape) == (1, 3, 224, 224)
    expected = (1.0 - np.array(efficientnet.IMAGENET_MEAN)) / np.array(efficientnet.IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 100, 100].numpy(), expected, rtol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        efficientnet.preprocess(np.zeros((1, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\)"):
        efficientnet.preprocess(np.zeros((1, 8, 8), dtype=np.uint8))


def test_cache_hit_skips_recomputation_and_writes_atomically(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float32).reshape(3, 4) / 7

    key = {"model": "m", "image_ids_sha256": _cache.hash_strings(["a", "b", "c"])}
    a = cached_features(key, compute, tmp_path)
    b = cached_features(dict(reversed(list(key.items()))), compute, tmp_path)  # same key
    assert len(calls) == 1
    np.testing.assert_array_equal(a, b)
    assert b.dtype == np.float32

    files = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp files left
    side = json.loads((tmp_path / "features" / files[0]).read_text())
    assert side["key"] == key and side["shape"] == [3, 4] and side["dtype"] == "float32"

    cached_features({**key, "model": "other"}, compute, tmp_path)  # a different key misses
    assert len(calls) == 2


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def broken_save(f, arr, allow_pickle=False):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(_cache.np, "save", broken_save)
    with pytest.warns(UserWarning, match="could not write the feature cache"):
        out = cached_features({"k": 1}, lambda: np.ones(3), tmp_path)
    np.testing.assert_array_equal(out, np.ones(3))  # still returned, just not cached
    assert list((tmp_path / "features").iterdir()) == []


def test_incomplete_entry_is_recomputed(tmp_path):
    calls = []
    key = {"k": 2}
    cached_features(key, lambda: calls.append(1) or np.zeros(2), tmp_path)
    npy, sidecar = _cache.cache_paths(key, tmp_path)
    sidecar.unlink()  # a crash between the two writes: no sidecar means no entry
    cached_features(key, lambda: calls.append(1) or np.zeros(2), tmp_path)
    assert len(calls) == 2 and sidecar.is_file()


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("LINBRIDGE_CACHE", str(tmp_path / "env"))
    assert _cache.default_cache_dir() == tmp_path / "env"
    assert _cache.default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("LINBRIDGE_CACHE")
    assert _cache.default_cache_dir().parts[-2:] == (".cache", "linbridge")


def test_cached_efficientnet_features_key(tmp_path, monkeypatch):
    calls = []

    def fake_extract(images, batch_size=64, progress=True, n_images=None):
        calls.append(n_images)
        return np.ones((n_images, 1280), dtype=np.float32)

    monkeypatch.setattr(efficientnet, "extract_efficientnet_features", fake_extract)
    imgs = _images(2)
    ids = ["x1", "x2"]
    a = efficientnet.cached_efficientnet_features(imgs, ids, {"zip_sha256": "0" * 64}, tmp_path)
    b = efficientnet.cached_efficientnet_features(imgs, ids, {"zip_sha256": "0" * 64}, tmp_path)
    efficientnet.cached_efficientnet_features(imgs, ids[::-1], {"zip_sha256": "0" * 64}, tmp_path)
    assert calls == [2, 2] and a.shape == (2, 1280)
    np.testing.assert_array_equal(a, b)
    key = efficientnet.efficientnet_cache_key(ids, zip_sha256="0" * 64)
    assert key["extractor"]["model"] == "efficientnet-lite0"
    assert key["extractor"]["preprocessing"]["resize"]["size"] == [224, 224]
    assert len(key["extractor"]["weights_sha256"]) == 64
