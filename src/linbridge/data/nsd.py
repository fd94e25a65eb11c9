"""The Natural Scenes Dataset (NSD): single-trial betas + CLIP features -> ``Dataset``.

``load_nsd(data_home, subject=1, ...)`` reads one subject. ``data_home`` is the NSD root, the
folder that holds ``nsddata/``, ``nsddata_betas/`` and ``nsddata_stimuli/``.

File facts (docs/conventions.md, NSD section; the NSD data manual):

* betas ``nsddata_betas/ppdata/subjXX/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.hdf5``
  (dataset ``betas``, int16, axes (750, Z, Y, X)) or ``.nii.gz`` (int16, axes (X, Y, Z, 750)):
  both hold beta x 300, so they are divided by ``BETA_SCALE`` = 300 to give % signal change.
  A trial read from HDF5 is transposed (2, 1, 0) to line up with the NIfTI ROI masks.
* fsaverage betas ``.../fsaverage/betas_fithrf_GLMdenoise_RR/{lh,rh}.betas_sessionNN.mgh``:
  float32 (163842, 1, 1, 750) already in % signal change (no division). Subjects 6 and 8 have
  NaN vertices: they are dropped and counted (``meta["n_dropped_nan"]``, and a warning).
* ``nsd_expdesign.mat``: ``masterordering`` (1 x 30000, 1-based into the subject's 10,000
  images), ``subjectim`` (8 x 10000, 1-based 73k ids), ``sharedix`` (1 x 1000, 1-based 73k ids).
  Trial t (0-based) of session s (1-based) shows 73k id
  ``subjectim[subject - 1, masterordering[(s - 1) * 750 + t] - 1]``.
* ``nsd_stimuli.hdf5:imgBrick`` (73000, 425, 425, 3) uint8 is 0-based: brick index = 73k id - 1.
  ``StimulusIds`` is the one converter between 73k ids, brick indices, shared1000 file names
  (``shared0001_nsd02951.png``: 1-based rank in ``sharedix``, 1-based 73k id) and sample ids.
* 750 trials a session; sessions completed by subjects 1-8: 40, 40, 32, 30, 40, 32, 40, 30.
* ROI volumes ``nsddata/ppdata/subjXX/func1pt8mm/roi/{atlas}.nii.gz`` and surface labels
  ``nsddata/freesurfer/subjXX/label/{lh,rh}.{atlas}.mgz`` with names in
  ``nsddata/freesurfer/subjXX/label/{atlas}.mgz.ctab`` (lines "index name"): label > 0 inside,
  0 unlabeled, -1 outside cortex.
* Noise ceiling from ``ncsnr``: NC = ncsnr^2 / (ncsnr^2 + 1/n), a fraction (x 100 for percent).

Processing (``load_nsd``):

1. trials of the chosen sessions -> 73k ids from the design (cross-checked against
   ``behav/responses.tsv`` when present);
2. per session, betas of the selected units are read in blocks of trials (HDF5 slabs or NIfTI /
   MGH array proxies limited to the selection's bounding box; never all sessions at once),
   divided by 300 (volume only) and z-scored per unit over that session's trials (population
   std; a unit constant within a session gets 0 there, counted in ``meta``);
3. z-scores of repeated presentations of an image are averaged (sum and count in float64), so
   each image is one sample; samples are ordered by 73k id;
4. test = the shared-1000 images the subject saw in those sessions; train / val are drawn from
   the other images with ``seed`` (an image is one sample, so none is on two sides);
5. X = CLIP features of each image (``features/clip.py``, cached on disk), Y = the averaged
   responses; both z-scored with the training samples' mean and std.

Units: ``voxel_selection`` ("nsdgeneral" by default) picks voxels / vertices; each gets the ROI
names it lies in (``meta["roi_names"]``, "+"-joined over atlases) and a tier label from
``tiers`` (``DEFAULT_TIERS``: PVC = V1, IVC = V2, V3, hV4, HVC = EBA, FFA-1, FFA-2, OPA, PPA,
RSC; the first tier in order that contains one of the unit's ROIs wins; "other" if none).
``V1``/``V2``/``V3`` stand for their ventral + dorsal parts (``ROI_ALIASES``).

fsaverage ROIs: NSD's per-subject labels (prf-visualrois, floc-*) in
``freesurfer/subjXX/label`` live on the subject's native surface, not on fsaverage. A label
file is used only if its vertex count equals the betas'; otherwise
``nsddata/freesurfer/fsaverage/label/{hemi}.{atlas}.mgz`` is tried (NSD ships nsdgeneral and
streams there), and failing both the error says so: map the labels to fsaverage first (for
instance with nsd_mapdata) and put them in ``freesurfer/subjXX/label``.
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._dataset import Dataset, Split
from .preprocessing import is_constant, zscore_by_train

# --------------------------------------------------------------------------- file facts
BETAS_VERSION = "betas_fithrf_GLMdenoise_RR"
#: func1pt8mm betas are stored as int16 = beta (% signal change) x 300
BETA_SCALE = 300.0
TRIALS_PER_SESSION = 750
SESSIONS_COMPLETED = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}
N_SUBJECTS = 8
N_STIMULI = 73000
N_SHARED = 1000
STIMULUS_SHAPE = (425, 425, 3)
FSAVERAGE_N_VERTICES = 163842
SPACES = ("func1pt8mm", "fsaverage")
HEMIS = ("lh", "rh")

#: ROI names of each NSD atlas, verbatim, in label order (label k is the k-th name, from 1)
NSD_ROI_NAMES: dict[str, tuple[str, ...]] = {
    "prf-visualrois": ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"),
    "floc-bodies": ("EBA", "FBA-1", "FBA-2", "mTL-bodies"),
    "floc-faces": ("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"),
    "floc-places": ("OPA", "PPA", "RSC"),
    "floc-words": ("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"),
    "streams": ("early", "midventral", "midlateral", "midparietal", "ventral", "lateral",
                "parietal"),
    "nsdgeneral": ("nsdgeneral",),
}
DEFAULT_ROI_ATLASES = ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places")
ROI_ALIASES: dict[str, tuple[str, ...]] = {
    "V1": ("V1v", "V1d"), "V2": ("V2v", "V2d"), "V3": ("V3v", "V3d")}
DEFAULT_TIERS: dict[str, tuple[str, ...]] = {
    "PVC": ("V1",),
    "IVC": ("V2", "V3", "hV4"),
    "HVC": ("EBA", "FFA-1", "FFA-2", "OPA", "PPA", "RSC"),
}
OTHER_TIER = "other"
VOXEL_SELECTIONS = ("nsdgeneral", "rois", "cortex", "all")
DATA_ENV = "LINBRIDGE_DATA"
#: bump when the averaged-response computation changes, so old cache entries are ignored
RESPONSE_CACHE_FORMAT = 1


# --------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class NSDPaths:
    """Every NSD path this module reads, for one subject, under the NSD root."""

    root: Path
    subject: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())
        if int(self.subject) not in SESSIONS_COMPLETED:
            raise ValueError(f"NSD subject must be 1..{N_SUBJECTS}, got {self.subject}")

    @property
    def subj(self) -> str:
        return f"subj{int(self.subject):02d}"

    def betas_dir(self, space: str) -> Path:
        _check_space(space)
        return self.root / "nsddata_betas" / "ppdata" / self.subj / space / BETAS_VERSION

    def betas_volume(self, session: int, fmt: str = "hdf5") -> Path:
        ext = {"hdf5": "hdf5", "nifti": "nii.gz"}.get(fmt)
        if ext is None:
            raise ValueError(f"betas_format must be 'hdf5' or 'nifti', got {fmt!r}")
        return self.betas_dir("func1pt8mm") / f"betas_session{int(session):02d}.{ext}"

    def betas_surface(self, session: int, hemi: str) -> Path:
        return self.betas_dir("fsaverage") / f"{hemi}.betas_session{int(session):02d}.mgh"

    def ncsnr_volume(self) -> Path:
        return self.betas_dir("func1pt8mm") / "ncsnr.nii.gz"

    def ncsnr_surface(self, hemi: str) -> Path:
        return self.betas_dir("fsaverage") / f"{hemi}.ncsnr.mgh"

    def roi_volume(self, atlas: str) -> Path:
        return self.root / "nsddata" / "ppdata" / self.subj / "func1pt8mm" / "roi" / f"{atlas}.nii.gz"

    def label_dir(self) -> Path:
        return self.root / "nsddata" / "freesurfer" / self.subj / "label"

    def label_ctab(self, atlas: str) -> Path:
        return self.label_dir() / f"{atlas}.mgz.ctab"

    def label_surface(self, atlas: str, hemi: str) -> Path:
        return self.label_dir() / f"{hemi}.{atlas}.mgz"

    def fsaverage_label(self, atlas: str, hemi: str) -> Path:
        return self.root / "nsddata" / "freesurfer" / "fsaverage" / "label" / f"{hemi}.{atlas}.mgz"

    def fsaverage_ctab(self, atlas: str) -> Path:
        return self.root / "nsddata" / "freesurfer" / "fsaverage" / "label" / f"{atlas}.mgz.ctab"

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"

    @property
    def responses(self) -> Path:
        return self.root / "nsddata" / "ppdata" / self.subj / "behav" / "responses.tsv"

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"NSD {what} not found: {path}")
    return path


# --------------------------------------------------------------------------- stimulus ids
class StimulusIds:
    """The one converter between NSD's stimulus numberings.

    * 73k id: 1-based, 1..73000 - what ``subjectim`` and ``sharedix`` hold and what
      ``responses.tsv`` calls 73KID;
    * brick index: 0-based row of ``nsd_stimuli.hdf5:imgBrick`` = 73k id - 1;
    * shared1000 file name: ``shared{rank:04d}_nsd{73k id:05d}.png``, rank = 1-based position
      of the image in ``sharedix``;
    * sample id (``Dataset.sample_ids``): ``nsd{73k id:05d}``.

    ``sharedix`` (1-based 73k ids) is needed only for the shared1000 names; ``n_stimuli`` bounds
    the ids (73000 for NSD; the number of images in a miniature brick).
    """

    _NAME_RE = re.compile(r"nsd(\d{5})")
    _SHARED_RE = re.compile(r"^shared(\d{4})_nsd(\d{5})\.\w+$")

    def __init__(self, sharedix: np.ndarray | None = None, n_stimuli: int = N_STIMULI):
        self.n_stimuli = int(n_stimuli)
        self.sharedix = None if sharedix is None else self._check(np.asarray(sharedix).ravel())
        self._rank = (None if self.sharedix is None else
                      {int(i): r + 1 for r, i in enumerate(self.sharedix)})

    def _check(self, ids73k) -> np.ndarray:
        a = np.asarray(ids73k)
        if a.size and (a.dtype.kind == "f" and not np.all(a == np.round(a))):
            raise ValueError("73k ids must be integers")
        a = a.astype(np.int64)
        if a.size and (a.min() < 1 or a.max() > self.n_stimuli):
            raise ValueError(f"73k ids are 1-based, 1..{self.n_stimuli}; got values in "
                             f"[{a.min()}, {a.max()}] (a 0 means a 0-based index slipped in)")
        return a

    def to_brick(self, ids73k) -> np.ndarray:
        """1-based 73k ids -> 0-based ``imgBrick`` rows."""
        return self._check(ids73k) - 1

    def from_brick(self, brick_index) -> np.ndarray:
        """0-based ``imgBrick`` rows -> 1-based 73k ids."""
        b = np.asarray(brick_index, dtype=np.int64)
        return self._check(b + 1)

    def shared_rank(self, id73k: int) -> int:
        """1-based position of an image in ``sharedix``."""
        if self._rank is None:
            raise ValueError("StimulusIds needs sharedix for shared1000 names")
        try:
            return self._rank[int(id73k)]
        except KeyError:
            raise ValueError(f"73k id {id73k} is not one of the shared images") from None

    def shared_filename(self, id73k: int, ext: str = "png") -> str:
        """``shared{rank:04d}_nsd{id:05d}.png`` of a shared image."""
        return f"shared{self.shared_rank(id73k):04d}_nsd{int(id73k):05d}.{ext}"

    def from_filename(self, name: str | os.PathLike) -> int:
        """73k id in a file name (``shared0001_nsd02951.png``, ``nsd02951.png``, ...).

        A shared1000 name's rank is checked against ``sharedix`` when known.
        """
        base = Path(name).name
        m = self._SHARED_RE.match(base)
        if m:
            rank, id73k = int(m.group(1)), int(m.group(2))
            if self._rank is not None and self.shared_rank(id73k) != rank:
                raise ValueError(f"{base}: rank {rank} disagrees with sharedix "
                                 f"(nsd{id73k:05d} is shared #{self.shared_rank(id73k)})")
            return int(self._check([id73k])[0])
        m = self._NAME_RE.search(base)
        if not m:
            raise ValueError(f"no 'nsdNNNNN' 73k id in file name {base!r}")
        return int(self._check([int(m.group(1))])[0])

    @staticmethod
    def sample_id(id73k: int) -> str:
        return f"nsd{int(id73k):05d}"

    def from_sample_id(self, sid: str) -> int:
        return self.from_filename(sid)


# --------------------------------------------------------------------------- design
@dataclass
class ExpDesign:
    """``nsd_expdesign.mat``, kept 1-based as stored (see the module doc)."""

    masterordering: np.ndarray  # (n_trials,) 1-based into subjectim columns
    subjectim: np.ndarray  # (8, n_per_subject) 1-based 73k ids
    sharedix: np.ndarray  # (n_shared,) 1-based 73k ids

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExpDesign":
        from scipy.io import loadmat

        m = loadmat(_need(Path(path), "experiment design"))
        missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in m]
        if missing:
            raise KeyError(f"{path} lacks {missing}")

        def as_int(name, a):
            a = np.asarray(a)
            if a.dtype.kind == "f" and not np.all(a == np.round(a)):
                raise ValueError(f"{path}:{name} holds non-integer values")
            return a.astype(np.int64)

        mo = as_int("masterordering", m["masterordering"]).ravel()
        si = as_int("subjectim", m["subjectim"])
        sh = as_int("sharedix", m["sharedix"]).ravel()
        if si.ndim != 2 or si.shape[0] != N_SUBJECTS:
            raise ValueError(f"{path}:subjectim must be ({N_SUBJECTS}, n_images), got {si.shape}")
        if mo.min() < 1 or mo.max() > si.shape[1]:
            raise ValueError(f"{path}:masterordering must be 1-based indices 1..{si.shape[1]}, "
                             f"got [{mo.min()}, {mo.max()}]")
        if si.min() < 1 or sh.min() < 1:
            raise ValueError(f"{path}: subjectim / sharedix must be 1-based 73k ids (min >= 1)")
        return cls(masterordering=mo, subjectim=si, sharedix=sh)

    def trial_ids(self, subject: int, session: int,
                  trials_per_session: int = TRIALS_PER_SESSION) -> np.ndarray:
        """1-based 73k ids shown in the trials of ``session`` (1-based), in trial order."""
        T = int(trials_per_session)
        lo, hi = (int(session) - 1) * T, int(session) * T
        if session < 1 or hi > self.masterordering.size:
            raise ValueError(f"session {session} x {T} trials exceeds masterordering "
                             f"({self.masterordering.size} trials)")
        return self.subjectim[int(subject) - 1, self.masterordering[lo:hi] - 1]


def read_responses_ids(path: Path) -> dict[int, np.ndarray]:
    """``behav/responses.tsv`` -> {session: 73KID of its rows, in file order}."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f, delimiter="\t")
        fields = rows.fieldnames or []
        if "SESSION" not in fields or "73KID" not in fields:
            raise KeyError(f"{path} lacks a SESSION or 73KID column (has {fields})")
        out: dict[int, list[int]] = {}
        for r in rows:
            out.setdefault(int(float(r["SESSION"])), []).append(int(float(r["73KID"])))
    return {s: np.asarray(v, dtype=np.int64) for s, v in out.items()}


