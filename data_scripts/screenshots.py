"""Screenshot the built HTML book with headless Chromium, and fail on missing or blank pages.

    python data_scripts/screenshots.py _build/html --out _build/screenshots

Takes the start page (``index.html``, which redirects to the root page) and every page listed in
``_toc.yml``, at 1280x1600, one PNG per page (``00_index.png``, ``01_book_intro.png``, ...).
Exits with 1 if Chromium fails, or if a PNG is missing, smaller than 10 KB, or blank (a single
colour, or almost nothing but the background). Needs ``chromium`` (Debian package ``chromium``)
or set ``CHROMIUM=/path/to/browser``.

The flags keep Chromium offline and deterministic: no background networking, component updates
or sync, a throw-away profile, and a virtual time budget so the theme's JavaScript has run before
the picture is taken (without it the page is captured unstyled).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIN_BYTES = 10_000
MIN_INK = 0.01          # at least 1% of pixels must differ from the background colour
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def toc_pages(toc_path: Path) -> list[str]:
    """Pages of a jb-book ``_toc.yml`` in reading order (root first), without suffixes."""
    import yaml

    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [str(Path(p).with_suffix("")) for p in pages]


def shoot(chromium: str, url: str, png: Path, size: str, budget_ms: int, timeout: int) -> tuple[int, str]:
    """One headless screenshot; returns (exit code, log tail)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--no-first-run",
            "--no-default-browser-check", "--disable-quic", "--mute-audio",
            f"--user-data-dir={profile}", "--hide-scrollbars", "--force-device-scale-factor=1",
            f"--virtual-time-budget={budget_ms}", f"--window-size={size}",
            f"--screenshot={png}", url,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {timeout} s"
    return proc.returncode, (proc.stdout + proc.stderr)[-1500:]


def blank_reason(png: Path) -> str | None:
    """Why ``png`` does not look like a rendered page, or None if it does."""
    if not png.exists():
        return "no file written"
    size = png.stat().st_size
    if size < MIN_BYTES:
        return f"only {size} bytes"
    try:
        from PIL import Image
    except ImportError:      # pillow comes with matplotlib; without it, the size check stands
        return None
    with Image.open(png) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 16)
        if colours is None:              # more than 65536 colours: certainly not blank
            return None
        if len(colours) <= 1:
            return "a single colour"
        background = max(colours)[0]
        ink = 1 - background / (rgb.width * rgb.height)
        if ink < MIN_INK:
            return f"almost empty ({ink:.2%} of pixels differ from the background)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", type=Path, help="the built book, e.g. _build/html")
    parser.add_argument("--out", type=Path, default=REPO / "_build" / "screenshots",
                        help="folder for the PNGs (default _build/screenshots)")
    parser.add_argument("--toc", type=Path, default=REPO / "_toc.yml")
    parser.add_argument("--window-size", default="1280,1600")
    parser.add_argument("--budget-ms", type=int, default=5000, help="virtual time budget")
    parser.add_argument("--timeout", type=int, default=90, help="seconds per page")
    args = parser.parse_args(argv)

    html_dir = args.html_dir.resolve()
    if not (html_dir / "index.html").exists():
        print(f"error: {html_dir} holds no index.html; build the book first", file=sys.stderr)
        return 1
    chromium = find_chromium()
    if chromium is None:
        print("error: no chromium found (apt-get install -y chromium, or set CHROMIUM)",
              file=sys.stderr)
        return 1

    pages = [("index", html_dir / "index.html")]
    pages += [(page, html_dir / f"{page}.html") for page in toc_pages(args.toc)]
    args.out.mkdir(parents=True, exist_ok=True)

    failures = []
    for number, (page, path) in enumerate(pages):
        png = args.out / f"{number:02d}_{page.replace('/', '_')}.png"
        png.unlink(missing_ok=True)
        if not path.exists():
            failures.append(f"{page}: no HTML page at {path}")
            print(f"{page:40s} MISSING PAGE")
            continue
        start = time.perf_counter()
        rc, log = shoot(chromium, path.as_uri(), png, args.window_size, args.budget_ms,
                        args.timeout)
        seconds = time.perf_counter() - start
        reason = f"chromium exited with {rc}: {log.strip()}" if rc != 0 else blank_reason(png)
        if reason:
            failures.append(f"{page}: {reason}")
            print(f"{page:40s} FAILED ({reason.splitlines()[0]})")
        else:
            print(f"{page:40s} {png.name} {png.stat().st_size // 1024} KB {seconds:.1f} s")

    print(f"{len(pages) - len(failures)}/{len(pages)} screenshots in {args.out}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
