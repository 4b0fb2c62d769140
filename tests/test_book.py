"""The HTML book, built from the committed notebooks without executing them, is complete and offline.

The main build (``jupyter-book build --all -W --keep-going .``) re-runs every chapter. This test
is the fast check that runs with ``pytest``: it renders the outputs already stored in the
notebooks (``execute_notebooks: off``, via a temporary copy of ``_config.yml``) with the same
``-W`` strictness, then inspects the HTML:

* every page listed in ``_toc.yml`` exists, with exactly one title;
* every image a page shows is on disk;
* no cell output holds a traceback or an exception, and no stderr output holds a warning;
* no page loads a script, stylesheet, frame or image from the network, and MathJax is local;
* every chapter notebook is committed with outputs (refresh them with
  ``data_scripts/refresh_outputs.py``).

Set ``BOOK_HTML_OUT=<folder>`` to keep the HTML there (``.ci/run`` screenshots it); otherwise
the build lives in pytest's temporary folder. Takes about 30-60 s on 2 cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
bs4 = pytest.importorskip("bs4")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"
MATHJAX = "_static/mathjax/tex-mml-chtml.js"
EXTERNAL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
EXCEPTION = re.compile(r"Traceback \(most recent call last\)|\b[A-Z]\w*(Error|Exception)\b")


def toc_files(toc: dict) -> list[str]:
    """Every ``file:`` entry of a jb-book ``_toc.yml``, root first, in reading order."""
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [str(Path(f).with_suffix("")) for f in files]


TOC = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
PAGES = toc_files(TOC)
NOTEBOOK_PAGES = [p for p in PAGES if (REPO / f"{p}.ipynb").exists() or p.startswith("notebooks/")]


def _keep_html(html: Path, target: Path) -> None:
    """Copy the built HTML to ``target``, replacing an earlier book but nothing else."""
    if target.exists() and any(target.iterdir()):
        if not (target / "index.html").exists():
            pytest.fail(f"BOOK_HTML_OUT={target} exists, is not empty and holds no book; "
                        "point it at an empty or new folder")
        shutil.rmtree(target)
    shutil.copytree(html, target)


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory) -> Path:
    """Build the book once for this module and return its ``_build/html`` folder."""
    if not JUPYTER_BOOK.exists():
        pytest.fail(f"jupyter-book not found next to the interpreter: {JUPYTER_BOOK}")
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    work = tmp_path_factory.mktemp("book")
    config_path = work / "_config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    cmd = [str(JUPYTER_BOOK), "build", "--all", "-W", "--keep-going",
           "--path-output", str(work / "out"), "--config", str(config_path),
           "--toc", str(REPO / "_toc.yml"), str(REPO)]
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    log = (proc.stdout + "\n" + proc.stderr).strip()
    if proc.returncode != 0:
        pytest.fail(f"book build failed (rc={proc.returncode}):\n{log[-6000:]}")
    html = work / "out" / "_build" / "html"
    assert (html / "index.html").exists(), log[-3000:]

    keep = os.environ.get("BOOK_HTML_OUT")
    if keep:
        target = Path(keep).expanduser().resolve()
        _keep_html(html, target)
        return target
    return html


def soup(path: Path):
    return bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def page_path(html_dir: Path, page: str) -> Path:
    return html_dir / f"{page}.html"


def test_every_toc_page_is_built_with_one_title(html_dir):
    missing = [p for p in PAGES if not page_path(html_dir, p).exists()]
    assert not missing, f"pages in _toc.yml without HTML: {missing}"
    for page in PAGES:
        titles = soup(page_path(html_dir, page)).select("article h1")
        assert len(titles) == 1, (f"{page}: expected one H1 title, found {len(titles)} "
                                  f"({[t.get_text(strip=True) for t in titles]})")


def test_every_image_is_on_disk(html_dir):
    problems = []
    for page in PAGES:
        path = page_path(html_dir, page)
        for img in soup(path).find_all("img"):
            src = img.get("src", "")
            if src.startswith("data:"):
                continue
            if not src or EXTERNAL.match(src):
                problems.append(f"{page}: image source {src!r}")
                continue
            target = (path.parent / src.split("#")[0].split("?")[0]).resolve()
            if not target.is_file() or target.stat().st_size == 0:
                problems.append(f"{page}: missing image {src}")
    assert not problems, "\n".join(problems)


def _cells(page_soup):
    """Code cells with their outputs, skipping cells tagged ``raises-exception``."""
    for cell in page_soup.select("div.cell"):
        if "tag_raises-exception" in cell.get("class", []):
            continue
        for output in cell.select("div.cell_output"):
            yield cell, output


def test_no_errors_in_cell_outputs(html_dir):
    problems = []
    for page in NOTEBOOK_PAGES:
        for _cell, output in _cells(soup(page_path(html_dir, page))):
            if output.select(".traceback"):
                problems.append(f"{page}: a cell output holds a traceback")
                continue
            text = output.get_text(" ", strip=True)
            found = EXCEPTION.search(text)
            if found:
                start = max(found.start() - 80, 0)
                problems.append(f"{page}: {text[start:found.end() + 120]!r}")
    assert not problems, "\n".join(problems)


def test_no_warnings_in_cell_outputs(html_dir):
    problems = []
    for page in NOTEBOOK_PAGES:
        for _cell, output in _cells(soup(page_path(html_dir, page))):
            for err in output.select("div.output.stderr"):
                text = err.get_text(" ", strip=True)
                if re.search(r"Warning\b", text):
                    problems.append(f"{page}: {text[:300]!r}")
    assert not problems, ("stderr warnings in the book (filter them in the notebook, or fix "
                          "the cause):\n" + "\n".join(problems))


def test_nothing_is_loaded_from_the_network(html_dir):
    problems = []
    attributes = {"script": "src", "link": "href", "iframe": "src", "img": "src",
                  "source": "src", "video": "src", "audio": "src", "embed": "src"}
    for path in sorted(html_dir.rglob("*.html")):
        rel = path.relative_to(html_dir)
        page = soup(path)
        for tag, attr in attributes.items():
            for element in page.find_all(tag):
                value = element.get(attr)
                if tag == "link" and "canonical" in (element.get("rel") or []):
                    continue
                if value and EXTERNAL.match(value):
                    problems.append(f"{rel}: <{tag} {attr}={value!r}>")
    for css in sorted(html_dir.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        for found in re.finditer(r"(@import\s+|url\(\s*)['\"]?(https?:)?//[^)'\"\s]+", text):
            problems.append(f"{css.relative_to(html_dir)}: {found.group(0)}")
    assert not problems, "\n".join(problems)


def test_mathjax_is_local(html_dir):
    assert (html_dir / MATHJAX).is_file(), "local MathJax was not copied into the build"
    fonts = html_dir / "_static/mathjax/output/chtml/fonts/woff-v2"
    assert fonts.is_dir() and any(fonts.glob("*.woff")), "MathJax fonts missing"
    pages_with_math = 0
    for path in sorted(html_dir.rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        assert "cdn.jsdelivr.net" not in text, f"{path.name} refers to the MathJax CDN"
        loaders = [s["src"] for s in soup(path).find_all("script", src=True)
                   if "mathjax" in s["src"].lower()]
        # Exactly one loader: a second copy of MathJax (or its extensions loaded as page
        # scripts, which Jupyter Book does for any *.js under _static/) breaks it in the browser.
        assert len(loaders) <= 1, f"{path.name} loads MathJax files directly: {loaders}"
        for src in loaders:
            local = (path.parent / src.split("?")[0]).resolve()
            assert local == (html_dir / MATHJAX).resolve(), f"{path}: {src}"
            pages_with_math += 1
    assert pages_with_math > 0, "no page loads MathJax, although the book has math"


def test_chapter_notebooks_are_committed_with_outputs():
    nbformat = pytest.importorskip("nbformat")
    problems = []
    for page in NOTEBOOK_PAGES:
        path = REPO / f"{page}.ipynb"
        if not path.exists():
            problems.append(f"{page}.ipynb is listed in _toc.yml but missing")
            continue
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0] if nb.cells else None
        if first is None or first.cell_type != "markdown" or not first.source.lstrip().startswith("# "):
            problems.append(f"{page}: the first cell must be markdown starting with '# Title'")
        code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
        if code and not any(c.get("outputs") for c in code):
            problems.append(f"{page}: no stored outputs (run data_scripts/refresh_outputs.py)")
        if code and not any("parameters" in c.metadata.get("tags", []) for c in code):
            problems.append(f"{page}: no code cell tagged 'parameters' (needed by papermill)")
    assert not problems, "\n".join(problems)


def test_no_result_typed_into_prose():
    """Results are printed by code from the records, never typed into the prose: no markdown
    cell of a chapter and no book page may hold a number with three or more decimals (how the
    book reports AUCs). The protocol page is exempt: it quotes the literature's reference
    numbers, which are not ours."""
    import json
    import re

    pattern = re.compile(r"(?<![\w.])[01]\.\d{3,}(?![\w.])")  # metrics lie in [0, 1]
    found = []
    for nb_path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb_path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "markdown":
                found += [f"{nb_path.name} cell {i}: {m}"
                          for m in pattern.findall("".join(cell["source"]))]
    for md in sorted((REPO / "book").glob("*.md")):
        if md.name != "protocols.md":
            found += [f"{md.name}: {m}" for m in pattern.findall(md.read_text(encoding="utf-8"))]
    assert not found, f"numbers typed into prose (print them from the records instead): {found}"
