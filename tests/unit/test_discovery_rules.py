import base64
import logging
import ssl

import httpx
import pytest

from clusterpool.api import EtcdDiscovery, KubernetesDiscovery
from clusterpool.discovery.etcd import EtcdWatcher, members_from_registrations, parse_registration, range_end
from clusterpool.discovery.kubernetes import member_name, members_from_slices
from clusterpool.discovery.source import KubernetesSource, OutageNotice
from clusterpool.k8s.client import APIHealth


def eps(*specs):
    out = []
    for addr, cond, pod in specs:
        e = {"addresses": [addr], "conditions": cond}
        if pod:
            e["targetRef"] = {"kind": "Pod", "name": pod}
        out.append(e)
    return out


def slice_(name, labels, ports, endpoints):
    return {"metadata": {"name": name, "labels": labels}, "ports": ports, "endpoints": endpoints}


SVC = {"kubernetes.io/service-name": "llm"}
PORTS = [{"name": "http", "port": 8000}, {"name": "metrics", "port": 9090}]


def names(members):
    return [(m.name, m.address, m.port, m.source_ready, m.terminating) for m in members]


def test_service_slices_with_a_named_port_and_conditions():
    slices = [
        slice_(
            "llm-a",
            SVC,
            PORTS,
            eps(("198.18.0.1", {"ready": True}, "llm-0"), ("198.18.0.2", {"ready": False}, "llm-1")),
        ),
        slice_(
            "llm-b",
            SVC,
            PORTS,
            eps(
                ("198.18.0.3", {}, "llm-2"),
                ("198.18.0.4", {"ready": False, "serving": True, "terminating": True}, "llm-3"),
            ),
        ),
        slice_("other", {"kubernetes.io/service-name": "db"}, PORTS, eps(("198.18.9.9", {"ready": True}, "db-0"))),
        slice_(
            "ours",
            {**SVC, "endpointslice.kubernetes.io/managed-by": "clusterpool.dev"},
            PORTS,
            eps(("198.18.7.7", {"ready": True}, None)),
        ),
    ]
    spec = KubernetesDiscovery(service="llm", port="http")
    assert names(members_from_slices(spec, slices)) == [
        ("llm-0", "198.18.0.1", 8000, True, False),
        ("llm-1", "198.18.0.2", 8000, False, False),
        ("llm-2", "198.18.0.3", 8000, True, False),
    ]
    assert [m.port for m in members_from_slices(KubernetesDiscovery(service="llm", port=9090), slices)] == [9090] * 3
    assert members_from_slices(KubernetesDiscovery(service="llm", port="grpc"), slices) == ()
    assert members_from_slices(KubernetesDiscovery(service="llm"), slices) == ()  # two ports: which one?


def test_terminating_endpoints_are_a_fallback_only():
    slices = [
        slice_(
            "s",
            SVC,
            [{"port": 80}],
            eps(
                ("198.18.0.1", {"ready": False, "serving": True, "terminating": True}, "a"),
                ("198.18.0.2", {"ready": False, "serving": False, "terminating": True}, "b"),
            ),
        )
    ]
    assert names(members_from_slices(KubernetesDiscovery(service="llm"), slices)) == [
        ("a", "198.18.0.1", 80, True, True)
    ]


def test_selector_and_names_without_pods():
    slices = [
        slice_("x", {"app": "vllm", "tier": "gpu"}, [{"port": 8000}], eps(("fd00::1", {}, None))),
        slice_("y", {"app": "vllm"}, [{"port": 8000}], eps(("198.18.0.5", {}, None))),
    ]
    spec = KubernetesDiscovery(selector={"matchLabels": {"app": "vllm", "tier": "gpu"}})
    assert names(members_from_slices(spec, slices)) == [("fd00-1", "fd00::1", 8000, True, False)]
    long = member_name({"targetRef": {"kind": "Pod", "name": "x" * 100}}, "198.18.0.1")
    assert len(long) <= 63 and long.startswith("xxxx")


def test_consul_states_map_to_members():
    from clusterpool.discovery.consul import aggregate, members_from_consul

    def entry(sid, addr, checks, node_addr="198.18.9.9", weights=None):
        svc = {"ID": sid, "Address": addr, "Port": 8000}
        if weights:
            svc["Weights"] = weights
        return {"Node": {"Address": node_addr}, "Service": svc, "Checks": [{"Status": c} for c in checks]}

    entries = [
        entry("vllm-1", "198.18.0.1", ["passing", "passing"]),
        entry("vllm-2", "198.18.0.2", ["passing", "warning"], weights={"Passing": 3, "Warning": 1}),
        entry("vllm-3", "198.18.0.3", ["critical", "passing"]),
        entry("vllm-4", "", ["passing"], node_addr="198.18.0.4"),
    ]
    got = [(m.name, m.address, m.weight, m.source_ready, m.source_warning) for m in members_from_consul(entries, False)]
    assert got == [
        ("vllm-1", "198.18.0.1", 1, True, False),
        ("vllm-2", "198.18.0.2", 1, True, True),
        ("vllm-3", "198.18.0.3", 1, False, False),
        ("vllm-4", "198.18.0.4", 1, True, False),
    ]
    assert [m.name for m in members_from_consul(entries, True)] == ["vllm-1", "vllm-4"]
    assert aggregate([{"Status": "maintenance"}]) == "critical" and aggregate([]) == "passing"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def etcd_watcher():
    spec = EtcdDiscovery(endpoints=["http://127.0.0.1:1"], prefix="/svc/llm/")
    changes, resyncs = [], []

    async def no_secret(ref):
        return None

    w = EtcdWatcher(spec, no_secret, changes.append, lambda problem: None, resyncs.append)
    return w, changes, resyncs