# --------------------------------------------------------------------------- ROIs
def read_ctab(path: str | os.PathLike) -> dict[int, str]:
    """A FreeSurfer colour table (lines "index name [r g b a]") -> {index: name}.

    Blank lines and lines starting with '#' are skipped; extra columns are ignored.
    """
    out: dict[int, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        try:
            idx = int(parts[0])
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'index name', got {line!r}") from None
        if len(parts) < 2:
            raise ValueError(f"{path}:{n}: label {idx} has no name")
        out[idx] = parts[1]
    return out


def _roi_names(paths: NSDPaths, atlas: str, fsaverage_dir: bool = False) -> dict[int, str]:
    """Label index -> name (> 0 only) from the ctab, else the built-in NSD table (warned)."""
    ctab = paths.fsaverage_ctab(atlas) if fsaverage_dir else paths.label_ctab(atlas)
    if not ctab.is_file() and fsaverage_dir:
        ctab = paths.label_ctab(atlas)
    if ctab.is_file():
        names = {k: v for k, v in read_ctab(ctab).items() if k > 0}
        known = NSD_ROI_NAMES.get(atlas)
        if known is not None and tuple(names.get(i + 1) for i in range(len(known))) != known:
            warnings.warn(f"{ctab} names {names} differ from NSD's {atlas} names {known}",
                          stacklevel=3)
        return names
    if atlas in NSD_ROI_NAMES:
        warnings.warn(f"{ctab} not found; using NSD's {atlas} names", stacklevel=3)
        return {i + 1: n for i, n in enumerate(NSD_ROI_NAMES[atlas])}
    raise FileNotFoundError(f"no label table for atlas {atlas!r}: {ctab}")


def load_roi_volume(paths: NSDPaths, atlas: str) -> tuple[np.ndarray, dict[int, str], np.ndarray]:
    """(labels (X, Y, Z) int64, {index: name}, affine) of a func1pt8mm ROI atlas."""
    import nibabel as nib

    img = nib.load(_need(paths.roi_volume(atlas), f"ROI volume {atlas}"))
    lab = np.asarray(img.dataobj)
    if lab.ndim == 4 and lab.shape[3] == 1:
        lab = lab[..., 0]
    if lab.dtype.kind == "f":
        lab = np.round(lab)
    return lab.astype(np.int64), _roi_names(paths, atlas), np.asarray(img.affine)


def _open_mgh(path: Path):
    """(MGHImage, open file) - nibabel's own ``load`` leaves the header's file handle open
    for .mgh/.mgz; here the caller closes the one handle (.mgz through gzip)."""
    import gzip

    import nibabel as nib

    fh = gzip.open(path, "rb") if str(path).endswith(".mgz") else open(path, "rb")
    try:
        img = nib.MGHImage.from_file_map({"image": nib.FileHolder(fileobj=fh)}, mmap=False)
    except BaseException:
        fh.close()
        raise
    return img, fh


def _mgh_shape(path: Path) -> tuple[int, ...]:
    img, fh = _open_mgh(path)
    with fh:
        return tuple(int(d) for d in img.shape)


def _load_mgz_vector(path: Path) -> np.ndarray:
    """First column of an .mgh/.mgz of shape (n, 1, 1[, 1]) -> (n,)."""
    img, fh = _open_mgh(path)
    with fh:
        a = np.asarray(img.dataobj)
    return a.reshape(a.shape[0], -1)[:, 0] if a.ndim > 1 else a


def load_roi_surface(paths: NSDPaths, atlas: str, n_vertices: Mapping[str, int]
                     ) -> tuple[np.ndarray, dict[int, str], list[str]]:
    """(labels of lh then rh vertices, {index: name}, files used) of a surface atlas.

    Tries ``freesurfer/subjXX/label`` then ``freesurfer/fsaverage/label``; a file is accepted
    only when its vertex count equals the betas' (``n_vertices[hemi]``).
    """
    parts, used, tried = [], [], []
    fsavg_used = False
    for hemi in HEMIS:
        got = None
        for cand, is_fsavg in ((paths.label_surface(atlas, hemi), False),
                               (paths.fsaverage_label(atlas, hemi), True)):
            if not cand.is_file():
                tried.append(f"{cand} (missing)")
                continue
            lab = _load_mgz_vector(cand)
            if lab.shape[0] != n_vertices[hemi]:
                tried.append(f"{cand} ({lab.shape[0]} vertices)")
                continue
            got, fsavg_used = lab, fsavg_used or is_fsavg
            used.append(str(cand))
            break
        if got is None:
            raise FileNotFoundError(
                f"no {hemi}.{atlas} label with the betas' {n_vertices[hemi]} vertices; tried: "
                + "; ".join(tried) + ". NSD's per-subject labels live on the subject's native "
                "surface: map them to fsaverage (e.g. nsd_mapdata) and save them as "
                f"{paths.label_surface(atlas, hemi)}")
        parts.append(np.round(got).astype(np.int64))
    return np.concatenate(parts), _roi_names(paths, atlas, fsaverage_dir=fsavg_used), used


def expand_tiers(tiers: Mapping[str, Sequence[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """Tier -> NSD ROI names, with ``ROI_ALIASES`` (V1 = V1v + V1d, ...) expanded."""
    tiers = DEFAULT_TIERS if tiers is None else tiers
    out = {}
    for tier, rois in tiers.items():
        if isinstance(rois, str):
            rois = [rois]
        names: list[str] = []
        for r in rois:
            names.extend(ROI_ALIASES.get(r, (r,)))
        out[str(tier)] = tuple(dict.fromkeys(names))
    return out


def atlases_for(roi_names: Sequence[str]) -> list[str]:
    """The NSD atlases that define ``roi_names`` (unknown names raise, listing known ones)."""
    where = {n: a for a, names in NSD_ROI_NAMES.items() for n in names}
    bad = [n for n in roi_names if n not in where]
    if bad:
        raise ValueError(f"unknown NSD ROI names {bad}; known: {sorted(where)} "
                         f"and aliases {sorted(ROI_ALIASES)}")
    return list(dict.fromkeys(where[n] for n in roi_names))


def assign_tiers(unit_rois: Sequence[Sequence[str]],
                 tiers: Mapping[str, Sequence[str]] | None = None) -> tuple[np.ndarray, int]:
    """Tier label per unit: the first tier (in order) holding one of its ROIs, else "other".

    Returns (labels, number of units whose ROIs span more than one tier).
    """
    exp = expand_tiers(tiers)
    labels = np.full(len(unit_rois), OTHER_TIER, dtype=object)
    n_multi = 0
    for u, rois in enumerate(unit_rois):
        hits = [t for t, names in exp.items() if any(r in names for r in rois)]
        if hits:
            labels[u] = hits[0]
            n_multi += len(hits) > 1
    return labels.astype(str), n_multi


# --------------------------------------------------------------------------- noise ceiling
def noise_ceiling(ncsnr: np.ndarray, n: float | np.ndarray = 3, percent: bool = False
                  ) -> np.ndarray:
    """NSD noise ceiling NC = ncsnr^2 / (ncsnr^2 + 1/n), as a fraction (``percent`` x 100).

    n : repeats averaged per image - a number, or the repeat count of each averaged image, in
        which case 1/n is their mean (the NSD manual's (A/3 + B/2 + C/1) / (A + B + C)).
    """
    s2 = np.asarray(ncsnr, dtype=np.float64) ** 2
    n_arr = np.asarray(n, dtype=np.float64)
    if np.any(n_arr < 1):
        raise ValueError(f"repeat counts must be >= 1, got min {n_arr.min()}")
    inv = float(np.mean(1.0 / n_arr))
    nc = s2 / (s2 + inv)
    return nc * 100.0 if percent else nc


# --------------------------------------------------------------------------- betas
def hdf5_to_nifti_axes(block: np.ndarray) -> np.ndarray:
    """HDF5 betas (trials, Z, Y, X) or one trial (Z, Y, X) -> NIfTI order (.., X, Y, Z)."""
    if block.ndim == 3:
        return block.transpose(2, 1, 0)
    return block.transpose(0, 3, 2, 1)


def _bbox(ijk: np.ndarray) -> tuple[slice, slice, slice]:
    lo, hi = ijk.min(0), ijk.max(0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


class _VolumeReader:
    """Blocks of trials x selected voxels (% signal change, float32) of one session file."""

    def __init__(self, path: Path, fmt: str, grid: tuple[int, int, int], ijk: np.ndarray):
        self.path, self.fmt, self.grid = path, fmt, tuple(grid)
        self.box = _bbox(ijk)
        rel = ijk - np.array([s.start for s in self.box])
        shape = tuple(s.stop - s.start for s in self.box)
        self.flat = np.ravel_multi_index(rel.T, shape)  # C order over (X, Y, Z) of the box
        if fmt == "hdf5":
            import h5py

            self._f = h5py.File(path, "r")
            ds = self._f["betas"]
            if ds.ndim != 4 or tuple(ds.shape[1:]) != self.grid[::-1]:
                raise ValueError(f"{path}:betas is {ds.shape}; expected (trials, Z, Y, X) = "
                                 f"(trials, {', '.join(map(str, self.grid[::-1]))})")
            self._ds, self.n_trials, dtype = ds, int(ds.shape[0]), ds.dtype
            # chunks spanning many trials (e.g. one voxel x all trials) are read once each
            self.min_block = int(ds.chunks[0]) if ds.chunks else 1
        else:
            import nibabel as nib

            img = nib.load(path, keep_file_open=True)
            if len(img.shape) != 4 or tuple(img.shape[:3]) != self.grid:
                raise ValueError(f"{path} is {img.shape}; expected (X, Y, Z, trials) = "
                                 f"({', '.join(map(str, self.grid))}, trials)")
            prox = img.dataobj
            slope, inter = getattr(prox, "slope", 1.0), getattr(prox, "inter", 0.0)
            if slope != 1.0 or inter != 0.0:
                warnings.warn(f"{path} has header scaling (slope {slope}, inter {inter}); "
                              "assuming the scaled values are still beta x 300", stacklevel=3)
            self._img, self._prox = img, prox
            self.min_block = 1
            self.n_trials, dtype = int(img.shape[3]), img.get_data_dtype()
        if np.dtype(dtype) != np.int16:
            warnings.warn(f"{path} holds {np.dtype(dtype)}, not int16 (beta x 300); dividing "
                          "by 300 all the same", stacklevel=3)

    def read(self, t0: int, t1: int) -> np.ndarray:
        bx, by, bz = self.box
        if self.fmt == "hdf5":
            raw = self._ds[t0:t1, bz, by, bx]  # (b, Z, Y, X) of the box
            vol = hdf5_to_nifti_axes(np.asarray(raw))  # (b, X, Y, Z)
        else:
            raw = np.asarray(self._prox[bx, by, bz, t0:t1])  # (X, Y, Z, b)
            vol = np.moveaxis(raw, 3, 0)
        sel = vol.reshape(vol.shape[0], -1)[:, self.flat]
        return (sel.astype(np.float64) / BETA_SCALE).astype(np.float32)

    def close(self) -> None:
        if self.fmt == "hdf5":
            self._f.close()
        else:
            self._img.uncache()
            opener = getattr(self._prox, "_opener", None)
            if opener is not None:
                opener.close_if_mine()


class _SurfaceReader:
    """Blocks of trials x selected vertices (float32, % signal change) of one session."""

    def __init__(self, paths: NSDPaths, session: int, sel: dict[str, np.ndarray],
                 n_vertices: Mapping[str, int]):
        self.parts, self.sel, self._fhs = [], sel, []
        n_trials = set()
        for hemi in HEMIS:
            p = _need(paths.betas_surface(session, hemi), f"{hemi} fsaverage betas")
            img, fh = _open_mgh(p)
            self._fhs.append(fh)
            if img.shape[0] != n_vertices[hemi] or len(img.shape) != 4:
                raise ValueError(f"{p} is {img.shape}; expected ({n_vertices[hemi]}, 1, 1, "
                                 "trials)")
            self.parts.append(img)
            n_trials.add(int(img.shape[3]))
        if len(n_trials) != 1:
            raise ValueError(f"session {session}: lh and rh have different trial counts "
                             f"{sorted(n_trials)}")
        self.n_trials = n_trials.pop()
        self.min_block = 1

    def read(self, t0: int, t1: int) -> np.ndarray:
        out = []
        for hemi, img in zip(HEMIS, self.parts):
            idx = self.sel[hemi]
            if idx.size == 0:
                continue
            lo, hi = int(idx.min()), int(idx.max()) + 1
            block = np.asarray(img.dataobj[lo:hi, 0, 0, t0:t1], dtype=np.float32)
            out.append(block[idx - lo].T)
        return np.concatenate(out, axis=1)

    def close(self) -> None:
        for fh in self._fhs:
            fh.close()


def _zscore_session(a: np.ndarray, col_block: int = 8192) -> np.ndarray:
    """Z-score the columns of a (trials, units) float32 array in place (float64 stats,
    population std). Returns the mask of columns that were constant (set to 0)."""
    const = np.zeros(a.shape[1], dtype=bool)
    for c0 in range(0, a.shape[1], col_block):
        blk = a[:, c0:c0 + col_block].astype(np.float64)
        mean = blk.mean(0)
        blk -= mean
        std = np.sqrt((blk ** 2).mean(0))
        c = is_constant(mean, std)
        blk /= np.where(c, 1.0, std)
        blk[:, c] = 0.0
        a[:, c0:c0 + col_block] = blk
        const[c0:c0 + col_block] = c
    return const


def _average_betas(make_reader, sessions: Sequence[int], T: int,
                   trial_ids: Mapping[int, np.ndarray], row_of: Mapping[int, int],
                   n_images: int, n_units: int, trial_block: int, progress: bool,
                   desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-session z-scored betas averaged per image: ((images, units) float64, number of
    sessions in which each unit was constant). A unit with a NaN anywhere ends up NaN."""
    from tqdm.auto import tqdm

    sums = np.zeros((n_images, n_units), dtype=np.float64)
    counts = np.zeros(n_images, dtype=np.int64)
    const_sessions = np.zeros(n_units, dtype=np.int64)
    for s in tqdm(sessions, desc=desc, unit="session", disable=None if progress else True):
        reader = make_reader(s)
        try:
            sess = np.empty((T, n_units), dtype=np.float32)
            block = max(int(trial_block), reader.min_block)
            for t0 in range(0, T, block):
                t1 = min(t0 + block, T)
                sess[t0:t1] = reader.read(t0, t1)
        finally:
            reader.close()
        nan_here = np.isnan(sess).any(0)
        const = _zscore_session(sess)
        const_sessions += const & ~nan_here
        rows = np.array([row_of[int(i)] for i in trial_ids[s]])
        order = np.argsort(rows, kind="stable")
        uniq, starts = np.unique(rows[order], return_index=True)
        sums[uniq] += np.add.reduceat(sess[order].astype(np.float64), starts, axis=0)
        counts += np.bincount(rows, minlength=n_images)
        del sess
    if (counts == 0).any():
        raise RuntimeError("an image of the design has no trial in the sessions read")
    sums /= counts[:, None]  # in place: the means
    return sums, const_sessions


def _file_stat(path: Path) -> list:
    """(size, mtime in ns) of a file: what the response cache checks instead of hashing
    tens of GB of betas."""
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


# --------------------------------------------------------------------------- images
class NSDImages:
    """``images(indices) -> (n, H, W, 3) uint8`` for the samples of an NSD ``Dataset``.

    Reads rows of ``nsd_stimuli.hdf5:imgBrick`` (brick index = 73k id - 1), or files named
    with the 73k id (``*nsdNNNNN*.png``, e.g. the shared1000 folder) from ``image_dir``.
    """

    def __init__(self, ids73k: np.ndarray, stimuli: Path | None = None,
                 image_dir: Path | None = None, n_stimuli: int = N_STIMULI):
        self.ids73k = np.asarray(ids73k, dtype=np.int64)
        self.stimuli = None if stimuli is None else Path(stimuli)
        self.image_dir = None if image_dir is None else Path(image_dir)
        conv = StimulusIds(n_stimuli=n_stimuli)
        self.brick = conv.to_brick(self.ids73k)
        self.files: dict[int, Path] = {}
        if self.image_dir is not None:
            for p in sorted(self.image_dir.iterdir()):
                if p.suffix.lower() in (".png", ".jpg", ".jpeg") and conv._NAME_RE.search(p.name):
                    self.files[conv.from_filename(p.name)] = p
            missing = [int(i) for i in self.ids73k if int(i) not in self.files]
            if missing:
                raise FileNotFoundError(f"{len(missing)} images missing from {self.image_dir} "
                                        f"(first 73k ids {missing[:5]})")
        elif self.stimuli is None:
            raise ValueError("NSDImages needs the stimulus brick or an image folder")

    def __len__(self) -> int:
        return int(self.ids73k.size)

    def __call__(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).ravel()
        if self.image_dir is not None:
            from PIL import Image

            return np.stack([np.asarray(Image.open(self.files[int(self.ids73k[i])])
                                        .convert("RGB"), dtype=np.uint8) for i in idx])
        import h5py

        rows = self.brick[idx]
        uniq, inv = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
        with h5py.File(self.stimuli, "r") as f:
            data = f["imgBrick"][uniq] if uniq.size else np.zeros((0,) + STIMULUS_SHAPE, np.uint8)
        return np.asarray(data, dtype=np.uint8)[inv.ravel()]


# --------------------------------------------------------------------------- loader
def _resolve_data_home(data_home) -> Path:
    if data_home is None:
        data_home = os.environ.get(DATA_ENV)
        if not data_home:
            raise ValueError(f"data_home is required (the NSD root holding nsddata/, "
                             f"nsddata_betas/, nsddata_stimuli/), or set ${DATA_ENV}")
    root = Path(data_home).expanduser()
    if not (root / "nsddata").is_dir():
        raise FileNotFoundError(f"{root} is not an NSD root: no nsddata/ folder in it")
    return root


def _session_file(paths: NSDPaths, space: str, fmt: str, s: int) -> Path:
    return (paths.betas_volume(s, fmt) if space == "func1pt8mm"
            else paths.betas_surface(s, "lh"))


def _choose_sessions(paths: NSDPaths, space: str, fmt: str, sessions) -> list[int]:
    completed = SESSIONS_COMPLETED[paths.subject]
    if sessions is None:
        found = [s for s in range(1, completed + 1) if _session_file(paths, space, fmt, s).is_file()]
        if not found:
            raise FileNotFoundError(f"no {space} betas for {paths.subj} under "
                                    f"{paths.betas_dir(space)} (format {fmt})")
        if len(found) < completed:
            warnings.warn(f"{paths.subj}: found {space} betas for {len(found)} of the "
                          f"{completed} sessions this subject completed; using sessions "
                          f"{found[0]}..{found[-1]}" if found == list(range(1, len(found) + 1))
                          else f"{paths.subj}: using the {len(found)} sessions found "
                          f"({found}) of {completed} completed", stacklevel=3)
        return found
    if isinstance(sessions, (int, np.integer)):
        sessions = range(1, int(sessions) + 1)
    out = sorted({int(s) for s in sessions})
    bad = [s for s in out if not 1 <= s <= completed]
    if bad:
        raise ValueError(f"{paths.subj} completed sessions 1..{completed}; got {bad}")
    for s in out:
        _need(_session_file(paths, space, fmt, s), f"session {s} betas")
    return out


def _select_volume(paths: NSDPaths, voxel_selection, atlases: Sequence[str]):
    ng, _, affine = load_roi_volume(paths, "nsdgeneral")
    grid = ng.shape
    if isinstance(voxel_selection, np.ndarray):
        mask = np.asarray(voxel_selection, dtype=bool)
        if mask.shape != grid:
            raise ValueError(f"voxel_selection mask is {mask.shape}, the grid is {grid}")
    elif voxel_selection == "nsdgeneral":
        mask = ng > 0
    elif voxel_selection == "cortex":
        mask = ng >= 0
    elif voxel_selection == "all":
        mask = np.ones(grid, dtype=bool)
    elif voxel_selection == "rois":
        mask = np.zeros(grid, dtype=bool)
        for a in atlases:
            mask |= load_roi_volume(paths, a)[0] > 0
    else:
        raise ValueError(f"voxel_selection must be one of {VOXEL_SELECTIONS} or a boolean "
                         f"mask, got {voxel_selection!r}")
    return mask, grid, affine


def load_nsd(data_home: str | os.PathLike | None = None, subject: int = 1,
             space: str = "func1pt8mm", sessions: int | Sequence[int] | None = None,
             roi_atlases: Sequence[str] = DEFAULT_ROI_ATLASES,
             voxel_selection: str | np.ndarray = "nsdgeneral",
             tiers: Mapping[str, Sequence[str]] | None = None,
             feature_model: str = "openai/clip-vit-base-patch32",
             feature_layer: str = "final_cls", n_val: float | int = 0.1, seed: int = 0,
             cache_dir: str | os.PathLike | None = None, betas_format: str = "hdf5",
             image_dir: str | os.PathLike | None = None, batch_size: int = 32,
             device: str = "cpu", trial_block: int = 125, cache_responses: bool = True,
             progress: bool = True) -> Dataset:
    """One NSD subject as a ``Dataset``: CLIP features of each image, its averaged betas.

    data_home : the NSD root (holds nsddata/, nsddata_betas/, nsddata_stimuli/); default
        ``$LINBRIDGE_DATA``.
    subject : 1..8 (the paper: 1, 2, 5, 7 - the subjects who completed all 40 sessions).
    space : "func1pt8mm" (volume) or "fsaverage" (surface, both hemispheres, lh first).
    sessions : None = every completed session whose betas are on disk (warns if fewer than
        completed); an int N = sessions 1..N; or a list of session numbers (1-based).
    roi_atlases : atlases whose labels name each unit (``meta["roi_names"]``); atlases the
        tiers need are added.
    voxel_selection : "nsdgeneral" (label > 0), "rois" (inside any ``roi_atlases`` ROI),
        "cortex" (nsdgeneral label >= 0; volume only), "all", or a boolean mask over the grid
        (volume) / lh+rh vertices (fsaverage).
    tiers : {tier: ROI names}; default ``DEFAULT_TIERS``. Units in none are "other".
    feature_model : hub name or local directory; a relative name is first looked up as
        ``<data_home>/models/<feature_model>`` (see ``features/clip.py``).
    feature_layer : "final_cls" (default), "block_N_cls", "pooled" or "image_embeds".
    n_val : validation images, a fraction of the non-test images (< 1) or a count.
    seed : seeds the train / val draw.
    cache_dir : feature cache root (default ``$LINBRIDGE_CACHE`` or ``~/.cache/linbridge``).
    betas_format : "hdf5" or "nifti" (func1pt8mm; both give the same numbers).
    image_dir : read images from this folder (files named with ``nsdNNNNN``) instead of
        ``nsd_stimuli.hdf5``.
    trial_block : trials read per block (memory ~ trial_block x bounding box x 2 bytes).
    cache_responses : keep the averaged responses in the cache too (keyed by subject, space,
        sessions, units, and each betas file's size and modification time), so a second run
        does not re-read the betas.

    Memory: the float64 averaged responses (images x units x 8 bytes: 1.3 GB for 10,000
    images x 15,724 nsdgeneral voxels) about three times over at the final z-scoring, plus one
    session of float32 (trials x units) and one block of raw betas while reading.
    """
    root = _resolve_data_home(data_home)
    _check_space(space)
    paths = NSDPaths(root, int(subject))
    exp_tiers = expand_tiers(tiers)
    atlases = list(dict.fromkeys(list(roi_atlases) + atlases_for(
        [n for names in exp_tiers.values() for n in names])))
    fmt = betas_format if space == "func1pt8mm" else "mgh"
    if space == "func1pt8mm" and betas_format not in ("hdf5", "nifti"):
        raise ValueError(f"betas_format must be 'hdf5' or 'nifti', got {betas_format!r}")
    chosen = _choose_sessions(paths, space, betas_format, sessions)
    design = ExpDesign.load(paths.expdesign)
    files: dict[str, str] = {"expdesign": str(paths.expdesign)}

    # ---- units
    unit_meta: dict[str, Any] = {}
    if space == "func1pt8mm":
        mask, grid, affine = _select_volume(paths, voxel_selection, atlases)
        ijk = np.argwhere(mask)  # C order over (X, Y, Z)
        if ijk.shape[0] == 0:
            raise ValueError(f"voxel selection {voxel_selection!r} selects no voxel")
        roi_labels = {}
        for a in atlases:
            lab, names, _ = load_roi_volume(paths, a)
            if lab.shape != grid:
                raise ValueError(f"ROI {a} grid {lab.shape} differs from nsdgeneral's {grid}")
            roi_labels[a] = (lab[tuple(ijk.T)], names)
            files[f"roi:{a}"] = str(paths.roi_volume(a))
        unit_ids = np.array([f"{i}_{j}_{k}" for i, j, k in ijk])
        unit_meta.update(ijk=ijk.astype(np.int64), affine=affine, grid_shape=tuple(grid))
        sel = None
    else:
        n_vertices = {}
        for hemi in HEMIS:
            p = _need(paths.betas_surface(chosen[0], hemi), f"{hemi} fsaverage betas")
            n_vertices[hemi] = _mgh_shape(p)[0]
        n_all = sum(n_vertices.values())
        roi_full = {}
        by_ng = isinstance(voxel_selection, str) and voxel_selection == "nsdgeneral"
        for a in dict.fromkeys(atlases + (["nsdgeneral"] if by_ng else [])):
            lab, names, used = load_roi_surface(paths, a, n_vertices)
            roi_full[a] = (lab, names)
            files[f"label:{a}"] = ";".join(used)
        if isinstance(voxel_selection, np.ndarray):
            vmask = np.asarray(voxel_selection, dtype=bool)
            if vmask.shape != (n_all,):
                raise ValueError(f"voxel_selection mask is {vmask.shape}; the surfaces have "
                                 f"{n_all} vertices (lh then rh)")
        elif voxel_selection == "nsdgeneral":
            vmask = roi_full["nsdgeneral"][0] > 0
        elif voxel_selection in ("all", "cortex"):
            vmask = np.ones(n_all, dtype=bool)
        elif voxel_selection == "rois":
            vmask = np.zeros(n_all, dtype=bool)
            for a in atlases:
                vmask |= roi_full[a][0] > 0
        else:
            raise ValueError(f"voxel_selection must be one of {VOXEL_SELECTIONS} or a boolean "
                             f"mask, got {voxel_selection!r}")
        verts = np.flatnonzero(vmask)
        if verts.size == 0:
            raise ValueError(f"voxel selection {voxel_selection!r} selects no vertex")
        hemi_of = np.where(verts < n_vertices["lh"], "lh", "rh")
        local = np.where(hemi_of == "lh", verts, verts - n_vertices["lh"])
        sel = {h: local[hemi_of == h] for h in HEMIS}
        roi_labels = {a: (lab[verts], names) for a, (lab, names) in roi_full.items()
                      if a in atlases}
        unit_ids = np.array([f"{h}.{v}" for h, v in zip(hemi_of, local)])
        unit_meta.update(hemi=hemi_of, vertex=local.astype(np.int64), n_vertices=n_vertices)
    n_units = unit_ids.size

    # ---- trials -> images
    trial_ids: dict[int, np.ndarray] = {}
    readers_T = {}
    for s in chosen:
        if space == "func1pt8mm":
            r = _VolumeReader(paths.betas_volume(s, betas_format), betas_format, grid, ijk)
        else:
            r = _SurfaceReader(paths, s, sel, n_vertices)
        readers_T[s] = r.n_trials
        r.close()
    T_set = set(readers_T.values())
    if len(T_set) != 1:
        raise ValueError(f"sessions have different trial counts: {readers_T}")
    T = T_set.pop()
    for s in chosen:
        trial_ids[s] = design.trial_ids(subject, s, T)
    if paths.responses.is_file():
        files["responses"] = str(paths.responses)
        logged = read_responses_ids(paths.responses)
        for s in chosen:
            if s in logged and logged[s].size == T and not np.array_equal(logged[s], trial_ids[s]):
                n_bad = int((logged[s] != trial_ids[s]).sum())
                warnings.warn(f"{paths.responses}: session {s}: 73KID of {n_bad} of {T} trials "
                              "differs from nsd_expdesign.mat (masterordering/subjectim)",
                              stacklevel=2)
    all_ids = np.concatenate([trial_ids[s] for s in chosen])
    ids73k = np.unique(all_ids)
    row_of = {int(i): r for r, i in enumerate(ids73k)}

    # ---- betas: per-session z-score, then average per image (cached)
    counts = np.bincount([row_of[int(i)] for i in all_ids], minlength=ids73k.size)
    for s in chosen:
        files[f"betas:{s:02d}"] = (str(paths.betas_volume(s, betas_format))
                                   if space == "func1pt8mm" else
                                   ";".join(str(paths.betas_surface(s, h)) for h in HEMIS))

    def make_reader(s):
        if space == "func1pt8mm":
            return _VolumeReader(paths.betas_volume(s, betas_format), betas_format, grid, ijk)
        return _SurfaceReader(paths, s, sel, n_vertices)

    done: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def average():
        if "r" not in done:
            done["r"] = _average_betas(make_reader, chosen, T, trial_ids, row_of, ids73k.size,
                                       n_units, trial_block, progress,
                                       f"NSD {paths.subj} {space} sessions")
        return done["r"]

    if cache_responses:
        from ..features._cache import cached_features, hash_strings

        stats = {}
        for what, v in files.items():
            if what.startswith("betas:"):
                for f in v.split(";"):
                    stats[str(Path(f).relative_to(root))] = _file_stat(Path(f))
        rkey = {"dataset": "nsd", "what": "session-zscored repeat-averaged betas",
                "format": RESPONSE_CACHE_FORMAT, "subject": int(subject), "space": space,
                "betas_format": fmt, "sessions": chosen, "trials_per_session": T,
                "betas_files": stats, "expdesign": _file_stat(paths.expdesign),
                "units_sha256": hash_strings(unit_ids.tolist()),
                "images_sha256": hash_strings(ids73k.tolist())}
        name = f"nsd-{paths.subj}-{space}"
        Y_raw = cached_features({**rkey, "part": "mean"}, lambda: average()[0], cache_dir,
                                name=f"{name}-responses")
        const_sessions = cached_features({**rkey, "part": "constant_sessions"},
                                         lambda: average()[1], cache_dir,
                                         name=f"{name}-constant")
    else:
        Y_raw, const_sessions = average()
    done.clear()
    nan_units = np.isnan(Y_raw).any(0)

    # ---- noise ceiling inputs
    if space == "func1pt8mm":
        import nibabel as nib

        p = paths.ncsnr_volume()
        if p.is_file():
            nc_vol = np.asarray(nib.load(p).dataobj, dtype=np.float64)
            ncsnr = nc_vol[tuple(ijk.T)]
            files["ncsnr"] = str(p)
        else:
            ncsnr = None
    else:
        if all(paths.ncsnr_surface(h).is_file() for h in HEMIS):
            nc_all = {h: _load_mgz_vector(paths.ncsnr_surface(h)).astype(np.float64) for h in HEMIS}
            ncsnr = np.zeros(hemi_of.size)
            for h in HEMIS:
                ncsnr[hemi_of == h] = nc_all[h][sel[h]]
            files["ncsnr"] = ";".join(str(paths.ncsnr_surface(h)) for h in HEMIS)
        else:
            ncsnr = None
    if ncsnr is None:
        warnings.warn(f"no ncsnr file for {paths.subj} {space}; noise ceiling is NaN",
                      stacklevel=2)
        ncsnr = np.full(n_units, np.nan)

    # ---- drop NaN units (fsaverage of subjects 6 and 8)
    keep = ~nan_units
    n_dropped = int(nan_units.sum())
    dropped_ids = unit_ids[nan_units].tolist()
    if n_dropped:
        warnings.warn(f"{paths.subj} {space}: dropped {n_dropped} of {n_units} units with NaN "
                      f"betas (first: {dropped_ids[:5]})", stacklevel=2)
    n_const = int((const_sessions[keep] > 0).sum())
    if n_const:
        warnings.warn(f"{paths.subj}: {n_const} units were constant within at least one "
                      "session (set to 0 there before averaging)", stacklevel=2)
    Y_raw, unit_ids, ncsnr = Y_raw[:, keep], unit_ids[keep], ncsnr[keep]
    for k in ("ijk", "hemi", "vertex"):
        if k in unit_meta:
            unit_meta[k] = unit_meta[k][keep]
    roi_labels = {a: (lab[keep], names) for a, (lab, names) in roi_labels.items()}
    unit_rois = [[roi_labels[a][1].get(int(roi_labels[a][0][u]), f"{a}:{int(roi_labels[a][0][u])}")
                  for a in atlases if roi_labels[a][0][u] > 0] for u in range(unit_ids.size)]
    unit_labels, n_multi = assign_tiers(unit_rois, exp_tiers)

    # ---- split
    shared = np.isin(ids73k, design.sharedix)
    test = np.flatnonzero(shared)
    rest = np.flatnonzero(~shared)
    if test.size == 0 or rest.size == 0:
        raise ValueError(f"{paths.subj} sessions {chosen}: {test.size} shared and {rest.size} "
                         "other images; need both")
    nv = int(round(n_val * rest.size)) if isinstance(n_val, float) and n_val < 1 else int(n_val)
    if not 0 <= nv < rest.size:
        raise ValueError(f"n_val={n_val} leaves no training images ({rest.size} non-test)")
    perm = np.random.default_rng(seed).permutation(rest)
    split = Split(train=np.sort(perm[nv:]), val=np.sort(perm[:nv]), test=test)
    assert not np.intersect1d(ids73k[split.test], ids73k[np.r_[split.train, split.val]]).size

    # ---- features
    from ..features.clip import cached_clip_features, load_clip_vision

    n_stim = N_STIMULI
    if paths.stimuli.is_file():
        import h5py

        with h5py.File(paths.stimuli, "r") as f:
            n_stim = int(f["imgBrick"].shape[0])
    images = NSDImages(ids73k, stimuli=None if image_dir is not None else
                       _need(paths.stimuli, "stimulus brick"),
                       image_dir=None if image_dir is None else Path(image_dir), n_stimuli=n_stim)
    source = (str(image_dir) if image_dir is not None else str(paths.stimuli))
    files["stimuli"] = source
    clip = load_clip_vision(feature_model, data_home=root, device=device)
    key_extra = {"dataset": "nsd", "stimuli": ("folder" if image_dir is not None else
                                                "nsd_stimuli.hdf5:imgBrick"),
                 "n_stimuli": n_stim,
                 "stimuli_bytes": (None if image_dir is not None else
                                   os.path.getsize(paths.stimuli))}
    sample_ids = np.array([StimulusIds.sample_id(i) for i in ids73k])
    X_raw = cached_clip_features(images, sample_ids, clip, feature_layer, key_extra,
                                 cache_dir=cache_dir, batch_size=batch_size, progress=progress)

    X, x_mean, x_std = zscore_by_train(X_raw, split.train, "NSD CLIP features")
    Y, y_mean, y_std = zscore_by_train(Y_raw, split.train, "NSD responses")
    n_rep = counts
    nc = noise_ceiling(ncsnr, n_rep[split.test])
    tier_counts = {t: int((unit_labels == t).sum()) for t in list(exp_tiers) + [OTHER_TIER]}
    meta = {
        "source": "NSD", "subject": int(subject), "space": space, "sessions": chosen,
        "trials_per_session": T, "betas_format": fmt, "voxel_selection":
            (voxel_selection if isinstance(voxel_selection, str) else "mask"),
        "roi_atlases": atlases, "tiers": {k: list(v) for k, v in exp_tiers.items()},
        "tier_counts": tier_counts, "n_units_in_several_tiers": n_multi,
        "roi_names": np.array(["+".join(r) for r in unit_rois]),
        "nsd73k_id": ids73k, "brick_index": ids73k - 1, "n_repeats": n_rep,
        "ncsnr": ncsnr, "noise_ceiling": nc,
        "noise_ceiling_note": ("fraction; NC = ncsnr^2 / (ncsnr^2 + mean(1/n)) over the "
                               "test images' repeat counts n"),
        "n_dropped_nan": n_dropped, "dropped_nan_unit_ids": dropped_ids,
        "n_units_constant_in_a_session": n_const,
        "response_units": ("betas (% signal change) z-scored per unit within each session, "
                           "averaged over repeats, then z-scored with training statistics"),
        "feature_model": clip.info(), "feature_layer": feature_layer,
        "zscore": {"X_mean": x_mean, "X_std": x_std, "Y_mean": y_mean, "Y_std": y_std},
        "files": files, **unit_meta,
    }
    return Dataset(
        name=f"nsd_{paths.subj}_{space}", X=X, Y=Y, unit_ids=unit_ids,
        unit_labels=unit_labels, sample_ids=sample_ids, split=split, images=images, meta=meta)


__all__ = ["BETA_SCALE", "BETAS_VERSION", "DEFAULT_ROI_ATLASES", "DEFAULT_TIERS", "ExpDesign",
           "FSAVERAGE_N_VERTICES", "N_SHARED", "N_STIMULI", "NSDImages", "NSDPaths",
           "NSD_ROI_NAMES", "ROI_ALIASES", "SESSIONS_COMPLETED", "StimulusIds",
           "TRIALS_PER_SESSION", "assign_tiers", "atlases_for", "expand_tiers",
           "hdf5_to_nifti_axes", "load_nsd", "load_roi_surface", "load_roi_volume",
           "noise_ceiling", "read_ctab", "read_responses_ids"]
