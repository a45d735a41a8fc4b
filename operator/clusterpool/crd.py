"""Render the ClusterPool CustomResourceDefinition from the pydantic models in api.py.

    python -m clusterpool.crd > crds/clusterpool.dev_clusterpools.yaml

pydantic's JSON schema is turned into a Kubernetes structural schema: references
inlined, Optional unwrapped, titles dropped, CEL rules and list-map markers kept.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from clusterpool import api

_KEEP = {
    "additionalProperties",
    "maxProperties",
    "minProperties",
    "x-kubernetes-int-or-string",
    "type",
    "description",
    "properties",
    "required",
    "items",
    "enum",
    "default",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def _outer(node: dict[str, Any]) -> dict[str, Any]:
    """The field-level keys that sit next to a $ref or anyOf (description, default...)."""
    return {k: v for k, v in node.items() if k in _KEEP and not (k == "default" and v is None)}


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return {**_structural(target, defs), **_outer(node)}
    if "anyOf" in node:  # Optional[X]: X, since an absent field is how Kubernetes says None
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if sorted(b.get("type", "") for b in branches) == ["integer", "string"]:  # IntOrString
            int_or_string = _outer(node)
            int_or_string.update(
                {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
            )
            return int_or_string
        if len(branches) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']} in a structural schema")
        return {**_structural(branches[0], defs), **_outer(node)}
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):  # a map's values; `false` (extra="forbid") is not structural
                out[key] = _structural(value, defs)
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def _schema(model: type[api.Model]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def build_crd() -> dict[str, Any]:
    spec = _schema(api.ClusterPoolSpec)
    status = _schema(api.ClusterPoolStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": api.CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": api.PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A pool of LLM backends: discovered, health-checked and published for "
                            "clients to balance across.",
                            "required": ["spec"],
                            **api.cel(api.POOL_NAME_RULE),
                            "properties": {
                                "apiVersion": {"type": "string", "description": "APIVersion of this object."},
                                "kind": {"type": "string", "description": "Kind of this object."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated from operator/clusterpool/api.py by `make crd`; do not edit by hand.\n"


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
