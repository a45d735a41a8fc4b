"""Real components for integration tests: etcd + kube-apiserver (RBAC on), the real
kubectl, the operator as a subprocess, and HTTP/TCP backends on 127.0.0.x.

The control plane and the operator start once per session; every test gets a
namespace of its own and cleans its pools up (no garbage collector runs here).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

import controlplane
import helm
from backends import HTTPBackend, TCPBackend, free_port
from clusterpool import api
from redis_servers import RedisCluster, RedisServer

ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    fn: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.1,
    describe: Callable[[], Any] | None = None,
) -> Any:
    """Poll fn until it returns something truthy; fail naming `what`, the last value and,
    when given, what `describe()` says about the state then."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    state = "" if describe is None else f"; state: {describe()!r}"
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}{state}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keeps each phase's report on the test item (`item.failed_call`), for fixtures
    that print what helps to explain a failure when they tear down."""
    report = yield
    if report.when == "call" and report.failed:
        item.failed_call = True  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.State]:
    state_dir = tmp_path_factory.mktemp("controlplane")
    state = controlplane.up(state_dir)
    yield state
    controlplane.down(state_dir)


class Kubectl:
    def __init__(self, kubeconfig: str) -> None:
        self.env = {**os.environ, "KUBECONFIG": kubeconfig}
        self.path = str(controlplane.kubectl_path())

    def __call__(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([self.path, *args], env=self.env, text=True, capture_output=True, input=stdin, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r


@pytest.fixture(scope="session")
def kubectl(cluster: controlplane.State) -> Kubectl:
    return Kubectl(cluster.kubeconfig)


@pytest.fixture(scope="session")
def k8s(cluster: controlplane.State) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=cluster.kubeconfig)


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(ROOT / "crds"))
    # not `kubectl wait`: it fails at once while the CRD has no conditions yet
    established = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
    wait_for(
        lambda: kubectl("get", f"crd/{api.PLURAL}.{api.GROUP}", "-o", established, check=False).stdout == "True",
        90,
        "the CRD established",
        interval=0.2,
    )


def service_account_kubeconfig(
    admin_kubeconfig: str, k8s: kubernetes.client.ApiClient, namespace: str, name: str, path: Path
) -> str:
    """A kubeconfig at `path` that authenticates as ServiceAccount namespace/name with a real
    token (TokenRequest, an hour), against the cluster of `admin_kubeconfig`."""
    token = (
        kubernetes.client.CoreV1Api(k8s)
        .create_namespaced_service_account_token(name, namespace, {"spec": {"expirationSeconds": 3600}})
        .status.token
    )
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cfg = {
        **admin,
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": name}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def as_uid_without_passwd_entry(uid: int) -> list[str]:
    """A command prefix: the process sees itself as `uid` (in a user namespace of its own),
    as in a container image that has no passwd entry for its user; files stay readable."""
    return ["unshare", "--user", f"--map-user={uid}", f"--map-group={uid}"]


class OperatorProcess:
    """`python -m clusterpool` against the test cluster, its log in a file."""

    def __init__(
        self,
        kubeconfig: str,
        log_dir: Path,
        uid: int | None = None,
        identity: str = "test-operator",
        args: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.uid = uid  # run as this uid (and gid), which has no passwd entry
        self.identity = identity  # kept across restarts, as a pod's name is across container restarts
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.liveness = ""
        self.metrics = ""
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        self.metrics = f"http://127.0.0.1:{free_port()}/metrics"
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONPATH": str(ROOT / "operator")}
        if self.uid is not None:  # as in a container: no login name anywhere in the environment
            for var in ("USER", "LOGNAME", "LNAME", "USERNAME"):
                env.pop(var, None)
        self.log = self.log_dir / f"operator-{self.identity or 'default'}-{self.starts}.log"
        as_user = [] if self.uid is None else as_uid_without_passwd_entry(self.uid)
        self.proc = subprocess.Popen(
            [
                *as_user,
                sys.executable,
                "-m",
                "clusterpool",
                "--liveness",
                self.liveness,
                "--metrics",
                self.metrics,
                *(["--identity", self.identity] if self.identity else []),
                *self.args,
            ],
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_for(self.alive, 60, f"the operator's liveness endpoint ({self.log})", interval=0.2)

    def log_mark(self) -> int:
        """Where the log ends now: `log_since(mark)` is what was logged after it."""
        return len(self.log.read_text())

    def log_since(self, mark: int) -> str:
        return self.log.read_text()[mark:]

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.liveness, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """The labels and value of each sample of metric `name` in a scrape."""
        with urllib.request.urlopen(self.metrics, timeout=5) as r:
            text = r.read().decode()
        return [
            (s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        ]

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


@pytest.fixture(scope="session")
def operator(
    crd: None, cluster: controlplane.State, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


class Pools:
    """ClusterPools in one test namespace, through the kubernetes client."""

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str) -> None:
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
        return self.api.create_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, body)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        try:
            self.api.delete_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def names(self) -> list[str]:
        items = self.api.list_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL)["items"]
        return [i["metadata"]["name"] for i in items]

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), {})

    def endpoint(self, name: str, endpoint: str) -> dict[str, Any]:
        return next((e for e in self.status(name).get("endpoints", []) if e["name"] == endpoint), {})

    def events(self, name: str, reason: str | None = None) -> list[Any]:
        evs = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return [e for e in evs if reason is None or e.reason == reason]

    def wait_ready(self, name: str, healthy: int, timeout: float = 30) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            s = self.status(name)
            c = self.condition(name, "Ready")
            return s if c.get("status") == "True" and s.get("healthy") == healthy else None

        return wait_for(ready, timeout, f"pool {name} Ready with {healthy} healthy")  # type: ignore[no-any-return]


@pytest.fixture
def pools(operator: OperatorProcess, k8s: kubernetes.client.ApiClient) -> Iterator[Pools]:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    kubernetes.client.CoreV1Api(k8s).create_namespace({"metadata": {"name": ns}})
    p = Pools(k8s, ns)
    yield p
    for name in p.names():
        p.delete(name)
    # The operator must release its finalizer for each pool to go away.
    wait_for(lambda: not p.names(), 30, f"pools in {ns} to be deleted (finalizer released)")


_hosts = itertools.count(10)


def _next_host() -> str:
    n = next(_hosts)
    return f"127.0.{n // 250}.{n % 250 + 2}"


@pytest.fixture
def http_backends() -> Iterator[Callable[[int], list[HTTPBackend]]]:
    started: list[HTTPBackend] = []

    def make(n: int) -> list[HTTPBackend]:
        port = free_port()
        out = [HTTPBackend(_next_host(), port).start() for _ in range(n)]
        started.extend(out)
        return out

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def tcp_backends() -> Iterator[Callable[[int], list[TCPBackend]]]:
    started: list[TCPBackend] = []

    def make(n: int) -> list[TCPBackend]:
        port = free_port()
        out = [TCPBackend(_next_host(), port).start() for _ in range(n)]
        started.extend(out)
        return out

    yield make
    for b in started:
        b.stop()


_net_hosts = itertools.count(10)


@pytest.fixture
def net_backends() -> Iterator[Callable[[int], list[HTTPBackend]]]:
    """HTTP backends on the test hosts 198.18.0.x (addresses Kubernetes accepts in an
    EndpointSlice), which `make test` puts on the loopback of its own network namespace."""
    if os.environ.get("CLUSTERPOOL_NETNS") != "1":
        pytest.fail(
            "this test needs the test hosts 198.18.0.0/24: run it with `make test` (or through scripts/netns-run)"
        )
    started: list[HTTPBackend] = []

    def make(n: int) -> list[HTTPBackend]:
        port = free_port()
        out = [HTTPBackend(f"198.18.0.{next(_net_hosts) % 240 + 10}", port).start() for _ in range(n)]
        started.extend(out)
        return out

    yield make
    for b in started:
        b.stop()


def labelled_table(servers: list[HTTPBackend], models: list[str]) -> dict[str, Any]:
    """A routing table of `servers`, all eligible, each labelled with its model."""
    return {
        "schemaVersion": 1,
        "revision": "r1",
        "strategy": "RoundRobin",
        "circuitBreaker": {},
        "endpoints": [
            {"name": s.name, "address": s.host, "port": s.port, "eligible": True, "labels": {"model": m}}
            for s, m in zip(servers, models, strict=True)
        ],
    }


def endpoints_of(backends: list[Any]) -> list[dict[str, Any]]:
    return [{"name": f"ep-{i}", "address": b.host, "port": b.port} for i, b in enumerate(backends)]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start real redis-server processes on free loopback ports; all stop after the test."""
    started: list[RedisServer] = []

    def make(password: str | None = None, tls: bool = False) -> RedisServer:
        """With tls, the server speaks only TLS with a certificate for 127.0.0.1 signed by
        the CA in `<server.dir>/ca.crt`."""
        d = tmp_path / f"redis-{len(started)}"
        files = None
        if tls:
            d.mkdir(parents=True)
            controlplane.make_certs(d)
            files = (str(d / "apiserver.crt"), str(d / "apiserver.key"), str(d / "ca.crt"))
        server = RedisServer(d, password=password, tls=files).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop(kill=True)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A Redis Cluster of three masters (slots assigned by `redis-cli --cluster create`)."""
    cluster = RedisCluster(tmp_path / "redis-cluster", masters=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop(kill=True)


# -- helm --------------------------------------------------------------------------

CHART = ROOT / "charts" / "clusterpool-operator"
# `helm template` checks the chart's kubeVersion against this (helm built without the
# Kubernetes version in its ldflags assumes 1.20): the version of the test control plane.
KUBE_VERSION = ("--kube-version", controlplane.KUBERNETES_VERSION.lstrip("v"))


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """The real helm (scripts/helm.py builds it once and caches it)."""
    return str(helm.build())


def helm_run(
    helm_bin: str, *args: str, kubeconfig: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/clusterpool-helm/cache", "HELM_CONFIG_HOME": "/tmp/clusterpool-helm"}
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    r = subprocess.run([helm_bin, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
    return r


def helm_rendered(helm_bin: str, *sets: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`helm template` of the chart as release "rel" in namespace "ops": objects by (kind, name)."""
    out = helm_run(helm_bin, "template", "rel", str(CHART), "--namespace", "ops", *KUBE_VERSION, *sets).stdout
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}


# -- the gateway's backends and process (tests/integration/gateway_process.py) -----------------
from fake_engines import engines  # noqa: E402, F401 - a fixture
from gateway_process import gateway, openai_backends  # noqa: E402, F401 - fixtures
