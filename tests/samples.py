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
    "hedging": static(hedging={"afterMilliseconds": 800}),
    "models": static(models=["llama-3-8b", "meta-llama/Llama-3.1-8B-Instruct", "qwen2.5:7b", "gpt-4o@2024+x"]),
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
    "labels-and-capacity": static(
        [
            {
                "name": "a",
                "address": "127.0.0.2",
                "port": 8080,
                "labels": {"model": "llama-3-8b", "example.com/zone": "eu-1a", "role": "", "gpu_type": "A100.80GB"},
                "capacity": 8,
            },
            {"name": "b", "address": "127.0.0.3", "port": 8080, "labels": {}, "capacity": 1000000},
        ]
    ),
    "labels-longest": static(
        [
            {
                "name": "a",
                "address": "127.0.0.2",
                "port": 8080,
                "labels": {f"{'p' * 253}/{'n' * 63}": "v" * 63, **{f"k{i}": str(i) for i in range(15)}},
            }
        ]
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
        cache={"type": "Redis", "ttlSeconds": 60, "redis": {"clusterNodes": ["198.18.0.1:7000", "198.18.0.2:7000"]}}
    ),
    "addresses-ipv6-and-dns": static(
        [
            {"name": "a", "address": "fd00::7", "port": 8080},
            {"name": "b", "address": "llm-b.models.svc.cluster.local", "port": 65535},
            {"name": "c", "address": "vllm", "port": 1},
        ]
    ),
    "kubernetes-selector-and-port-name": {
        "discovery": {
            "kubernetes": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "vLLM_1.x", "tier": ""}},
                "port": "http-2",
            }
        }
    },
    "kubernetes-port-number": {"discovery": {"kubernetes": {"service": "vllm", "port": 8000}}},
    "consul-ipv6-and-names": {
        "discovery": {
            "consul": {
                "address": "https://[fd00::8]:8501",
                "service": "vLLM_chat.v1",
                "datacenter": "dc-1",
                "tags": ["team a", "gpu=h100"],
                "tokenSecretRef": {"name": "consul.token", "key": "token_v1.txt"},
                "caSecretRef": {"name": "consul-ca", "key": "ca.crt"},
            }
        }
    },
    "probe-headers-and-query": static(
        healthCheck={
            "http": {
                "path": "/v1/models?limit=1&x=%20",
                "headers": [{"name": "X-Api-Key", "value": "Bearer a b/c=="}, {"name": "User-Agent", "value": "me"}],
            }
        }
    ),
    "redis-bracketed-ipv6": static(
        cache={"type": "Redis", "redis": {"address": "[fd00::9]:6379", "username": "app-user"}}
    ),
    "engine-prefix-affinity": static(engine="vLLM", strategy="PrefixAffinity", healthCheck={"http": {}}),
    "engine-ollama-least-loaded": static(engine="Ollama", strategy="LeastLoaded"),
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


def redis(**redis_spec: Any) -> dict[str, Any]:
    return static(cache={"type": "Redis", "redis": redis_spec})


def consul(**consul_spec: Any) -> dict[str, Any]:
    return {"discovery": {"consul": {"address": "http://consul:8500", "service": "vllm", **consul_spec}}}


def http(**check: Any) -> dict[str, Any]:
    return static(healthCheck={"http": check})


# Values that are not an IP address or a lowercase DNS name.
ADDRESSES = {
    "url": "http://llm-a.example",
    "with-port": "llm-a.example:8080",
    "ipv4-with-port": "198.18.0.7:8080",
    "with-space": "llm a",
    "with-path": "llm-a/v1",
    "uppercase": "LLM-A.example",
    "underscore": "llm_a",
    "trailing-dot": "llm-a.",
    "leading-dash": "-llm",
    "bracketed-ipv6": "[fd00::7]",
    "ipv6-bad": "fd00:::7:::",
    "ipv6-zone": "fe80::1%eth0",
    "ipv4-mapped-ipv6": "::ffff:198.18.0.7",
    "crlf": "llm\r\nx",
    "empty": "",
}
HOST_PORTS = {
    "port-zero": "redis:0",
    "port-too-big": "redis:65536",
    "port-five-nines": "redis:99999",
    "url": "redis://redis:6379",
    "ipv6-unbracketed": "fd00::9:6379",
    "ipv6-bracket-bad": "[fd00:::9::]:6379",
    "space": "red is:6379",
    "with-path": "redis/0:6379",
}
CONSUL_URLS = {
    "no-scheme": "consul:8500",
    "with-path": "http://consul:8500/v1",
    "with-query": "http://consul:8500?token=x",
    "port-too-big": "http://consul:85000",
    "userinfo": "http://user:pw@consul:8500",
    "other-scheme": "ftp://consul:8500",
    "crlf": "http://consul:8500\r\nX: y",
}

