"""Every reference in the book stays inside the repository and resolves.

Readers of the repository have only the repository: the book may not send them to files
elsewhere (a ``../shared`` folder, a ``papers.md`` that is not ``book/papers.md``, an absolute
path on some machine). And every reference the book makes must land: each ``{cite}`` key is in
``book/references.bib``, each ``{doc}`` target is a page, each ``{ref}`` label exists, each
provenance tag (``[V-abs]``, ``[R]``, ...) is defined on the provenance page, and each
``literalinclude`` names a file and a ``:pyobject:`` that exist.

Fast and static: no build, no execution.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"

# --------------------------------------------------------------------------- the texts


def notebook_markdown(path: Path) -> list[tuple[str, str]]:
    """(where, source) of every markdown cell of a notebook."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(f"{path.relative_to(REPO)} cell {i}", "".join(c["source"]))
            for i, c in enumerate(cells) if c["cell_type"] == "markdown"]


def book_texts() -> list[tuple[Path, str, str]]:
    """(page file, where, text): every book page and every chapter's markdown cell."""
    out = [(p, str(p.relative_to(REPO)), p.read_text(encoding="utf-8"))
           for p in sorted(BOOK.glob("*.md"))]
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        out += [(nb, where, src) for where, src in notebook_markdown(nb)]
    return out


def python_comments_and_docstrings(path: Path) -> list[tuple[str, str]]:
    """(file:line, text) of every line of every comment and string literal of a Python file:
    docstrings are string literals, and a path in any other string is one the package uses."""
    out = []
    src = path.read_text(encoding="utf-8")
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            out += [(f"{path.relative_to(REPO)}:{tok.start[0] + i}", line)
                    for i, line in enumerate(tok.string.splitlines())]
    return out


def package_texts() -> list[tuple[str, str]]:
    out = []
    for py in sorted((REPO / "dsrsd").rglob("*.py")):
        out += python_comments_and_docstrings(py)
    return out


# --------------------------------------------------------------- references leaving the repo

# The optional real-data folder beside a clone (what .ci/run looks for) is a data location the
# reader is told how to fill, not a document they lack.
ALLOWED_OUTSIDE = ("../shared/data",)
OUTSIDE = [
    (re.compile(r"\.\./shared\b"), "a ../shared path"),
    (re.compile(r"(?<![\w/.-])/(?:work|home|Users|root|mnt|scratch)/"), "an absolute machine path"),
    (re.compile(r"\bfile://"), "a file:// URL"),
]
# In book pages and chapters, the appendix pages are linked as {doc}`papers` / {doc}`protocols`;
# a bare file name is a reference to a file the reader does not have (or cannot click).
BARE_SPEC = re.compile(r"(?<![\w/.-])(?:\.\./)?(?:papers|protocols)\.md\b")
# In the package and the README, the appendix is named by its path in the repository.
SPEC_OUTSIDE_BOOK = re.compile(r"(?<!book/)(?<![\w.-])(?:papers|protocols)\.md\b")


def outside_references(text: str, spec: re.Pattern) -> list[str]:
    for allowed in ALLOWED_OUTSIDE:
        text = text.replace(allowed, "")
    found = [f"{why}: {m.group(0)!r}" for pattern, why in OUTSIDE for m in pattern.finditer(text)]
    found += [f"a file outside book/ or an unlinked spec: {m.group(0)!r}"
              for m in spec.finditer(text)]
    return found


def test_the_outside_reference_patterns():
    assert outside_references("see ../shared/papers.md section 2", SPEC_OUTSIDE_BOOK)
    assert outside_references("Tags follow ``papers.md``", SPEC_OUTSIDE_BOOK)
    assert outside_references("(protocols.md: a strong reference)", SPEC_OUTSIDE_BOOK)
    assert outside_references("read /work/shared/protocols.md", SPEC_OUTSIDE_BOOK)
    assert outside_references("(see ../shared/protocols.md)", BARE_SPEC)
    assert outside_references("the weights papers.md proposes", BARE_SPEC)
    for fine in ("book/papers.md section 1.4", "see {doc}`papers`, section 2",
                 "when a `../shared/data` folder exists", "[p](../book/provenance.md)",
                 "https://example.org/work/x", "BOOK_HTML_OUT=/tmp/book"):
        spec = SPEC_OUTSIDE_BOOK if "book/papers.md" in fine else BARE_SPEC
        assert not outside_references(fine, spec), fine


def test_book_pages_and_chapters_stay_inside_the_repository():
    found = [f"{where}: {hit}" for _, where, text in book_texts()
             for hit in outside_references(text, BARE_SPEC)]
    assert not found, "references leaving the repository (link {doc}`papers` or " \
        "{doc}`protocols` instead):\n" + "\n".join(found)


def test_readme_stays_inside_the_repository():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = outside_references(text, SPEC_OUTSIDE_BOOK)
    assert not found, f"README.md: {found}"


@pytest.mark.parametrize("name", ["requirements.txt", "environment.yml", "pyproject.toml",
                                  "_config.yml", "_toc.yml"])
def test_install_and_build_files_stay_inside_the_repository(name):
    path = REPO / name
    if not path.exists():
        pytest.skip(f"{name} is not in this checkout")
    found = outside_references(path.read_text(encoding="utf-8"), SPEC_OUTSIDE_BOOK)
    assert not found, f"{name}: {found}"


def test_package_comments_and_docstrings_stay_inside_the_repository():
    found = [f"{where}: {hit}" for where, text in package_texts()
             for hit in outside_references(text, SPEC_OUTSIDE_BOOK)]
    assert not found, "references leaving the repository:\n" + "\n".join(found)


