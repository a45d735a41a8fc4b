"""The one version and the two distributions: every file that carries the version agrees
with operator/clusterpool/__init__.py, and the client distribution imports nothing that
only the operator distribution ships (nor kopf, the Kubernetes client or pydantic)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

import clusterpool
import layout
import release


def test_every_stamped_file_carries_the_one_version():
    assert layout.version() == clusterpool.__version__
    assert release.unstamped() == [], "run `make stamp` after changing __version__"


def test_the_charts_default_image_is_the_published_one():
    values = yaml.safe_load((layout.ROOT / "charts/clusterpool-operator/values.yaml").read_text())
    assert values["image"]["repository"] == layout.IMAGE


def test_each_package_file_belongs_to_exactly_one_distribution():
    files = layout.package_files()
    owners = {rel: layout.owner(rel) for rel in files}
    client = {rel for rel, who in owners.items() if who == layout.CLIENT}
    assert Path("__init__.py") in client and Path("client/__init__.py") in client
    assert Path("handlers.py") not in client and Path("api.py") not in client
    assert set(owners) == set(files)


def module_level_imports(path: Path) -> set[str]:
    """Modules imported when `path` is imported (not those imported inside functions)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def owner_of_module(module: str) -> str | None:
    """The distribution that ships module `clusterpool.a.b` (None: not found)."""
    parts = module.split(".")[1:]
    for candidate in (Path(*parts).with_suffix(".py"), Path(*parts, "__init__.py")) if parts else ():
        if (layout.PACKAGE / candidate).exists():
            return layout.owner(candidate)
    return layout.CLIENT if not parts else None


def test_the_client_distribution_imports_only_what_it_ships_and_never_the_operators_libraries():
    forbidden = {"kopf", "kubernetes", "pydantic", "yaml"}  # the Kubernetes client only inside ConfigMapTable
    problems = []
    for rel in layout.package_files():
        if rel.suffix != ".py" or layout.owner(rel) != layout.CLIENT:
            continue
        for module in module_level_imports(layout.PACKAGE / rel):
            top = module.split(".")[0]
            if top in forbidden or (top == "prometheus_client" and rel.parts[0] != "gateway"):  # [gateway] extra
                problems.append(f"{rel} imports {module}")
            elif top == "clusterpool" and owner_of_module(module) != layout.CLIENT:
                problems.append(f"{rel} imports {module}, which the operator distribution ships")
    assert problems == []


def test_the_client_package_does_not_import_redis_until_pool_cache_is_used():
    assert "clusterpool.client.cache" not in module_level_imports(layout.PACKAGE / "client/__init__.py")