# metadata.name values a pool cannot have: its Service and ConfigMap are named after it.
INVALID_NAMES = {
    "dotted": "llm.pool",
    "leading-digit": "1pool",
    "too-long-for-a-service": "p" * 64,
    "uppercase": "LLMPool",
}


INVALID: dict[str, dict[str, Any]] = {
    "engine-unknown": static(engine="vllm"),
    "strategy-unknown": static(strategy="Random"),
    "hedging-without-after": static(hedging={"maxHedges": 1}),
    "hedging-after-zero": static(hedging={"afterMilliseconds": 0}),
    "hedging-too-many": static(hedging={"afterMilliseconds": 500, "maxHedges": 5}),
    "no-source": {"discovery": {}},
    "model-with-space": static(models=["llama 3"]),
    "model-empty": static(models=[""]),
    "model-leading-dash": static(models=["-llama"]),
    "model-too-long": static(models=["m" * 254]),
    "model-twice": static(models=["llama-3-8b", "qwen", "llama-3-8b"]),
    "too-many-models": static(models=[f"m-{i}" for i in range(65)]),
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
    "tier-too-high": static([{"name": "a", "address": "198.18.0.1", "port": 1, "tier": 10}]),
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
    "label-key-with-space": static([{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {"my model": "x"}}]),
    "label-key-empty": static([{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {"": "x"}}]),
    "label-key-two-slashes": static([{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {"a/b/c": "x"}}]),
    "label-key-uppercase-prefix": static(
        [{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {"Example.com/zone": "x"}}]
    ),
    "label-name-too-long": static([{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {"n" * 64: "x"}}]),
    "label-prefix-too-long": static(
        [{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {f"{'p' * 254}/zone": "x"}}]
    ),
    "label-value-too-long": static([{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {"model": "v" * 64}}]),
    "label-value-bad-character": static(
        [{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {"model": "llama/3"}}]
    ),
    "label-value-ends-with-dash": static(
        [{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {"model": "llama-"}}]
    ),
    "labels-too-many": static(
        [{"name": "a", "address": "127.0.0.2", "port": 1, "labels": {f"k{i}": "v" for i in range(17)}}]
    ),
    "capacity-zero": static([{"name": "a", "address": "127.0.0.2", "port": 1, "capacity": 0}]),
    "capacity-too-big": static([{"name": "a", "address": "127.0.0.2", "port": 1, "capacity": 1000001}]),
    "cache-bad-prefix": static(cache={"type": "Memory", "keyPrefix": "has space"}),
    # --- strings the operator turns into sockets, URLs, request lines and object names
    **{f"address-{k}": static([{"name": "a", "address": v, "port": 80}]) for k, v in ADDRESSES.items()},
    **{f"redis-address-{k}": redis(address=v) for k, v in HOST_PORTS.items()},
    "redis-cluster-node-port-zero": redis(clusterNodes=["redis-0:7000", "redis-1:0"]),
    "redis-cluster-node-url": redis(clusterNodes=["redis://redis-0:7000"]),
    "redis-username-with-space": redis(address="redis:6379", username="app user"),
    "redis-password-secret-bad-name": redis(
        address="redis:6379", passwordSecretRef={"name": "Redis_Auth", "key": "password"}
    ),
    "redis-password-secret-bad-key": redis(
        address="redis:6379", passwordSecretRef={"name": "redis", "key": "pass/word"}
    ),
    "redis-ca-secret-empty-key": redis(address="redis:6379", tls=True, caSecretRef={"name": "ca", "key": ""}),
    **{f"consul-address-{k}": consul(address=v) for k, v in CONSUL_URLS.items()},
    "consul-service-with-slash": consul(service="vllm/../../v1/acl"),
    "consul-service-with-query": consul(service="vllm?dc=other"),
    "consul-datacenter-with-space": consul(datacenter="dc 1"),
    "consul-namespace-with-slash": consul(namespace="team/a"),
    "consul-partition-leading-dash": consul(partition="-p"),
    "consul-tag-with-newline": consul(tags=["a\nb"]),
    "consul-token-secret-bad-name": consul(tokenSecretRef={"name": "Consul Token", "key": "token"}),
    "consul-token-secret-bad-key": consul(tokenSecretRef={"name": "consul", "key": "to ken"}),
    "consul-publish-bad-service": static(publish={"consul": {"address": "http://consul:8500", "service": "a b"}}),
    "consul-publish-bad-address": static(publish={"consul": {"address": "consul:8500"}}),
    "kubernetes-service-leading-digit": {"discovery": {"kubernetes": {"service": "1vllm"}}},
    "kubernetes-service-dotted": {"discovery": {"kubernetes": {"service": "vllm.models"}}},
    "kubernetes-port-zero": {"discovery": {"kubernetes": {"service": "vllm", "port": 0}}},
    "kubernetes-port-too-big": {"discovery": {"kubernetes": {"service": "vllm", "port": 65536}}},
    "kubernetes-port-name-too-long": {"discovery": {"kubernetes": {"service": "vllm", "port": "http-metrics-api"}}},
    "kubernetes-port-name-digits-only": {"discovery": {"kubernetes": {"service": "vllm", "port": "8080"}}},
    "kubernetes-port-name-double-dash": {"discovery": {"kubernetes": {"service": "vllm", "port": "http--api"}}},
    "kubernetes-port-name-upper": {"discovery": {"kubernetes": {"service": "vllm", "port": "HTTP"}}},
    "kubernetes-label-key-with-space": {"discovery": {"kubernetes": {"selector": {"matchLabels": {"a b": "x"}}}}},
    "kubernetes-label-key-bad-prefix": {
        "discovery": {"kubernetes": {"selector": {"matchLabels": {"Example.com/app": "x"}}}}
    },
    "kubernetes-label-value-with-comma": {"discovery": {"kubernetes": {"selector": {"matchLabels": {"app": "a,b=c"}}}}},
    "kubernetes-label-value-too-long": {"discovery": {"kubernetes": {"selector": {"matchLabels": {"app": "a" * 64}}}}},
    "probe-path-with-crlf": http(path="/health\r\nX-Injected: 1"),
    "probe-path-with-tab": http(path="/health\tx"),
    "probe-path-non-ascii": http(path="/gesundheit\u00e4"),
    "probe-path-absolute-url": http(path="http://evil.example/health"),
    "probe-header-value-crlf": http(headers=[{"name": "X-A", "value": "ok\r\nX-Injected: 1"}]),
    "probe-header-value-lf": http(headers=[{"name": "X-A", "value": "ok\nmore"}]),
    "probe-header-value-nul": http(headers=[{"name": "X-A", "value": "a\u0000b"}]),
    "probe-header-name-colon": http(headers=[{"name": "X-A:", "value": "x"}]),
    "probe-header-name-crlf": http(headers=[{"name": "X-A\r\nX-B", "value": "x"}]),
    "probe-header-host": http(headers=[{"name": "Host", "value": "other"}]),
    "probe-header-content-length": http(headers=[{"name": "content-length", "value": "5"}]),
    "probe-header-transfer-encoding": http(headers=[{"name": "Transfer-Encoding", "value": "chunked"}]),
    "probe-header-duplicate": http(headers=[{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]),
    "probe-port-too-big": http(port=70000),
    "composite-header-crlf": static(
        healthCheck={
            "composite": {
                "checks": [
                    {"name": "a", "http": {"headers": [{"name": "X-A", "value": "\r\n"}]}},
                    {"name": "b", "tcp": {}},
                ]
            }
        }
    ),
    "tcp-port-zero": static(healthCheck={"tcp": {"port": 0}}),
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
