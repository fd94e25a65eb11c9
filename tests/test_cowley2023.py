"""Cowley 2023 V4 loader: file layout, image order, split, z-scoring, errors.

Most tests build a tiny fake session in tmp_path and replace the EfficientNet extractor with a
cheap stand-in, so they run in well under a second; real-data tests read ../shared/data.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from linbridge.data import cowley2023
from linbridge.data.cowley2023 import available_sessions, load_cowley2023_v4, seeded_split
from linbridge.features import efficientnet

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = SHARED_DATA / "cowley2023_v4"
needs_real = pytest.mark.skipif(not REAL.is_dir(),
                                reason=f"real V4 data not found at {REAL} (../shared/data)")

FAKE = "290001"  # not a published session, so no hash check applies


def _colour(k: int) -> tuple[int, int, int]:
    """A distinct, JPEG-robust solid colour for image k (1-based)."""
    return (10 + 4 * k, 200 - 3 * k, (37 * k) % 200 + 20)


def make_session(home: Path, session: str = FAKE, n_images: int = 40, n_neurons: int = 5,
                 subfolder: str = "", n_columns: int | None = None, seed: int = 0) -> Path:
    """Fake ``cowley2023_v4`` session: shuffled zip of solid-colour JPEGs + responses file.

    Neuron 0 responds with the red value of the image, so column k-1 must go with image k.
    """
    root = home / "cowley2023_v4"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "responses_repeat_averaged").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(root / "images" / f"images_{session}.zip", "w") as zf:
        if subfolder:
            zf.writestr(subfolder, b"")  # a directory entry, as in 190923
        for k in rng.permutation(np.arange(1, n_images + 1)):
            buf = io.BytesIO()
            Image.new("RGB", (112, 112), _colour(int(k))).save(buf, "JPEG", quality=95)
            zf.writestr(f"{subfolder}image{int(k):04d}.jpg", buf.getvalue())
    n_cols = n_images if n_columns is None else n_columns
    resp = rng.poisson(3.0, (n_neurons, n_cols)).astype(np.float64)
    resp[0] = [_colour(k)[0] for k in range(1, n_cols + 1)]
    np.save(root / "responses_repeat_averaged" / f"responses_{session}.npy", resp)
    return root


@pytest.fixture
def fake_features(monkeypatch):
    """Replace EfficientNet by pixel values (n, 1280): fast, deterministic, image-dependent."""
    calls = []

    def extract(images, batch_size=64, progress=True, n_images=None):
        n = len(images) if n_images is None else n_images
        imgs = images(np.arange(n)) if callable(images) else np.asarray(images)
        calls.append(n)
        flat = imgs.reshape(n, -1).astype(np.float32)
        return flat[:, ::29][:, :1280] + np.linspace(0, 1, 1280, dtype=np.float32) * flat[:, :1]

    monkeypatch.setattr(efficientnet, "extract_efficientnet_features", extract)
    return calls


def _load(home, tmp_path, **kw):
    kw.setdefault("session", FAKE)
    kw.setdefault("n_test", 10)
    kw.setdefault("n_val", 5)
    return load_cowley2023_v4(home, cache_dir=tmp_path / "cache", progress=False, **kw)


@pytest.mark.parametrize("subfolder", ["", "images_290001/"])
def test_image_k_is_response_column_k_minus_1(tmp_path, fake_features, subfolder):
    make_session(tmp_path, subfolder=subfolder)
    ds = _load(tmp_path, tmp_path)
    imgs = ds.images(np.arange(ds.n_samples))
    assert imgs.shape == (40, 112, 112, 3) and imgs.dtype == np.uint8
    for k in (1, 2, 17, 40):
        np.testing.assert_allclose(imgs[k - 1].reshape(-1, 3).mean(0), _colour(k), atol=3)
        assert ds.sample_ids[k - 1] == f"{FAKE}_img{k:04d}"
    # neuron 0 was built from the red value of its image: after z-scoring still exactly linear
    red = imgs[..., 0].mean(axis=(1, 2))
    assert np.corrcoef(red, ds.Y[:, 0])[0, 1] > 0.999


def test_unit_table_and_meta(tmp_path, fake_features):
    make_session(tmp_path)
    ds = _load(tmp_path, tmp_path)
    assert ds.X.shape == (40, 1280) and ds.Y.shape == (40, 5)
    assert ds.X.dtype == np.float32 and ds.Y.dtype == np.float32
    assert list(ds.unit_ids) == [f"{FAKE}_n{v:03d}" for v in range(5)]
    assert set(ds.unit_labels) == {"V4"}
    m = ds.meta
    assert m["session"] == FAKE and m["monkey"] == "PE"
    assert m["files"]["images"]["path"].endswith(f"images_{FAKE}.zip")
    assert len(m["files"]["responses"]["sha256"]) == 64
    assert m["feature_extractor"]["model"] == "efficientnet-lite0"
    assert cowley2023.monkey_of("190923") == "WE" and cowley2023.monkey_of("210305") == "PE"
    # the images callable returns copies and survives pickling (for worker processes)
    a = ds.images([0])
    a[:] = 0
    assert ds.images([0]).max() > 0
    assert pickle.loads(pickle.dumps(ds.images))([3]).shape == (1, 112, 112, 3)


def test_split_sizes_disjoint_and_seeded(tmp_path, fake_features):
    make_session(tmp_path)
    ds = _load(tmp_path, tmp_path, seed=7)
    sp = ds.split
    assert (sp.train.size, sp.val.size, sp.test.size) == (25, 5, 10)
    allidx = np.concatenate([sp.train, sp.val, sp.test])
    assert np.array_equal(np.sort(allidx), np.arange(40))  # disjoint and complete
    again = _load(tmp_path, tmp_path, seed=7).split
    other = _load(tmp_path, tmp_path, seed=8).split
    assert all(np.array_equal(getattr(sp, p), getattr(again, p)) for p in ("train", "val", "test"))
    assert not np.array_equal(sp.test, other.test)
    # the default split of a 1200-image session
    big = seeded_split(1200, 201025, 200, 150)
    assert (big.train.size, big.val.size, big.test.size) == (850, 150, 200)
    with pytest.raises(ValueError, match="cannot split 40 images"):
        seeded_split(40, 0, 30, 10)


def test_zscored_with_training_statistics(tmp_path, fake_features):
    make_session(tmp_path)
    ds = _load(tmp_path, tmp_path)
    tr = ds.split.train
    for name, A in (("X", ds.X), ("Y", ds.Y)):
        a = A[tr].astype(np.float64)
        varying = a.std(0) > 1e-6
        np.testing.assert_allclose(a.mean(0), 0, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(a[:, varying].std(0), 1, atol=1e-5, err_msg=name)
    # the stored statistics undo the z-scoring
    resp = tmp_path / "cowley2023_v4" / "responses_repeat_averaged" / f"responses_{FAKE}.npy"
    raw = np.load(resp).T
    z = ds.meta["zscore"]
    np.testing.assert_allclose(ds.Y * z["Y_std"] + z["Y_mean"], raw, atol=1e-4)
    # test rows are not part of the statistics: they are generally not centred
    assert np.abs(ds.Y[ds.split.test].mean(0)).max() > 1e-3


def test_features_are_cached_between_loads(tmp_path, fake_features):
    make_session(tmp_path)
    a = _load(tmp_path, tmp_path)
    b = _load(tmp_path, tmp_path, seed=3)  # another split reuses the same features
    assert fake_features == [40]
    ds_files = list((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(ds_files) == 1 and FAKE in ds_files[0].name
    za, zb = a.meta["zscore"], b.meta["zscore"]
    np.testing.assert_allclose(a.X * za["X_std"] + za["X_mean"], b.X * zb["X_std"] + zb["X_mean"],
                               rtol=1e-5, atol=1e-3)


def test_cache_inside_data_folder_is_refused(tmp_path, fake_features):
    make_session(tmp_path)
    with pytest.raises(ValueError, match="inside the data folder"):
        load_cowley2023_v4(tmp_path, session=FAKE, n_test=10, n_val=5, progress=False,
                           cache_dir=tmp_path / "cowley2023_v4" / "cache")


def test_unknown_session_lists_available(tmp_path):
    make_session(tmp_path, session="290001", n_images=3)
    make_session(tmp_path, session="290002", n_images=3)
    assert available_sessions(tmp_path) == ["290001", "290002"]
    with pytest.raises(ValueError, match=r"unknown session '123'.*290001, 290002"):
        load_cowley2023_v4(tmp_path, session="123", progress=False)


def test_missing_file_is_named(tmp_path):
    root = make_session(tmp_path, n_images=3)
    (root / "images" / f"images_{FAKE}.zip").unlink()
    with pytest.raises(FileNotFoundError, match=rf"missing file .*images_{FAKE}\.zip"):
        load_cowley2023_v4(tmp_path, session=FAKE, progress=False)


def test_count_mismatch_states_both(tmp_path, fake_features):
    make_session(tmp_path, n_images=12, n_columns=14)
    with pytest.raises(ValueError, match=r"holds 12 images but .* has 14 image columns"):
        _load(tmp_path, tmp_path, n_test=2, n_val=2)
    assert fake_features == []  # nothing computed before the check


def test_gap_in_image_numbers(tmp_path):
    root = make_session(tmp_path, n_images=4)
    zpath = root / "images" / f"images_{FAKE}.zip"
    with zipfile.ZipFile(zpath) as zf:
        entries = {n: zf.read(n) for n in zf.namelist() if n != "image0003.jpg"}
    with zipfile.ZipFile(zpath, "w") as zf:
        for n, b in entries.items():
            zf.writestr(n, b)
    with pytest.raises(ValueError, match=r"missing \[3\]"):
        cowley2023.read_images(zpath)


def test_data_home_resolution(tmp_path, monkeypatch):
    root = make_session(tmp_path, n_images=2)
    assert cowley2023.resolve_data_root(tmp_path) == root
    assert cowley2023.resolve_data_root(root) == root  # the folder itself
    monkeypatch.setenv("LINBRIDGE_DATA", str(tmp_path))
    assert cowley2023.resolve_data_root() == root
    monkeypatch.delenv("LINBRIDGE_DATA")
    with pytest.raises(ValueError, match="pass --data-home DIR .*data_home=.*LINBRIDGE_DATA.*"
                                         "linbridge fetch cowley2023-v4"):
        cowley2023.resolve_data_root()
    with pytest.raises(FileNotFoundError, match="'.*nowhere' does not exist"):
        cowley2023.resolve_data_root(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither"):
        cowley2023.resolve_data_root(tmp_path / "empty")


def test_published_session_with_wrong_bytes_is_refused(tmp_path, fake_features):
    make_session(tmp_path, session="210305", n_images=20)
    with pytest.raises(ValueError, match=r"SHA-256 .* published file"):
        _load(tmp_path, tmp_path, session="210305", n_test=5, n_val=5)
    ds = _load(tmp_path, tmp_path, session="210305", n_test=5, n_val=5, verify=False)
    assert ds.n_samples == 20


@needs_real
def test_real_sessions_and_shapes(tmp_path, fake_features):
    """Session 210305 from ../shared (400 images, 70 neurons), extractor stubbed for speed."""
    assert available_sessions(SHARED_DATA) == ["190923", "190925", "190927", "190928", "190929",
                                               "201025", "210224", "210305", "210322", "210325"]
    ds = load_cowley2023_v4(SHARED_DATA, session=210305, cache_dir=tmp_path, progress=False,
                            n_test=100, n_val=50)
    assert ds.Y.shape == (400, 70) and ds.X.shape == (400, 1280)
    assert ds.images([0, 399]).shape == (2, 112, 112, 3)
    assert ds.meta["monkey"] == "PE" and ds.sample_ids[-1] == "210305_img0400"
    raw = np.load(REAL / "responses_repeat_averaged" / "responses_210305.npy")
    z = ds.meta["zscore"]
    np.testing.assert_allclose(ds.Y * z["Y_std"] + z["Y_mean"], raw.T, atol=1e-4)
    with pytest.raises(ValueError, match="available sessions: 190923, 190925"):
        load_cowley2023_v4(SHARED_DATA, session="190924", progress=False)


@needs_real
@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("LINBRIDGE_RUN_SLOW"),
                    reason="real EfficientNet pass over 400 images takes ~30-60 s on 2 cores; "
                           "set LINBRIDGE_RUN_SLOW=1")
def test_real_session_with_efficientnet(tmp_path):
    ds = load_cowley2023_v4(SHARED_DATA, session="210305", cache_dir=tmp_path, progress=False,
                            n_test=100, n_val=50)
    assert ds.X.shape == (400, 1280) and ds.Y.shape == (400, 70)
    assert np.isfinite(ds.X).all()
    # the features carry signal about the responses: ridge on train predicts test above chance
    Xtr, Ytr = ds.part("train")
    Xte, Yte = ds.part("test")
    W = np.linalg.solve(Xtr.T @ Xtr + 1e3 * np.eye(1280), Xtr.T @ Ytr)
    P = Xte @ W
    r = [np.corrcoef(P[:, v], Yte[:, v])[0, 1] for v in range(Yte.shape[1])]
    assert np.nanmedian(r) > 0.1
