#!/usr/bin/env python3
"""A real single-node Kubernetes cluster from source, in a private network namespace.

    python scripts/node.py build     # build (or find) the binaries and the images
    python scripts/node.py up        # start the node; prints the kubeconfig path
    python scripts/node.py env       # `export KUBECONFIG=... PATH=...` for a shell
    python scripts/node.py down      # stop everything and clean up (also after a hard kill)

etcd, kube-apiserver (ServiceAccount admission and token signing on, Node,RBAC),
kube-controller-manager, kube-scheduler, kubelet and kube-proxy (iptables) from the Go
module proxy (the control plane's wrapper module and cache); containerd, runc and the CNI
plugins from Debian's packages (installed with apt-get when missing). The images
(scripts/images.py) are imported into containerd; pods use imagePullPolicy: Never.

Everything runs inside a network namespace of its own with addresses from 198.18.0.0/15
only (node 198.18.0.1, pods 198.18.64.0/24, Services 198.18.128.0/24) and no route out;
containerd and the kubelet also run in a private mount namespace, so what they would write
machine-wide (/var/lib, /var/log, /run/containerd, three kernel settings) lands in the run's
folder. kubectl reaches the apiserver through a forwarder on 127.0.0.1 in the caller's
namespace. Names (namespace, cgroup root, node, folder) derive from a run id (--id, default
"local"), so runs in parallel do not collide; `down` finds what a run left behind from the
id alone: processes by their namespaces, cgroups by the cgroup root.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import controlplane
import images
from controlplane import KUBERNETES_VERSION, cached_assets_dir

NODE_BINARIES = ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy")
NODE_APT = ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack")
NODE_APT_PROBE = {"containernetworking-plugins": "/usr/lib/cni/bridge"}
CNI_BIN = "/usr/lib/cni"
NODE_IP = "198.18.0.1"
POD_CIDR = "198.18.64.0/24"
SERVICE_CIDR = "198.18.128.0/24"
SERVICE_IP = "198.18.128.1"  # the `kubernetes` Service
API_PORT = 6443
# What the kubelet sets machine-wide on start; bind-mounted over in the private mount namespace.
KERNEL_SETTINGS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")


def log(msg: str) -> None:
    print(f"[node] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- build


def node_assets() -> Path:
    return cached_assets_dir()


def build() -> dict[str, Path]:
    """The control plane's binaries, the node's, and the image archives."""
    controlplane.build()
    d = node_assets()
    if not all((d / b).exists() for b in NODE_BINARIES):
        if shutil.which("go") is None:
            raise SystemExit("no `go` on PATH: install Go to build the node's binaries")
        start = time.monotonic()
        log(f"building {', '.join(NODE_BINARIES)} {KUBERNETES_VERSION} (cold: about 8 min on 2 cores)")
        controlplane.build_kubernetes(d, NODE_BINARIES)
        log(f"node binaries ready in {d} ({time.monotonic() - start:.0f}s)")
    else:
        log(f"node binaries cached in {d}")
    ensure_node_packages()
    return images.build()


def ensure_node_packages() -> None:
    images.ensure_apt(NODE_APT, NODE_APT_PROBE)


def binary(name: str) -> str:
    if name in ("kube-apiserver", "etcd", "kubectl"):
        return str(controlplane.assets_dir() / name)
    return str(node_assets() / name)


# --------------------------------------------------------------------------- names


class Run:
    """Everything named after the run id."""

    def __init__(self, run_id: str) -> None:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?", run_id):
            raise SystemExit(f"run id {run_id!r}: lowercase letters, digits and '-', at most 20")
        self.id = run_id
        base = Path(os.environ.get("CLUSTERPOOL_NODE_DIR", "/tmp/clusterpool-node"))
        self.dir = base / run_id
        self.netns = f"clusterpool-{run_id}"
        self.node_name = f"node-{run_id}"
        self.cgroup_root = f"/clusterpool-{run_id}"
        self.state_file = self.dir / "state.json"

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    def state(self) -> dict[str, object]:
        try:
            data = json.loads(self.state_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save(self, **items: object) -> None:
        data = self.state()
        data.update(items)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.rename(self.state_file)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


# --------------------------------------------------------------------------- config files


def write_configs(run: Run) -> None:
    d = run.dir
    certs = d / "certs"
    for sub in ("logs", "etcd", "kubelet", "kubelet-plugins", "pod-logs", "flex", "cni/net.d", "cni/ipam"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("varlib", "varlog", "run-containerd", "containerd/root", "containerd/state", "opt", "sysctl"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    inner = f"https://{NODE_IP}:{API_PORT}"
    (d / "admin.inner.kubeconfig").write_text(controlplane.kubeconfig(inner, certs))
    kubelet_kc = json.loads(controlplane.kubeconfig(inner, certs, user=f"system:node:{run.node_name}"))
    kubelet_kc["users"][0]["user"] = {
        "client-certificate-data": base64.b64encode((certs / "kubelet.crt").read_bytes()).decode(),
        "client-key-data": base64.b64encode((certs / "kubelet.key").read_bytes()).decode(),
    }
    (d / "kubelet.kubeconfig").write_text(json.dumps(kubelet_kc, indent=2))
    (d / "resolv.conf").write_text(f"# no nameserver outside the node's namespace\nnameserver {NODE_IP}\n")
    for setting in KERNEL_SETTINGS:
        (d / "sysctl" / setting.replace("/", "_")).write_text(Path("/proc/sys", setting).read_text())
    (d / "containerd.toml").write_text(
        f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{d}/containerd.sock"
[cgroup]
  path = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.pause_ref()}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni/net.d"
"""
    )
    (d / "cni/net.d/10-clusterpool.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "clusterpool",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_CIDR}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": f"{d}/cni/ipam",
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            },
            indent=2,
        )
    )
    (d / "kubelet.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "address": NODE_IP,
                "port": 10250,
                "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1",
                "healthzPort": 10248,
                "authentication": {
                    "x509": {"clientCAFile": str(certs / "ca.crt")},
                    "webhook": {"enabled": True},
                    "anonymous": {"enabled": False},
                },
                "authorization": {"mode": "Webhook"},
                "cgroupDriver": "cgroupfs",
                "cgroupRoot": run.cgroup_root,
                "failCgroupV1": False,
                "failSwapOn": False,
                "containerRuntimeEndpoint": f"unix://{d}/containerd.sock",
                "resolvConf": str(d / "resolv.conf"),
                "volumePluginDir": str(d / "kubelet-plugins"),
                "podLogsDir": str(d / "pod-logs"),
                "evictionHard": {
                    "memory.available": "1Mi",
                    "nodefs.available": "1%",
                    "nodefs.inodesFree": "1%",
                    "imagefs.available": "1%",
                },
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "serializeImagePulls": False,
                "rotateCertificates": False,
                "serverTLSBootstrap": False,
                "maxPods": 60,
            },
            indent=2,
        )
    )
    (d / "kube-proxy.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                "kind": "KubeProxyConfiguration",
                "clientConnection": {"kubeconfig": str(d / "admin.inner.kubeconfig")},
                "mode": "iptables",
                "hostnameOverride": run.node_name,
                "clusterCIDR": POD_CIDR,
                "bindAddress": NODE_IP,
                "healthzBindAddress": "127.0.0.1:10256",
                "metricsBindAddress": "127.0.0.1:10249",
                # Zero: kube-proxy leaves the machine-wide conntrack settings alone.
                "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
                "iptables": {"syncPeriod": "30s", "minSyncPeriod": "1s"},
            },
            indent=2,
        )
    )


