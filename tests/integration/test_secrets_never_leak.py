"""A canary in every Secret the operator and the SDK read (the Redis password, Redis and
Consul CA bundles, the Consul ACL token), used on the good paths and the failing ones
(a wrong password, a CA bundle that is not one): with the operator logging at debug
level and the SDK's loggers at DEBUG, the canary appears nowhere a user or another
tenant could read it: the operator's log, pool status, Events, the metrics scrape, the
routing ConfigMaps, Consul's catalog, or the messages of exceptions the SDK raises."""

import base64
import json
import logging
import urllib.request
import uuid

import httpx
import pytest
import redis

import consul as consul_script
import controlplane
from backends import free_port
from conftest import endpoints_of, wait_for

CANARY = f"canary{uuid.uuid4().hex}"
NOT_A_CA = f"-----BEGIN CERTIFICATE-----\n{CANARY}-ca\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def verbose_operator(operator):
    """The session's operator, restarted with --verbose (debug logging) for this module."""
    args = operator.args
    operator.stop()
    operator.args = (*args, "--verbose")
    operator.start()
    yield operator
    operator.stop()
    operator.args = args
    operator.start()


@pytest.fixture
def consul_with_acls(tmp_path):
    """A real Consul agent that enforces ACLs (default deny), over http and https; its
    management token and its CA are canaries too."""
    certs = tmp_path / "consul-certs"
    certs.mkdir()
    controlplane.make_certs(certs)
    tls = (str(certs / "apiserver.crt"), str(certs / "apiserver.key"), str(certs / "ca.crt"))
    agent = consul_script.up(tmp_path / "consul", http_port=free_port(), tls=tls, acl_token=f"{CANARY}-consul")
    agent.ca_pem = (certs / "ca.crt").read_text()
    yield agent
    consul_script.down(agent)


def forms(value):
    """The ways a Secret's value could leak: as it is, and as the API carries it (base64)."""
    return {value, base64.b64encode(value.encode()).decode()}


def assert_no_canary(where, text, secrets):
    assert CANARY not in text, f"the canary leaked into {where}"
    for value in secrets:
        for form in forms(value):
            assert form not in text, f"a Secret's value leaked into {where} (as {form[:12]}...)"


def spec(backends, **extra):
    return {
        "discovery": {"static": {"endpoints": endpoints_of(backends)}},
        "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "healthyThreshold": 1, "tcp": {}},
        **extra,
    }


def condition(pools, pool, type_, want):
    return wait_for(
        lambda: (c := pools.condition(pool, type_)).get("status") == want and c,
        40,
        f"{pool}: {type_}={want}",
    )