def put(key, value, rev):
    return {"kv": {"key": b64(key), "value": b64(value), "mod_revision": str(rev)}}


def test_etcd_values_parse_with_optional_fields_and_say_what_is_wrong():
    reg = parse_registration(b'{"address": "127.0.0.2", "port": 8000, "labels": {"model": "llama"}, "id": "x"}')
    assert (reg.address, reg.port, reg.weight, reg.tier, reg.labels) == ("127.0.0.2", 8000, 1, 0, {"model": "llama"})
    with pytest.raises(ValueError, match="port"):
        parse_registration(b'{"address": "127.0.0.2", "port": 70000}')
    with pytest.raises(ValueError, match=r"labels\.zone"):
        parse_registration(b'{"address": "127.0.0.2", "port": 1, "labels": {"zone": 3}}')
    with pytest.raises(ValueError, match="JSON"):
        parse_registration(b"127.0.0.2:8000")


def test_etcd_members_are_named_after_the_rest_of_their_key():
    regs = {
        "/svc/llm/GPU_0": parse_registration(b'{"address": "127.0.0.2", "port": 1, "weight": 5, "tier": 1}'),
        "/svc/llm/gpu-0": parse_registration(b'{"address": "127.0.0.3", "port": 1}'),
    }
    members = members_from_registrations("/svc/llm/", regs)
    assert [(m.address, m.weight, m.tier) for m in members if m.name == "gpu-0"] == [("127.0.0.2", 5, 1)]
    assert len({m.name for m in members}) == 2  # the second "gpu-0" gets a hash of its key


def test_etcd_range_end_is_the_prefix_plus_one():
    assert range_end(b"/svc/") == b"/svc0"
    assert range_end(b"a\xff") == b"b"
    assert range_end(b"\xff") == b"\0"


def test_etcd_watch_messages_fold_into_members_and_the_revision():
    w, changes, _ = etcd_watcher()
    w.keys.revision = 10
    assert w.keys.follow({"result": {"header": {"revision": "10"}, "created": True}})
    w.keys.follow({"result": {"events": [put("/svc/llm/a", '{"address": "127.0.0.2", "port": 1}', 11)]}})
    w.keys.follow({"result": {"events": [put("/svc/llm/b", '{"port": 1}', 12)]}})
    assert [m.name for m in changes[-1]] == ["a"] and "address" in w.invalid["/svc/llm/b"]
    w.keys.follow({"result": {"events": [{"type": "DELETE", "kv": {"key": b64("/svc/llm/a"), "mod_revision": "13"}}]}})
    assert changes[-1] == () and w.keys.revision == 13
    w.keys.follow({"result": {"header": {"revision": "40"}}})  # a progress notification
    assert w.keys.revision == 40


def test_etcd_compaction_or_a_revision_gone_back_means_reading_everything_again():
    w, _, resyncs = etcd_watcher()
    w.keys.revision = 10
    assert not w.keys.follow({"result": {"canceled": True, "compact_revision": "25"}})
    assert w.keys.revision is None and "compacted" in resyncs[-1]
    w.keys.revision = 10
    assert not w.keys.follow({"result": {"header": {"revision": "3"}, "created": True}})
    assert w.keys.revision is None and "went back" in resyncs[-1]


def test_a_client_without_a_certificate_is_told_to_set_one_however_etcd_refuses_it():
    """After the TLS 1.3 handshake etcd either closes the connection or sends the alert
    "certificate required" first (a race: test_etcd.py met both)."""
    spec = EtcdDiscovery(endpoints=["https://127.0.0.1:1"], prefix="/svc/llm/")

    async def no_secret(ref):
        return None

    w = EtcdWatcher(spec, no_secret, lambda members: None, lambda problem: None)
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    hint = "set certSecretRef and keySecretRef"
    assert hint in w.connection.problem(alert)
    assert hint in w.connection.problem(httpx.RemoteProtocolError(""))
    unverified = ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert hint not in w.connection.problem(unverified)


class NamespaceSlices:
    """A SliceSource as the wiring makes it: the slices, and a count moved on each change."""

    def __init__(self, slices):
        self.slices, self.version, self.reads = slices, 0, 0

    def __call__(self):
        self.reads += 1
        return list(self.slices)

    def change(self, slices):
        self.slices, self.version = slices, self.version + 1


async def test_a_kubernetes_source_reads_its_slices_again_only_when_they_moved():
    one = slice_("llm-a", SVC, PORTS, eps(("198.18.0.1", {"ready": True}, "llm-0")))
    two = slice_("llm-b", SVC, PORTS, eps(("198.18.0.2", {"ready": True}, "llm-1")))
    slices = NamespaceSlices([one])
    outage = OutageNotice(APIHealth(), lambda *e: None, logging.getLogger("test"), lambda why: None, lambda: 0)
    source = KubernetesSource(KubernetesDiscovery(service="llm", port="http"), slices, outage)
    for _ in range(5):  # every round of every pool read every slice of the namespace
        assert [m.address for m in (await source.observe()).members] == ["198.18.0.1"]
    assert slices.reads == 1
    slices.change([one, two])
    assert [m.address for m in (await source.observe()).members] == ["198.18.0.1", "198.18.0.2"]
    assert slices.reads == 2
