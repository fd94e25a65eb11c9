"""A small disk cache for feature arrays: ``.npy`` + JSON sidecar, written atomically.

Layout: ``<cache_dir>/features/<name>-<key hash>.npy`` and ``.json`` next to it. The key is
a JSON-serialisable dict (model, preprocessing, hash of the image ids, data file hashes...);
its canonical JSON is hashed to name the files and is stored verbatim in the sidecar, which
is checked on every hit. Each file is written to a temp file in the same directory and moved
into place with ``os.replace``, so a crash or a concurrent writer never leaves a half-written
entry; the sidecar is written last and marks the entry complete.

The cache directory is the argument, else ``$LINBRIDGE_CACHE``, else ``~/.cache/linbridge``.
It is never derived from a data folder (shared data may be read-only).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..files import atomic_write

CACHE_ENV = "LINBRIDGE_CACHE"
#: bump when the file layout changes so old entries are ignored, not misread
CACHE_FORMAT = 1


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$LINBRIDGE_CACHE``, else ``~/.cache/linbridge``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "linbridge"


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def key_hash(key_dict: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``key_dict``."""
    return hashlib.sha256(canonical_json(dict(key_dict)).encode()).hexdigest()


def hash_strings(items) -> str:
    """SHA-256 of a sequence of strings joined by newlines (e.g. image ids, in order)."""
    h = hashlib.sha256()
    for i, s in enumerate(items):
        h.update((("\n" if i else "") + str(s)).encode())
    return h.hexdigest()


def cache_paths(key_dict: Mapping[str, Any], cache_dir: str | os.PathLike | None = None,
                name: str = "features") -> tuple[Path, Path]:
    """(npy path, json sidecar path) of the entry for ``key_dict``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "features"
    stem = f"{safe}-{key_hash(key_dict)[:24]}"
    folder = default_cache_dir(cache_dir) / "features"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def _read_entry(npy: Path, sidecar: Path, key: dict) -> np.ndarray | None:
    """The cached array if the entry is complete and its sidecar matches ``key``, else None."""
    if not (npy.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            return None
        arr = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as err:
        warnings.warn(f"feature cache entry {npy} is unreadable ({err}); recomputing",
                      stacklevel=3)
        return None
    if list(arr.shape) != meta.get("shape") or str(arr.dtype) != meta.get("dtype"):
        warnings.warn(f"feature cache entry {npy} does not match its sidecar "
                      f"(shape {arr.shape}, dtype {arr.dtype}); recomputing", stacklevel=3)
        return None
    return arr


def cached_features(key_dict: Mapping[str, Any], compute_fn: Callable[[], np.ndarray],
                    cache_dir: str | os.PathLike | None = None, *, name: str = "features",
                    info: Mapping[str, Any] | None = None, announce: str | None = None
                    ) -> np.ndarray:
    """Return ``compute_fn()``, or its cached result when an entry for ``key_dict`` exists.

    key_dict : JSON-serialisable dict that fully determines the array (model, preprocessing,
        image ids hash, input file hashes). Anything not in it is assumed not to matter.
    compute_fn : no-argument callable returning the array; called only on a miss.
    cache_dir : cache root (see ``default_cache_dir``).
    name : readable prefix of the file names.
    info : extra metadata for the sidecar that is not part of the key (versions, timings).
    announce : on a miss, a line printed to stderr before computing (long extractions
        should not look like a hang when progress bars are off, e.g. in logs).

    If the cache directory cannot be written, the array is returned uncached with a warning.
    """
    key = json.loads(canonical_json(dict(key_dict)))  # what a JSON round trip gives back
    npy, sidecar = cache_paths(key, cache_dir, name)
    hit = _read_entry(npy, sidecar, key)
    if hit is not None:
        return hit

    if announce:
        print(f"[linbridge] {announce} (once: cached in {npy.parent})", file=sys.stderr,
              flush=True)
    t0 = time.perf_counter()
    arr = np.asarray(compute_fn())
    seconds = time.perf_counter() - t0
    if arr.dtype == object:
        raise TypeError("cached_features stores numeric arrays only, got dtype object")
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "key_sha256": key_hash(key),
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "compute_seconds": round(seconds, 3),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "info": json.loads(canonical_json(dict(info or {}))),
    }
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        # array first, sidecar last: a sidecar means a complete entry
        atomic_write(npy, lambda f: np.save(f, arr, allow_pickle=False))
        atomic_write(sidecar, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True)
                                                 .encode()))
    except OSError as err:
        warnings.warn(f"could not write the feature cache at {npy.parent} ({err}); "
                      f"pass cache_dir= or set ${CACHE_ENV} to a writable folder",
                      stacklevel=2)
    return arr
