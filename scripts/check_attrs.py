"""Check that no class under operator/ holds more than 12 instance attributes (run by `make lint`).

Counted per class: the distinct names assigned as `self.<name> = ...` (also `+=`, annotated
and unpacking assignments) in the class's own methods, nested functions included, nested
classes counted on their own. Data declarations are not counted: dataclasses, pydantic
models (BaseModel, BaseSettings), NamedTuples and TypedDicts, and classes deriving from
one of those defined under operator/ (matched by name).

Each class over the limit is one line: the file, the line, the class and its count.
Exit status 1 if any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lint_report import report

LIMIT = 12
DATA_BASES = frozenset({"BaseModel", "BaseSettings", "NamedTuple", "TypedDict"})


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    name: str
    count: int

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: class {self.name} assigns {self.count} instance attributes "
            f"(at most {LIMIT}): move a cohesive part into a collaborator of its own"
        )


def _name(node: ast.expr) -> str:
    """The last part of a dotted name (`dataclasses.dataclass` -> dataclass), of a call's callee too."""
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):  # Generic[T], TypedDict bases with parameters
        return _name(node.value)
    return ""


def _classes(tree: ast.AST) -> Iterator[ast.ClassDef]:
    yield from (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef))


def is_data(cls: ast.ClassDef, data: set[str]) -> bool:
    """Whether a class is a dataclass or derives from one of the data declarations named in `data`."""
    return any(_name(d) == "dataclass" for d in cls.decorator_list) or any(_name(b) in data for b in cls.bases)


def data_classes(trees: list[ast.Module]) -> set[str]:
    """The names of the data declarations among these modules' classes, derived ones included."""
    data = set(DATA_BASES)
    classes = [c for tree in trees for c in _classes(tree)]
    grew = True
    while grew:  # a class deriving from a data declaration is one too
        grew = False
        for cls in classes:
            if cls.name not in data and is_data(cls, data):
                data.add(cls.name)
                grew = True
    return data


def _outside_classes(node: ast.AST) -> Iterator[ast.AST]:
    """node and the nodes under it, without the classes defined in it (counted on their own)."""
    todo = [node]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, ast.ClassDef))


def instance_attributes(cls: ast.ClassDef) -> set[str]:
    """The distinct names a class's methods assign on `self` (their first parameter)."""
    names: set[str] = set()
    for method in cls.body:
        if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        params = [*method.args.posonlyargs, *method.args.args]
        static = any(_name(d) == "staticmethod" for d in method.decorator_list)
        if static or not params:
            continue
        owner = params[0].arg
        for node in _outside_classes(method):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == owner
            ):
                names.add(node.attr)
    return names


def check(root: Path, top: str = "operator") -> list[Problem]:
    """Classes under root/top with more than LIMIT instance attributes, in file order."""
    files = sorted((root / top).rglob("*.py"))
    trees = [ast.parse(f.read_text(), filename=str(f)) for f in files]
    data = data_classes(trees)
    problems = []
    for path, tree in zip(files, trees, strict=True):
        for cls in sorted(_classes(tree), key=lambda c: c.lineno):
            if is_data(cls, data):
                continue
            count = len(instance_attributes(cls))
            if count > LIMIT:
                problems.append(Problem(path.relative_to(root), cls.lineno, cls.name, count))
    return problems


ROOT = Path(__file__).resolve().parent.parent


def main(root: Path = ROOT) -> int:
    return report(check(root), f"class(es) hold more than {LIMIT} attributes")


if __name__ == "__main__":
    sys.exit(main())
