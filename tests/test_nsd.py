"""NSD loader: file facts, conventions and the miniature fixture.

The constants below are copied from docs/conventions.md (NSD section) and the NSD data
manual, independently of linbridge.data.nsd, so the loader is checked against the spec and
not only against its own fixture. Expected responses are recomputed here from the raw files
with plain numpy (h5py / nibabel / csv), not with the loader's helpers.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.io import savemat

from linbridge.data import nsd
from linbridge.data.nsd_fixture import write_nsd_fixture

try:  # the loader's CLIP features need the optional extra; the file facts do not
    import transformers  # noqa: F401

    HAS_TRANSFORMERS = True
except ImportError:  # pragma: no cover
    HAS_TRANSFORMERS = False

# ---- independent constants (docs/conventions.md, NSD section)
SPEC_SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}
SPEC_TRIALS = 750
SPEC_SCALE = 300
SPEC_NAMES = {
    "prf-visualrois": "V1v V1d V2v V2d V3v V3d hV4",
    "floc-bodies": "EBA FBA-1 FBA-2 mTL-bodies",
    "floc-faces": "OFA FFA-1 FFA-2 mTL-faces aTL-faces",
    "floc-places": "OPA PPA RSC",
    "floc-words": "OWFA VWFA-1 VWFA-2 mfs-words mTL-words",
    "streams": "early midventral midlateral midparietal ventral lateral parietal",
}
SPEC_TIERS = {"PVC": {"V1v", "V1d"}, "IVC": {"V2v", "V2d", "V3v", "V3d", "hV4"},
              "HVC": {"EBA", "FFA-1", "FFA-2", "OPA", "PPA", "RSC"}}
BETAS = "betas_fithrf_GLMdenoise_RR"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_nsd_fixture(tmp_path_factory.mktemp("nsd"), subjects=(1, 6), seed=3,
                                 with_model=HAS_TRANSFORMERS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _load(root, cache, **kw):
    pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nsd.load_nsd(root, cache_dir=cache, progress=False, **kw)


@pytest.fixture(scope="module")
def ds(root, cache):
    return _load(root, cache, subject=1)


def _responses(root, subj):
    rows = list(csv.DictReader(open(root / f"nsddata/ppdata/subj{subj:02d}/behav/responses.tsv"),
                               delimiter="\t"))
    return np.array([int(r["SESSION"]) for r in rows]), np.array([int(r["73KID"]) for r in rows])


def _warned(match, fn, *a, **kw):
    """Call fn, assert a warning matching ``match`` was raised (others are ignored)."""
    import re

    pytest.importorskip("transformers")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(*a, **kw)
    msgs = [str(w.message) for w in rec]
    assert any(re.search(match, m) for m in msgs), msgs
    return out


def _unscale(ds, Y):
    z = ds.meta["zscore"]
    return Y.astype(np.float64) * z["Y_std"] + z["Y_mean"]


# --------------------------------------------------------------------------- file facts
def test_constants_match_spec():
    assert nsd.SESSIONS_COMPLETED == SPEC_SESSIONS
    assert nsd.TRIALS_PER_SESSION == SPEC_TRIALS
    assert nsd.BETA_SCALE == SPEC_SCALE
    assert nsd.N_STIMULI == 73000 and nsd.N_SHARED == 1000
    assert nsd.FSAVERAGE_N_VERTICES == 163842
    assert nsd.STIMULUS_SHAPE == (425, 425, 3)
    for atlas, names in SPEC_NAMES.items():
        assert " ".join(nsd.NSD_ROI_NAMES[atlas]) == names
    assert {t: set(v) for t, v in nsd.expand_tiers().items()} == SPEC_TIERS


def test_paths_match_spec(tmp_path):
    p = nsd.NSDPaths(tmp_path, 7)
    r = str(tmp_path) + "/"
    assert str(p.betas_volume(3, "hdf5")) == r + f"nsddata_betas/ppdata/subj07/func1pt8mm/{BETAS}/betas_session03.hdf5"
    assert str(p.betas_volume(12, "nifti")) == r + f"nsddata_betas/ppdata/subj07/func1pt8mm/{BETAS}/betas_session12.nii.gz"
    assert str(p.ncsnr_volume()) == r + f"nsddata_betas/ppdata/subj07/func1pt8mm/{BETAS}/ncsnr.nii.gz"
    assert str(p.betas_surface(40, "rh")) == r + f"nsddata_betas/ppdata/subj07/fsaverage/{BETAS}/rh.betas_session40.mgh"
    assert str(p.roi_volume("floc-faces")) == r + "nsddata/ppdata/subj07/func1pt8mm/roi/floc-faces.nii.gz"
    assert str(p.label_ctab("floc-faces")) == r + "nsddata/freesurfer/subj07/label/floc-faces.mgz.ctab"
    assert str(p.label_surface("streams", "lh")) == r + "nsddata/freesurfer/subj07/label/lh.streams.mgz"
    assert str(p.expdesign) == r + "nsddata/experiments/nsd/nsd_expdesign.mat"
    assert str(p.responses) == r + "nsddata/ppdata/subj07/behav/responses.tsv"
    assert str(p.stimuli) == r + "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    with pytest.raises(ValueError):
        nsd.NSDPaths(tmp_path, 9)


def test_fixture_files_have_nsd_formats(root):
    b = root / f"nsddata_betas/ppdata/subj01/func1pt8mm/{BETAS}"
    img = nib.load(b / "betas_session01.nii.gz")
    X, Y, Z, T = img.shape
    assert img.get_data_dtype() == np.int16
    with h5py.File(b / "betas_session01.hdf5", "r") as f:
        assert f["betas"].dtype == np.int16
        assert f["betas"].shape == (T, Z, Y, X)  # axes reversed
    s = nib.load(root / f"nsddata_betas/ppdata/subj01/fsaverage/{BETAS}/lh.betas_session01.mgh")
    assert tuple(s.shape[1:3]) == (1, 1) and s.shape[3] == T
    assert s.get_data_dtype().kind == "f" and s.get_data_dtype().itemsize == 4  # float32 (MGH is big-endian)
    with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        brick = f["imgBrick"]
        assert brick.dtype == np.uint8 and brick.ndim == 4 and brick.shape[3] == 3
    from scipy.io import loadmat

    m = loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")
    assert m["masterordering"].shape[0] == 1 and m["sharedix"].shape[0] == 1
    assert m["subjectim"].shape[0] == 8
    assert m["masterordering"].min() == 1  # 1-based
    assert m["masterordering"].max() == m["subjectim"].shape[1]
    roi = np.asarray(nib.load(root / "nsddata/ppdata/subj01/func1pt8mm/roi/prf-visualrois.nii.gz").dataobj)
    assert roi.shape == (X, Y, Z) and set(np.unique(roi)) <= set(range(-1, 8))
    assert (roi == -1).any() and (roi == 0).any() and (roi > 0).any()


# --------------------------------------------------------------------------- divide by 300
def test_volume_betas_divided_by_300(tmp_path):
    grid = (3, 4, 2)
    vol = np.arange(np.prod(grid) * 5, dtype=np.int16).reshape(grid + (5,)) * 30 - 900
    h5 = tmp_path / "b.hdf5"
    with h5py.File(h5, "w") as f:
        f["betas"] = vol.transpose(3, 2, 1, 0)
    nii = tmp_path / "b.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), nii)
    ijk = np.array([[0, 0, 0], [2, 3, 1], [1, 2, 0]])
    for path, fmt in ((h5, "hdf5"), (nii, "nifti")):
        r = nsd._VolumeReader(path, fmt, grid, ijk)
        got = r.read(0, 5)
        r.close()
        want = np.stack([vol[i, j, k, :] for i, j, k in ijk], axis=1) / SPEC_SCALE
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32
    # NSD-style chunks of one voxel x all trials: read whole, same numbers
    h5c = tmp_path / "c.hdf5"
    with h5py.File(h5c, "w") as f:
        f.create_dataset("betas", data=vol.transpose(3, 2, 1, 0), chunks=(5, 1, 1, 1))
    r = nsd._VolumeReader(h5c, "hdf5", grid, ijk)
    assert r.min_block == 5
    np.testing.assert_array_equal(r.read(0, 5), got)
    r.close()


def test_reader_checks_grid(tmp_path):
    h5 = tmp_path / "b.hdf5"
    with h5py.File(h5, "w") as f:
        f["betas"] = np.zeros((5, 2, 4, 3), np.int16)
    with pytest.raises(ValueError, match="trials, Z, Y, X"):
        nsd._VolumeReader(h5, "hdf5", (2, 4, 3), np.array([[0, 0, 0]]))


# --------------------------------------------------------------------------- axis order
def test_hdf5_to_nifti_axis_order(root):
    b = root / f"nsddata_betas/ppdata/subj01/func1pt8mm/{BETAS}"
    vol = np.asarray(nib.load(b / "betas_session02.nii.gz").dataobj)
    with h5py.File(b / "betas_session02.hdf5", "r") as f:
        t = 7
        trial = f["betas"][t]
        np.testing.assert_array_equal(nsd.hdf5_to_nifti_axes(trial), vol[..., t])
        np.testing.assert_array_equal(trial.transpose(2, 1, 0), vol[..., t])
        block = f["betas"][3:6]
        np.testing.assert_array_equal(nsd.hdf5_to_nifti_axes(block), np.moveaxis(vol[..., 3:6], 3, 0))


def test_hdf5_and_nifti_give_same_dataset(root, cache, ds):
    d2 = _load(root, cache, subject=1, betas_format="nifti")
    np.testing.assert_array_equal(d2.Y, ds.Y)
    np.testing.assert_array_equal(d2.unit_ids, ds.unit_ids)


# --------------------------------------------------------------------------- design, 1-based
def test_design_is_one_based(tmp_path):
    subjectim = np.zeros((8, 4))
    subjectim[2] = [11, 12, 13, 14]  # subject 3's 73k ids
    subjectim[[0, 1, 3, 4, 5, 6, 7]] = 1
    mo = np.array([[4, 1, 2, 1, 3, 4]])  # 2 sessions x 3 trials
    path = tmp_path / "d.mat"
    savemat(path, {"masterordering": mo, "subjectim": subjectim, "sharedix": np.array([[12, 14]])})
    d = nsd.ExpDesign.load(path)
    np.testing.assert_array_equal(d.trial_ids(3, 1, 3), [14, 11, 12])
    np.testing.assert_array_equal(d.trial_ids(3, 2, 3), [11, 13, 14])
    savemat(path, {"masterordering": mo - 1, "subjectim": subjectim, "sharedix": np.array([[12, 14]])})
    with pytest.raises(ValueError, match="1-based"):
        nsd.ExpDesign.load(path)


def test_samples_are_the_images_of_the_trial_log(root, ds):
    sess, ids = _responses(root, 1)
    uniq, counts = np.unique(ids, return_counts=True)
    np.testing.assert_array_equal(ds.meta["nsd73k_id"], uniq)
    np.testing.assert_array_equal(ds.meta["n_repeats"], counts)
    assert list(ds.sample_ids[:2]) == [f"nsd{i:05d}" for i in uniq[:2]]


def test_trial_log_mismatch_warns(root, cache, tmp_path):
    import shutil

    alt = tmp_path / "nsd"
    shutil.copytree(root, alt)
    p = alt / "nsddata/ppdata/subj01/behav/responses.tsv"
    lines = p.read_text().splitlines()
    head = lines[0].split("\t")
    k = head.index("73KID")
    row = lines[1].split("\t")
    row[k] = str(int(row[k]) % 50 + 1 if int(row[k]) != 1 else 2)
    lines[1] = "\t".join(row)
    p.write_text("\n".join(lines) + "\n")
    _warned("differs from nsd_expdesign", nsd.load_nsd, alt, subject=1, cache_dir=cache,
            progress=False)


# --------------------------------------------------------------------------- z-score, averaging
def _expected_Y(root, subj, ijk, sessions):
    """Per-session z-score (population std) of raw/300, averaged over repeats - from scratch."""
    b = root / f"nsddata_betas/ppdata/subj{subj:02d}/func1pt8mm/{BETAS}"
    sess_log, ids_log = _responses(root, subj)
    zs, ids = [], []
    for s in sessions:
        vol = nib.load(b / f"betas_session{s:02d}.nii.gz").get_fdata()
        x = np.stack([vol[i, j, k, :] for i, j, k in ijk], axis=1) / SPEC_SCALE
        zs.append((x - x.mean(0)) / x.std(0))
        ids.append(ids_log[sess_log == s])
    z, ids = np.concatenate(zs), np.concatenate(ids)
    uniq = np.unique(ids)
    return uniq, np.stack([z[ids == u].mean(0) for u in uniq])


def test_session_zscore_and_repeat_average(root, ds):
    ijk = ds.meta["ijk"]
    pick = np.linspace(0, len(ijk) - 1, 25).astype(int)
    uniq, want = _expected_Y(root, 1, ijk[pick], [1, 2, 3])
    np.testing.assert_array_equal(uniq, ds.meta["nsd73k_id"])
    np.testing.assert_allclose(_unscale(ds, ds.Y)[:, pick], want, atol=1e-5)


def test_session_subset_and_uneven_repeats(root, cache):
    d = _load(root, cache, subject=1, sessions=[1, 3])
    assert d.meta["sessions"] == [1, 3]
    pick = np.arange(0, d.n_units, 37)
    uniq, want = _expected_Y(root, 1, d.meta["ijk"][pick], [1, 3])
    np.testing.assert_array_equal(uniq, d.meta["nsd73k_id"])
    np.testing.assert_allclose(_unscale(d, d.Y)[:, pick], want, atol=1e-5)
    assert set(np.unique(d.meta["n_repeats"])) > {2}  # some images lost a repeat
    with pytest.raises(ValueError, match="completed sessions"):
        _load(root, cache, subject=1, sessions=[41])
    with pytest.raises(FileNotFoundError):
        _load(root, cache, subject=1, sessions=[4])


def test_missing_sessions_warn(root, cache):
    _warned("3 of the 40 sessions", nsd.load_nsd, root, subject=1, cache_dir=cache,
            progress=False)


# --------------------------------------------------------------------------- split
def test_shared1000_test_split(root, ds):
    from scipy.io import loadmat

    sharedix = loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")["sharedix"].ravel()
    ids = ds.meta["nsd73k_id"]
    np.testing.assert_array_equal(np.sort(ids[ds.split.test]), np.intersect1d(ids, sharedix))
    other = np.r_[ds.split.train, ds.split.val]
    assert not np.intersect1d(ids[ds.split.test], ids[other]).size
    assert ds.split.train.size + ds.split.val.size + ds.split.test.size == ds.n_samples
    # train statistics
    np.testing.assert_allclose(ds.X[ds.split.train].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.Y[ds.split.train].std(0), 1, atol=1e-4)


def test_split_is_seeded(root, cache, ds):
    same = _load(root, cache, subject=1, seed=0)
    other = _load(root, cache, subject=1, seed=1, n_val=5)
    np.testing.assert_array_equal(same.split.val, ds.split.val)
    assert other.split.val.size == 5
    np.testing.assert_array_equal(other.split.test, ds.split.test)


# --------------------------------------------------------------------------- ids
def test_stimulus_id_converter_round_trip(root):
    conv = nsd.StimulusIds(sharedix=[3, 10, 73000])
    ids = np.array([1, 2, 73000])
    np.testing.assert_array_equal(conv.to_brick(ids), [0, 1, 72999])
    np.testing.assert_array_equal(conv.from_brick(conv.to_brick(ids)), ids)
    assert conv.shared_filename(10) == "shared0002_nsd00010.png"
    assert conv.from_filename("shared0002_nsd00010.png") == 10
    assert conv.from_filename(conv.shared_filename(73000)) == 73000
    assert conv.from_sample_id(nsd.StimulusIds.sample_id(2951)) == 2951
    with pytest.raises(ValueError, match="1-based"):
        conv.to_brick([0])
    with pytest.raises(ValueError):
        conv.from_brick([73000])
    with pytest.raises(ValueError, match="disagrees"):
        conv.from_filename("shared0001_nsd00010.png")


def test_shared1000_files_match_brick(root):
    from PIL import Image
    from scipy.io import loadmat

    sharedix = loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")["sharedix"].ravel()
    folder = root / "nsddata/stimuli/nsd/shared1000"
    with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        n = f["imgBrick"].shape[0]
        conv = nsd.StimulusIds(sharedix=sharedix, n_stimuli=n)
        files = sorted(folder.glob("*.png"))
        assert len(files) == sharedix.size
        for p in files[:4]:
            i = conv.from_filename(p.name)
            assert conv.shared_filename(i) == p.name
            np.testing.assert_array_equal(np.asarray(Image.open(p)), f["imgBrick"][i - 1])
    a = nsd.NSDImages(sharedix[:4], stimuli=root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5",
                      n_stimuli=n)
    b = nsd.NSDImages(sharedix[:4], image_dir=folder, n_stimuli=n)
    np.testing.assert_array_equal(a(np.array([2, 0, 2])), b(np.array([2, 0, 2])))


def test_dataset_images_are_its_samples(root, ds):
    idx = np.array([4, 1, 4])
    im = ds.images(idx)
    assert im.shape[0] == 3 and im.dtype == np.uint8
    with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        np.testing.assert_array_equal(im[1], f["imgBrick"][ds.meta["nsd73k_id"][1] - 1])


# --------------------------------------------------------------------------- ROIs and tiers
def test_read_ctab(tmp_path):
    p = tmp_path / "x.mgz.ctab"
    p.write_text("# comment\n0 Unknown\n1 V1v 255 0 0 0\n\n2  V1d\n")
    assert nsd.read_ctab(p) == {0: "Unknown", 1: "V1v", 2: "V1d"}
    p.write_text("one V1v\n")
    with pytest.raises(ValueError, match="index name"):
        nsd.read_ctab(p)


def test_roi_labels_parsed_with_nsd_names(root):
    paths = nsd.NSDPaths(root, 1)
    for atlas, names in SPEC_NAMES.items():
        lab, table, _ = nsd.load_roi_volume(paths, atlas)
        assert [table[k] for k in sorted(table)] == names.split()
        assert lab.min() == -1 and lab.max() <= len(names.split())


def test_tiers_follow_roi_names(ds):
    roi = ds.meta["roi_names"]
    for tier, names in SPEC_TIERS.items():
        sel = ds.unit_labels == tier
        assert sel.sum() > 0
        assert all(set(r.split("+")) & names for r in roi[sel])
    for r, t in zip(roi, ds.unit_labels):
        if t == "other":
            assert not set(r.split("+")) & set().union(*SPEC_TIERS.values())
    # V1 first: a unit in V1 is PVC whatever else it is in
    assert all(t == "PVC" for r, t in zip(roi, ds.unit_labels) if {"V1v", "V1d"} & set(r.split("+")))


def test_tiers_configurable(root, cache):
    d = _load(root, cache, subject=1, tiers={"early": ["V1", "V2"], "faces": ["FFA-1", "OFA"]})
    assert set(d.unit_labels) <= {"early", "faces", "other"}
    assert (d.unit_labels == "faces").any()
    assert d.meta["tiers"]["early"] == ["V1v", "V1d", "V2v", "V2d"]
    with pytest.raises(ValueError, match="unknown NSD ROI"):
        _load(root, cache, subject=1, tiers={"x": ["V9"]})


def test_nsdgeneral_selection(root, ds):
    ng = np.asarray(nib.load(root / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz").dataobj)
    np.testing.assert_array_equal(ds.meta["ijk"], np.argwhere(ng > 0))
    assert ds.unit_ids[0] == "{}_{}_{}".format(*ds.meta["ijk"][0])


# --------------------------------------------------------------------------- noise ceiling
def test_noise_ceiling_formula():
    assert nsd.noise_ceiling(1.0, 3) == pytest.approx(0.75)
    assert nsd.noise_ceiling(1.0, 3, percent=True) == pytest.approx(75.0)
    assert nsd.noise_ceiling(0.0, 3) == 0.0
    s = np.array([0.5, 2.0])
    np.testing.assert_allclose(nsd.noise_ceiling(s, 1), s ** 2 / (s ** 2 + 1))
    # mixed repeat counts: NSD manual's (A/3 + B/2 + C/1) / (A + B + C)
    n = np.array([3, 3, 2, 1])
    np.testing.assert_allclose(nsd.noise_ceiling(s, n),
                               s ** 2 / (s ** 2 + (2 / 3 + 1 / 2 + 1) / 4))


def test_noise_ceiling_in_meta(root, ds):
    nc_vol = nib.load(root / f"nsddata_betas/ppdata/subj01/func1pt8mm/{BETAS}/ncsnr.nii.gz").get_fdata()
    ncsnr = np.array([nc_vol[i, j, k] for i, j, k in ds.meta["ijk"]])
    n = ds.meta["n_repeats"][ds.split.test]
    want = ncsnr ** 2 / (ncsnr ** 2 + np.mean(1.0 / n))
    np.testing.assert_allclose(ds.meta["noise_ceiling"], want, rtol=1e-6)
    assert ((ds.meta["noise_ceiling"] >= 0) & (ds.meta["noise_ceiling"] <= 1)).all()


# --------------------------------------------------------------------------- fsaverage, NaN
def test_fsaverage_nan_vertices_dropped_and_reported(root, cache):
    b = root / f"nsddata_betas/ppdata/subj06/fsaverage/{BETAS}"
    lab = root / "nsddata/freesurfer/subj06/label"
    n_nan = 0
    for h in ("lh", "rh"):
        ng = np.asarray(nib.load(lab / f"{h}.nsdgeneral.mgz").dataobj).ravel()
        bad = np.zeros(ng.size, bool)
        for s in (1, 2, 3):
            bad |= np.isnan(np.asarray(nib.load(b / f"{h}.betas_session{s:02d}.mgh").dataobj)[:, 0, 0, :]).any(1)
        n_nan += int((bad & (ng > 0)).sum())
    assert n_nan > 0
    d = _warned(f"dropped {n_nan} of", nsd.load_nsd, root, subject=6, space="fsaverage",
                cache_dir=cache, progress=False)
    assert d.meta["n_dropped_nan"] == n_nan
    assert len(d.meta["dropped_nan_unit_ids"]) == n_nan
    assert np.isfinite(d.Y).all()
    assert not set(d.meta["dropped_nan_unit_ids"]) & set(d.unit_ids)


def test_fsaverage_values_not_divided(root, cache):
    d = _load(root, cache, subject=1, space="fsaverage")
    assert d.meta["n_dropped_nan"] == 0
    assert d.unit_ids[0].startswith("lh.")
    b = root / f"nsddata_betas/ppdata/subj01/fsaverage/{BETAS}"
    sess_log, ids_log = _responses(root, 1)
    h, v = d.meta["hemi"][-1], d.meta["vertex"][-1]
    z = []
    for s in (1, 2, 3):
        x = np.asarray(nib.load(b / f"{h}.betas_session{s:02d}.mgh").dataobj)[v, 0, 0, :].astype(np.float64)
        z.append((x - x.mean()) / x.std())
    z = np.concatenate(z)
    want = np.array([z[ids_log == u].mean() for u in d.meta["nsd73k_id"]])
    np.testing.assert_allclose(_unscale(d, d.Y)[:, -1], want, atol=1e-5)
    for t in ("PVC", "IVC", "HVC"):
        assert (d.unit_labels == t).any()


def test_fsaverage_labels_need_matching_vertex_count(root, cache, tmp_path):
    import shutil

    alt = tmp_path / "nsd"
    shutil.copytree(root, alt)
    lab = alt / "nsddata/freesurfer/subj01/label"
    native = nib.MGHImage(np.ones((97, 1, 1), np.int32), np.eye(4))
    for h in ("lh", "rh"):  # native-surface sized, as NSD's per-subject labels are
        nib.save(native, lab / f"{h}.nsdgeneral.mgz")
    d = _load(alt, cache, subject=1, space="fsaverage")
    assert "freesurfer/fsaverage/label" in d.meta["files"]["label:nsdgeneral"]
    for h in ("lh", "rh"):
        nib.save(native, lab / f"{h}.prf-visualrois.mgz")
    with pytest.raises(FileNotFoundError, match="native"):
        _load(alt, cache, subject=1, space="fsaverage")


# --------------------------------------------------------------------------- dataset
def test_dataset_contract(ds):
    assert ds.X.dtype == np.float32 and ds.Y.dtype == np.float32
    assert ds.X.shape == (ds.n_samples, 32)  # tiny CLIP hidden size
    assert ds.meta["feature_layer"] == "final_cls"
    assert ds.meta["feature_model"]["is_fixture"] is True
    assert len(ds.meta["roi_names"]) == ds.n_units == len(ds.meta["noise_ceiling"])
    assert ds.meta["trials_per_session"] == 40
    assert ds.meta["n_dropped_nan"] == 0
    assert set(ds.unit_labels) <= {"PVC", "IVC", "HVC", "other"}


def test_data_home_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("LINBRIDGE_DATA", raising=False)
    with pytest.raises(ValueError, match="data_home"):
        nsd.load_nsd(None)
    with pytest.raises(FileNotFoundError, match="not an NSD root"):
        nsd.load_nsd(tmp_path)


# --------------------------------------------------------------------------- response cache
def test_response_cache_hit_and_invalidation(root, cache, tmp_path, monkeypatch):
    import os
    import shutil

    alt = tmp_path / "nsd"
    shutil.copytree(root, alt)
    own = tmp_path / "cache"
    first = _load(alt, own, subject=1, sessions=2)
    fresh = _load(alt, own, subject=1, sessions=2, cache_responses=False)
    np.testing.assert_array_equal(first.Y, fresh.Y)

    calls = []
    real = nsd._average_betas
    monkeypatch.setattr(nsd, "_average_betas", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = _load(alt, own, subject=1, sessions=2)
    assert calls == []  # served from the cache
    np.testing.assert_array_equal(again.Y, first.Y)
    f = alt / f"nsddata_betas/ppdata/subj01/func1pt8mm/{BETAS}/betas_session02.hdf5"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file "changed"
    _load(alt, own, subject=1, sessions=2)
    assert calls == [1]


def test_other_voxel_selections(root, cache, ds):
    rois = _load(root, cache, subject=1, voxel_selection="rois")
    assert all(r for r in rois.meta["roi_names"])  # every unit is inside some ROI
    grid = ds.meta["grid_shape"]
    mask = np.zeros(grid, bool)
    for i, j, k in ds.meta["ijk"][:5]:
        mask[i, j, k] = True
    few = _load(root, cache, subject=1, voxel_selection=mask)
    np.testing.assert_array_equal(few.unit_ids, ds.unit_ids[:5])
    np.testing.assert_allclose(_unscale(few, few.Y), _unscale(ds, ds.Y)[:, :5], atol=1e-6)
    surf = _load(root, cache, subject=1, space="fsaverage", voxel_selection=np.arange(160) % 7 == 0)
    assert surf.n_units == len(range(0, 160, 7))
    with pytest.raises(ValueError, match="voxel_selection"):
        _load(root, cache, subject=1, voxel_selection="V1")
