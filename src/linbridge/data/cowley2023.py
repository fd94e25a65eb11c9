"""Macaque V4 responses to natural images (Cowley, Stan, Pillow & Smith 2023), as a Dataset.

One recording session at a time: repeat-averaged spike counts of its neurons (units) to its
112 x 112 colour images (samples); X = EfficientNet-Lite0 features of the images (cached on
disk), both z-scored with training statistics. Neurons are not matched across sessions.

Expected layout (``fetch_cowley2023_v4`` writes it; PROVENANCE.md of the curated copy):

    <data_home>/cowley2023_v4/responses_repeat_averaged/responses_<session>.npy  (neurons, images)
    <data_home>/cowley2023_v4/images/images_<session>.zip   image0001.jpg ... (any order/folder)

Image k (1-based, the number in its file name) is column k - 1 of the responses.
"""
from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ._dataset import Dataset, Split
from .preprocessing import check_finite, zscore_by_train

DATA_ENV = "LINBRIDGE_DATA"
DATASET_DIR = "cowley2023_v4"
CITATION = ("Cowley, B.R., Stan, P.L., Pillow, J.W. & Smith, M.A. (2023). Compact deep neural "
            "network models of visual cortex. bioRxiv 2023.11.")
SOURCE = ("https://github.com/cowleygroup/V4_compact_models @ "
          "f4552ad9d34a466ebc66658f72a08a8e5038f1cf (GPL-3.0)")

_IMAGE_RE = re.compile(r"(?:^|/)image(\d+)\.jpe?g$", re.IGNORECASE)
_RESP_RE = re.compile(r"^responses_(\d+)\.npy$")
_ZIP_RE = re.compile(r"^images_(\d+)\.zip$")


def monkey_of(session: str) -> str:
    """Monkey of a session id (the authors' table: 19xxxx = WE, 2xxxxx = PE)."""
    s = str(session)
    if s.startswith("19"):
        return "WE"
    if s.startswith("2"):
        return "PE"
    return "unknown"


_FETCH_HINT = "linbridge fetch cowley2023-v4 --data-home DIR"  # Python: fetch_cowley2023_v4(DIR)


def resolve_data_root(data_home: str | os.PathLike | None = None) -> Path:
    """The ``cowley2023_v4`` folder: from ``data_home`` (the folder holding it, or the folder
    itself), else from ``$LINBRIDGE_DATA``."""
    if data_home is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise ValueError(
                f"no data folder given: pass --data-home DIR on the command line (data_home= "
                f"in Python), the folder that contains '{DATASET_DIR}/' or that folder itself, "
                f"or set ${DATA_ENV}; `{_FETCH_HINT}` downloads the data"
            )
        data_home, origin = env, f"${DATA_ENV}"
    else:
        origin = "data_home"
    home = Path(data_home).expanduser()
    if (home / DATASET_DIR).is_dir():
        return home / DATASET_DIR
    if (home / "responses_repeat_averaged").is_dir() or (home / "images").is_dir():
        return home
    if not home.exists():
        raise FileNotFoundError(f"{origin}={str(home)!r} does not exist; `{_FETCH_HINT}` "
                                "downloads the data there")
    raise FileNotFoundError(
        f"{origin}={str(home)!r} holds neither '{DATASET_DIR}/' nor "
        "'responses_repeat_averaged/' and 'images/'; pass the folder that contains "
        f"'{DATASET_DIR}/' (or download it with `{_FETCH_HINT}`)"
    )


def _sessions_with(folder: Path, pattern: re.Pattern) -> set[str]:
    if not folder.is_dir():
        return set()
    return {m.group(1) for p in folder.iterdir() if (m := pattern.match(p.name))}


def available_sessions(data_home: str | os.PathLike | None = None) -> list[str]:
    """Sessions that have both a responses file and an image zip, sorted."""
    root = resolve_data_root(data_home)
    both = (_sessions_with(root / "responses_repeat_averaged", _RESP_RE)
            & _sessions_with(root / "images", _ZIP_RE))
    return sorted(both)


