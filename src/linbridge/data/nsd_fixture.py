"""A miniature NSD tree in NSD's exact layout and file formats, for tests and demos.

``write_nsd_fixture(root)`` writes, under ``root`` (an "NSD root"):

* ``nsddata/experiments/nsd/nsd_expdesign.mat`` - ``masterordering`` (1 x n_sessions*T, 1-based
  into ``subjectim`` columns; every subject image shown 3 times), ``subjectim`` (8 x n_subj,
  1-based 73k ids; the first ``n_shared`` columns are the shared images, as in NSD),
  ``sharedix`` (1 x n_shared, sorted 1-based 73k ids);
* ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5`` - ``imgBrick`` (n_images, S, S, 3) uint8,
  0-based (row = 73k id - 1); and ``nsddata/stimuli/nsd/shared1000/shared{rank:04d}_nsd{id:05d}.png``;
* per subject ``subjXX``:
  ``nsddata_betas/ppdata/subjXX/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.hdf5``
  (``betas`` int16 (T, Z, Y, X)) and ``.nii.gz`` (int16 (X, Y, Z, T)), both beta x 300, and
  ``ncsnr.nii.gz``; ``.../fsaverage/betas_fithrf_GLMdenoise_RR/{lh,rh}.betas_sessionNN.mgh``
  (float32 (n_vertices, 1, 1, T), % signal change; subjects 6 and 8 get NaN vertices) and
  ``{lh,rh}.ncsnr.mgh``; ``nsddata/ppdata/subjXX/func1pt8mm/roi/{atlas}.nii.gz`` (-1 outside
  the brain, 0 unlabeled, k > 0 the k-th NSD name); ``nsddata/freesurfer/subjXX/label/
  {lh,rh}.{atlas}.mgz`` and ``{atlas}.mgz.ctab`` ("index name" lines);
  ``nsddata/ppdata/subjXX/behav/responses.tsv`` (SUBJECT, SESSION, RUN, TRIAL, 73KID, 10KID...);
* ``nsddata/freesurfer/fsaverage/label/{lh,rh}.{nsdgeneral,streams}.mgz`` and their ctabs;
* ``models/openai/clip-vit-base-patch32/`` - a tiny random-weight CLIP vision model
  (``save_pretrained``; needs ``transformers``), found by ``load_nsd`` through
  ``<data_home>/models/<feature_model>``, so ``configs/nsd_paper.yaml`` runs unchanged. It is
  marked with ``LINBRIDGE_FIXTURE_MODEL.txt`` and loading it warns.

Miniature deviations from NSD (all sizes are read from the files by the loader):
``T = trials_per_session`` (40, NSD 750) trials per session; ``n_sessions`` sessions for every
subject (NSD 30-40), so ``masterordering`` has n_sessions*T entries (NSD 30000); subjects see
n_sessions*T/3 images (NSD 10000) of which ``n_shared`` (10, NSD 1000) are shared; the brick
holds ``n_images`` images of S x S pixels (NSD 73000 of 425 x 425); the volume grid is ``grid``
(NSD subj01 81 x 104 x 83); each fsaverage hemisphere has ``n_vertices`` vertices (NSD
163842), and the per-subject surface labels are written on those fsaverage vertices (NSD's
per-subject labels are on the native surface). Responses are simulated: per voxel a response
to a latent of the image pixels - linear in V1, partly rectified in V2/V3/hV4, multiplicative
in the category areas - plus noise with known ``ncsnr``, and per-session gains and offsets
that per-session z-scoring removes.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

#: independent copies of NSD's names (not imported from nsd.py, so a round trip checks both)
_ATLAS_NAMES: dict[str, tuple[str, ...]] = {
    "prf-visualrois": ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"),
    "floc-bodies": ("EBA", "FBA-1", "FBA-2", "mTL-bodies"),
    "floc-faces": ("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"),
    "floc-places": ("OPA", "PPA", "RSC"),
    "floc-words": ("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"),
    "streams": ("early", "midventral", "midlateral", "midparietal", "ventral", "lateral",
                "parietal"),
    "nsdgeneral": ("nsdgeneral",),
}
_BETAS = "betas_fithrf_GLMdenoise_RR"
_MARKER = "LINBRIDGE_NSD_FIXTURE.txt"
_FSAVG_ATLASES = ("nsdgeneral", "streams")
MODEL_SUBDIR = "models/openai/clip-vit-base-patch32"
N_LATENT = 8


def _labels_at(xf: np.ndarray, yf: np.ndarray, zf: np.ndarray, brain: np.ndarray
               ) -> dict[str, np.ndarray]:
    """Atlas labels at points with fractional coordinates in [0, 1) (y = posterior -> anterior).

    Returns {atlas: int array} with -1 outside ``brain``, 0 unlabeled, k > 0 the k-th name.
    """
    band = np.floor(yf * 10).astype(int)  # 0..9
    ng = brain & (band <= 7)
    low, high = zf < 0.5, zf >= 0.5
    left, mid, right = xf < 1 / 3, (xf >= 1 / 3) & (xf < 2 / 3), xf >= 2 / 3
    out = {a: np.where(brain, 0, -1).astype(np.int16) for a in _ATLAS_NAMES}

    def put(atlas, name, where):
        k = _ATLAS_NAMES[atlas].index(name) + 1
        lab = out[atlas]
        lab[where & brain & (lab == 0)] = k

    put("nsdgeneral", "nsdgeneral", ng)
    put("prf-visualrois", "V1v", ng & (band <= 1) & low)
    put("prf-visualrois", "V1d", ng & (band <= 1) & high)
    put("prf-visualrois", "V2v", ng & (band == 2) & low)
    put("prf-visualrois", "V2d", ng & (band == 2) & high)
    put("prf-visualrois", "V3v", ng & (band == 3) & low)
    put("prf-visualrois", "V3d", ng & (band == 3) & high)
    put("prf-visualrois", "hV4", ng & (band == 4) & low)
    put("floc-bodies", "EBA", ng & ((band == 5) | (band == 6)) & left)
    put("floc-bodies", "FBA-1", ng & (band == 5) & right & low)
    put("floc-bodies", "FBA-2", ng & (band == 6) & right & low)
    put("floc-bodies", "mTL-bodies", brain & (band == 8) & left)
    put("floc-faces", "OFA", ng & (band == 4) & high & (xf < 0.5))
    put("floc-faces", "FFA-1", ng & (band == 5) & mid & low)
    put("floc-faces", "FFA-2", ng & (band == 6) & mid & low)
    put("floc-faces", "mTL-faces", brain & (band == 8) & right)
    put("floc-faces", "aTL-faces", brain & (band == 9) & left)
    put("floc-places", "OPA", ng & (band == 4) & high & (xf >= 0.5))
    put("floc-places", "PPA", ng & ((band == 5) | (band == 6)) & high & (xf >= 0.5))
    put("floc-places", "RSC", ng & (band == 7) & high)
    put("floc-words", "OWFA", ng & (band == 7) & low & left)
    put("floc-words", "VWFA-1", ng & (band == 7) & low & mid)
    put("floc-words", "VWFA-2", ng & (band == 7) & low & right)
    put("floc-words", "mfs-words", brain & (band == 8) & mid & low)
    put("floc-words", "mTL-words", brain & (band == 9) & right)
    put("streams", "early", ng & (band <= 3))
    put("streams", "midventral", ng & (band == 4) & low)
    put("streams", "midlateral", ng & (band == 4) & high & (xf < 0.5))
    put("streams", "midparietal", ng & (band == 4) & high & (xf >= 0.5))
    put("streams", "ventral", ng & (band >= 5) & low)
    put("streams", "lateral", ng & (band >= 5) & high & (xf < 0.5))
    put("streams", "parietal", ng & (band >= 5) & high & (xf >= 0.5))
    return out


def _unit_kind(labels: dict[str, np.ndarray]) -> np.ndarray:
    """0 noise only (outside nsdgeneral), 1 linear (V1), 2 rectified (V2-hV4), 3 multiplicative
    (category areas), 4 weakly nonlinear (rest of nsdgeneral)."""
    prf, ng = labels["prf-visualrois"], labels["nsdgeneral"]
    cat = (labels["floc-bodies"] > 0) | (labels["floc-faces"] > 0) | (labels["floc-places"] > 0)
    kind = np.where(ng > 0, 4, 0)
    kind = np.where(cat & (ng > 0), 3, kind)
    kind = np.where((prf >= 3) & (prf <= 7), 2, kind)
    kind = np.where((prf == 1) | (prf == 2), 1, kind)
    return kind


def _signals(rng: np.random.Generator, latent: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """(n_images, n_units) noise-free responses with unit variance over the images."""
    n, k = latent.shape
    W = rng.standard_normal((3, k, kind.size)) / np.sqrt(k)
    a, b, c = (latent @ W[i] for i in range(3))
    sig = np.select([kind[None] == 1, kind[None] == 2, kind[None] == 3, kind[None] == 4],
                    [a, np.maximum(a, 0) + 0.3 * b, a * b + np.abs(c), a + 0.3 * b * c],
                    default=0.2 * a)
    sig = sig - sig.mean(0)
    return sig / np.maximum(sig.std(0), 1e-9)


def _write_ctab(path: Path, names: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["0 Unknown"] + [f"{k} {n}" for k, n in enumerate(names, 1)]
    path.write_text("\n".join(lines) + "\n")


def _save_mgh(path: Path, data: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.MGHImage(data, np.eye(4)), str(path))


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    nib.save(img, str(path))


def write_nsd_fixture(root: str | Path, subjects: Sequence[int] = (1,), n_sessions: int = 3,
                      grid: tuple[int, int, int] = (10, 12, 8), n_images: int | None = None,
                      seed: int = 0, *, trials_per_session: int = 40, n_shared: int = 10,
                      image_size: int = 48, n_vertices: int = 80,
                      betas_formats: Sequence[str] = ("hdf5", "nifti"),
                      fsaverage: bool = True, with_model: bool = True) -> Path:
    """Write a miniature NSD tree under ``root`` (see the module doc); return ``root``.

    n_images : size of the stimulus brick; default n_shared + 8 x (subject-unique images) + 4,
        so the 8 rows of ``subjectim`` have disjoint unique images as in NSD.
    with_model : also save the tiny random-weight CLIP under ``models/`` (needs transformers;
        skipped with a warning when it is missing).
    """
    import h5py
    from scipy.io import savemat

    root = Path(root)
    T, S = int(trials_per_session), int(n_sessions)
    if (T * S) % 3:
        raise ValueError("n_sessions x trials_per_session must be a multiple of 3 "
                         "(every image is shown 3 times)")
    n_subj = T * S // 3
    n_unique = n_subj - n_shared
    if n_unique < 2:
        raise ValueError(f"{n_subj} images per subject leave too few beyond {n_shared} shared")
    if n_images is None:
        n_images = n_shared + 8 * n_unique + 4
    if n_images < n_shared + n_unique:
        raise ValueError(f"n_images={n_images} < {n_shared} shared + {n_unique} unique")
    bad = [s for s in subjects if not 1 <= int(s) <= 8]
    if bad:
        raise ValueError(f"NSD subjects are 1..8, got {bad}")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER).write_text("Miniature NSD tree written by linbridge.data.nsd_fixture "
                                "(simulated data, not NSD).\n")

    # ---- design (1-based throughout)
    perm = rng.permutation(n_images) + 1
    sharedix = np.sort(perm[:n_shared])
    pool = perm[n_shared:]
    subjectim = np.zeros((8, n_subj), dtype=np.int64)
    for s in range(8):
        if pool.size >= 8 * n_unique:
            uniq = pool[s * n_unique:(s + 1) * n_unique]
        else:
            uniq = rng.choice(pool, n_unique, replace=False)
        subjectim[s] = np.concatenate([sharedix, uniq])
    masterordering = np.repeat(np.arange(1, n_subj + 1), 3)
    rng.shuffle(masterordering)
    design = root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"
    design.parent.mkdir(parents=True, exist_ok=True)
    savemat(design, {"masterordering": masterordering[None].astype(np.float64),
                     "subjectim": subjectim.astype(np.float64),
                     "sharedix": sharedix[None].astype(np.float64)})

    # ---- stimuli: smooth random colour patterns; the latent the responses follow
    low = rng.integers(0, 256, size=(n_images, 6, 6, 3)).astype(np.float64)
    from PIL import Image

    brick = np.stack([np.asarray(Image.fromarray(im.astype(np.uint8)).resize(
        (image_size, image_size), Image.BICUBIC)) for im in low]).astype(np.uint8)
    P = rng.standard_normal((low[0].size, N_LATENT))
    latent_all = (low.reshape(n_images, -1) - 127.5) / 74.0 @ P / np.sqrt(low[0].size)
    stim = root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"
    stim.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(stim, "w") as f:
        f.create_dataset("imgBrick", data=brick, chunks=(1, image_size, image_size, 3),
                         compression="gzip")
    shared_dir = root / "nsddata" / "stimuli" / "nsd" / "shared1000"
    shared_dir.mkdir(parents=True, exist_ok=True)
    for rank, i in enumerate(sharedix, 1):
        Image.fromarray(brick[i - 1]).save(shared_dir / f"shared{rank:04d}_nsd{i:05d}.png")

    # ---- geometry shared by subjects (fsaverage is a common space)
    X, Y, Z = grid
    ii, jj, kk = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    cx, cy, cz = (X - 1) / 2, (Y - 1) / 2, (Z - 1) / 2
    brain_v = (((ii - cx) / (0.62 * X)) ** 2 + ((jj - cy) / (0.62 * Y)) ** 2
               + ((kk - cz) / (0.62 * Z)) ** 2) <= 1.0
    vol_labels = _labels_at((ii + 0.5) / X, (jj + 0.5) / Y, (kk + 0.5) / Z, brain_v)
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    affine[:3, 3] = -0.9 * np.array(grid)
    srng = np.random.default_rng(seed + 1)
    surf_xyz = {h: srng.random((n_vertices, 3)) for h in ("lh", "rh")}
    surf_labels = {h: _labels_at(c[:, 0], c[:, 1], c[:, 2], np.ones(n_vertices, bool))
                   for h, c in surf_xyz.items()}
    if fsaverage:
        fl = root / "nsddata" / "freesurfer" / "fsaverage" / "label"
        for a in _FSAVG_ATLASES:
            _write_ctab(fl / f"{a}.mgz.ctab", _ATLAS_NAMES[a])
            for h in ("lh", "rh"):
                _save_mgh(fl / f"{h}.{a}.mgz", surf_labels[h][a].astype(np.int32)[:, None, None])

    for subj in subjects:
        subj = int(subj)
        sx = f"subj{subj:02d}"
        srng = np.random.default_rng([seed, subj])
        ids = subjectim[subj - 1, masterordering - 1]  # 73k id of every trial
        lat = latent_all[subjectim[subj - 1] - 1]  # (n_subj, k), subject image order
        col = {int(i): c for c, i in enumerate(subjectim[subj - 1])}
        img_col = np.array([col[int(i)] for i in ids])

        # ROIs and label tables
        roi_dir = root / "nsddata" / "ppdata" / sx / "func1pt8mm" / "roi"
        lab_dir = root / "nsddata" / "freesurfer" / sx / "label"
        for a, names in _ATLAS_NAMES.items():
            _save_nifti(roi_dir / f"{a}.nii.gz", vol_labels[a].astype(np.int16), affine)
            _write_ctab(lab_dir / f"{a}.mgz.ctab", names)
            if fsaverage:
                for h in ("lh", "rh"):
                    _save_mgh(lab_dir / f"{h}.{a}.mgz",
                              surf_labels[h][a].astype(np.int32)[:, None, None])

        # behaviour log
        behav = root / "nsddata" / "ppdata" / sx / "behav" / "responses.tsv"
        behav.parent.mkdir(parents=True, exist_ok=True)
        cols = ["SUBJECT", "SESSION", "RUN", "TRIAL", "TIME", "ISOLD", "ISCORRECT", "RT",
                "MISSINGDATA", "73KID", "10KID"]
        lines = ["\t".join(cols)]
        seen: set[int] = set()
        for s in range(1, S + 1):
            runs = np.array_split(np.arange(T), min(12, T))
            for r, trials in enumerate(runs, 1):
                for t_run, t in enumerate(trials, 1):
                    g = (s - 1) * T + t
                    old = int(ids[g] in seen)
                    seen.add(int(ids[g]))
                    lines.append("\t".join(map(str, [
                        subj, s, r, t_run, f"{g * 4.0:.1f}", old, 1, 800, 0,
                        int(ids[g]), int(masterordering[g])])))
        behav.write_text("\n".join(lines) + "\n")

        # volume betas
        bdir = root / "nsddata_betas" / "ppdata" / sx / "func1pt8mm" / _BETAS
        kind_v = _unit_kind(vol_labels).ravel()  # C order over (X, Y, Z)
        sig = _signals(srng, lat, kind_v)
        noise_sd = srng.uniform(0.5, 2.0, kind_v.size)
        inside = brain_v.ravel()
        ncsnr = np.where(inside, 1.0 / noise_sd, 0.0).reshape(grid).astype(np.float32)
        _save_nifti(bdir / "ncsnr.nii.gz", ncsnr, affine)
        for s in range(1, S + 1):
            g = slice((s - 1) * T, s * T)
            gain = srng.uniform(0.5, 1.5, kind_v.size)
            offset = srng.normal(0, 2.0, kind_v.size)
            beta = offset + gain * (sig[img_col[g]] + noise_sd * srng.standard_normal(
                (T, kind_v.size)))  # (T, units), % signal change
            beta = np.where(inside, beta, 0.0)
            q = np.round(beta * 300).astype(np.int16)  # the int16 x 300 format
            vol = q.T.reshape(X, Y, Z, T)  # NIfTI axes (X, Y, Z, trials)
            if "hdf5" in betas_formats:
                bdir.mkdir(parents=True, exist_ok=True)
                with h5py.File(bdir / f"betas_session{s:02d}.hdf5", "w") as f:
                    f.create_dataset("betas", data=np.ascontiguousarray(vol.transpose(3, 2, 1, 0)),
                                     chunks=(1, Z, Y, X))  # HDF5 axes (trials, Z, Y, X)
            if "nifti" in betas_formats:
                _save_nifti(bdir / f"betas_session{s:02d}.nii.gz", vol, affine)

        # fsaverage betas
        if fsaverage:
            fdir = root / "nsddata_betas" / "ppdata" / sx / "fsaverage" / _BETAS
            for h in ("lh", "rh"):
                kind_s = _unit_kind(surf_labels[h])
                sig_s = _signals(srng, lat, kind_s)
                nsd_s = srng.uniform(0.5, 2.0, n_vertices)
                nan_v = np.zeros(n_vertices, bool)
                if subj in (6, 8):
                    ngv = np.flatnonzero(surf_labels[h]["nsdgeneral"] > 0)
                    nan_v[srng.choice(ngv, min(3, ngv.size), replace=False)] = True
                    nan_v[np.flatnonzero(surf_labels[h]["nsdgeneral"] <= 0)[:1]] = True
                nc = np.where(nan_v, np.nan, 1.0 / nsd_s).astype(np.float32)
                _save_mgh(fdir / f"{h}.ncsnr.mgh", nc[:, None, None])
                for s in range(1, S + 1):
                    g = slice((s - 1) * T, s * T)
                    gain = srng.uniform(0.5, 1.5, n_vertices)
                    offset = srng.normal(0, 2.0, n_vertices)
                    beta = offset + gain * (sig_s[img_col[g]] + nsd_s * srng.standard_normal(
                        (T, n_vertices)))
                    beta[:, nan_v] = np.nan
                    _save_mgh(fdir / f"{h}.betas_session{s:02d}.mgh",
                              beta.T.astype(np.float32)[:, None, None, :])

    if with_model:
        try:
            from ..features.clip import build_tiny_clip

            build_tiny_clip(root / MODEL_SUBDIR, seed=seed, image_size=32)
        except ImportError as err:
            warnings.warn(f"tiny CLIP not written ({err}); install linbridge[clip]",
                          stacklevel=2)

    (root / "README_FIXTURE.txt").write_text(
        "Miniature NSD tree (simulated data) in NSD's layout, by linbridge.data.nsd_fixture.\n"
        f"subjects {list(map(int, subjects))}, {S} sessions x {T} trials, {n_subj} images per "
        f"subject ({n_shared} shared), brick {n_images} x {image_size} x {image_size} x 3, "
        f"grid {tuple(grid)}, {n_vertices} fsaverage vertices per hemisphere, seed {seed}.\n"
        f"Tiny random-weight CLIP: {MODEL_SUBDIR if with_model else '(not written)'}.\n"
        "Deviations from NSD: see the docstring of linbridge/data/nsd_fixture.py.\n")
    return root


def nsd_fixture_command(directory: Path, subjects: str = "1,2,5,7", n_sessions: int = 3,
                        seed: int = 0, force: bool = False) -> Path:
    """Write a miniature NSD tree (simulated, NSD layout and formats) to DIRECTORY.

    Includes a tiny random-weight CLIP under models/, so
    `linbridge run configs/nsd_paper.yaml --data-home DIRECTORY` needs no download.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        if not (directory / _MARKER).is_file() and not force:
            raise SystemExit(f"{directory} is not empty and is not an NSD fixture; "
                             "pass --force to write into it anyway")
        if (directory / _MARKER).is_file():
            shutil.rmtree(directory)
    subj = [int(s) for s in str(subjects).replace(" ", "").split(",") if s]
    out = write_nsd_fixture(directory, subjects=subj, n_sessions=n_sessions, seed=seed)
    print(f"wrote a miniature NSD tree to {out} (subjects {subj}, {n_sessions} sessions)")
    print(f"next: linbridge run configs/nsd_paper.yaml --data-home {out} --out runs/nsd_fixture")
    return out


__all__ = ["MODEL_SUBDIR", "nsd_fixture_command", "write_nsd_fixture"]
