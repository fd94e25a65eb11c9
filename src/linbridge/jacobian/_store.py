"""The full Jacobian tensor on disk, in a chunked zarr v3 store (optional: ``pip install zarr``).

Layout of the store (a zarr group):
    J        (n_samples, n_units, n_features), chunks (sample_chunk, unit_chunk, n_features),
             dimension names sample / unit / feature, uncompressed by default
    X        (n_samples, n_features), the inputs
    outputs  (n_samples, n_units), f(X), when the source has outputs
    attrs["linbridge_jacobian"]: fingerprint of the source, chunking, completion flag
    progress.json: the blocks written so far (replaced atomically after each block)

Each block is one zarr chunk, so a block write never rewrites another; zarr's local
store writes every chunk file atomically. An interrupted ``write_store`` resumes where
it stopped when called again on the same source and path; a store written from a
different source (inputs, weights, method or dtype differ) is refused.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ._source import (ArrayJacobianSource, Index, JacobianSource, LinearJacobianSource,
                      ModelJacobianSource)

ATTR = "linbridge_jacobian"
FORMAT = 1


def _zarr():
    try:
        import zarr
    except ImportError as err:  # pragma: no cover - zarr is an optional extra
        raise ImportError("the Jacobian store needs zarr>=3: pip install 'linbridge[store]'") from err
    if int(zarr.__version__.split(".")[0]) < 3:  # pragma: no cover
        raise ImportError(f"the Jacobian store needs zarr>=3, found {zarr.__version__}")
    return zarr


def source_fingerprint(source: JacobianSource) -> str:
    """sha256 over what determines the tensor: inputs, dtype, and the model or array."""
    h = hashlib.sha256()
    h.update(f"{type(source).__name__}|{tuple(source.shape)}|{source.dtype}".encode())
    h.update(np.ascontiguousarray(source.X.detach().cpu().numpy()).tobytes())
    if isinstance(source, ModelJacobianSource):
        h.update(source.method.encode())
        for name, t in list(source.model.state_dict().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(t.detach().cpu().to(torch.float64).numpy()).tobytes())
    elif isinstance(source, LinearJacobianSource):
        h.update(np.ascontiguousarray(source.W.cpu().numpy()).tobytes())
    elif isinstance(source, ArrayJacobianSource):
        h.update(np.ascontiguousarray(source.J.cpu().numpy()).tobytes())
    elif isinstance(source, ZarrJacobianSource):
        h.update(source.fingerprint.encode())
    return h.hexdigest()


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_store(source: JacobianSource, path: str | os.PathLike, sample_chunk: int | None = None,
                unit_chunk: int | None = None, progress: bool = False, overwrite: bool = False,
                compressors=None, callback: Callable[[int, int], None] | None = None
                ) -> "ZarrJacobianSource":
    """Write every Jacobian of ``source`` to a zarr v3 store, block by block; resumable.

    Chunk sizes default to the source's memory budget; a resumed write keeps the
    chunking it started with. ``callback(done, total)`` runs after every committed block.
    Returns the store opened as a Jacobian source.
    """
    zarr = _zarr()
    path = Path(path)
    N, V, D = source.shape
    fp = source_fingerprint(source)
    prog_path = path / "progress.json"
    done: set[int] = set()
    if path.exists() and not overwrite:
        g = zarr.open_group(str(path), mode="r+")
        meta = dict(g.attrs).get(ATTR)
        if meta is None:
            raise FileExistsError(f"{path} exists and is not a Jacobian store; pass overwrite=True")
        if meta["fingerprint"] != fp or tuple(meta["shape"]) != (N, V, D):
            raise ValueError(f"{path} holds the Jacobians of a different source (inputs, weights, "
                             "method or dtype differ); pass overwrite=True to replace it")
        sc, uc = meta["sample_chunk"], meta["unit_chunk"]
        if prog_path.exists():
            done = set(json.loads(prog_path.read_text())["done"])
        arr = g["J"]
    else:
        sc, uc = source.chunk_sizes(sample_chunk, unit_chunk)
        g = zarr.open_group(str(path), mode="w")
        dt = np.dtype(str(source.dtype).replace("torch.", ""))
        arr = g.create_array("J", shape=(N, V, D), chunks=(sc, uc, D), dtype=dt,
                             compressors=compressors, fill_value=0,
                             dimension_names=("sample", "unit", "feature"))
        g.create_array("X", data=source.X.detach().cpu().numpy(), chunks=(min(N, 4096), D),
                       compressors=None, dimension_names=("sample", "feature"))
        try:
            out = source.outputs()
        except (ValueError, NotImplementedError):
            out = None
        if out is not None:
            g.create_array("outputs", data=out.detach().cpu().numpy(), compressors=None,
                           dimension_names=("sample", "unit"))
        g.attrs[ATTR] = {"format": FORMAT, "fingerprint": fp, "shape": [N, V, D],
                         "sample_chunk": sc, "unit_chunk": uc, "complete": False,
                         "source": type(source).__name__}
        _write_json_atomic(prog_path, {"done": []})
    n_s, n_u = math.ceil(N / sc), math.ceil(V / uc)
    total = n_s * n_u
    bar = tqdm(total=total, initial=len(done), desc="Jacobian store",
               disable=None if progress else True, leave=False)
    for bu in range(n_u):
        us = slice(bu * uc, min(V, (bu + 1) * uc))
        for bs in range(n_s):
            b = bu * n_s + bs
            if b in done:
                continue
            ss = slice(bs * sc, min(N, (bs + 1) * sc))
            arr[ss, us] = source.block(ss, us).detach().cpu().numpy()
            done.add(b)
            _write_json_atomic(prog_path, {"done": sorted(done)})
            bar.update()
            if callback is not None:
                callback(len(done), total)
    bar.close()
    meta = dict(g.attrs[ATTR])
    meta["complete"] = True
    g.attrs[ATTR] = meta
    return ZarrJacobianSource(path, memory_budget_mb=source.memory_budget_mb)


class ZarrJacobianSource(JacobianSource):
    """A Jacobian tensor read block by block from a store written by ``write_store``."""

    def __init__(self, path: str | os.PathLike, memory_budget_mb: float = 1024.0,
                 device: str | torch.device = "cpu", allow_incomplete: bool = False):
        zarr = _zarr()
        self.path = Path(path)
        g = zarr.open_group(str(self.path), mode="r")
        meta = dict(g.attrs).get(ATTR)
        if meta is None:
            raise ValueError(f"{self.path} is not a Jacobian store")
        if not meta.get("complete") and not allow_incomplete:
            raise ValueError(f"{self.path} is incomplete (interrupted write); call write_store "
                             "again to resume it, or pass allow_incomplete=True")
        self.arr = g["J"]
        dtype = getattr(torch, str(self.arr.dtype))
        super().__init__(g["X"][:], memory_budget_mb, dtype, device)
        self.n_units = int(self.arr.shape[1])
        self.fingerprint = meta["fingerprint"]
        self.store_chunks = (int(meta["sample_chunk"]), int(meta["unit_chunk"]))
        self._outputs = (torch.as_tensor(g["outputs"][:], device=self.device)
                         if "outputs" in g else None)

    def chunk_sizes(self, sample_chunk: int | None = None, unit_chunk: int | None = None,
                    budget_mb: float | None = None) -> tuple[int, int]:
        """Whole store chunks by default (reads never straddle a chunk)."""
        sc, uc = super().chunk_sizes(sample_chunk, unit_chunk, budget_mb)
        ssc, suc = self.store_chunks
        if sample_chunk is None:
            sc = max(ssc, sc // ssc * ssc) if sc >= ssc else sc
        if unit_chunk is None:
            uc = max(suc, uc // suc * suc) if uc >= suc else uc
        return sc, uc

    def block(self, samples: Index, units: Index = slice(None)) -> torch.Tensor:
        s = samples if isinstance(samples, slice) else np.asarray(samples).astype(np.int64)
        u = units if isinstance(units, slice) else np.asarray(units).astype(np.int64)
        if isinstance(s, slice) and isinstance(u, slice):
            data = self.arr[s, u]
        else:
            data = self.arr.oindex[s, u]
        return torch.as_tensor(np.asarray(data), device=self.device)

    def outputs(self) -> torch.Tensor:
        if self._outputs is None:
            raise ValueError(f"the store {self.path} holds no outputs f(X)")
        return self._outputs