# --------------------------------------------------------------------------- namespaces


def make_netns(run: Run) -> None:
    if run.netns_path.exists():
        sh("ip", "netns", "del", run.netns, check=False)
    sh("ip", "netns", "add", run.netns)
    ns = ("ip", "-n", run.netns)
    sh(*ns, "link", "set", "lo", "up")
    # No dummy module in this kernel: a veth pair with both ends inside gives the node an
    # interface and a default route that leads nowhere outside the namespace.
    sh(*ns, "link", "add", "node0", "type", "veth", "peer", "name", "node1")
    sh(*ns, "addr", "add", f"{NODE_IP}/24", "dev", "node0")
    sh(*ns, "link", "set", "node0", "up")
    sh(*ns, "link", "set", "node1", "up")
    sh(*ns, "route", "add", "default", "dev", "node0")
    run.save(net_ino=run.netns_path.stat().st_ino)


HOLDER_SCRIPT = r"""
set -e
d="$1"
bind() { mkdir -p "$2" 2>/dev/null || true; mount --bind "$1" "$2"; }
bind "$d/varlib" /var/lib
bind "$d/varlog" /var/log
bind "$d/run-containerd" /run/containerd
for s in vm_overcommit_memory kernel_panic kernel_panic_on_oops; do
  mount --bind "$d/sysctl/$s" "/proc/sys/$(echo "$s" | sed 's|_|/|')"
done
touch "$d/holder.ready"
exec sleep infinity
"""


