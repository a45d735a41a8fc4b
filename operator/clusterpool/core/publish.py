"""What a pool publishes, rendered as plain Kubernetes objects (pure functions).

- a selector-less Service named after the pool;
- EndpointSlices for it holding only the eligible endpoints (one slice per address type
  and port), so any plain Kubernetes client gets failover without the SDK;
- a ConfigMap `<pool>-routing` with the routing table the client SDK follows
  (docs/routing-table.md describes its schema).

Every object carries an ownerReference to the pool (a real cluster's garbage collector
removes them with it; the operator also deletes them explicitly).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from clusterpool import api
from clusterpool.core.cache_settings import CacheSettings, RedisSettings, SecretRef
from clusterpool.core.hedging import HedgePolicy
from clusterpool.core.load import LoadBound, LoadWeights

# isort: off
# Defined in core/names.py for the clients (it ships in clusterpool-client); re-exported here.
from clusterpool.core.names import (
    MANAGED_BY as MANAGED_BY,
    POOL_LABEL as POOL_LABEL,
    ROUTING_KEY as ROUTING_KEY,
    ROUTING_SCHEMA_VERSION as ROUTING_SCHEMA_VERSION,
    routing_configmap_name as routing_configmap_name,
)

# isort: on
from clusterpool.core.pool import PoolState

PORT_NAME = "backend"
OPERATOR = "clusterpool-operator"  # the field manager, the Events' reporter, the objects' managed-by label
SLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"  # which controller fills an EndpointSlice


def address_type(address: str) -> str | None:
    """IPv4, IPv6 or FQDN; None for addresses Kubernetes refuses in an EndpointSlice
    (loopback, link-local, unspecified, multicast; a name that is not a lowercase DNS name
    of at least two labels, as one from Consul's catalog may be)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        name = address.removesuffix(".")  # a fully qualified name may end in a dot
        return "FQDN" if "." in name and re.fullmatch(api.DNS_SUBDOMAIN, name) else None
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return None
    return "IPv4" if ip.version == 4 else "IPv6"


def owner_reference(pool: Mapping[str, Any]) -> dict[str, Any]:
    meta = pool["metadata"]
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }


def _meta(pool: Mapping[str, Any], name: str, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": OPERATOR, POOL_LABEL: pool["metadata"]["name"]}
    labels.update(extra_labels or {})
    return {
        "name": name,
        "namespace": pool["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(pool)],
    }


def service_port(state: PoolState) -> int:
    """The Service's port: the most common endpoint port (selector-less Services route by
    the EndpointSlice port of the same name, so endpoints may still differ)."""
    ports = Counter(ep.port for ep in state.members)
    return ports.most_common(1)[0][0] if ports else 80


def build_service(pool: Mapping[str, Any], state: PoolState) -> dict[str, Any]:
    port = service_port(state)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(pool, pool["metadata"]["name"]),
        "spec": {"ports": [{"name": PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}]},
    }


def build_endpoint_slices(pool: Mapping[str, Any], state: PoolState) -> tuple[list[dict[str, Any]], list[str]]:
    """The slices of the eligible endpoints, and the names of the endpoints whose addresses
    Kubernetes refuses in a slice, eligible or not (so the condition that names them does
    not change, and cost a status write, each time one of them changes health)."""
    name = pool["metadata"]["name"]
    eligible = set(state.decision.eligible) if state.decision else set()
    groups: dict[tuple[str, int], list[str]] = {}
    refused: list[str] = []
    for ep in state.members:
        kind = address_type(ep.address)
        if kind is None:
            refused.append(ep.name)
        elif ep.name in eligible:
            groups.setdefault((kind, ep.port), []).append(ep.address)
    slices = []
    for (kind, port), addresses in sorted(groups.items()):
        slices.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": _meta(
                    pool,
                    f"{name}-{kind.lower()}-{port}",
                    {
                        "kubernetes.io/service-name": name,
                        SLICE_MANAGED_BY_LABEL: MANAGED_BY,
                    },
                ),
                "addressType": kind,
                "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": [a], "conditions": {"ready": True, "serving": True, "terminating": False}}
                    for a in addresses
                ],
            }
        )
    return slices, refused


