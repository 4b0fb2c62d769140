"""nbval with numeric tolerances, for chapter cells that print numbers that come from training.

Run under ``--nbval-lax``, nbval compares only the cells tagged ``nbval-check-output`` (or marked
``# NBVAL_CHECK_OUTPUT``), and compares them exactly. That is right for counts, shapes, config
echoes, text and tables of committed records, but not for a trained number: MKL and oneDNN take
different kernel paths on different x86-64 CPUs (AVX-512, AVX2, SSE4.2), which moves the last
printed digit of a loss or an AUC.

A checked cell may carry a tolerance in its metadata (kept out of the code the book shows)::

    "tags": ["nbval-check-output"],
    "nbval": {"atol": 0.01, "rtol": 0.02, "why": "AUCs of a 4-epoch CPU training"}

and its outputs are then compared as text with numbers cut out: the text between the numbers must
match exactly (whitespace runs count as one space, so a table column that widens by a sign still
matches); integers must match exactly (counts, epochs, sizes); every decimal number must satisfy
``|new - stored| <= atol + rtol * |stored|``. A failure names the number that moved, by how much,
and the line it sits on. Images are not compared (nbval's default without nbdime).

Loaded by the root ``conftest.py``; usable on its own with ``-p nbval_tolerance``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A number not glued to a word or another number: "s1", "m0" and "f1" stay text.
NUMBER = re.compile(r"(?<![\w.])[-+\u2212]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Tolerance:
    """``|new - stored| <= atol + rtol * |stored|`` for decimal numbers; integers exact."""

    atol: float = 0.0
    rtol: float = 0.0

    def allows(self, stored: float, new: float) -> bool:
        return abs(new - stored) <= self.atol + self.rtol * abs(stored)

    def __str__(self) -> str:
        return f"atol={self.atol:g} rtol={self.rtol:g}"


def tolerance_of(metadata: dict) -> Tolerance | None:
    """The tolerance in a cell's ``metadata["nbval"]`` (``atol``, ``rtol``), or None."""
    spec = metadata.get("nbval") or {}
    if not isinstance(spec, dict):
        raise ValueError(f'cell metadata "nbval" must be an object, got {spec!r}')
    unknown = set(spec) - {"atol", "rtol", "why"}
    if unknown:
        raise ValueError(f'cell metadata "nbval": unknown keys {sorted(unknown)}')
    if "atol" not in spec and "rtol" not in spec:
        return None
    if not spec.get("why"):
        raise ValueError('cell metadata "nbval": a tolerance needs a "why"')
    return Tolerance(atol=float(spec.get("atol", 0.0)), rtol=float(spec.get("rtol", 0.0)))


def _split(text: str) -> tuple[str, list[str]]:
    numbers = NUMBER.findall(text)
    skeleton = SPACE.sub(" ", NUMBER.sub("<num>", text)).strip()
    return skeleton, numbers


def _value(token: str) -> float:
    return float(token.replace("\u2212", "-"))


def _line_of(text: str, token_index: int) -> str:
    for i, m in enumerate(NUMBER.finditer(text)):
        if i == token_index:
            start = text.rfind("\n", 0, m.start()) + 1
            end = text.find("\n", m.end())
            return text[start:end if end >= 0 else len(text)].strip()[:160]
    return ""


def compare_text(stored: str, new: str, tol: Tolerance) -> list[str]:
    """Problems found comparing one output text with its stored value (empty when it matches)."""
    s_skel, s_nums = _split(stored)
    n_skel, n_nums = _split(new)
    if s_skel != n_skel:
        # Show the first place where the text (numbers cut out) differs.
        i = next((k for k, (a, b) in enumerate(zip(s_skel, n_skel, strict=False)) if a != b),
                 min(len(s_skel), len(n_skel)))
        return [f"text differs (numbers cut out) at char {i}: stored {s_skel[max(0, i - 60):i + 60]!r}"
                f" vs new {n_skel[max(0, i - 60):i + 60]!r}"]
    problems = []
    for k, (a, b) in enumerate(zip(s_nums, n_nums, strict=True)):
        is_int = not any(c in a + b for c in ".eE")
        if is_int:
            if a != b:
                problems.append(f"integer {a} became {b} (integers compare exactly) in line "
                                f"{_line_of(stored, k)!r}")
        elif not tol.allows(_value(a), _value(b)):
            problems.append(f"{a} became {b}: moved by {abs(_value(b) - _value(a)):.3g}, beyond "
                            f"{tol} (allowed {tol.atol + tol.rtol * abs(_value(a)):.3g}) in line "
                            f"{_line_of(stored, k)!r}")
    return problems


def compare_outputs(stored: list[dict], new: list[dict], tol: Tolerance,
                    skip: tuple[str, ...] = ("image/png", "image/jpeg", "image/svg+xml")
                    ) -> list[str]:
    """Compare a cell's stored outputs with fresh ones (nbformat output dicts, streams already
    coalesced): same kinds in the same order, each text within ``tol``."""
    def texts(outputs: list[dict]) -> list[tuple[str, str]]:
        found = []
        for out in outputs:
            if out.get("output_type") == "stream":
                found.append((f"stream {out.get('name')}", _join(out.get("text", ""))))
            elif out.get("output_type") in ("display_data", "execute_result"):
                for mime, value in sorted(out.get("data", {}).items()):
                    if mime not in skip:
                        found.append((mime, _join(value)))
            elif out.get("output_type") == "error":
                found.append(("error", f"{out.get('ename')}: {out.get('evalue')}"))
        return found

    s_texts, n_texts = texts(stored), texts(new)
    if [k for k, _ in s_texts] != [k for k, _ in n_texts]:
        return [f"output kinds differ: stored {[k for k, _ in s_texts]} vs new "
                f"{[k for k, _ in n_texts]}"]
    problems = []
    for (kind, s), (_, n) in zip(s_texts, n_texts, strict=True):
        problems += [f"[{kind}] {p}" for p in compare_text(s, n, tol)]
    return problems


def _join(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def pytest_configure(config) -> None:
    """Route the comparison of cells that carry a tolerance line through ``compare_outputs``."""
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval absent: nothing to extend
        return
    if getattr(IPyNbCell, "_dsrsd_tolerance", False):
        return
    exact = IPyNbCell.compare_outputs

    def compare(self, test, ref, skip_compare=None):
        tol = tolerance_of(self.cell.metadata)
        if tol is None:
            return exact(self, test, ref, skip_compare)
        test = [_sanitized(o, self.sanitize) for o in test]
        ref = [_sanitized(o, self.sanitize) for o in ref]
        problems = compare_outputs(ref, test, tol)
        self.comparison_traceback = [f"NBVAL_TOLERANCE {tol}: {p}" for p in problems]
        return not problems

    IPyNbCell.compare_outputs = compare
    IPyNbCell._dsrsd_tolerance = True


def _sanitized(out: dict, sanitize) -> dict:
    out = dict(out)
    if "text" in out:
        out["text"] = sanitize(_join(out["text"]))
    if "data" in out:
        out["data"] = {k: sanitize(_join(v)) if isinstance(v, (str, list)) else v
                       for k, v in out["data"].items()}
    return out