def start_holder(run: Run) -> int:
    """A process in the node's network namespace and in a private mount namespace with
    the run's bind-mounts; the components join both with nsenter."""
    Path("/run/containerd").mkdir(exist_ok=True)
    ready = run.dir / "holder.ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            "nsenter",
            f"--net={run.netns_path}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            HOLDER_SCRIPT,
            "holder",
            str(run.dir),
        ],
        stdin=subprocess.DEVNULL,
        stdout=(run.dir / "logs" / "holder.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the namespace holder failed: {(run.dir / 'logs' / 'holder.log').read_text()}")
        time.sleep(0.05)
    # unshare execs sh which execs sleep: the pid stays the holder's.
    mnt_ino = os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino
    run.save(holder_pid=proc.pid, mnt_ino=mnt_ino)
    return proc.pid


def start(run: Run, holder: int, name: str, cmd: list[str]) -> int:
    out = (run.dir / "logs" / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        ["nsenter", "-t", str(holder), "-m", "-n", "--", *cmd],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=run.dir,
    )
    pids = dict(run.state().get("pids", {}))  # type: ignore[call-overload]
    pids[name] = proc.pid
    run.save(pids=pids)
    return proc.pid


# --------------------------------------------------------------------------- forwarder

CLONE_NEWNET = 0x40000000


