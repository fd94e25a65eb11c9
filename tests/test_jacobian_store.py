"""The on-disk Jacobian store: write chunk by chunk, interrupt, resume, read back."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("zarr")

from linbridge.encoders import build_mlp  # noqa: E402
from linbridge.jacobian import (ModelJacobianSource, ZarrJacobianSource,  # noqa: E402
                                deviation_statistics, weighted_mean_jacobian, write_store)


pytestmark = pytest.mark.usefixtures("one_thread")


class _Stop(Exception):
    pass


def _source(seed=0, **kw):
    torch.manual_seed(seed)
    m = build_mlp(7, 11, hidden=13, depth=2).eval()
    X = torch.randn(10, 7, generator=torch.Generator().manual_seed(seed))
    return ModelJacobianSource(m, X, **kw)


def test_write_interrupt_resume_read_back(tmp_path):
    src = _source()
    J = src.block(slice(None)).numpy()
    path = tmp_path / "jac.zarr"

    def stop_after_3(done, total):
        if done == 3:
            raise _Stop

    with pytest.raises(_Stop):
        write_store(src, path, sample_chunk=4, unit_chunk=5, callback=stop_after_3)
    assert len(json.loads((path / "progress.json").read_text())["done"]) == 3
    with pytest.raises(ValueError, match="incomplete"):
        ZarrJacobianSource(path)
    # resuming writes only the remaining blocks (3 x 3 = 9 in all) and keeps the chunking
    calls = []
    store = write_store(src, path, sample_chunk=2, unit_chunk=2,
                        callback=lambda d, t: calls.append((d, t)))
    assert calls[0] == (4, 9) and calls[-1] == (9, 9) and len(calls) == 6
    assert store.store_chunks == (4, 5) and store.shape == src.shape
    # bit for bit what the source's blocks were
    for s0 in range(0, 10, 4):
        for u0 in range(0, 11, 5):
            ss, us = slice(s0, s0 + 4), slice(u0, u0 + 5)
            np.testing.assert_array_equal(store.block(ss, us).numpy(), src.block(ss, us).numpy())
    np.testing.assert_allclose(store.block(slice(None)).numpy(), J, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(store.block([1, 7], np.array([0, 10])).numpy(),
                               J[[1, 7]][:, [0, 10]], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(store.X.numpy(), src.X.numpy())
    np.testing.assert_array_equal(store.outputs().numpy(), src.outputs().numpy())
    # a completed store re-opened as a source gives the same reductions as the model
    again = ZarrJacobianSource(path, memory_budget_mb=0.002)
    Jbar = weighted_mean_jacobian(src)
    np.testing.assert_allclose(weighted_mean_jacobian(again), Jbar, rtol=1e-6, atol=1e-7)
    a = deviation_statistics(again, {"mean": Jbar}, stats=("l1", "l2sq", "jac_l2sq", "jx"))
    b = deviation_statistics(src, {"mean": Jbar}, stats=("l1", "l2sq", "jac_l2sq", "jx"))
    for f in ("jac_l2sq", "jx"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.l1["mean"], b.l1["mean"], rtol=1e-5, atol=1e-6)
    # writing again is a no-op resume
    calls.clear()
    write_store(src, path, callback=lambda d, t: calls.append(d))
    assert calls == []


def test_store_refuses_a_different_source(tmp_path):
    path = tmp_path / "jac.zarr"
    write_store(_source(seed=0), path)
    with pytest.raises(ValueError, match="different source"):
        write_store(_source(seed=1), path)
    with pytest.raises(ValueError, match="different source"):
        write_store(_source(seed=0, dtype=torch.float64), path)
    store = write_store(_source(seed=1), path, overwrite=True)
    np.testing.assert_allclose(store.block(slice(None)).numpy(),
                               _source(seed=1).block(slice(None)).numpy(), rtol=1e-6, atol=1e-9)
    (tmp_path / "other").mkdir()
    import zarr

    zarr.open_group(str(tmp_path / "other"), mode="w")
    with pytest.raises(FileExistsError, match="not a Jacobian store"):
        write_store(_source(), tmp_path / "other")
