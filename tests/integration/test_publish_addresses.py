"""Which endpoint addresses an EndpointSlice can hold, as the real apiserver decides: the
operator leaves out (and reports) exactly those it would refuse, so a valid pool is never
stuck with a 422 from its EndpointSlice write."""

import ipaddress
import uuid

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from clusterpool.api import is_ip
from clusterpool.core.publish import address_type

# Valid spec.discovery.static.endpoints[].address values, and (last) what Consul's
# catalog may hold although the CRD would refuse it.
ADDRESSES = [
    "198.18.0.7",
    "fd00::7",
    "llm-a.models",
    "llm-a.models.svc.cluster.local",
    "999.1.1.1",  # a DNS name as far as Kubernetes is concerned
    "vllm",  # one label: not an FQDN
    "127.0.0.1",
    "::1",
    "169.254.0.1",
    "fe80::1",
    "0.0.0.0",
    "224.0.0.1",
    "LLM-A.models",
    "llm_a.models",
    "llm a.models",
    "llm-a.models.",
]


def slice_body(address, kind):
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"s-{uuid.uuid4().hex[:8]}"},
        "addressType": kind,
        "ports": [{"name": "backend", "port": 80, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address]}],
    }


def accepted(k8s, address, kind):
    api = kubernetes.client.DiscoveryV1Api(k8s)
    try:
        api.create_namespaced_endpoint_slice("default", slice_body(address, kind), dry_run="All")
    except ApiException as exc:
        if exc.status != 422:
            raise
        return False
    return True


@pytest.mark.parametrize("address", ADDRESSES)
def test_the_operator_publishes_exactly_the_addresses_an_endpoint_slice_accepts(k8s, address):
    kind = address_type(address)
    if kind is not None:
        assert accepted(k8s, address, kind), f"{address} as {kind} is refused by the apiserver"
    else:  # refused as what it is (an IP as its family, a name as an FQDN)
        own = {4: "IPv4", 6: "IPv6"}[ipaddress.ip_address(address).version] if is_ip(address) else "FQDN"
        assert not accepted(k8s, address, own), f"{address} as {own} is accepted: the operator could publish it"
