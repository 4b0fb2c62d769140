"""How the chapters are validated: exact where outputs are exact by nature, a stated tolerance where
a cell prints numbers that come from training (they move with the CPU's math-kernel path), and
committed notebooks that carry no machine paths and no library warnings."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbval_tolerance import Tolerance, compare_outputs, compare_text, tolerance_of

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))
RUN_NOTEBOOKS = sorted((REPO / "results" / "runs").glob("*/run.ipynb"))
# A machine path: an absolute POSIX path under a system or home root, a Windows drive path, or a
# virtual environment / site-packages path, wherever it sits in a committed notebook's text.
MACHINE_PATH = re.compile(
    r"(?<![\w.:/<])/(?:home|work|tmp|root|usr|Users|opt|var|mnt|srv|private|scratch)/"
    r"|\b[A-Za-z]:\\\\|site-packages|/\.venv/")
IMAGES = ("image/png", "image/jpeg", "image/svg+xml")


# ------------------------------------------------------------------------------ the comparator
def test_tolerance_is_read_from_cell_metadata():
    assert tolerance_of({"nbval": {"atol": 0.01, "rtol": 0.1, "why": "trained"}}) \
        == Tolerance(atol=0.01, rtol=0.1)
    assert tolerance_of({"tags": ["nbval-check-output"]}) is None
    assert tolerance_of({"nbval": {"why": "timings"}}) is None
    with pytest.raises(ValueError, match="why"):
        tolerance_of({"nbval": {"atol": 0.1}})
    with pytest.raises(ValueError, match="unknown"):
        tolerance_of({"nbval": {"tol": 0.1, "why": "x"}})


def test_numbers_within_tolerance_pass_and_beyond_fail_naming_the_number():
    tol = Tolerance(atol=0.005)
    stored = "early fusion: test AUC 0.938, loss 1.204 after 4 epochs"
    assert compare_text(stored, "early fusion: test AUC 0.941, loss 1.200 after 4 epochs", tol) == []
    problems = compare_text(stored, "early fusion: test AUC 0.950, loss 1.204 after 4 epochs", tol)
    assert len(problems) == 1
    assert "0.938 became 0.950" in problems[0] and "moved by 0.012" in problems[0]
    assert "early fusion: test AUC 0.938" in problems[0]  # says where the number sits


def test_text_and_integers_compare_exactly():
    tol = Tolerance(atol=1.0)
    assert compare_text("best: early (0.94)", "best: clear (0.94)", tol)  # a verdict word moved
    assert compare_text("4 epochs", "5 epochs", tol)  # integers are counts: exact
    assert compare_text("m0 s1 f1", "m0 s1 f1", Tolerance()) == []
    # Column alignment may shift when a sign appears: whitespace runs count as one space.
    assert compare_text("a   0.100\nb  -0.200", "a  -0.100\nb  -0.200", Tolerance(atol=0.3)) == []


def test_output_kinds_must_match():
    stream = {"output_type": "stream", "name": "stdout", "text": "x 0.5\n"}
    table = {"output_type": "execute_result", "data": {"text/plain": "x 0.5"}, "metadata": {}}
    assert compare_outputs([stream], [stream], Tolerance()) == []
    assert compare_outputs([stream], [table], Tolerance(atol=1))


def test_committed_chapter_number_pushed_beyond_its_tolerance_fails():
    """On every committed chapter cell that carries a tolerance: its own output compares equal to
    itself, stays equal with each decimal number moved by half the tolerance, and fails with the
    first decimal number moved by twice the tolerance."""
    checked = 0
    for path in CHAPTERS:
        for cell in nbformat.read(path, as_version=4).cells:
            tol = tolerance_of(cell.metadata) if cell.cell_type == "code" else None
            if tol is None:
                continue
            outputs = [dict(o) for o in cell.outputs]
            assert compare_outputs(outputs, outputs, tol) == []
            for scale, should_fail in ((0.5, False), (2.0, True)):
                moved = _move_numbers(outputs, tol, scale, first_only=should_fail)
                if moved is None:
                    continue
                problems = compare_outputs(outputs, moved, tol)
                assert bool(problems) == should_fail, (path.name, scale, problems)
                checked += should_fail
    assert checked >= 5, "expected tolerance checks on the chapters that train"


def _move_numbers(outputs: list[dict], tol: Tolerance, scale: float, first_only: bool):
    """A copy of ``outputs`` with decimal numbers moved by ``scale`` x the allowed change (the
    printed precision is kept), or None when the outputs hold no decimal number."""
    from nbval_tolerance import NUMBER

    done = False

    def move(m: re.Match) -> str:
        nonlocal done
        token = m.group(0)
        if "." not in token or "e" in token.lower() or (first_only and done):
            return token
        done = True
        value = float(token.replace("\u2212", "-"))
        decimals = len(token.split(".")[1])
        allowed = tol.atol + tol.rtol * abs(value)
        delta = max(2 * allowed, 10.0 ** -decimals) if scale > 1 else scale * allowed
        return f"{value + delta:{'+' if token.startswith('+') else ''}.{decimals}f}"

    moved = []
    for out in outputs:
        out = json.loads(json.dumps(out))
        if "text" in out:
            out["text"] = NUMBER.sub(move, "".join(out["text"]))
        for mime in list(out.get("data", {})):
            if mime not in IMAGES:
                out["data"][mime] = NUMBER.sub(move, "".join(out["data"][mime]))
        moved.append(out)
    return moved if done else None


# ------------------------------------------------------------------------------ through nbval
def _tiny_notebook(path: Path, printed: str, stored: str, atol: float) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(f"print('test AUC {printed}')")
    cell.metadata = {"tags": ["nbval-check-output"], "nbval": {"atol": atol, "why": "a test"}}
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"test AUC {stored}\n")]
    cell.execution_count = 1
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(path))


@pytest.mark.parametrize("stored, passes", [("0.815", True), ("0.850", False)])
def test_nbval_applies_the_tolerance(tmp_path, stored, passes):
    """The plugin is wired into nbval: a stored number within atol passes, one beyond fails and
    the report names it."""
    nb = tmp_path / "tiny.ipynb"
    _tiny_notebook(nb, printed="0.812", stored=stored, atol=0.01)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         "--nbval-current-env", "-p", "nbval_tolerance", "--rootdir", str(tmp_path), str(nb)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**_env(), "PYTHONPATH": str(REPO / "tests")})
    assert (proc.returncode == 0) == passes, proc.stdout[-2000:] + proc.stderr[-2000:]
    if not passes:
        assert "0.850 became 0.812" in proc.stdout, proc.stdout[-2000:]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


# ------------------------------------------------------------------------------ the chapters
def _code_cells(path: Path):
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            yield i, cell


def test_every_chapter_output_is_checked_exactly_or_with_a_stated_tolerance():
    """Under --nbval-lax only tagged cells are compared: every cell that prints text must be
    tagged nbval-check-output (exact, or within the tolerance in its metadata), or
    nbval-ignore-output with the reason in its metadata."""
    problems = []
    for path in CHAPTERS:
        for i, cell in _code_cells(path):
            tags = cell.metadata.get("tags", [])
            spec = cell.metadata.get("nbval", {})
            where = f"{path.name} cell {i}"
            prints = any(o.output_type in ("stream", "execute_result") or
                         set(o.get("data", {})) - set(IMAGES) - {"text/plain"}
                         for o in cell.outputs)
            if re.search(r"^\s*#\s*(NBVAL|PYTEST_VALIDATE)_", cell.source, re.M):
                problems.append(f"{where}: use the cell tags, not comment markers")
            try:
                tol = tolerance_of(cell.metadata)
            except ValueError as e:
                problems.append(f"{where}: {e}")
                continue
            check, ignore = "nbval-check-output" in tags, "nbval-ignore-output" in tags
            if check == ignore and (prints or check):
                problems.append(f"{where}: needs exactly one of nbval-check-output / "
                                "nbval-ignore-output")
            if ignore and not spec.get("why"):
                problems.append(f"{where}: nbval-ignore-output without a 'why' in its metadata")
            if tol is not None and not check:
                problems.append(f"{where}: a tolerance on a cell that is not checked")
    assert not problems, "\n".join(problems)


def test_cells_that_train_carry_a_tolerance_and_the_rest_compare_exactly():
    """The split is deliberate: chapters that only render committed records compare exactly;
    chapters that train live put a tolerance on the cells that print trained numbers."""
    exact_only = {"06_oulad.ipynb", "07_assistments.ipynb", "11_results.ipynb", "12_diagnosis.ipynb",
                  "intro.ipynb"}
    for path in CHAPTERS:
        tolerances = [tolerance_of(c.metadata) for _, c in _code_cells(path)]
        if path.name in exact_only:
            assert not any(tolerances), f"{path.name} renders records: compare exactly"
        else:
            assert any(tolerances), f"{path.name} trains: where are its trained numbers checked?"
            # No chapter is loosened wholesale: the setup cell (sizes, config) stays exact.
            assert tolerances[1] is None, f"{path.name}: the setup cell must compare exactly"


def test_chapters_filter_only_named_warnings():
    """A blanket warnings filter would hide any new warning from test_no_warnings_in_cell_outputs."""
    blanket = re.compile(r"filterwarnings\(\s*['\"]ignore['\"]\s*\)|simplefilter\(\s*['\"]ignore"
                         r"['\"]\s*\)|setLevel\(logging\.(ERROR|CRITICAL)\)")
    found = [f"{p.name} cell {i}" for p in CHAPTERS for i, c in _code_cells(p)
             if blanket.search(c.source)]
    assert not found, f"blanket warning filters: {found}"


# ------------------------------------------------------------------------------ committed files
def _texts(nb: dict):
    """Every text of a notebook (sources, outputs except images, metadata) with its location."""
    yield "metadata", json.dumps(nb.get("metadata", {}))
    for i, cell in enumerate(nb["cells"]):
        yield f"cell {i} source", "".join(cell["source"])
        yield f"cell {i} metadata", json.dumps(cell.get("metadata", {}))
        for out in cell.get("outputs", []):
            if "text" in out:
                yield f"cell {i} {out.get('name', 'stream')}", "".join(out["text"])
            for mime, value in out.get("data", {}).items():
                if mime not in IMAGES:
                    yield f"cell {i} {mime}", value if isinstance(value, str) else (
                        "".join(value) if isinstance(value, list) else json.dumps(value))
            if "traceback" in out:
                yield f"cell {i} traceback", "\n".join(out["traceback"])


@pytest.mark.parametrize("group", ["chapters", "run records"])
def test_committed_notebooks_carry_no_machine_paths(group):
    paths = CHAPTERS if group == "chapters" else RUN_NOTEBOOKS
    assert paths, f"no {group} found"
    found = []
    for path in paths:
        for where, text in _texts(json.loads(path.read_text(encoding="utf-8"))):
            m = MACHINE_PATH.search(text)
            if m:
                found.append(f"{path.relative_to(REPO)} {where}: "
                             f"{text[max(0, m.start() - 40):m.end() + 60]!r}")
    assert not found, f"{len(found)} machine paths, e.g.:\n" + "\n".join(found[:10])


@pytest.mark.parametrize("group", ["chapters", "run records"])
def test_committed_notebooks_carry_no_warnings(group):
    paths = CHAPTERS if group == "chapters" else RUN_NOTEBOOKS
    found = []
    for path in paths:
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            for out in cell.get("outputs", []):
                text = "".join(out.get("text", ""))
                if out.get("name") == "stderr" and re.search(r"Warning\b", text):
                    found.append(f"{path.relative_to(REPO)} cell {i}: {text[:200]!r}")
    assert not found, f"{len(found)} warnings, e.g.:\n" + "\n".join(found[:10])


def test_machine_path_pattern():
    assert MACHINE_PATH.search('out = "/work/sweep/results/runs"')
    assert MACHINE_PATH.search("/home/me/.venv/lib/python3.11/site-packages/tqdm/auto.py:21")
    assert MACHINE_PATH.search("C:\\\\Users\\\\me")
    for fine in ('out = "../results/runs"', "<td>0.5</td>", "https://example.org/work/x",
                 "notebooks/run.ipynb"):
        assert not MACHINE_PATH.search(fine), fine


# ------------------------------------------------------------------------------ chapter shape
# run.ipynb documents one run; intro.ipynb is the book's start page (its findings are glued)
BOOK_CHAPTERS = [p for p in CHAPTERS if p.name not in ("run.ipynb", "intro.ipynb")]


def _headings(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [line.strip() for c in nb.cells if c.cell_type == "markdown"
            for line in c.source.splitlines() if line.startswith("## ")]


def test_every_chapter_ends_with_a_summary_and_exercises():
    problems = []
    for path in BOOK_CHAPTERS:
        heads = _headings(path)
        if "## Summary" not in heads:
            problems.append(f"{path.name}: no '## Summary' section")
        if not heads or heads[-1] != "## Exercises":
            problems.append(f"{path.name}: the last section must be '## Exercises'")
            continue
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        exercises = text.split("## Exercises", 1)[1]
        n = len(re.findall(r"^\s*\d+\.\s", exercises, re.M))
        if not 3 <= n <= 6:
            problems.append(f"{path.name}: {n} numbered exercises (want 3 to 5)")
    assert not problems, "\n".join(problems)


def test_summaries_state_findings_with_glued_numbers():
    """A summary states what the chapter found, with numbers computed by the chapter (glued)."""
    problems = []
    for path in BOOK_CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        if "## Summary" not in text:
            continue  # reported by the test above
        summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
        used = set(re.findall(r"\{glue(?::\w+)?\}`([\w.-]+)", summary))
        glued = {o.get("metadata", {}).get("scrapbook", {}).get("name")
                 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])}
        if not used:
            problems.append(f"{path.name}: the summary glues no number")
        if used - glued:
            problems.append(f"{path.name}: glue keys used but never glued: {sorted(used - glued)}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ figures
def test_every_figure_has_a_caption():
    """A cell that shows an image carries a MyST-NB figure caption in its metadata (rendered
    under the image), and shows nothing else that the caption would wrap (no table)."""
    problems = []
    for path in CHAPTERS:
        for i, cell in _code_cells(path):
            images = [o for o in cell.outputs if set(o.get("data", {})) & set(IMAGES)]
            if not images:
                continue
            fig = cell.metadata.get("mystnb", {}).get("figure", {})
            if len(str(fig.get("caption", "")).split()) < 8:
                problems.append(f"{path.name} cell {i}: an image without a caption of a sentence")
            if not str(fig.get("name", "")).startswith("fig-"):
                problems.append(f"{path.name} cell {i}: the figure needs a 'fig-...' name")
            others = [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")
                      and not set(o.get("data", {})) & set(IMAGES)]
            if others:
                problems.append(f"{path.name} cell {i}: a table in a figure cell (split the cell)")
    assert not problems, "\n".join(problems)


def test_strip_plots_are_seeded():
    """seaborn's strip jitter is random: a chapter draws strips only through book.method_strip
    (which seeds it) or seeds numpy right before."""
    found = [f"{p.name} cell {i}" for p in CHAPTERS for i, c in _code_cells(p)
             if "stripplot(" in c.source and "np.random.seed(" not in c.source]
    assert not found, f"unseeded strip plots: {found}"


# ------------------------------------------------------------------------------ parameters
def _parameters(path: Path) -> tuple[int, dict]:
    """(index of the parameters cell, {name: default}) of a notebook."""
    for i, cell in _code_cells(path):
        if "parameters" in cell.metadata.get("tags", []):
            values = {}
            for node in ast.parse(cell.source).body:
                assert isinstance(node, ast.Assign), f"{path.name}: parameters cell holds {node}"
                values[node.targets[0].id] = ast.literal_eval(node.value)
            return i, values
    raise AssertionError(f"{path.name}: no parameters cell")


def _assigned_names(tree: ast.AST):
    """(name, statement) for every name a statement binds (assignments, loops, with, imports)."""
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
            targets = [node.target]
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            targets = [it.optional_vars for it in node.items if it.optional_vars is not None]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from ((a.asname or a.name.split(".")[0], node) for a in node.names)
        elif isinstance(node, ast.NamedExpr):
            targets = [node.target]
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    yield n.id, node


def _is_budget_call(node: ast.AST) -> bool:
    value = getattr(node, "value", None)
    return (isinstance(node, ast.Assign) and isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute) and value.func.attr == "budget")


def test_explicit_parameters_are_never_overwritten():
    """No cell rebinds a parameter, except ``book.budget``, which keeps every explicit value and
    is handed each parameter it resolves (``epochs=epochs``); and every parameter is used."""
    problems = []
    for path in CHAPTERS:
        k, params = _parameters(path)
        used = set()
        for i, cell in _code_cells(path):
            if i == k:
                continue
            tree = ast.parse(cell.source)
            for name, node in _assigned_names(tree):
                if name not in params:
                    continue
                if not _is_budget_call(node):
                    problems.append(f"{path.name} cell {i}: rebinds the parameter {name!r}")
                    continue
                passed = {kw.arg: kw.value for kw in node.value.keywords}
                if not (isinstance(passed.get(name), ast.Name) and passed[name].id == name):
                    problems.append(f"{path.name} cell {i}: book.budget does not get {name}={name}")
            asserted = {n.id for a in ast.walk(tree) if isinstance(a, ast.Assert)
                        for n in ast.walk(a) if isinstance(n, ast.Name)}
            used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                     and isinstance(n.ctx, ast.Load)} - asserted
        problems += [f"{path.name}: parameter {p!r} is never used (or only asserted)"
                     for p in sorted(set(params) - used)]
    assert not problems, "\n".join(problems)


def test_quick_has_one_meaning():
    """Every chapter that has ``quick`` says what it is in the same words: the small CPU budget."""
    problems = []
    for path in CHAPTERS:
        k, params = _parameters(path)
        if "quick" not in params:
            continue
        source = nbformat.read(path, as_version=4).cells[k].source
        line = next(x for x in source.splitlines() if x.startswith("quick ="))
        if "small CPU budget" not in line or params["quick"] is not True:
            problems.append(f"{path.name}: {line!r}")
    assert not problems, "quick must default to True, 'the small CPU budget':\n" + "\n".join(problems)


# Values that differ from every chapter's default; a chapter gets those of its parameters.
OVERRIDES = {"epochs": 50, "n_seeds": 4, "n": 2100, "n_draws": 4, "seed": 1, "quick": False}


@pytest.mark.parametrize("path", [p for p in CHAPTERS if p.name != "run.ipynb"],
                         ids=lambda p: p.stem)
def test_parameters_passed_explicitly_reach_the_code(path):
    """Run a chapter's parameters cell, a papermill-style override cell and its setup cell: each
    overridden parameter still holds the passed value afterwards (e.g. ``-p quick False -p
    epochs 50`` trains 50 epochs)."""
    k, params = _parameters(path)
    cells = nbformat.read(path, as_version=4).cells
    given = {name: OVERRIDES[name] for name in params if name in OVERRIDES}
    if not given:
        pytest.skip(f"{path.name} has no budget parameter")
    setup = cells[k + 1].source
    code = "\n".join([cells[k].source, *(f"{n} = {v!r}" for n, v in given.items()), setup,
                      "import json",
                      f"print('PARAMS=' + json.dumps({{n: globals()[n] for n in {list(given)!r}}}))"])
    # setup cells use IPython's display(): a stand-in is enough outside a kernel
    code = "from IPython.display import display\n" + code
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO / "notebooks", timeout=600,
                          env={**_env(), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PARAMS="))
    assert json.loads(line.removeprefix("PARAMS=")) == given
