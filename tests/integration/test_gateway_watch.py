"""The gateway following routing ConfigMaps by watch on the real apiserver (`--namespace`),
API keys from a real Secret, and the routing table the real operator publishes."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest
from gateway_process import GatewayProcess, routing_table

from clusterpool.core.publish import POOL_LABEL, ROUTING_KEY, routing_configmap_name
from conftest import Pools, endpoints_of, wait_for
from openai_backend import OpenAIBackend

BODY = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def namespace(k8s: kubernetes.client.ApiClient) -> Iterator[str]:
    ns = f"gw-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(k8s)
    core.create_namespace({"metadata": {"name": ns}})
    yield ns
    core.delete_namespace(ns)


def put_routing_configmap(core: Any, namespace: str, pool: str, table: dict[str, Any]) -> None:
    body = {
        "metadata": {"name": routing_configmap_name(pool), "labels": {POOL_LABEL: pool}},
        "data": {ROUTING_KEY: json.dumps(table)},
    }
    try:
        core.replace_namespaced_config_map(routing_configmap_name(pool), namespace, body)
    except kubernetes.client.exceptions.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_config_map(namespace, body)


def start(tmp_path: Path, kubeconfig: str, *args: str) -> GatewayProcess:
    return GatewayProcess(tmp_path, list(args), env={"KUBECONFIG": kubeconfig})


def test_a_change_of_the_routing_configmap_is_acted_on_within_a_second(
    cluster, k8s, namespace, openai_backends, tmp_path
):
    core = kubernetes.client.CoreV1Api(k8s)
    a, b = openai_backends(2)
    put_routing_configmap(core, namespace, "chat", routing_table([a], namespace=namespace, revision="r1"))
    core.create_namespaced_config_map(  # another ConfigMap in the namespace is no pool
        namespace, {"metadata": {"name": "unrelated", "labels": {POOL_LABEL: "x"}}, "data": {"a": "b"}}
    )
    gw = start(tmp_path, cluster.kubeconfig, "--namespace", namespace)
    try:
        assert (
            httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=10).headers["x-clusterpool-endpoint"]
            == "ep-0"
        )
        new = routing_table([b], namespace=namespace, models=("llama", "mistral"), revision="r2")
        new["endpoints"][0]["name"] = "ep-b"
        changed = time.monotonic()
        put_routing_configmap(core, namespace, "chat", new)

        def moved() -> bool:
            r = httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=10)
            return r.headers.get("x-clusterpool-endpoint") == "ep-b"

        wait_for(moved, 10, "traffic on the new table's endpoint", interval=0.02)
        took = time.monotonic() - changed
        assert took < 1.0, took
        models = httpx.get(gw.url + "/v1/models", timeout=10).json()
        assert sorted(m["id"] for m in models["data"]) == ["llama", "mistral"]
        core.delete_namespaced_config_map(routing_configmap_name("chat"), namespace)
        wait_for(
            lambda: httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=10).status_code == 404,
            10,
            "the pool gone with its ConfigMap",
        )
    finally:
        gw.stop()


def test_api_keys_from_a_secret_with_per_key_pools(cluster, k8s, namespace, openai_backends, tmp_path):
    core = kubernetes.client.CoreV1Api(k8s)
    (a,) = openai_backends(1)
    (b,) = openai_backends(1)
    put_routing_configmap(core, namespace, "chat", routing_table([a], namespace=namespace, pool="chat"))
    put_routing_configmap(
        core, namespace, "embed", routing_table([b], namespace=namespace, pool="embed", models=("bge",))
    )

    def enc(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    hashed = "sha256." + hashlib.sha256(b"sk-team-embed").hexdigest()
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "gateway-keys"},
            "data": {"sk-admin": enc("*"), hashed: enc(f"{namespace}/embed"), "sk-bad": enc("not a pool list")},
        },
    )
    gw = start(tmp_path, cluster.kubeconfig, "--namespace", namespace, "--api-keys-secret", f"{namespace}/gateway-keys")
    try:

        def ask(key: str | None, model: str = "llama") -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return httpx.post(
                gw.url + "/v1/chat/completions", json={**BODY, "model": model}, headers=headers, timeout=10
            )

        assert ask(None).status_code == 401
        assert ask("sk-wrong").status_code == 401
        assert ask("sk-bad").status_code == 401  # an entry that does not parse is skipped
        assert ask("sk-admin").status_code == 200
        assert ask("sk-admin", "bge").status_code == 200
        assert ask("sk-team-embed", "bge").status_code == 200
        assert ask("sk-team-embed", "llama").status_code == 404  # a pool it may not use is not shown either
        r = httpx.get(gw.url + "/pools/" + namespace + "/chat/v1/models", headers={"X-API-Key": "sk-team-embed"})
        assert r.status_code == 403
        models = httpx.get(gw.url + "/v1/models", headers={"Authorization": "Bearer sk-team-embed"}).json()
        assert [m["id"] for m in models["data"]] == ["bge"]
        assert "authorization" not in a.last_headers  # the gateway's key does not travel on
        logged = gw.out.read_text() + gw.err.read_text()
        for key in ("sk-admin", "sk-team-embed", "sk-wrong", "sk-bad"):
            assert key not in logged
        core.patch_namespaced_secret("gateway-keys", namespace, {"data": {"sk-new": enc(f"{namespace}/chat")}})
        wait_for(lambda: ask("sk-new").status_code == 200, 10, "a key added to the Secret accepted")
    finally:
        gw.stop()


def test_the_gateway_routes_by_the_table_the_operator_publishes(
    pools: Pools, cluster, openai_backends, tmp_path
) -> None:
    bs: list[OpenAIBackend] = openai_backends(2)
    pools.create(
        "chat",
        {
            "discovery": {"static": {"endpoints": endpoints_of(bs)}},
            "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
        },
    )
    pools.wait_ready("chat", healthy=2, timeout=60)
    gw = start(tmp_path, cluster.kubeconfig, "--namespace", pools.namespace)
    try:
        url = f"{gw.url}/pools/{pools.namespace}/chat/v1/chat/completions"
        seen = {httpx.post(url, json=BODY, timeout=10).headers["x-clusterpool-endpoint"] for _ in range(6)}
        assert seen == {"ep-0", "ep-1"}
        bs[1].stop()  # the operator's probes take it out; the gateway follows the table
        pools.wait_ready("chat", healthy=1, timeout=60)
        wait_for(
            lambda: (
                {httpx.post(url, json=BODY, timeout=10).headers["x-clusterpool-endpoint"] for _ in range(4)} == {"ep-0"}
            ),
            10,
            "traffic only on ep-0",
        )
    finally:
        gw.stop()