def session_paths(root: Path, session: str) -> tuple[Path, Path]:
    """(responses .npy, images .zip) of a session; errors name what is missing and where."""
    resp = root / "responses_repeat_averaged" / f"responses_{session}.npy"
    zpath = root / "images" / f"images_{session}.zip"
    if resp.is_file() and zpath.is_file():
        return resp, zpath
    avail = available_sessions(root)
    if not resp.is_file() and not zpath.is_file():
        raise ValueError(f"unknown session {session!r} in {root}; available sessions: "
                         f"{', '.join(avail) if avail else 'none'}")
    missing = resp if not resp.is_file() else zpath
    raise FileNotFoundError(f"session {session!r}: missing file {missing}; sessions with "
                            f"both files: {', '.join(avail) if avail else 'none'}")


def read_responses(path: str | os.PathLike) -> np.ndarray:
    """(n_neurons, n_images) file -> (n_images, n_neurons) float64."""
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected (neurons, images), got shape {arr.shape}")
    return np.asarray(arr, dtype=np.float64).T


def read_images(path: str | os.PathLike) -> np.ndarray:
    """All ``imageNNNN.jpg`` of a zip, ordered by NNNN (1..n): (n, H, W, 3) uint8 RGB.

    The order inside the zip is not the image order, and files may sit in a subfolder.
    """
    from PIL import Image

    with zipfile.ZipFile(path) as zf:
        entries = {}
        for info in zf.infolist():
            m = _IMAGE_RE.search(info.filename)
            if info.is_dir() or m is None or info.filename.startswith("__MACOSX/"):
                continue
            k = int(m.group(1))
            if k in entries:
                raise ValueError(f"{path}: image number {k} appears twice "
                                 f"({entries[k].filename}, {info.filename})")
            entries[k] = info
        if not entries:
            raise ValueError(f"{path}: no imageNNNN.jpg files inside")
        numbers = sorted(entries)
        if numbers != list(range(1, len(numbers) + 1)):
            missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
            raise ValueError(f"{path}: image numbers must run 1..n without gaps; found "
                             f"{len(numbers)} images numbered {numbers[0]}..{numbers[-1]}, "
                             f"missing {missing[:10]}")
        images = []
        for k in numbers:
            with Image.open(io.BytesIO(zf.read(entries[k]))) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(f"{path}: images differ in size: {sorted(shapes)}")
    return np.stack(images)


class SessionImages:
    """``images(indices) -> (n, H, W, 3) uint8`` over the decoded images of a session.

    A class rather than a closure so a Dataset stays picklable; returns copies.
    """

    def __init__(self, images: np.ndarray):
        self._images = images
        self._images.setflags(write=False)

    def __len__(self) -> int:
        return int(self._images.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._images.shape)

    def __call__(self, indices) -> np.ndarray:
        return self._images[np.asarray(indices, dtype=np.int64)].copy()


def seeded_split(n: int, seed: int, n_test: int, n_val: int) -> Split:
    """Random split from ``default_rng(seed).permutation(n)``: first n_test test, next n_val
    val, the rest train (each sorted)."""
    if n_test < 1 or n_val < 0 or n_test + n_val >= n:
        raise ValueError(f"cannot split {n} images into n_test={n_test}, n_val={n_val} and a "
                         "non-empty training set")
    perm = np.random.default_rng(seed).permutation(n)
    return Split(train=np.sort(perm[n_test + n_val:]), val=np.sort(perm[n_test:n_test + n_val]),
                 test=np.sort(perm[:n_test]))


def _check_sha256(root: Path, path: Path, digest: str) -> None:
    from .fetch import EXPECTED_SHA256

    rel = path.relative_to(root).as_posix()
    expected = EXPECTED_SHA256.get(rel)
    if expected is not None and expected != digest:
        raise ValueError(f"{path} has SHA-256 {digest}, but the published file has {expected}; "
                         f"re-fetch it (`{_FETCH_HINT}`) or pass verify=False")


