"""fetch_cowley2023_v4 against a local HTTP server and a local mirror (no internet needed)."""
from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from linbridge.data import fetch
from linbridge.data.fetch import EXPECTED_SHA256, fetch_cowley2023_v4

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cowley2023_v4"
pytestmark = pytest.mark.skipif(not REAL.is_dir(),
                                reason=f"real V4 data not found at {REAL} (../shared/data)")

SESSION = "210305"  # the smallest session: 224 KB of responses, 1.5 MB of images
FILES = [f"images/images_{SESSION}.zip", f"responses_repeat_averaged/responses_{SESSION}.npy"]


def make_repo(root: Path, corrupt: str | None = None) -> Path:
    """A directory laid out like the authors' repository, holding session 210305."""
    for local in FILES:
        dst = root / fetch.remote_path(local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL / local, dst)
        if local == corrupt:
            data = bytearray(dst.read_bytes())
            data[len(data) // 2] ^= 0xFF
            dst.write_bytes(bytes(data))
    return root


@pytest.fixture
def serve():
    """serve(directory) -> base URL of a throwaway HTTP server on 127.0.0.1."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def start(directory: Path) -> str:
        handler = functools.partial(Quiet, directory=str(directory))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _fetch(dest, base, **kw):
    return fetch_cowley2023_v4(dest, sessions=[SESSION], base_url=base, progress=False,
                               include_docs=False, **kw)


def test_fetch_over_http_verifies_and_lays_out(tmp_path, serve):
    base = serve(make_repo(tmp_path / "repo"))
    paths = _fetch(tmp_path / "dest", base)
    root = tmp_path / "dest" / "cowley2023_v4"
    assert paths == [root / f for f in FILES]
    for local in FILES:
        assert (root / local).read_bytes() == (REAL / local).read_bytes()
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temp files

    # the result is what the loader reads
    from linbridge.data.cowley2023 import available_sessions
    assert available_sessions(tmp_path / "dest") == [SESSION]


def test_second_fetch_skips_verified_files(tmp_path, serve, monkeypatch):
    base = serve(make_repo(tmp_path / "repo"))
    _fetch(tmp_path / "dest", base)
    downloads = []
    real_download = fetch._download
    monkeypatch.setattr(fetch, "_download",
                        lambda *a, **k: downloads.append(a[0]) or real_download(*a, **k))
    _fetch(tmp_path / "dest", base)
    assert downloads == []
    # a damaged local file is fetched again
    damaged = tmp_path / "dest" / "cowley2023_v4" / FILES[1]
    damaged.write_bytes(b"junk")
    with pytest.warns(UserWarning, match="replacing it"):
        _fetch(tmp_path / "dest", base)
    assert len(downloads) == 1 and damaged.read_bytes() == (REAL / FILES[1]).read_bytes()


def test_hash_mismatch_raises_and_leaves_nothing(tmp_path, serve):
    base = serve(make_repo(tmp_path / "repo", corrupt=FILES[0]))
    with pytest.raises(ValueError) as err:
        _fetch(tmp_path / "dest", base)
    msg = str(err.value)
    assert FILES[0] in msg and EXPECTED_SHA256[FILES[0]] in msg and "got " in msg
    root = tmp_path / "dest" / "cowley2023_v4"
    assert [p for p in root.rglob("*") if p.is_file()] == []  # no bad file, no temp file


def test_local_directory_and_file_url(tmp_path):
    repo = make_repo(tmp_path / "repo")
    paths = _fetch(tmp_path / "a", str(repo))
    assert all(p.is_file() for p in paths)
    paths = _fetch(tmp_path / "b", repo.as_uri())
    assert [p.read_bytes() for p in paths] == [(REAL / f).read_bytes() for f in FILES]
    # a cowley2023_v4 folder (the curated copy's layout) works as a mirror too
    paths = _fetch(tmp_path / "c", str(REAL))
    assert len(paths) == 2


def test_missing_source_and_unknown_session(tmp_path, serve):
    empty = tmp_path / "empty"
    empty.mkdir()
    for base in (str(empty), serve(empty)):  # a local mirror without the file; an HTTP 404
        with pytest.raises(OSError, match=r"could not read images/images_210305\.zip"):
            _fetch(tmp_path / "d", base)
    assert [p for p in (tmp_path / "d").rglob("*") if p.is_file()] == []
    with pytest.raises(ValueError, match="unknown Cowley 2023 V4 session.*201025"):
        fetch_cowley2023_v4(tmp_path / "d", sessions=["999999"], progress=False)


def test_embedded_hashes_cover_sha256sums():
    """Every file of the curated copy's SHA256SUMS is embedded with the same hash."""
    sums = dict(reversed(line.split(maxsplit=1)) for line in
                (REAL / "SHA256SUMS").read_text().splitlines() if line.strip())
    sums = {k.strip(): v for k, v in sums.items()}
    assert sums and all(EXPECTED_SHA256[k] == v for k, v in sums.items())
    assert set(fetch.files_for(None)) == set(EXPECTED_SHA256)
    assert fetch.remote_path("images/images_201025.zip") == \
        "data_V4_responses/images/images_201025.zip"
    assert fetch.COMMIT in fetch.DEFAULT_BASE_URL
