from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin

import pytest
import yaml
from pydantic import ValidationError

from clusterpool import api
from clusterpool.crd import build_crd, render
from samples import INVALID, VALID

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "clusterpool.dev_clusterpools.yaml"


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_samples_parse(name):
    api.parse_spec(VALID[name])


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_samples_are_rejected(name):
    with pytest.raises(ValidationError):
        api.parse_spec(INVALID[name])


def test_errors_name_the_field_and_the_fix():
    with pytest.raises(ValidationError) as exc:
        api.parse_spec(INVALID["timeout-not-below-interval"])
    msg = api.spec_errors(exc.value)
    assert msg.startswith("spec.discovery") is False
    assert "spec.healthCheck" in msg and "timeoutSeconds must be less than intervalSeconds" in msg
    with pytest.raises(ValidationError) as exc:
        api.parse_spec(INVALID["port-zero"])
    assert "spec.discovery.static.endpoints.0.port" in api.spec_errors(exc.value)


def test_defaults():
    spec = api.parse_spec(VALID["minimal"])
    assert spec.strategy == "RoundRobin"
    assert spec.health_check.tcp is not None and spec.health_check.http is None
    assert (spec.health_check.interval_seconds, spec.health_check.timeout_seconds) == (10, 2)
    assert spec.discovery.static is not None and spec.discovery.static.endpoints[0].weight == 1


def test_http_expected_statuses():
    check = api.parse_spec(VALID["http-statuses"]).health_check.http
    assert check is not None
    assert [s for s in (199, 200, 201, 204, 250, 299, 300, 401, 404) if check.accepts(s)] == [200, 204, 250, 299, 401]


def test_committed_crd_is_generated_from_the_models():
    assert CRD_FILE.read_text() == render(), "crds/ is stale: run `make crd`"
    chart_copy = ROOT / "charts" / "clusterpool-operator" / "files" / "crds" / CRD_FILE.name
    assert chart_copy.read_text() == render(), "the Helm chart's files/crds/ is stale: run `make crd`"


def _walk(schema, path="openAPIV3Schema"):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_crd_schema_is_documented_and_bounded():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if path.endswith(".metadata") or (path.endswith("[]") and node.get("type") != "object"):
            continue  # kubectl explain shows a list's own description for its scalar items
        assert node.get("description"), f"{path} has no description (kubectl explain shows nothing)"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type (not structural)"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} is an unbounded list"
        if node.get("type") == "string" and path.count(".") > 1 and "enum" not in node and "format" not in node:
            assert "maxLength" in node, f"{path} is an unbounded string"


def test_crd_has_printer_columns_and_status_subresource():
    version = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready",
        "Healthy",
        "Total",
        "Ejected",
        "Strategy",
        "Source",
        "Age",
        "Tier",
        "Panic",
        "Cache",
        "Driven-By",
        "Models",
        "Waiting",
        "Load-Read",
    ]
    wide = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert wide["Waiting"]["priority"] == 1 and wide["Load-Read"]["type"] == "date"  # age, in -o wide
    assert version["subresources"] == {"status": {}}


def test_crd_and_model_declare_the_same_fields():
    """Every field of the pydantic models is in the CRD under its camelCase name, and back."""
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]

    def unwrap(ann):
        """(the model inside an annotation or None, whether it is a list of them)"""
        if get_origin(ann) is list:
            return unwrap(get_args(ann)[0])[0], True
        if get_origin(ann) in (Union, UnionType):
            return unwrap(next(a for a in get_args(ann) if a is not type(None)))
        return (ann if isinstance(ann, type) and issubclass(ann, api.Model) else None), False

    def model_paths(model, prefix):
        for name, field in model.model_fields.items():
            path = f"{prefix}.{field.alias or name}"
            yield path
            sub, is_list = unwrap(field.annotation)
            if sub is not None:
                yield from model_paths(sub, path + ("[]" if is_list else ""))

    crd_paths = {p for p, _ in _walk(schema["spec"], "spec")} | {p for p, _ in _walk(schema["status"], "status")}
    crd_fields = {p for p in crd_paths if not p.endswith("[]") and p not in ("spec", "status")}
    assert "spec.discovery.static.endpoints[].port" in crd_fields
    model_fields = set(model_paths(api.ClusterPoolSpec, "spec")) | set(model_paths(api.ClusterPoolStatus, "status"))
    assert model_fields == crd_fields