def test_the_canary_in_every_secret_never_leaks(
    verbose_operator, consul_with_acls, redis_server, tcp_backends, pools, k8s, caplog
):
    """(Consul and Redis are asked for before `pools`: they must outlive the pools' cleanup.)"""
    from clusterpool.client import ConfigMapTable, PoolCache, secret_from_api

    caplog.set_level(logging.DEBUG)
    secrets = {
        "redis-password": f"{CANARY}-redis",
        "redis-wrong-password": f"{CANARY}-wrong",
        "redis-ca": f"# {CANARY}-comment\n",  # completed with the real CA below
        "redis-not-a-ca": NOT_A_CA,
        "consul-token": f"{CANARY}-consul",
        "consul-wrong-token": f"{CANARY}-not-the-token",
        "consul-ca": f"# {CANARY}-comment\n{consul_with_acls.ca_pem}",
        "consul-not-a-ca": NOT_A_CA,
    }
    plain = redis_server(password=secrets["redis-password"])
    tls = redis_server(password=secrets["redis-password"], tls=True)
    secrets["redis-ca"] += (tls.dir / "ca.crt").read_text()
    for name, value in secrets.items():
        pools.core.create_namespaced_secret(pools.namespace, {"metadata": {"name": name}, "stringData": {"v": value}})

    def ref(name):
        return {"name": name, "key": "v"}

    backends = tcp_backends(1)
    redis_pools = {
        "redis-ok": {"address": plain.address, "passwordSecretRef": ref("redis-password")},
        "redis-wrong": {"address": plain.address, "passwordSecretRef": ref("redis-wrong-password")},
        "redis-tls": {
            "address": tls.address,
            "tls": True,
            "passwordSecretRef": ref("redis-password"),
            "caSecretRef": ref("redis-ca"),
        },
        "redis-bad-ca": {"address": tls.address, "tls": True, "caSecretRef": ref("redis-not-a-ca")},
    }
    for name, r in redis_pools.items():
        pools.create(name, spec(backends, cache={"type": "Layered", "redis": r}))
    consul = {"address": consul_with_acls.http, "tokenSecretRef": ref("consul-token")}
    httpx.put(
        f"{consul_with_acls.http}/v1/agent/service/register",
        json={"ID": "leak-0", "Name": "leak", "Address": backends[0].host, "Port": backends[0].port},
        headers={"X-Consul-Token": secrets["consul-token"]},
    ).raise_for_status()
    pools.create(
        "consul-ok",
        {
            "discovery": {"consul": {**consul, "service": "leak", "waitSeconds": 5}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "tcp": {}},
            "publish": {"consul": {**consul, "service": "leak-published"}},
        },
    )
    pools.create(
        "consul-https",
        {
            "discovery": {
                "consul": {
                    "address": consul_with_acls.https,
                    "tokenSecretRef": ref("consul-token"),
                    "caSecretRef": ref("consul-ca"),
                    "service": "leak",
                    "waitSeconds": 5,
                }
            },
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "tcp": {}},
        },
    )
    pools.create(
        "consul-wrong-token",
        {
            "discovery": {"consul": {**consul, "tokenSecretRef": ref("consul-wrong-token"), "service": "leak"}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "tcp": {}},
        },
    )
    pools.create(
        "consul-missing-token",
        {
            "discovery": {"consul": {**consul, "tokenSecretRef": ref("not-there"), "service": "leak"}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "tcp": {}},
        },
    )
    pools.create(
        "consul-bad-ca",
        spec(
            backends,
            publish={
                "consul": {
                    "address": consul_with_acls.https,
                    "tokenSecretRef": ref("consul-token"),
                    "caSecretRef": ref("consul-not-a-ca"),
                }
            },
        ),
    )

    # every path ran: the good ones work, the bad ones failed with a reason
    condition(pools, "redis-ok", "CacheReady", "True")
    condition(pools, "redis-tls", "CacheReady", "True")
    assert condition(pools, "redis-wrong", "CacheReady", "False")["reason"] == "AuthenticationFailed"
    condition(pools, "redis-bad-ca", "CacheReady", "False")
    pools.wait_ready("consul-ok", 1)
    pools.wait_ready("consul-https", 1)
    token = {"X-Consul-Token": secrets["consul-token"]}
    wait_for(
        lambda: httpx.get(f"{consul_with_acls.http}/v1/catalog/service/leak-published", headers=token).json(),
        20,
        "consul-ok's endpoints registered in Consul",
    )
    condition(pools, "consul-bad-ca", "PublishedToConsul", "False")
    denied = condition(pools, "consul-wrong-token", "DiscoveryDegraded", "True")
    assert "403" in denied["message"], denied  # Consul refused the token: an auth failure's message
    missing = condition(pools, "consul-missing-token", "DiscoveryDegraded", "True")
    assert "Secret not-there (key v) named by tokenSecretRef cannot be read" in missing["message"], missing

    # the SDK reads the same Secrets through the API and talks to Redis with them
    sdk_errors = []
    for name in ("redis-ok", "redis-wrong", "redis-tls", "redis-bad-ca"):
        table = ConfigMapTable(pools.namespace, name, api_client=k8s)
        sdk = PoolCache(table, secrets=secret_from_api(k8s))
        try:
            sdk.set("q", "a")
            sdk.get("q")
        except Exception as exc:  # whatever it raises must not carry a Secret either
            sdk_errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            sdk.close()
            table.close()
    try:
        redis.Redis(host=plain.host, port=plain.port, password=secrets["redis-wrong-password"]).ping()
    except redis.AuthenticationError as exc:
        sdk_errors.append(str(exc))
    r = redis.Redis(host=plain.host, port=plain.port, password=secrets["redis-password"])
    assert r.get(f"clusterpool:{pools.namespace}/redis-ok:v1:q") == b"a"  # the SDK did authenticate

    with urllib.request.urlopen(verbose_operator.metrics, timeout=5) as resp:
        metrics = resp.read().decode()
    assert f'namespace="{pools.namespace}"' in metrics
    log = verbose_operator.log.read_text()
    assert " DEBUG " in log or "[DEBUG" in log, "the operator does not log at debug level"
    statuses = {n: pools.get(n) for n in pools.names()}
    events = [e.to_dict() for e in pools.core.list_namespaced_event(pools.namespace).items]
    assert events
    config_maps = [cm.to_dict() for cm in pools.core.list_namespaced_config_map(pools.namespace).items]
    assert any(cm["metadata"]["name"] == "redis-ok-routing" for cm in config_maps)
    catalog = httpx.get(f"{consul_with_acls.http}/v1/catalog/service/leak-published", headers=token).text

    # a pool whose Consul cannot be reached keeps its finalizer (its registrations must go first)
    pools.patch_spec("consul-bad-ca", {"publish": None})

    values = list(secrets.values())
    assert_no_canary("the operator's debug log", log, values)
    assert_no_canary("pool status", json.dumps(statuses), values)
    assert_no_canary("Events", json.dumps(events, default=str), values)
    assert_no_canary("the metrics scrape", metrics, values)
    assert_no_canary("the routing ConfigMaps", json.dumps(config_maps, default=str), values)
    assert_no_canary("Consul's catalog", catalog, values)
    assert_no_canary("the SDK's debug log", caplog.text, values)
    assert_no_canary("exception messages", "\n".join(sdk_errors), values)
