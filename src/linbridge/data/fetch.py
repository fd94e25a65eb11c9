"""Download the Cowley et al. (2023) V4 data from the authors' repository, hash-verified.

Source: https://github.com/cowleygroup/V4_compact_models at commit
f4552ad9d34a466ebc66658f72a08a8e5038f1cf (GPL-3.0). Remote -> local layout
(under ``dest/cowley2023_v4/``, the layout ``load_cowley2023_v4`` reads):

    data_V4_responses/images/images_<s>.zip                -> images/images_<s>.zip
    data_V4_responses/responses_repeat_averaged/...npy     -> responses_repeat_averaged/...npy
    data_V4_responses/responses_raw/responses_210325.npy   -> responses_raw/responses_210325.npy
    data_V4_responses/readme.txt                           -> readme_original.txt
    README.md                                              -> README_original_repo.md
    LICENSE                                                -> LICENSE_GPL-3.0.txt

Only the 10 sessions whose images are in the repository as plain files are listed. Every file
is checked against its SHA-256 (embedded below; the data hashes are the ones of the curated
copy's SHA256SUMS). Each file is downloaded to a temp file beside its target and moved into
place only once its hash matches, so the folder never holds a partial or unverified file;
files already present with the right hash are skipped, so an interrupted fetch resumes.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from ..files import atomic_write

REPO = "cowleygroup/V4_compact_models"
COMMIT = "f4552ad9d34a466ebc66658f72a08a8e5038f1cf"
#: raw files of the repository at the pinned commit; remote paths below are relative to it
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{REPO}/{COMMIT}"
DATASET_DIR = "cowley2023_v4"

SESSIONS = ("190923", "190925", "190927", "190928", "190929",
            "201025", "210224", "210305", "210322", "210325")

#: SHA-256 of every file, by its path under ``dest/cowley2023_v4/``
EXPECTED_SHA256: dict[str, str] = {
    "images/images_190923.zip": "e99a4df1c7476bdc4d565ff4408bc421976ecc3a22c41af6bfd0cfbddb508c0c",
    "images/images_190925.zip": "765b4d4372302d4ed72c3382d41ece5ca55d7dcc3d84da7402091253529b87d1",
    "images/images_190927.zip": "d2469cc2caa629d4ed38e8d4964fb1de8c0b29e9937c25ce1c5838bc4e382653",
    "images/images_190928.zip": "6d90fdf2341e038beb57c16ce85f48c3a2bdfd450bc1c6440489529aead0f161",
    "images/images_190929.zip": "7fea6a28c092acfa646145813f532b2ea1d5a22a0b1bdade47d392b8f6bfb3f0",
    "images/images_201025.zip": "3abb63679107665eab7220bdeaf7863832a1df943bf3d7792501f5082a55b2e8",
    "images/images_210224.zip": "e2690810bee34c2e2821e5dd504c7970f3441579bc57659f27d2c11678b52c6b",
    "images/images_210305.zip": "9fab651e9c2d0b44091c2ea238c78d68fedf573cd7d4ae6b0545c5d84c121776",
    "images/images_210322.zip": "a72f357c73381fc6e496403820b38abe38c78b92f6d1c0b7153d6fe6d3986c32",
    "images/images_210325.zip": "992774eca3508a2ad01accb1a31f5f3e3d90248c49f4eec314f2a915a263e454",
    "responses_raw/responses_210325.npy":
        "4008dbbf31a47d9b1b8d8da609f4a7a3433c7071f0e45c611c220b217dd75b76",
    "responses_repeat_averaged/responses_190923.npy":
        "741672d36541ce39930c8a3b5bd1cfd33c187aa47b1549c9c5569bc21aa97a28",
    "responses_repeat_averaged/responses_190925.npy":
        "2f94d7bcef0f68fecdb7472f509737fafac92477cf6b11a4966162b1b1072529",
    "responses_repeat_averaged/responses_190927.npy":
        "4c3c75ec72bc4bd3f0e22987a7b2e7e962af249d6577e8a6d727ea9075bde034",
    "responses_repeat_averaged/responses_190928.npy":
        "41707e2d31ace45da6d181ad28a91c299971d42430c91cc738602523e7d7eda6",
    "responses_repeat_averaged/responses_190929.npy":
        "18639c9e2b2baed54c4fb22e311d84dafbd986a12069370b1004880a721d2c4a",
    "responses_repeat_averaged/responses_201025.npy":
        "f729f3dc0d29aa38bd380c0da9e39aba916f9e2580949929b65d1714e7217a8a",
    "responses_repeat_averaged/responses_210224.npy":
        "4dbb7367707a5ca47ab4cea863bbf4e9765b8409cb30216693721bddfad7abfe",
    "responses_repeat_averaged/responses_210305.npy":
        "00dce8d39558bfc3f5dd55c6f678c05de1b63895d56193379fd7dfe41fc703f0",
    "responses_repeat_averaged/responses_210322.npy":
        "1d643594633c7ad6d5281147bf1742275135507c8b283550e00e7028c65a5373",
    "responses_repeat_averaged/responses_210325.npy":
        "555e67037182611969ab90da291dcc39601de4411f651a64ad60e90572cf59d3",
    # documentation and licence (GPL-3.0: the licence travels with the data)
    "readme_original.txt": "85e03e02327dff4e64cc247127bb6092e84fb376ccb2949987341c564dd0561e",
    "README_original_repo.md": "0ea4e7e324cecc342d73c3dfd7dfff7bdffe2555e0be82a62859ba94188986d0",
    "LICENSE_GPL-3.0.txt": "3972dc9744f6499f0f9b2dbf76696f2ae7ad8af9b23dde66d6af86c9dfb36986",
}

_DOCS = {  # local path -> path in the repository
    "readme_original.txt": "data_V4_responses/readme.txt",
    "README_original_repo.md": "README.md",
    "LICENSE_GPL-3.0.txt": "LICENSE",
}


def remote_path(local: str) -> str:
    """Path in the authors' repository of the file stored at ``local`` (see module docstring)."""
    if local in _DOCS:
        return _DOCS[local]
    return f"data_V4_responses/{local}"


