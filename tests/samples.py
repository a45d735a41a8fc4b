"""ClusterPool specs that must be accepted, and specs that must be rejected, by both the
CRD (OpenAPI + CEL, checked by the real apiserver) and the pydantic models."""

from typing import Any

EP = [{"name": "a", "address": "127.0.0.2", "port": 8080}, {"name": "b", "address": "127.0.0.3", "port": 8080}]


def static(endpoints: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"discovery": {"static": {"endpoints": endpoints if endpoints is not None else EP}}, **extra}


VALID: dict[str, dict[str, Any]] = {
    "minimal": static(),
    "http-check": static(healthCheck={"intervalSeconds": 5, "timeoutSeconds": 1, "http": {"path": "/v1/models"}}),
    "http-statuses": static(healthCheck={"http": {"expectedStatuses": ["200", "204-299", "401"]}}),
    "tcp-port": static(healthCheck={"tcp": {"port": 9000}}, strategy="LeastConnections"),
    "weights": static([{"name": "a", "address": "llm-a.example", "port": 443, "weight": 1000}]),
}

INVALID: dict[str, dict[str, Any]] = {
    "no-source": {"discovery": {}},
    "empty-endpoints": static([]),
    "bad-name": static([{"name": "Not_A_Label", "address": "127.0.0.2", "port": 1}]),
    "port-zero": static([{"name": "a", "address": "127.0.0.2", "port": 0}]),
    "weight-too-big": static([{"name": "a", "address": "127.0.0.2", "port": 1, "weight": 1001}]),
    "duplicate-address": static(
        [{"name": "a", "address": "127.0.0.2", "port": 1}, {"name": "b", "address": "127.0.0.2", "port": 1}]
    ),
    "duplicate-name": static(
        [{"name": "a", "address": "127.0.0.2", "port": 1}, {"name": "a", "address": "127.0.0.3", "port": 1}]
    ),
    "unknown-strategy": static(strategy="Random"),
    "timeout-not-below-interval": static(healthCheck={"intervalSeconds": 2, "timeoutSeconds": 2, "tcp": {}}),
    "two-checks": static(healthCheck={"http": {}, "tcp": {}}),
    "no-check": static(healthCheck={"intervalSeconds": 5}),
    "path-without-slash": static(healthCheck={"http": {"path": "health"}}),
    "status-range-reversed": static(healthCheck={"http": {"expectedStatuses": ["299-200"]}}),
    "status-not-a-code": static(healthCheck={"http": {"expectedStatuses": ["2xx"]}}),
    "threshold-zero": static(healthCheck={"unhealthyThreshold": 0, "tcp": {}}),
}