# ------------------------------------------------------------------- references resolving

ROLE = re.compile(r"\{(cite(?::[a-z]+)?|doc|ref)\}`([^`]*)`")
TAG = re.compile(r"\[(R|TLDR|[VU]-[A-Za-z]+)\]")
LITERALINCLUDE = re.compile(r"```\{literalinclude\}\s+(\S+)\s*\n((?::[^\n]*\n)*)")


def _target(body: str) -> str:
    """``text <target>`` or ``target``."""
    m = re.search(r"<([^<>]+)>\s*$", body)
    return (m.group(1) if m else body).strip()


def bib_keys() -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", (BOOK / "references.bib").read_text(encoding="utf-8"),
                          re.MULTILINE))


def labels() -> set[str]:
    found = set()
    for _, _, text in book_texts():
        found |= set(re.findall(r"^\(([\w-]+)\)=\s*$", text, re.MULTILINE))
        found |= set(re.findall(r"^:label:\s*(\S+)", text, re.MULTILINE))
    return found


def defined_tags() -> set[str]:
    """Tags defined in the provenance page's table: rows that start with ``| **[TAG]** |``."""
    text = (BOOK / "provenance.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\|\s*\*\*\[([^\]]+)\]\*\*\s*\|", text, re.MULTILINE))


def test_every_cite_doc_and_ref_resolves():
    keys, labs = bib_keys(), labels()
    assert keys and labs, "no bibliography keys or labels found: the parser is broken"
    bad = []
    for page, where, text in book_texts():
        for role, body in ROLE.findall(text):
            if role.startswith("cite"):
                bad += [f"{where}: unknown citation key {k!r}"
                        for k in (k.strip() for k in body.split(",")) if k not in keys]
            elif role == "doc":
                target = _target(body)
                base = REPO if target.startswith("/") else page.parent
                path = (base / target.lstrip("/")).resolve()
                if not any(path.with_name(path.name + ext).is_file() for ext in (".md", ".ipynb")):
                    bad.append(f"{where}: {{doc}} target {target!r} is not a page")
                elif REPO not in path.parents:
                    bad.append(f"{where}: {{doc}} target {target!r} leaves the repository")
            elif _target(body) not in labs:
                bad.append(f"{where}: {{ref}} label {_target(body)!r} is not defined")
    assert not bad, "\n".join(bad)


def test_every_provenance_tag_is_defined():
    defined = defined_tags()
    assert {"V-abs", "TLDR", "R", "V-code"} <= defined, defined
    texts = [(where, text) for _, where, text in book_texts()] + package_texts()
    texts.append(("README.md", (REPO / "README.md").read_text(encoding="utf-8")))
    bad = [f"{where}: [{tag}]" for where, text in texts for tag in TAG.findall(text)
           if tag not in defined]
    assert not bad, "provenance tags not defined on book/provenance.md:\n" + "\n".join(bad)


def _pyobject_exists(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    scope: list[ast.stmt] = tree.body
    for part in name.split("."):
        nodes = [n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 and n.name == part]
        if not nodes:
            return False
        scope = nodes[0].body
    return True


def test_every_literalinclude_resolves():
    bad, n = [], 0
    for page, where, text in book_texts():
        for rel, options in LITERALINCLUDE.findall(text):
            n += 1
            path = (page.parent / rel).resolve()
            if REPO not in path.parents or not path.is_file():
                bad.append(f"{where}: literalinclude {rel!r} is not a file of the repository")
                continue
            m = re.search(r"^:pyobject:\s*(\S+)", options, re.MULTILINE)
            if m and not _pyobject_exists(path, m.group(1)):
                bad.append(f"{where}: {rel} has no {m.group(1)}")
    assert n, "no literalinclude found: chapters 2-5 show the package source"
    assert not bad, "\n".join(bad)


def test_the_method_is_shown_in_chapters_2_to_5():
    """The functions the chapters explain appear as source in them."""
    shown = {}
    for nb in sorted((REPO / "notebooks").glob("0[2-5]_*.ipynb")):
        for _, text in notebook_markdown(nb):
            for _, options in LITERALINCLUDE.findall(text):
                m = re.search(r"^:pyobject:\s*(\S+)", options, re.MULTILINE)
                if m:
                    shown.setdefault(m.group(1), nb.name)
    expected = {"DSRSDNet.streams", "DSRSDNet.fuse", "DSRSDNet.aux_losses", "info_nce",
                "regression_cosine", "decorrelation", "orthogonality", "total_objective"}
    assert expected <= set(shown), f"not shown: {sorted(expected - set(shown))}"


TASK_TERM = re.compile(r"\\mathcal\s*\{?L\}?_\{?(\\text\{)?task")


def test_one_total_objective():
    """The total loss is written in full once (the provenance page's canonical objective); a
    page that shows it again shows the identical formula."""
    display = re.compile(r"\$\$(.*?)\$\$", re.DOTALL)
    canon = (BOOK / "provenance.md").read_text(encoding="utf-8")
    canon = canon[canon.index("(canonical-objective)="):]
    canonical = next(d for d in display.findall(canon) if "mathcal{L}_{\\text{task}}" in d)
    bad = []
    for _, where, text in book_texts():
        for d in display.findall(text):
            if TASK_TERM.search(d) and d.strip() != canonical.strip():
                bad.append(where)
    assert not bad, f"a total loss that differs from {{ref}}`canonical-objective`: {bad}"