def build_routing_table(
    pool: Mapping[str, Any], spec: api.ClusterPoolSpec, state: PoolState, models: Sequence[str] = ()
) -> dict[str, Any]:
    """`models`: the model names the pool serves (spec.models less those another pool of the
    namespace holds; core/models.py)."""
    decisions = {d.name: d for d in state.decision.decisions} if state.decision else {}
    cb = spec.failover.circuit_breaker
    table: dict[str, Any] = {
        "schemaVersion": ROUTING_SCHEMA_VERSION,
        "pool": {"namespace": pool["metadata"]["namespace"], "name": pool["metadata"]["name"]},
        "generation": pool["metadata"].get("generation"),
        "strategy": spec.strategy,
        "activeTier": state.decision.active_tier if state.decision else 0,
        "panic": state.decision.panic if state.decision else False,
        "circuitBreaker": {
            "failureThreshold": cb.failure_threshold or spec.health_check.unhealthy_threshold,
            "openSeconds": cb.open_seconds,
            "maxOpenSeconds": cb.max_open_seconds,
            "halfOpenMaxProbes": cb.half_open_max_probes,
            "successThreshold": cb.success_threshold,
        },
        "endpoints": [
            {
                "name": ep.name,
                "address": ep.address,
                "port": ep.port,
                "tier": ep.tier,
                "weight": ep.weight,
                "effectiveWeight": decisions[ep.name].effective_weight if ep.name in decisions else 0,
                "eligible": decisions[ep.name].eligible if ep.name in decisions else False,
                "health": state.health.of(ep.name).health,
                "breaker": state.breaker(ep.name).state,
                "labels": dict(ep.labels),
                "capacity": ep.capacity,
            }
            for ep in state.members
        ],
        "cache": cache_settings(spec, pool["metadata"]["namespace"], pool["metadata"]["name"]),
        "models": list(models),
    }
    if table["cache"] is not None:
        table["cache"] = table["cache"].to_json()
    if spec.engine is not None:  # only when set, so tables of pools without one keep their revision
        table["engine"] = spec.engine
    if spec.hedging is not None:  # likewise
        h = spec.hedging
        table["hedging"] = HedgePolicy(h.after_milliseconds / 1000, h.max_hedges).to_json()
    for key, tuning in load_tuning(spec).items():  # likewise
        table[key] = tuning.to_json()
    table["revision"] = hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:16]
    return table


def load_tuning(spec: api.ClusterPoolSpec) -> dict[str, LoadWeights | LoadBound]:
    """The routing table's `leastLoaded` (LoadWeights) and `prefixAffinity` (LoadBound), from
    spec.leastLoaded and spec.prefixAffinity (in hundredths and percent there), for those set."""
    out: dict[str, LoadWeights | LoadBound] = {}
    if spec.least_loaded is not None:
        w = spec.least_loaded.weights_percent
        out["leastLoaded"] = LoadWeights(w.waiting / 100, w.running / 100, w.kv_usage / 100, w.in_flight / 100,
                                         w.latency / 100)  # fmt: skip
    if spec.prefix_affinity is not None:
        b = spec.prefix_affinity.load_bound
        out["prefixAffinity"] = LoadBound(b.waiting, b.kv_usage_percent / 100, b.in_flight_percent_of_mean / 100)
    return out


def build_routing_configmap(pool: Mapping[str, Any], table: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(pool, routing_configmap_name(pool["metadata"]["name"])),
        "data": {ROUTING_KEY: json.dumps(table, indent=2, sort_keys=True) + "\n"},
    }


def default_key_prefix(namespace: str, name: str) -> str:
    return f"clusterpool:{namespace}/{name}:"


def cache_settings(spec: api.ClusterPoolSpec, namespace: str, name: str) -> CacheSettings | None:
    """spec.cache as the clients read it (the routing table's `cache`)."""
    c = spec.cache
    if c is None:
        return None
    redis = None
    if c.redis is not None:
        ref, ca = c.redis.password_secret_ref, c.redis.ca_secret_ref
        redis = RedisSettings(
            address=c.redis.address,
            cluster_nodes=tuple(c.redis.cluster_nodes or ()),
            database=c.redis.database,
            username=c.redis.username,
            password_secret=SecretRef(namespace, ref.name, ref.key) if ref else None,
            tls=c.redis.tls,
            insecure_skip_verify=c.redis.insecure_skip_verify,
            ca_secret=SecretRef(namespace, ca.name, ca.key) if ca else None,
            timeout_milliseconds=c.redis.timeout_milliseconds,
        )
    return CacheSettings(
        type=c.type,
        version=c.version,
        key_prefix=c.key_prefix or default_key_prefix(namespace, name),
        policy=c.policy,
        max_entries=c.max_entries,
        max_bytes=c.max_megabytes << 20 if c.max_megabytes else None,
        ttl_seconds=c.ttl_seconds,
        write_mode=c.write_mode,
        flush_interval_milliseconds=c.write_back.flush_interval_milliseconds,
        max_pending=c.write_back.max_pending,
        redis=redis,
        warm_up_keys=tuple(c.warm_up.keys) if c.warm_up else (),
    )
