"""ClusterPool specs that must be accepted, and specs that must be rejected, by both the
CRD (OpenAPI + CEL, checked by the real apiserver) and the pydantic models."""

from typing import Any

EP = [{"name": "a", "address": "127.0.0.2", "port": 8080}, {"name": "b", "address": "127.0.0.3", "port": 8080}]


def static(endpoints: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"discovery": {"static": {"endpoints": endpoints if endpoints is not None else EP}}, **extra}


def etcd(**fields: Any) -> dict[str, Any]:
    return {"discovery": {"etcd": {"endpoints": ["http://etcd:2379"], "prefix": "/services/vllm/", **fields}}}


VALID: dict[str, dict[str, Any]] = {
    "minimal": static(),
    "http-check": static(healthCheck={"intervalSeconds": 5, "timeoutSeconds": 1, "http": {"path": "/v1/models"}}),
    "http-statuses": static(healthCheck={"http": {"expectedStatuses": ["200", "204-299", "401"]}}),
    "tcp-port": static(healthCheck={"tcp": {"port": 9000}}, strategy="LeastConnections"),
    "weights": static([{"name": "a", "address": "llm-a.example", "port": 443, "weight": 1000, "tier": 2}]),
    "https-full": static(
        healthCheck={
            "http": {
                "method": "POST",
                "path": "/v1/health?deep=1",
                "scheme": "HTTPS",
                "insecureSkipVerify": True,
                "headers": [{"name": "Authorization", "value": "Bearer x"}],
                "bodyContains": "ok",
                "keepAlive": False,
            }
        }
    ),
    "composite": static(
        healthCheck={
            "degradedLatencyMilliseconds": 800,
            "composite": {
                "mode": "Majority",
                "checks": [
                    {"name": "api", "http": {}},
                    {"name": "port", "tcp": {}},
                    {"name": "metrics", "tcp": {"port": 9090}},
                ],
            },
        }
    ),
    "failover": static(
        failover={
            "circuitBreaker": {"failureThreshold": 5, "openSeconds": 10, "maxOpenSeconds": 60},
            "maxEjectionPercent": 10,
            "panicThresholdPercent": 0,
            "slowStartSeconds": 30,
            "tiers": {"failoverPercent": 60, "failbackPercent": 90},
        }
    ),
    "cache-memory": static(cache={"type": "Memory", "policy": "LFU", "maxEntries": 500, "maxMegabytes": 64}),
    "cache-layered-write-back": static(
        cache={
            "type": "Layered",
            "writeMode": "WriteBack",
            "writeBack": {"flushIntervalMilliseconds": 200, "maxPending": 1000},
            "version": 3,
            "keyPrefix": "team-a:chat:",
            "redis": {
                "address": "redis.cache:6379",
                "passwordSecretRef": {"name": "redis", "key": "password"},
                "tls": True,
                "insecureSkipVerify": True,
            },
            "warmUp": {"keys": ["greeting"], "fromVersion": 2},
        }
    ),
    "cache-redis-cluster": static(
        cache={"type": "Redis", "ttlSeconds": 60, "redis": {"clusterNodes": ["10.0.0.1:7000", "10.0.0.2:7000"]}}
    ),
    "etcd-minimal": etcd(),
    "etcd-tls-and-user": etcd(
        endpoints=["https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379"],
        username="clusterpool",
        passwordSecretRef={"name": "etcd-user", "key": "password"},
        caSecretRef={"name": "etcd-tls", "key": "ca.crt"},
        certSecretRef={"name": "etcd-tls", "key": "tls.crt"},
        keySecretRef={"name": "etcd-tls", "key": "tls.key"},
    ),
    "etcd-skip-verify": etcd(endpoints=["https://etcd:2379"], insecureSkipVerify=True),
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
    "skip-verify-without-https": static(healthCheck={"http": {"insecureSkipVerify": True}}),
    "bad-method": static(healthCheck={"http": {"method": "DELETE"}}),
    "bad-header-name": static(healthCheck={"http": {"headers": [{"name": "Bad Header", "value": "x"}]}}),
    "path-with-space": static(healthCheck={"http": {"path": "/a b"}}),
    "composite-of-one": static(healthCheck={"composite": {"checks": [{"name": "a", "tcp": {}}]}}),
    "composite-check-with-two": static(
        healthCheck={"composite": {"checks": [{"name": "a", "tcp": {}, "http": {}}, {"name": "b", "tcp": {}}]}}
    ),
    "composite-and-tcp": static(
        healthCheck={"tcp": {}, "composite": {"checks": [{"name": "a", "tcp": {}}, {"name": "b", "tcp": {}}]}}
    ),
    "tier-too-high": static([{"name": "a", "address": "10.0.0.1", "port": 1, "tier": 10}]),
    "open-cap-below-open": static(failover={"circuitBreaker": {"openSeconds": 60, "maxOpenSeconds": 30}}),
    "failback-below-failover": static(failover={"tiers": {"failoverPercent": 70, "failbackPercent": 50}}),
    "ejection-over-100": static(failover={"maxEjectionPercent": 101}),
    "two-sources": {"discovery": {"static": {"endpoints": EP}, "kubernetes": {"service": "vllm"}}},
    "kubernetes-service-and-selector": {
        "discovery": {"kubernetes": {"service": "vllm", "selector": {"matchLabels": {"app": "vllm"}}}}
    },
    "kubernetes-neither": {"discovery": {"kubernetes": {"port": "http"}}},
    "kubernetes-empty-selector": {"discovery": {"kubernetes": {"selector": {"matchLabels": {}}}}},
    "cache-redis-without-redis": static(cache={"type": "Redis"}),
    "cache-memory-with-redis": static(cache={"type": "Memory", "redis": {"address": "redis:6379"}}),
    "cache-no-type": static(cache={"policy": "LRU"}),
    "cache-bad-policy": static(cache={"type": "Memory", "policy": "MRU"}),
    "cache-write-back-not-layered": static(
        cache={"type": "Redis", "writeMode": "WriteBack", "redis": {"address": "redis:6379"}}
    ),
    "cache-redis-address-and-cluster": static(
        cache={"type": "Redis", "redis": {"address": "redis:6379", "clusterNodes": ["redis:7000"]}}
    ),
    "cache-redis-neither": static(cache={"type": "Redis", "redis": {"database": 1}}),
    "cache-cluster-database": static(cache={"type": "Redis", "redis": {"clusterNodes": ["redis:7000"], "database": 2}}),
    "cache-address-without-port": static(cache={"type": "Redis", "redis": {"address": "redis"}}),
    "cache-skip-verify-without-tls": static(
        cache={"type": "Redis", "redis": {"address": "redis:6379", "insecureSkipVerify": True}}
    ),
    "cache-warm-from-same-version": static(cache={"type": "Memory", "version": 4, "warmUp": {"fromVersion": 4}}),
    "cache-ttl-zero": static(cache={"type": "Memory", "ttlSeconds": 0}),
    "consul-ca-without-https": {
        "discovery": {
            "consul": {"address": "http://consul:8500", "service": "vllm", "caSecretRef": {"name": "c", "key": "k"}}
        }
    },
    "cache-ca-without-tls": static(
        cache={"type": "Redis", "redis": {"address": "redis:6379", "caSecretRef": {"name": "ca", "key": "ca.crt"}}}
    ),
    "cache-bad-prefix": static(cache={"type": "Memory", "keyPrefix": "has space"}),
    "etcd-no-endpoints": etcd(endpoints=[]),
    "etcd-endpoint-with-path": etcd(endpoints=["http://etcd:2379/v3"]),
    "etcd-endpoint-without-scheme": etcd(endpoints=["etcd:2379"]),
    "etcd-no-prefix": {"discovery": {"etcd": {"endpoints": ["http://etcd:2379"]}}},
    "etcd-root-prefix": etcd(prefix="/"),
    "etcd-ca-without-https": etcd(caSecretRef={"name": "etcd-tls", "key": "ca.crt"}),
    "etcd-one-endpoint-not-https": etcd(
        endpoints=["https://etcd-0.etcd:2379", "http://etcd-1.etcd:2379"], caSecretRef={"name": "c", "key": "ca.crt"}
    ),
    "etcd-skip-verify-without-https": etcd(insecureSkipVerify=True),
    "etcd-cert-without-key": etcd(
        endpoints=["https://etcd:2379"], certSecretRef={"name": "etcd-tls", "key": "tls.crt"}
    ),
    "etcd-user-without-password": etcd(username="clusterpool"),
    "etcd-password-without-user": etcd(passwordSecretRef={"name": "etcd-user", "key": "password"}),
    "etcd-and-consul": {
        "discovery": {
            "etcd": {"endpoints": ["http://etcd:2379"], "prefix": "/services/vllm/"},
            "consul": {"address": "http://consul:8500", "service": "vllm"},
        }
    },
}