def load_cowley2023_v4(data_home: str | os.PathLike | None = None, session: str = "201025",
                       seed: int = 201025, n_test: int | None = None, n_val: int | None = None,
                       cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                       progress: bool = True, verify: bool = True) -> Dataset:
    """One V4 session as a Dataset of EfficientNet-Lite0 features -> neuron responses.

    data_home : folder containing ``cowley2023_v4/`` (or that folder); else ``$LINBRIDGE_DATA``.
    session : recording session id (``available_sessions(data_home)`` lists them).
    seed, n_test, n_val : seeded random split; train is the rest. Defaults scale with the
        session: n_test = min(200, n // 6), n_val = min(150, n // 8) (1200 images:
        850/150/200; the 400-image session 210305: 284/50/66).
    cache_dir : feature cache (else ``$LINBRIDGE_CACHE``, else ``~/.cache/linbridge``); never
        inside the data folder, which may be read-only.
    batch_size, progress : for the feature extraction (only on a cache miss).
    verify : check the files of the published sessions against their known SHA-256.

    Returns a Dataset with X (n_images, 1280) and Y (n_images, n_neurons), both float32 and
    z-scored with training statistics; ``images(indices)`` gives the uint8 images.
    """
    from ..features._cache import default_cache_dir
    from ..files import sha256_file
    from ..features.efficientnet import cached_efficientnet_features, extractor_info

    session = str(session)
    root = resolve_data_root(data_home)
    resp_path, zip_path = session_paths(root, session)
    cache_root = default_cache_dir(cache_dir).resolve()
    if cache_root.is_relative_to(root.resolve()):
        raise ValueError(f"cache_dir {cache_root} is inside the data folder {root}; "
                         "keep caches out of (possibly read-only, shared) data")

    digests = {p: sha256_file(p) for p in (resp_path, zip_path)}
    if verify:
        for p, d in digests.items():
            _check_sha256(root, p, d)

    y_raw = read_responses(resp_path)  # (images, neurons)
    check_finite(y_raw, f"responses in {resp_path}", axis_names=("image", "neuron"))
    images = read_images(zip_path)
    if images.shape[0] != y_raw.shape[0]:
        raise ValueError(f"session {session}: {zip_path.name} holds {images.shape[0]} images "
                         f"but {resp_path.name} has {y_raw.shape[0]} image columns")
    n, n_neurons = y_raw.shape

    n_test = min(200, n // 6) if n_test is None else n_test
    n_val = min(150, n // 8) if n_val is None else n_val
    split = seeded_split(n, seed, n_test, n_val)
    sample_ids = np.array([f"{session}_img{k:04d}" for k in range(1, n + 1)])
    unit_ids = np.array([f"{session}_n{v:03d}" for v in range(n_neurons)])

    feats = cached_efficientnet_features(
        images, sample_ids,
        key_extra={"dataset": DATASET_DIR, "session": session,
                   "images_zip_sha256": digests[zip_path]},
        cache_dir=cache_dir, batch_size=batch_size, progress=progress,
        name=f"{DATASET_DIR}-{session}-efficientnet-lite0",
    )
    X, x_mean, x_std = zscore_by_train(feats, split.train, f"EfficientNet features ({session})")
    Y, y_mean, y_std = zscore_by_train(y_raw, split.train, f"V4 responses ({session})")

    meta: dict[str, Any] = {
        "dataset": DATASET_DIR,
        "session": session,
        "monkey": monkey_of(session),
        "n_images": n,
        "n_neurons": n_neurons,
        "split_seed": seed,
        "data_root": str(root),
        "files": {"responses": {"path": str(resp_path), "sha256": digests[resp_path]},
                  "images": {"path": str(zip_path), "sha256": digests[zip_path]}},
        "feature_extractor": extractor_info(),
        "feature_cache_dir": str(cache_root),
        "zscore": {"X_mean": x_mean, "X_std": x_std, "Y_mean": y_mean, "Y_std": y_std},
        "response_units": "mean spike count per 100 ms, averaged over repeats (before z-scoring)",
        "source": SOURCE,
        "citation": CITATION,
    }
    return Dataset(
        name=f"cowley2023_v4_{session}",
        X=X,
        Y=Y,
        unit_ids=unit_ids,
        unit_labels=np.full(n_neurons, "V4"),
        sample_ids=sample_ids,
        split=split,
        images=SessionImages(images),
        meta=meta,
    )
