#!/usr/bin/env python3
"""Open report.html files in headless Chromium and check that every figure renders.

For each report:
1. every embedded ``data:image/png;base64`` image decodes (PIL) and is not blank;
2. Chromium loads the page (file://, no network) and dumps the DOM after the load event;
   the report's inline script has then written ``data-images-total`` and
   ``data-images-broken`` (images with naturalWidth 0) on <body>: broken must be 0 and
   total must equal the number of embedded images;
3. Chromium takes a full-page screenshot (window height = the page height the script
   recorded), which must not be blank.

Usage: python scripts/render_report.py RUN_DIR_OR_REPORT [...] [--out DIR] [--chromium PATH]
Exit status 0 when every check passes, 1 when one fails, 2 when no Chromium is found.
Prints one JSON line per report (screenshot path, counts).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio",
         "--virtual-time-budget=10000"]
MAX_HEIGHT = 16000


def find_chromium(explicit: str | None = None) -> str | None:
    for c in ([explicit] if explicit else []) + ["/usr/bin/chromium", "chromium",
                                                  "chromium-browser", "google-chrome"]:
        p = shutil.which(c) if not Path(c).is_absolute() else (c if Path(c).exists() else None)
        if p:
            return p
    return None


def embedded_images(html: str) -> list[bytes]:
    return [base64.b64decode(s) for s in
            re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def image_is_blank(img, tol: float = 1.0) -> bool:
    """True when every pixel has (nearly) the same value."""
    import numpy as np

    a = np.asarray(img.convert("L"), dtype=np.float64)
    return a.size == 0 or float(a.std()) < tol


def check_embedded(html: str) -> tuple[int, list[str]]:
    from PIL import Image

    problems = []
    imgs = embedded_images(html)
    for i, data in enumerate(imgs):
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
        except Exception as e:  # noqa: BLE001
            problems.append(f"image {i}: does not decode ({e})")
            continue
        if image_is_blank(im):
            problems.append(f"image {i}: blank ({im.size[0]}x{im.size[1]})")
    return len(imgs), problems


def _chromium(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="linbridge-chromium-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def render(report: Path, binary: str, out_dir: Path, width: int = 1200,
           timeout: float = 120) -> dict:
    report = report.resolve()
    html = report.read_text(encoding="utf-8")
    n_embedded, problems = check_embedded(html)
    res = {"report": str(report), "embedded_images": n_embedded}
    url = report.as_uri()
    dom = _chromium(binary, ["--dump-dom", url], timeout)
    body = re.search(r"<body[^>]*>", dom.stdout or "")
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(0))) if body else {}
    if "data-images-total" not in attrs:
        problems.append("the page's image check did not run (no data-images-total on <body>; "
                        f"chromium exit {dom.returncode}: {(dom.stderr or '')[-300:]})")
    else:
        total, broken = int(attrs["data-images-total"]), int(attrs["data-images-broken"])
        res.update(browser_images=total, broken_images=broken)
        if broken:
            problems.append(f"{broken} of {total} images are broken in the browser")
        if total != n_embedded:
            problems.append(f"the browser sees {total} images, the HTML embeds {n_embedded}")
        if total == 0:
            problems.append("no images in the report")
    height = min(MAX_HEIGHT, int(attrs.get("data-page-height", 4000)) + 40)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = report.parent.name or "report"
    shot = (out_dir / f"{name}_report.png").resolve()
    if shot.exists():
        shot.unlink()
    sc = _chromium(binary, [f"--screenshot={shot}", f"--window-size={width},{height}", url],
                   timeout)
    res["screenshot"] = str(shot)
    if not shot.exists():
        problems.append(f"no screenshot written (chromium exit {sc.returncode}: "
                        f"{(sc.stderr or '')[-300:]})")
    else:
        from PIL import Image

        with Image.open(shot) as im:
            res["screenshot_size"] = list(im.size)
            import numpy as np

            grey = np.asarray(im.convert("L"))
            res["screenshot_nonwhite_fraction"] = float((grey < 245).mean())
            if image_is_blank(im) or res["screenshot_nonwhite_fraction"] < 0.01:
                problems.append("the screenshot is blank")
    res["problems"] = problems
    res["ok"] = not problems
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="run directories or report.html files")
    ap.add_argument("--out", type=Path, default=None,
                    help="where screenshots go (default: each run directory)")
    ap.add_argument("--chromium", default=None, help="browser binary (default /usr/bin/chromium)")
    ap.add_argument("--width", type=int, default=1200)
    args = ap.parse_args(argv)
    binary = find_chromium(args.chromium)
    if binary is None:
        print("no Chromium found (apt-get install -y chromium)", file=sys.stderr)
        return 2
    ok = True
    for p in args.paths:
        report = p / "report.html" if p.is_dir() else p
        if not report.exists():
            print(json.dumps({"report": str(report), "ok": False, "problems": ["not found"]}))
            ok = False
            continue
        res = render(report, binary, args.out or report.parent, width=args.width)
        print(json.dumps(res))
        ok &= res["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
