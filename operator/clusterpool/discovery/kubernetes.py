"""Kubernetes discovery: EndpointSlices -> pool members (pure; the watch lives in the wiring).

Rules, as kube-proxy reads slices:
- the slices are those labelled `kubernetes.io/service-name=<service>`, or those matching
  the selector, in the pool's namespace; slices the operator itself publishes are ignored;
- the port is the slice port with the given name, or with the given number (the target
  port); with no port given, the slices' only port;
- an endpoint is a member when `ready` is not false ("source-ready"); a not-ready one is
  listed but never eligible; terminating endpoints are left out unless no endpoint is
  ready, then those still `serving` are used (kube-proxy's terminating fallback);
- each address is one member, named after its Pod (targetRef) or its address;
- labels (docs/labels.md): the slice's own labels, which the EndpointSlice
  controller copies from the Service's, without the machinery's (`kubernetes.io/...`,
  `endpointslice.kubernetes.io/...`, `service.kubernetes.io/...`), plus what each endpoint
  says of itself: `topology.kubernetes.io/zone` (its zone), `clusterpool.dev/node` (its
  nodeName) and `clusterpool.dev/hostname` (its hostname); the slice label
  `clusterpool.dev/capacity` is the capacity of each of its endpoints. Pod labels are not
  read: that would take pods get/list/watch, which the operator does not have.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from clusterpool.api import KubernetesDiscovery
from clusterpool.core.health import Endpoint
from clusterpool.core.labels import Labels, parse_capacity, valid_labels
from clusterpool.core.publish import MANAGED_BY, SLICE_MANAGED_BY_LABEL

SERVICE_LABEL = "kubernetes.io/service-name"
CAPACITY_LABEL = "clusterpool.dev/capacity"
ZONE_LABEL = "topology.kubernetes.io/zone"
NODE_LABEL = "clusterpool.dev/node"
HOSTNAME_LABEL = "clusterpool.dev/hostname"
MACHINERY_PREFIXES = ("kubernetes.io/", "endpointslice.kubernetes.io/", "service.kubernetes.io/")


def selects(spec: KubernetesDiscovery, labels: Mapping[str, str]) -> bool:
    if labels.get(SLICE_MANAGED_BY_LABEL) == MANAGED_BY:
        return False
    if spec.service is not None:
        return labels.get(SERVICE_LABEL) == spec.service
    assert spec.selector is not None
    return all(labels.get(k) == v for k, v in spec.selector.match_labels.items())


def _port(slice_: Mapping[str, Any], want: int | str | None) -> int | None:
    ports = slice_.get("ports") or []
    if want is None:
        return int(ports[0]["port"]) if len(ports) == 1 and ports[0].get("port") else None
    for p in ports:
        if (isinstance(want, str) and p.get("name") == want) or (isinstance(want, int) and p.get("port") == want):
            return int(p["port"])
    return None


_LABEL = re.compile(r"[^a-z0-9-]+")


def member_name(endpoint: Mapping[str, Any], address: str) -> str:
    ref = endpoint.get("targetRef") or {}
    base = ref.get("name") if ref.get("kind") == "Pod" and ref.get("name") else address
    name = _LABEL.sub("-", str(base).lower()).strip("-") or "ep"
    if len(name) > 63:
        name = name[:54].rstrip("-") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def slice_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a slice gives each of its endpoints: its own, without the machinery's."""
    return {
        k: v for k, v in labels.items() if k != CAPACITY_LABEL and not any(k.startswith(p) for p in MACHINERY_PREFIXES)
    }


def endpoint_labels(common: Mapping[str, str], endpoint: Mapping[str, Any]) -> Labels:
    own = {
        ZONE_LABEL: endpoint.get("zone"),
        NODE_LABEL: endpoint.get("nodeName"),
        HOSTNAME_LABEL: endpoint.get("hostname"),
    }
    labels, _ = valid_labels({**common, **{k: str(v) for k, v in own.items() if v}})
    return labels


def members_from_slices(spec: KubernetesDiscovery, slices: Iterable[Mapping[str, Any]]) -> tuple[Endpoint, ...]:
    ready: dict[str, Endpoint] = {}
    not_ready: dict[str, Endpoint] = {}
    terminating: dict[str, Endpoint] = {}
    for s in slices:
        labels = (s.get("metadata") or {}).get("labels") or {}
        if not selects(spec, labels):
            continue
        port = _port(s, spec.port)
        if port is None:
            continue
        common = slice_labels(labels)
        capacity = parse_capacity(labels[CAPACITY_LABEL]) if CAPACITY_LABEL in labels else None
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            own = endpoint_labels(common, ep)
            for address in ep.get("addresses") or []:
                name = member_name(ep, address)
                if len(ep.get("addresses") or []) > 1:
                    name = member_name({}, f"{name}-{address}")
                if cond.get("terminating"):
                    if cond.get("serving", cond.get("ready")) is not False:
                        terminating[name] = Endpoint(
                            name, address, port, terminating=True, labels=own, capacity=capacity
                        )
                elif cond.get("ready") is False:
                    not_ready[name] = Endpoint(name, address, port, source_ready=False, labels=own, capacity=capacity)
                else:
                    ready[name] = Endpoint(name, address, port, labels=own, capacity=capacity)
    chosen = ready if ready else terminating
    members = {**not_ready, **chosen}
    return tuple(members[n] for n in sorted(members))