def files_for(sessions: Iterable[str] | None = None, include_raw: bool = True,
              include_docs: bool = True) -> list[str]:
    """Local relative paths to fetch for ``sessions`` (None: all 10)."""
    chosen = list(SESSIONS) if sessions is None else [str(s) for s in sessions]
    unknown = [s for s in chosen if s not in SESSIONS]
    if unknown:
        raise ValueError(f"unknown Cowley 2023 V4 session(s) {unknown}; "
                         f"available: {', '.join(SESSIONS)}")
    files = list(_DOCS) if include_docs else []
    for s in dict.fromkeys(chosen):
        files += [f"images/images_{s}.zip", f"responses_repeat_averaged/responses_{s}.npy"]
        if include_raw and f"responses_raw/responses_{s}.npy" in EXPECTED_SHA256:
            files.append(f"responses_raw/responses_{s}.npy")
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _is_local(base_url: str) -> bool:
    return "://" not in base_url or base_url.startswith("file://")


def _local_root(base_url: str) -> Path:
    if base_url.startswith("file://"):
        base = Path(urllib.request.url2pathname(urllib.parse.urlparse(base_url).path))
    else:
        base = Path(base_url).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"base_url {base_url!r} is not a directory")
    return base


def _source(base_url: str, local: str) -> str:
    """Where to read ``local`` from: a URL, or a file path for a local mirror."""
    rpath = remote_path(local)
    if _is_local(base_url):
        root = _local_root(base_url)
        candidates = [root / rpath]
        # also accept the data folder itself, or a copy in the local layout
        candidates.append(root / local)
        for c in candidates:
            if c.is_file():
                return str(c)
        return str(candidates[0])
    return base_url.rstrip("/") + "/" + urllib.parse.quote(rpath)


def _download(src: str, target: Path, expected: str, progress: bool, label: str) -> None:
    """Stream ``src`` (URL or path) into ``target`` atomically, verifying its SHA-256 first."""
    try:
        if "://" in src:
            stream = urllib.request.urlopen(src, timeout=60)
            total = stream.headers.get("Content-Length")
        else:
            stream = open(src, "rb")
            total = os.fstat(stream.fileno()).st_size
    except (urllib.error.URLError, OSError) as err:
        raise OSError(
            f"could not read {label} from {src}: {err}. Without network access, "
            "pass base_url= a local copy of the repository (a directory or file:// URL)"
        ) from err

    def copy_and_verify(out) -> None:  # raising here makes atomic_write discard the file
        h, head = hashlib.sha256(), b""
        with stream, tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                          desc=target.name, disable=None if progress else True) as bar:
            while block := stream.read(1 << 20):
                if len(head) < 64:
                    head += block[:64]
                h.update(block)
                out.write(block)
                bar.update(len(block))
        got = h.hexdigest()
        if got != expected:
            hint = (" (the server sent a Git LFS pointer, not the file)"
                    if head.startswith(b"version https://git-lfs") else "")
            raise ValueError(
                f"SHA-256 mismatch for {label} from {src}: expected {expected}, got {got}{hint}; "
                "the download was discarded"
            )

    atomic_write(target, copy_and_verify, suffix=".part")


def fetch_cowley2023_v4(dest: str | os.PathLike, sessions: Iterable[str] | None = None,
                        base_url: str = DEFAULT_BASE_URL, progress: bool = True, *,
                        include_raw: bool = True, include_docs: bool = True) -> list[Path]:
    """Download the V4 sessions into ``dest/cowley2023_v4/`` and verify every file.

    dest : folder to hold ``cowley2023_v4/`` (pass it as ``data_home`` to the loader).
    sessions : session ids (e.g. ``["201025"]``); None fetches all 10.
    base_url : root of the repository at the pinned commit (default: GitHub raw files), or
        a local directory / ``file://`` URL of a mirror: a copy of the repository, its
        ``data_V4_responses`` folder, or another ``cowley2023_v4`` folder.
    include_raw : also fetch per-repeat responses where they exist (210325 only).
    include_docs : also fetch the authors' readme, README and GPL-3.0 licence.

    Returns the local paths of all requested files, in order. A hash mismatch raises
    ValueError naming the file and both hashes and leaves nothing behind for that file.
    """
    root = Path(dest).expanduser() / DATASET_DIR
    paths = []
    for local in files_for(sessions, include_raw=include_raw, include_docs=include_docs):
        target = root / local
        expected = EXPECTED_SHA256[local]
        if target.is_file():
            got = _sha256(target)
            if got == expected:
                paths.append(target)
                continue
            # an unverified file must not stay where the loader would read it
            warnings.warn(f"{target} has SHA-256 {got}, expected {expected}; replacing it",
                          stacklevel=2)
            target.unlink()
        _download(_source(base_url, local), target, expected, progress, label=local)
        paths.append(target)
    return paths
