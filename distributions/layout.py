#!/usr/bin/env python3
"""Lay out the project's distributions, each as a buildable source tree, from operator/clusterpool.

    python distributions/layout.py OUT            # OUT/clusterpool-client/, OUT/clusterpool-operator/
    python distributions/layout.py --version      # the project's version

Both ship parts of the one import package `clusterpool`. The client distribution owns
`clusterpool/__init__.py` (and so `__version__`), the domain core, the balancers, the
caches, the SDK and the gateway; the operator distribution owns everything else and
depends on the client of the same version. Which file goes where is written once, here
(CLIENT_OWNS, OPERATOR_OWNS_WITHIN); every other file of the package is the operator's.

Each tree gets its pyproject.toml from distributions/<name>/ with the version stamped in, its
README.md and the LICENSE. Standard library only: the Dockerfile runs it too.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "operator" / "clusterpool"
CLIENT, OPERATOR = "clusterpool-client", "clusterpool-operator"
# Where the project publishes its image (the chart's default and the install manifests name it).
IMAGE = "ghcr.io/clusterpool/clusterpool-operator"

# Paths relative to operator/clusterpool; a folder takes everything under it.
CLIENT_OWNS = ("__init__.py", "py.typed", "core", "balancer", "cache", "client", "gateway")
# Files inside the client's folders that only the operator needs (they import its api.py).
OPERATOR_OWNS_WITHIN = ("core/publish.py",)


def version() -> str:
    """The one version of the project: `__version__` in operator/clusterpool/__init__.py."""
    found = re.search(r'^__version__ = "([^"]+)"', (PACKAGE / "__init__.py").read_text(), re.M)
    if found is None:
        raise SystemExit(f'{PACKAGE / "__init__.py"}: no line `__version__ = "X.Y.Z"`; add one')
    return found.group(1)


def owner(rel: Path) -> str:
    """The distribution that ships the package file `rel` (relative to operator/clusterpool)."""
    text = rel.as_posix()
    if text in OPERATOR_OWNS_WITHIN:
        return OPERATOR
    return CLIENT if rel.parts[0] in CLIENT_OWNS else OPERATOR


def package_files() -> list[Path]:
    return sorted(
        p.relative_to(PACKAGE)
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def stage(out: Path) -> dict[str, Path]:
    """Write both source trees under `out` (replacing what was there); return them by name."""
    ver = version()
    trees = {}
    for name in (CLIENT, OPERATOR):
        tree = out / name
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "src" / "clusterpool").mkdir(parents=True)
        template = (ROOT / "distributions" / name / "pyproject.toml").read_text()
        if "@VERSION@" not in template:
            raise SystemExit(f"distributions/{name}/pyproject.toml: the version must read @VERSION@ (stamped here)")
        (tree / "pyproject.toml").write_text(template.replace("@VERSION@", ver))
        shutil.copy2(ROOT / "distributions" / name / "README.md", tree / "README.md")
        shutil.copy2(ROOT / "LICENSE", tree / "LICENSE")
        trees[name] = tree
    for rel in package_files():
        dest = trees[owner(rel)] / "src" / "clusterpool" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE / rel, dest)
    return trees


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        print(version())
        return 0
    if len(sys.argv) != 2:
        raise SystemExit("usage: distributions/layout.py OUT | --version")
    for name, tree in stage(Path(sys.argv[1]).resolve()).items():
        print(f"{name}\t{tree}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