def forward(listen_port: int, netns: str, target_host: str, target_port: int, ready_file: str) -> None:
    """Accept on 127.0.0.1:listen_port here, connect to target inside `netns`: the listening
    socket is made before joining the namespace, so it stays in the caller's."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(128)
    libc = ctypes.CDLL(None, use_errno=True)
    with open(netns) as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            raise SystemExit(f"setns({netns}): {os.strerror(ctypes.get_errno())}")
    Path(ready_file).touch()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))

    async def main() -> None:
        srv = await asyncio.start_server(handle, sock=server)
        async with srv:
            await srv.serve_forever()

    asyncio.run(main())


def start_forwarder(run: Run) -> int:
    port = controlplane.free_port()
    ready = run.dir / "forwarder.ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--id",
            run.id,
            "forward",
            str(port),
            str(run.netns_path),
            NODE_IP,
            str(API_PORT),
            str(ready),
        ],
        stdin=subprocess.DEVNULL,
        stdout=(run.dir / "logs" / "forwarder.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the apiserver forwarder failed: {(run.dir / 'logs' / 'forwarder.log').read_text()}")
        time.sleep(0.05)
    pids = dict(run.state().get("pids", {}))  # type: ignore[call-overload]
    pids["forwarder"] = proc.pid
    run.save(pids=pids, port=port)
    return port


# --------------------------------------------------------------------------- up


def kubectl(run: Run, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """kubectl against the node; with check=False a kubectl that timed out (a busy machine)
    is an answer like any failure (returncode 124), for the callers that poll."""
    cmd = [binary("kubectl"), f"--kubeconfig={run.dir / 'kubeconfig'}", *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        if check:
            raise
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout:g}s")
    if check and r.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def wait_for(what: str, check: object, run: Run, timeout: float, watch: tuple[str, ...] = ()) -> None:
    start = time.monotonic()
    last = start
    while True:
        if callable(check) and check():
            log(f"  {what}: {time.monotonic() - start:.1f}s")
            return
        pids = run.state().get("pids", {})
        for name in watch:
            pid = pids.get(name) if isinstance(pids, dict) else None
            if pid and not controlplane._alive(int(pid)):
                tail = (run.dir / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-25:]
                raise SystemExit(f"{name} exited while waiting for {what}:\n" + "\n".join(tail))
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}; logs in {run.dir / 'logs'}")
        if time.monotonic() - last > 15:
            last = time.monotonic()
            log(f"  still waiting for {what} ({last - start:.0f}s)")
        time.sleep(0.25)


def healthy(run: Run) -> bool:
    st = run.state()
    pids = st.get("pids")
    if not st.get("ready") or not isinstance(pids, dict):
        return False
    if not all(controlplane._alive(int(p)) for p in pids.values()):
        return False
    r = kubectl(run, "get", "--raw=/readyz", check=False, timeout=10)
    return r.returncode == 0


def up(run: Run) -> Path:
    total = time.monotonic()
    archives = build()
    if run.state_file.exists() and healthy(run):
        log(f"node {run.node_name} already running; KUBECONFIG={run.dir / 'kubeconfig'}")
        return run.dir / "kubeconfig"
    down(run, quiet=True)
    start_t = time.monotonic()
    run.dir.mkdir(parents=True, exist_ok=True)
    run.save(id=run.id)
    log(f"starting node {run.node_name} in network namespace {run.netns} (state in {run.dir})")
    certs = run.dir / "certs"
    certs.mkdir(exist_ok=True)
    controlplane.make_certs(
        certs,
        ips=("127.0.0.1", NODE_IP, SERVICE_IP),
        clients={"kubelet": (f"system:node:{run.node_name}", "system:nodes")},
    )
    write_configs(run)
    make_netns(run)
    holder = start_holder(run)
    make_cgroup_root(run)
    port = start_forwarder(run)
    kc = run.dir / "kubeconfig"
    kc.write_text(controlplane.kubeconfig(f"https://127.0.0.1:{port}", certs))
    kc.chmod(0o600)
    inner_kc = str(run.dir / "admin.inner.kubeconfig")

    start(
        run,
        holder,
        "etcd",
        [
            binary("etcd"),
            f"--data-dir={run.dir / 'etcd'}",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=default=http://127.0.0.1:2380",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
    )
    start(
        run,
        holder,
        "kube-apiserver",
        [
            binary("kube-apiserver"),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0",
            f"--advertise-address={NODE_IP}",
            f"--secure-port={API_PORT}",
            f"--cert-dir={certs}",
            f"--tls-cert-file={certs / 'apiserver.crt'}",
            f"--tls-private-key-file={certs / 'apiserver.key'}",
            f"--client-ca-file={certs / 'ca.crt'}",
            f"--kubelet-client-certificate={certs / 'admin.crt'}",
            f"--kubelet-client-key={certs / 'admin.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={certs / 'sa.pub'}",
            f"--service-account-signing-key-file={certs / 'sa.key'}",
            "--allow-privileged=true",
            "--v=1",
        ],
    )
    wait_for(
        "kube-apiserver ready",
        lambda: kubectl(run, "get", "--raw=/readyz", check=False, timeout=5).returncode == 0,
        run,
        120,
        ("etcd", "kube-apiserver"),
    )
    start(
        run,
        holder,
        "kube-controller-manager",
        [
            binary("kube-controller-manager"),
            f"--kubeconfig={inner_kc}",
            f"--authentication-kubeconfig={inner_kc}",
            f"--authorization-kubeconfig={inner_kc}",
            f"--service-account-private-key-file={certs / 'sa.key'}",
            f"--root-ca-file={certs / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={certs / 'ca.crt'}",
            f"--cluster-signing-key-file={certs / 'ca.key'}",
            "--leader-elect=false",
            f"--flex-volume-plugin-dir={run.dir / 'flex'}",
            "--bind-address=127.0.0.1",
            "--v=1",
        ],
    )
    start(
        run,
        holder,
        "kube-scheduler",
        [
            binary("kube-scheduler"),
            f"--kubeconfig={inner_kc}",
            f"--authentication-kubeconfig={inner_kc}",
            f"--authorization-kubeconfig={inner_kc}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--v=1",
        ],
    )
    start(run, holder, "containerd", ["containerd", f"--config={run.dir / 'containerd.toml'}"])
    sock = run.dir / "containerd.sock"
    wait_for("containerd socket", sock.exists, run, 60, ("containerd",))
    ctr = ["ctr", f"--address={sock}", "-n", "k8s.io"]
    for name in ("pause", "backend", "operator"):
        t = time.monotonic()
        log(f"importing the {name} image into containerd ({archives[name].stat().st_size >> 20} MiB)")
        r = subprocess.run([*ctr, "images", "import", str(archives[name])], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"ctr images import {archives[name]} failed: {r.stderr}")
        log(f"  imported in {time.monotonic() - t:.0f}s")
    start(
        run,
        holder,
        "kubelet",
        [
            binary("kubelet"),
            f"--config={run.dir / 'kubelet.yaml'}",
            f"--kubeconfig={run.dir / 'kubelet.kubeconfig'}",
            f"--root-dir={run.dir / 'kubelet'}",
            f"--cert-dir={run.dir / 'kubelet' / 'pki'}",
            f"--hostname-override={run.node_name}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        ],
    )
    start(
        run,
        holder,
        "kube-proxy",
        [binary("kube-proxy"), f"--config={run.dir / 'kube-proxy.yaml'}", "--v=1"],
    )

    def node_ready() -> bool:
        r = kubectl(run, "get", "node", run.node_name, "-o", "json", check=False, timeout=10)
        if r.returncode != 0:
            return False
        conds = json.loads(r.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    wait_for(
        f"node {run.node_name} Ready",
        node_ready,
        run,
        180,
        ("kubelet", "containerd", "kube-proxy", "kube-controller-manager", "kube-scheduler"),
    )
    wait_for(
        "the default ServiceAccount",
        lambda: kubectl(run, "get", "serviceaccount", "default", check=False, timeout=10).returncode == 0,
        run,
        60,
        ("kube-controller-manager",),
    )
    run.save(ready=True, kubeconfig=str(kc), started=time.time())
    log(
        f"node up in {time.monotonic() - start_t:.0f}s ({time.monotonic() - total:.0f}s with builds/checks); "
        f"KUBECONFIG={kc}"
    )
    return kc


# --------------------------------------------------------------------------- cgroups and down


def cgroup_hierarchies() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return [root]
    return [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]


def make_cgroup_root(run: Run) -> None:
    for h in cgroup_hierarchies():
        with contextlib.suppress(OSError):
            (h / run.cgroup_root.lstrip("/")).mkdir(exist_ok=True)


def cgroup_pids(run: Run) -> set[int]:
    pids: set[int] = set()
    for h in cgroup_hierarchies():
        top = h / run.cgroup_root.lstrip("/")
        if not top.exists():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def remove_cgroups(run: Run) -> list[str]:
    left = []
    for h in cgroup_hierarchies():
        top = h / run.cgroup_root.lstrip("/")
        if not top.exists():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for p in [*dirs, top]:
            for _ in range(20):
                try:
                    p.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            if p.exists():
                left.append(str(p))
    return left


def ns_pids(net_ino: int | None, mnt_ino: int | None) -> set[int]:
    """Processes in the node's network or mount namespace (shims outlive containerd)."""
    found: set[int] = set()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        for kind, ino in (("net", net_ino), ("mnt", mnt_ino)):
            if ino is None:
                continue
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / kind).st_ino == ino:
                    found.add(int(entry.name))
    return found


