"""scripts/check_attrs.py (part of `make lint`): a class under operator/ assigning more than
12 distinct `self.<name>` attributes fails, named with its file, line and count; data
declarations (dataclasses, pydantic models, NamedTuples, TypedDicts) and nested classes'
attributes do not count against a class."""

from pathlib import Path

import check_attrs


def assigning(name: str, count: int, base: str = "", decorator: str = "", start: int = 0) -> str:
    body = "".join(f"        self.a{i} = {i}\n" for i in range(start, start + count))
    return f"{decorator}class {name}{base}:\n    def __init__(self):\n{body or '        pass'}\n"


def problems(tmp_path: Path, source: str) -> list[str]:
    (tmp_path / "operator" / "pkg").mkdir(parents=True, exist_ok=True)
    (tmp_path / "operator" / "pkg" / "mod.py").write_text(source)
    return [str(p) for p in check_attrs.check(tmp_path)]


def test_a_class_of_twelve_attributes_passes_and_one_of_thirteen_is_named(tmp_path):
    source = assigning("Small", 12) + "\n\n" + assigning("Big", 13)
    found = problems(tmp_path, source)
    assert len(found) == 1
    assert found[0].startswith("operator/pkg/mod.py:18: class Big assigns 13 instance attributes")


def test_each_name_counts_once_whichever_method_or_form_assigns_it(tmp_path):
    source = (
        "class Counted:\n"
        "    def __init__(self):\n" + "".join(f"        self.a{i} = {i}\n" for i in range(10)) + "    def later(me):\n"
        "        me.a0 += 1\n"
        "        me.b, me.c = 1, 2\n"
        "        me.d: int = 3\n"
        "        def inner():\n"
        "            me.a1 = 2\n"
        "        other = object()\n"
        "        other.e = 1\n"
    )
    assert [p.split(": class ")[1][:29] for p in problems(tmp_path, source)] == ["Counted assigns 13 instance a"]


def test_data_declarations_and_nested_classes_are_not_counted(tmp_path):
    source = (
        "from dataclasses import dataclass\n"
        "import dataclasses\n"
        "from pydantic import BaseModel\n"
        "from typing import NamedTuple, TypedDict\n"
        + assigning("Frozen", 14, decorator="@dataclass(frozen=True)\n")
        + assigning("Plain", 14, decorator="@dataclasses.dataclass\n")
        + assigning("Model", 14, base="(BaseModel)")
        + assigning("Derived", 14, base="(Model)")
        + assigning("Pair", 14, base="(NamedTuple)")
        + assigning("Dict", 14, base="(TypedDict)")
        + "class Outer:\n    def __init__(self):\n        self.a = 1\n"
        + "        class Inner:\n            def __init__(self):\n"
        + "".join(f"                self.b{i} = {i}\n" for i in range(12))
    )
    assert problems(tmp_path, source) == []


def test_the_check_exits_1_and_prints_each_class_over_the_limit(tmp_path, capsys):
    problems(tmp_path, assigning("Big", 13))
    assert check_attrs.main(tmp_path) == 1
    assert "class Big assigns 13" in capsys.readouterr().err
    problems(tmp_path, assigning("Big", 12))
    assert check_attrs.main(tmp_path) == 0
