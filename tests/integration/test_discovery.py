"""Kubernetes discovery against the real apiserver: the tests create a Service and its
EndpointSlices (no kubelet or controller runs here) and change them under a running pool.
Backends listen on the test hosts 198.18.0.x (`make test` runs in its own network
namespace), since EndpointSlices refuse loopback addresses."""

import kubernetes

from conftest import wait_for

# Each change must reach the pool's status promptly (the operator is woken by the slice's
# watch event); the bound here is generous, the latency itself is measured by a benchmark.
PROMPT = 5


def make_slice(name, service, backends, not_ready=(), labels=None):
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": labels or {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backends[0].port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [b.host],
                "conditions": {"ready": i not in not_ready},
                "targetRef": {"kind": "Pod", "name": f"{service}-{i}"},
            }
            for i, b in enumerate(backends)
        ],
    }


def spec(**kubernetes_source):
    return {
        "discovery": {"kubernetes": kubernetes_source},
        "healthCheck": {"intervalSeconds": 30, "timeoutSeconds": 1, "unhealthyThreshold": 1, "http": {}},
    }


def test_endpointslice_changes_reach_the_pool(pools, net_backends, k8s):
    disc = kubernetes.client.DiscoveryV1Api(k8s)
    core = kubernetes.client.CoreV1Api(k8s)
    ns = pools.namespace
    backends = net_backends(3)
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "vllm"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": backends[0].port}]},
        },
    )
    disc.create_namespaced_endpoint_slice(ns, make_slice("vllm-a", "vllm", backends[:2]))
    pools.create("p", spec(service="vllm", port="http"))  # 30 s interval: only the watch can be this quick
    status = pools.wait_ready("p", healthy=2)
    assert status["source"] == "Kubernetes"
    assert [e["name"] for e in status["endpoints"]] == ["vllm-0", "vllm-1"]

    disc.patch_namespaced_endpoint_slice("vllm-a", ns, make_slice("vllm-a", "vllm", backends))  # add one
    pools.wait_ready("p", healthy=3, timeout=PROMPT)

    disc.patch_namespaced_endpoint_slice("vllm-a", ns, make_slice("vllm-a", "vllm", backends, not_ready={1}))
    wait_for(lambda: pools.endpoint("p", "vllm-1").get("sourceState") == "NotReady", PROMPT, "vllm-1 NotReady")
    assert pools.endpoint("p", "vllm-1")["eligible"] is False
    assert pools.status("p")["eligible"] == 2

    disc.patch_namespaced_endpoint_slice("vllm-a", ns, make_slice("vllm-a", "vllm", [backends[0], backends[2]]))
    wait_for(
        lambda: [e["address"] for e in pools.status("p").get("endpoints", [])] == [backends[0].host, backends[2].host],
        PROMPT,
        "the removed endpoint to leave",
    )

    disc.delete_namespaced_endpoint_slice("vllm-a", ns)
    wait_for(lambda: pools.status("p").get("total") == 0, PROMPT, "no endpoints once the slice is gone")
    assert pools.condition("p", "Ready")["status"] == "False"


def test_a_selector_follows_labelled_slices_and_ignores_the_pools_own(pools, net_backends, k8s):
    disc = kubernetes.client.DiscoveryV1Api(k8s)
    ns = pools.namespace
    backends = net_backends(2)
    disc.create_namespaced_endpoint_slice(ns, make_slice("gpu-a", "a", backends[:1], labels={"app": "vllm"}))
    disc.create_namespaced_endpoint_slice(ns, make_slice("gpu-b", "b", backends[1:], labels={"app": "vllm"}))
    pools.create("p", spec(selector={"matchLabels": {"app": "vllm"}}))
    pools.wait_ready("p", healthy=2)
    # the pool publishes its own slices for Service "p"; a pool following Service "p" must not loop
    wait_for(lambda: pools.condition("p", "Published").get("reason") == "UpToDate", 10, "published")
    pools.create("q", spec(service="p"))
    wait_for(lambda: pools.condition("q", "Ready").get("status") == "False", 10, "q sees no endpoints")
    assert pools.status("q")["total"] == 0