def kill_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def down(run: Run, quiet: bool = False) -> None:
    st = run.state()
    if not quiet or st or run.netns_path.exists():
        log(f"stopping node {run.node_name}")
    pids = st.get("pids", {})
    recorded = {int(p) for p in pids.values()} if isinstance(pids, dict) else set()
    holder = st.get("holder_pid")
    net_ino = st.get("net_ino")
    mnt_ino = st.get("mnt_ino")
    if run.netns_path.exists():
        with contextlib.suppress(OSError):
            net_ino = run.netns_path.stat().st_ino
    # Components first (politely), then everything left in the namespaces and cgroups.
    for pid in recorded:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3  # everything goes anyway: no need for a long grace
    while time.monotonic() < deadline and any(controlplane._alive(p) for p in recorded):
        time.sleep(0.1)
    for _ in range(5):
        rest = ns_pids(
            int(net_ino) if isinstance(net_ino, int) else None, int(mnt_ino) if isinstance(mnt_ino, int) else None
        )
        rest |= cgroup_pids(run)
        rest |= {p for p in recorded if controlplane._alive(p)}
        if isinstance(holder, int) and controlplane._alive(holder):
            rest.add(holder)
        rest.discard(os.getpid())
        if not rest:
            break
        kill_all(rest, signal.SIGKILL)
        time.sleep(0.3)
    for pid in recorded:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    left = remove_cgroups(run)
    if run.netns_path.exists():
        sh("ip", "netns", "del", run.netns, check=False)
    # Mounts lived in the private mount namespace and went with it; anything under the run's
    # folder in this namespace (there should be none) is unmounted before the folder goes.
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if str(run.dir) in line]
    for m in sorted(mounts, key=len, reverse=True):
        sh("umount", "-l", m, check=False)
    shutil.rmtree(run.dir, ignore_errors=True)
    if left:
        log(f"cgroups left behind: {', '.join(left)}")
    if not quiet or st:
        log("node stopped, cleaned up")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "up", "down", "env", "forward"])
    p.add_argument("--id", default=os.environ.get("CLUSTERPOOL_NODE_ID", "local"), help="run id (default local)")
    p.add_argument("rest", nargs="*")
    args = p.parse_args(argv)
    if os.geteuid() != 0 and args.command != "env":
        raise SystemExit("the node needs root (network and mount namespaces, cgroups)")
    run = Run(args.id)
    if args.command == "build":
        for name, path in build().items():
            print(f"{name}\t{path}")
    elif args.command == "up":
        print(up(run))
    elif args.command == "down":
        down(run)
    elif args.command == "env":
        st = run.state()
        if not st.get("ready"):
            print(f"no node {run.id!r} running: `python scripts/node.py up` first", file=sys.stderr)
            return 1
        print(f"export KUBECONFIG={st['kubeconfig']}")
        dirs = dict.fromkeys(str(d) for d in (controlplane.assets_dir(), node_assets()))
        print(f"export PATH={':'.join(dirs)}:$PATH")
        print(f"export CLUSTERPOOL_NODE_NETNS={run.netns}")
    elif args.command == "forward":
        port, netns, host, target_port, ready = args.rest
        forward(int(port), netns, host, int(target_port), ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
