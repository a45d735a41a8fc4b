"""The names under which the operator publishes a pool, shared by the operator and by the
clients that read what it publishes (the SDK's ConfigMapTable, the gateway): they live in
the client distribution, so a client need not install the operator to know them."""

from __future__ import annotations

ROUTING_SCHEMA_VERSION = 1  # the routing table's schemaVersion (docs/routing-table.md)
ROUTING_KEY = "routing.json"  # the routing ConfigMap's key holding the table
MANAGED_BY = "clusterpool.dev"
POOL_LABEL = "clusterpool.dev/pool"  # on every object published for a pool: its name


def routing_configmap_name(pool: str) -> str:
    return f"{pool}-routing"
