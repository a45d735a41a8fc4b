"""Check that every file path and make target the docs name exists (run by `make lint`).

Read: README.md, docs/*.md and charts/*/README.md. Checked:

- relative links, `[text](path)` and `[label]: path`, against the linking doc's folder
  (URLs, links to an anchor only, and paths under ~ or / are not checked; an anchor or a
  query after the path is dropped);
- repository paths in backticks (`operator/clusterpool/api.py`, `docs/scale.md`,
  `tests/unit/test_api.py::test_x`, `charts/clusterpool-operator/`), against the
  repository root: a word in a code span that starts with one of ROOTS and a slash;
- `make <target>` in code spans and code blocks, against the Makefile's targets.

Each problem is one line: the doc, the line and what is missing. Exit status 1 if any.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lint_report import report

ROOTS = ("operator", "bench", "docs", "scripts", "tests", "charts", "crds", "manifests", "examples")

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_SPAN = re.compile(r"(`+)(.+?)\1")
_FENCE = re.compile(r"^\s*(```|~~~)")
_REPO_PATH = re.compile(rf"^(?:{'|'.join(ROOTS)})/[\w.@+/-]*$")
_MAKE = re.compile(r"(?<![\w./-])make\s+((?:[\w.=/-]+\s*)+)")
_TARGET = re.compile(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)")
_WORD_END = ".,;:!?)]}'\""


@dataclass(frozen=True)
class Problem:
    doc: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.what}"


def docs_of(root: Path) -> list[Path]:
    """The docs checked: README.md, docs/*.md, charts/*/README.md (those that exist)."""
    found = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted(root.glob("charts/*/README.md"))]
    return [p for p in found if p.is_file()]


def make_targets(makefile: Path) -> set[str]:
    """The targets a Makefile defines (rules and .PHONY names; not variables)."""
    targets: set[str] = set()
    for line in makefile.read_text().splitlines():
        if line.startswith(("\t", "#")):
            continue
        m = _TARGET.match(line)
        if m:
            targets.update(m.group(1).split())
        if line.startswith(".PHONY:"):
            targets.update(line.split(":", 1)[1].split())
    return {t for t in targets if not t.startswith(".")}  # .PHONY and the like are not targets


def _code(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, code, whether it is a whole line of a code block) for each code span
    and each line of a fenced code block."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            yield number, line, True
            continue
        for m in _SPAN.finditer(line):
            yield number, m.group(2), False


def _prose(text: str) -> Iterator[tuple[int, str]]:
    """Each line outside fenced code blocks, its code spans blanked out."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, _SPAN.sub("", line)


def _local_target(link: str) -> str | None:
    """The path a link names, or None when it is not a local path to check."""
    if re.match(r"^[A-Za-z][\w+.-]*:", link) or link.startswith(("#", "~", "/")):
        return None  # a URL (http:, mailto:, ...), an anchor only, or outside the repository
    path = re.split(r"[#?]", link, maxsplit=1)[0]
    return path or None


def _repo_path(word: str) -> str | None:
    """The repository path a word of a code span names (its `::test` or `:line` dropped)."""
    word = word.strip(_WORD_END + "(")
    word = word.split("::", 1)[0]
    word = re.sub(r":\d+(?:-\d+)?$", "", word)
    return word if _REPO_PATH.match(word) else None


def check(root: Path, docs: list[Path] | None = None) -> list[Problem]:
    """What the docs name that does not exist, in the order found."""
    targets = make_targets(root / "Makefile") if (root / "Makefile").is_file() else set()
    problems: list[Problem] = []
    for doc in docs_of(root) if docs is None else docs:
        text = doc.read_text()
        shown = doc.relative_to(root)
        for number, line in _prose(text):
            links = [m.group(1) for m in _LINK.finditer(line)]
            ref = _REFERENCE.match(line)
            if ref:
                links.append(ref.group(1))
            for link in links:
                path = _local_target(link)
                if path is not None and not (doc.parent / path).exists():
                    problems.append(
                        Problem(shown, number, f"links to {link}, which does not exist (from {shown.parent}/)")
                    )
        for number, code, _ in _code(text):
            for word in code.split():
                path = _repo_path(word)
                if path is not None and not (root / path).exists():
                    problems.append(Problem(shown, number, f"names `{path}`, which does not exist"))
            for m in _MAKE.finditer(code):
                for word in m.group(1).split():
                    if "=" in word or word.startswith("-"):
                        continue  # a variable or an option
                    if not re.match(r"^[a-z][\w.-]*$", word):
                        break
                    if word not in targets:
                        problems.append(Problem(shown, number, f"`make {word}`: the Makefile has no target {word}"))
    return problems


ROOT = Path(__file__).resolve().parent.parent


def main(root: Path = ROOT) -> int:
    return report(check(root), "name(s) in the docs point at nothing: fix the doc (or restore what it names)")


if __name__ == "__main__":
    sys.exit(main())
