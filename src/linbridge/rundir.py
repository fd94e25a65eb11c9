"""The run directory: atomic writes, and stage records that let a run resume."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write


def _default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def save_json(path: Path, obj: Any) -> Path:
    data = json.dumps(obj, indent=2, default=_default, allow_nan=True).encode()
    return atomic_write(path, lambda fh: fh.write(data))


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable inputs (config sections, upstream hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class RunDir:
    """One directory per run; each stage records the fingerprint of its inputs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def stage_done(self, name: str, key: str) -> bool:
        rec = self.root / "stages" / f"{name}.json"
        return rec.exists() and load_json(rec).get("key") == key

    def mark_done(self, name: str, key: str, **info: Any) -> None:
        save_json(self.path("stages", f"{name}.json"), {"key": key, **info})
