#!/usr/bin/env python3
"""A real, local Kubernetes control plane: etcd + kube-apiserver on loopback.

    python scripts/controlplane.py build     # build (or find) kube-apiserver, kubectl, etcd
    python scripts/controlplane.py up        # start them, RBAC on, write an admin kubeconfig
    python scripts/controlplane.py env       # print `export KUBECONFIG=...` for a shell
    python scripts/controlplane.py down      # stop them and remove the state directory

The binaries come from, in this order: $KUBEBUILDER_ASSETS (the envtest convention,
a folder holding kube-apiserver, etcd and kubectl), else a cache outside the repository
($CLUSTERPOOL_CACHE, default ~/.cache/clusterpool) keyed by version, else a build from
the Go module proxy with this machine's Go toolchain.

Only the standard library is needed to build; `up` needs `cryptography` (for the
certificates), which the project's virtualenv has.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
BINARIES = ("kube-apiserver", "kubectl", "etcd")


def log(msg: str) -> None:
    print(f"[controlplane] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- build


def cache_root() -> Path:
    return Path(os.environ.get("CLUSTERPOOL_CACHE", Path.home() / ".cache" / "clusterpool"))


def cached_assets_dir() -> Path:
    return cache_root() / "assets" / f"kubernetes-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}"


def assets_dir() -> Path:
    """Where the binaries are: KUBEBUILDER_ASSETS wins when set."""
    env = os.environ.get("KUBEBUILDER_ASSETS")
    return Path(env) if env else cached_assets_dir()


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", GOWORK="off", CGO_ENABLED="0", GOFLAGS="-mod=mod")
    return env


def run_with_progress(cmd: list[str], cwd: Path, what: str, logfile: Path) -> None:
    """Run a long go command, printing a heartbeat with a count of output lines."""
    start = time.monotonic()
    with logfile.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=go_env(), stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(20):
                lines = sum(1 for _ in logfile.open(errors="replace"))
                elapsed = int(time.monotonic() - start)
                log(f"  {what}: {elapsed // 60}m{elapsed % 60:02d}s, {lines} packages/lines so far")

        t = threading.Thread(target=heartbeat, daemon=True)
        t.start()
        rc = proc.wait()
        done.set()
    elapsed = time.monotonic() - start
    if rc != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{what} failed (exit {rc}) after {elapsed:.0f}s; log {logfile}:\n" + "\n".join(tail))
    log(f"  {what}: done in {elapsed:.0f}s")


def go_build(work: Path, package: str, dest: Path, ldflags: str, what: str, tags: str = "") -> None:
    """`go build` one package of the module in `work` into `dest` (through a temporary file,
    so an interrupted build never leaves a binary that looks cached)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp"
    run_with_progress(
        ["go", "build", "-v", "-trimpath", "-tags", tags, "-ldflags", ldflags, "-o", str(tmp), package],
        work,
        f"build {what}",
        work / f"build-{what}.log",
    )
    tmp.rename(dest)


def build_released_command(
    what: str, module: str, version: str, package: str, dest: Path, ldflags: str, tags: str = ""
) -> None:
    """Build `package` of `module` at a released `version` into `dest`. The module's go.mod
    has no replace directives, so requiring it is enough: minimal version selection then
    picks exactly the dependency versions it was released with."""
    work = cache_root() / "src" / f"{what}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(f"module clusterpool.dev/{what}-build\n\ngo 1.26\n\nrequire {module} {version}\n")
    log(f"downloading {module}@{version}")
    subprocess.run(["go", "mod", "download", f"{module}@{version}"], cwd=work, env=go_env(), check=True)
    log(f"building {what} {version} (cold: a few minutes on 2 cores)")
    go_build(work, package, dest, ldflags, what, tags=tags)


def cached_or_built(path: Path, env_var: str, what: str, build: Callable[[], None]) -> Path:
    """The binary at `path` if there is one; else an error when $env_var named it, or when
    there is no Go toolchain; else `build()` makes it."""
    if path.exists():
        log(f"{what} cached at {path}")
        return path
    if os.environ.get(env_var):
        raise SystemExit(f"{env_var}={path} does not exist")
    if shutil.which("go") is None:
        raise SystemExit(f"no `go` on PATH: install Go, or set {env_var} to a {what} binary")
    build()
    return path


def module_gomod(module: str, version: str, workdir: Path) -> str:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=workdir,
        env=go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    info = json.loads(out.stdout or "{}")
    if out.returncode != 0 or "GoMod" not in info:
        raise SystemExit(f"go mod download {module}@{version} failed: {info.get('Error') or out.stderr}")
    return Path(info["GoMod"]).read_text()


REPLACE_RE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\S+)(?:\s+(\S+))?\s*$")


def wrapper_gomod(module: str, version: str, local_version: str, upstream: str) -> str:
    """A main module requiring `module`, with its replace lines made usable.

    Replace directives of a dependency are ignored by Go, so the local ones
    (./staging/..., ../api) become module@local_version and the rest are copied.
    Only the main module's godebug lines apply, so they are copied too.
    """
    go_line = next((ln for ln in upstream.splitlines() if ln.startswith("go ")), "go 1.24.0")
    godebug = [ln for ln in upstream.splitlines() if ln.startswith("godebug ")]
    replaces: list[str] = []
    in_block = False
    for line in upstream.splitlines():
        stripped = line.strip()
        if stripped.startswith("replace ("):
            in_block = True
            continue
        if in_block and stripped == ")":
            in_block = False
            continue
        if not (in_block or stripped.startswith("replace ")):
            continue
        m = REPLACE_RE.match(stripped)
        if not m:
            continue
        old, new, new_version = m.group(1), m.group(2), m.group(3)
        if "FORBIDDEN" in new:
            continue
        if new.startswith("./") or new.startswith("../"):
            replaces.append(f"\t{old} => {old} {local_version}")
        elif new_version:
            replaces.append(f"\t{old} => {new} {new_version}")
    lines = [
        "module clusterpool.local/buildwrapper",
        "",
        go_line,
        *godebug,
        "",
        f"require {module} {version}",
        "",
        "replace (",
        *replaces,
        ")",
        "",
    ]
    return "\n".join(lines)


def build_kubernetes(dest: Path, names: tuple[str, ...] = ("kube-apiserver", "kubectl")) -> None:
    """Build the k8s.io/kubernetes commands `names` into `dest`, skipping those already there."""
    if all((dest / name).exists() for name in names):
        return
    work = cache_root() / "src" / f"kubernetes-{KUBERNETES_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
    log(f"resolving k8s.io/kubernetes {KUBERNETES_VERSION} (staging modules at {staging_version})")
    upstream = module_gomod("k8s.io/kubernetes", KUBERNETES_VERSION, work)
    (work / "go.mod").write_text(wrapper_gomod("k8s.io/kubernetes", KUBERNETES_VERSION, staging_version, upstream))
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    ldflags = "-s -w " + " ".join(flags)
    for name in names:
        if (dest / name).exists():
            continue
        log(f"building {name} {KUBERNETES_VERSION} (cold: several minutes on 2 cores)")
        go_build(work, f"k8s.io/kubernetes/cmd/{name}", dest / name, ldflags, name)


def build_etcd(dest: Path) -> None:
    if (dest / "etcd").exists():
        return
    work = cache_root() / "src" / f"etcd-{ETCD_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    log(f"resolving go.etcd.io/etcd/server/v3 {ETCD_VERSION}")
    upstream = module_gomod("go.etcd.io/etcd/server/v3", ETCD_VERSION, work)
    (work / "go.mod").write_text(wrapper_gomod("go.etcd.io/etcd/server/v3", ETCD_VERSION, ETCD_VERSION, upstream))
    log(f"building etcd {ETCD_VERSION}")
    ldflags = f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA={ETCD_VERSION}"
    go_build(work, "go.etcd.io/etcd/server/v3", dest / "etcd", ldflags, "etcd")


def build() -> Path:
    """Make sure the three binaries exist; return their folder."""
    if os.environ.get("KUBEBUILDER_ASSETS"):
        d = assets_dir()
        missing = [b for b in ("kube-apiserver", "etcd") if not (d / b).exists()]
        if missing:
            raise SystemExit(f"KUBEBUILDER_ASSETS={d} lacks {', '.join(missing)}")
        log(f"using KUBEBUILDER_ASSETS={d}")
        return d
    d = cached_assets_dir()
    if all((d / b).exists() for b in BINARIES):
        log(f"binaries cached in {d}")
        return d
    if shutil.which("go") is None:
        raise SystemExit(
            "no `go` on PATH: install Go, or set KUBEBUILDER_ASSETS to a folder with kube-apiserver, etcd and kubectl"
        )
    d.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    build_etcd(d)
    build_kubernetes(d)
    log(f"all binaries ready in {d} ({time.monotonic() - start:.0f}s)")
    return d


def kubectl_path() -> Path:
    d = assets_dir()
    if (d / "kubectl").exists():
        return d / "kubectl"
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    raise SystemExit(f"no kubectl in {d} nor on PATH")


# --------------------------------------------------------------------------- run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pem_cert(cert: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


def _pem_key(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certs(
    cert_dir: Path,
    ips: tuple[str, ...] = ("127.0.0.1", "198.18.128.1"),
    clients: dict[str, tuple[str, str | None]] | None = None,
    serving_cert_for_clients_too: bool = False,
) -> None:
    """A CA, an apiserver serving cert (for `ips` and the kubernetes names), an admin client
    cert, a service-account key; and one client cert per `clients` entry
    (file stem -> (common name, organization); an empty common name is left out). With serving_cert_for_clients_too the
    serving cert may also act as a client (etcd's gateway dials its own server with it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    validity = datetime.timedelta(days=365)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("clusterpool-local-ca"))
        .issuer_name(name("clusterpool-local-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        subject: x509.Name, usages: list[x509.ObjectIdentifier], sans: list[x509.GeneralName]
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _pem_cert(b.sign(ca_key, hashes.SHA256())), _pem_key(key)

    sans: list[x509.GeneralName] = [
        x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    serving_usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if serving_cert_for_clients_too:
        serving_usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    serving_cert, serving_key = leaf(name("kube-apiserver"), serving_usages, sans)
    admin_cert, admin_key = leaf(name("admin", "system:masters"), [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    files = {
        "ca.crt": _pem_cert(ca),
        "ca.key": _pem_key(ca_key),
        "apiserver.crt": serving_cert,
        "apiserver.key": serving_key,
        "admin.crt": admin_cert,
        "admin.key": admin_key,
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for stem, (cn, org) in (clients or {}).items():
        files[f"{stem}.crt"], files[f"{stem}.key"] = leaf(name(cn, org), [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    for fname, data in files.items():
        p = cert_dir / fname
        p.write_bytes(data)
        p.chmod(0o600)


def kubeconfig(server: str, cert_dir: Path, user: str = "admin") -> str:
    def b64(fname: str) -> str:
        return base64.b64encode((cert_dir / fname).read_bytes()).decode()

    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "clusterpool-local",
            "clusters": [
                {
                    "name": "clusterpool-local",
                    "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
                }
            ],
            "contexts": [
                {
                    "name": "clusterpool-local",
                    "context": {"cluster": "clusterpool-local", "user": user, "namespace": "default"},
                }
            ],
        },
        indent=2,
    )


@dataclass
class State:
    """What `up` started; written to <state_dir>/state.json."""

    state_dir: str
    server: str
    kubeconfig: str
    etcd_pid: int
    apiserver_pid: int
    assets: str
    apiserver_cmd: list[str] | None = None
    etcd_cmd: list[str] | None = None


def _start(cmd: list[str], logfile: Path) -> subprocess.Popen[bytes]:
    out = logfile.open("wb")
    # A session of its own, so `make demo` can leave it running and Ctrl-C elsewhere
    # does not reach it; `down` (or the test fixture) stops it.
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _ready(server: str, cert_dir: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    ctx.load_cert_chain(str(cert_dir / "admin.crt"), str(cert_dir / "admin.key"))
    try:
        with urllib.request.urlopen(f"{server}/readyz", context=ctx, timeout=2) as r:
            if r.status != 200:
                return False
        with urllib.request.urlopen(f"{server}/api/v1/namespaces/default", context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, ssl.SSLError):
        return False


def up(state_dir: Path, timeout: float = 120.0) -> State:
    """Start etcd and kube-apiserver on free loopback ports and wait until ready."""
    assets = build()
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = load_state(state_dir)
    if existing and _alive(existing.apiserver_pid) and _ready(existing.server, state_dir / "certs"):
        log(f"already running at {existing.server}")
        return existing
    if existing:
        down(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
    cert_dir = state_dir / "certs"
    cert_dir.mkdir(exist_ok=True)
    make_certs(cert_dir)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    etcd_cmd = [
        str(assets / "etcd"),
        f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={etcd_url}",
        f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]
    etcd = _start(etcd_cmd, state_dir / "etcd.log")
    server = f"https://127.0.0.1:{api_port}"
    apiserver_cmd = [
        str(assets / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={api_port}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={cert_dir / 'apiserver.crt'}",
        f"--tls-private-key-file={cert_dir / 'apiserver.key'}",
        f"--client-ca-file={cert_dir / 'ca.crt'}",
        "--authorization-mode=RBAC",
        # the benchmark range, never routed, never private; a /17 holds 32,766 Services (a /24
        # held 253, and 1,000 pools did not fit)
        "--service-cluster-ip-range=198.18.128.0/17",
        f"--service-account-issuer={server}/",
        f"--service-account-key-file={cert_dir / 'sa.pub'}",
        f"--service-account-signing-key-file={cert_dir / 'sa.key'}",
        "--disable-admission-plugins=ServiceAccount",
        "--allow-privileged=true",
        "--endpoint-reconciler-type=none",
        "--v=1",
    ]
    apiserver = _start(apiserver_cmd, state_dir / "kube-apiserver.log")
    kc = state_dir / "kubeconfig"
    kc.write_text(kubeconfig(server, cert_dir))
    kc.chmod(0o600)
    state = State(str(state_dir), server, str(kc), etcd.pid, apiserver.pid, str(assets), apiserver_cmd, etcd_cmd)
    (state_dir / "state.json").write_text(json.dumps(asdict(state), indent=2))
    log(f"starting etcd (:{etcd_port}) and kube-apiserver ({server})")
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        for proc, what in ((etcd, "etcd"), (apiserver, "kube-apiserver")):
            if proc.poll() is not None:
                tail = (state_dir / f"{what}.log").read_text(errors="replace").splitlines()[-20:]
                down(state_dir)
                raise SystemExit(f"{what} exited with {proc.returncode}:\n" + "\n".join(tail))
        if _ready(server, cert_dir):
            log(f"ready in {time.monotonic() - start:.1f}s; KUBECONFIG={kc}")
            return state
        time.sleep(0.5)
    down(state_dir)
    raise SystemExit(f"kube-apiserver not ready after {timeout:.0f}s; see {state_dir}/kube-apiserver.log")


def stop_apiserver(state_dir: Path) -> None:
    """Stop kube-apiserver alone (etcd keeps the data): an API outage, for fault tests."""
    state = load_state(state_dir)
    if state is not None:
        stop_pid(state.apiserver_pid)


def start_apiserver(state_dir: Path, timeout: float = 60.0) -> State:
    """Start kube-apiserver again, same port and certificates, after stop_apiserver."""
    state = load_state(state_dir)
    if state is None or not state.apiserver_cmd:
        raise SystemExit(f"no control plane state in {state_dir}")
    proc = _start(state.apiserver_cmd, state_dir / "kube-apiserver.log")
    state.apiserver_pid = proc.pid
    return _saved_once_serving(state, state_dir, proc, "kube-apiserver", timeout)


def restart_etcd(state_dir: Path, down_seconds: float = 0.0, timeout: float = 60.0) -> State:
    """Stop etcd (SIGTERM, its data directory kept), wait `down_seconds`, start it again on
    the same ports, and wait until kube-apiserver serves again: an etcd outage, for fault
    tests. kube-apiserver keeps running throughout and reconnects by itself."""
    state = load_state(state_dir)
    if state is None or not state.etcd_cmd:
        raise SystemExit(f"no control plane state with an etcd command in {state_dir}")
    stop_pid(state.etcd_pid)
    time.sleep(down_seconds)
    proc = _start(state.etcd_cmd, state_dir / "etcd.log")
    state.etcd_pid = proc.pid
    return _saved_once_serving(state, state_dir, proc, "etcd", timeout)


def _saved_once_serving(
    state: State, state_dir: Path, proc: subprocess.Popen[bytes], what: str, timeout: float
) -> State:
    """Save `state` (with the restarted process `what`), then wait until kube-apiserver serves again."""
    (state_dir / "state.json").write_text(json.dumps(asdict(state), indent=2))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}; see its log in {state_dir}")
        if _ready(state.server, state_dir / "certs"):
            return state
        time.sleep(0.3)
    raise SystemExit(f"kube-apiserver not ready again after restarting {what}")


def load_state(state_dir: Path) -> State | None:
    p = state_dir / "state.json"
    if not p.exists():
        return None
    return State(**json.loads(p.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, grace: float = 10.0) -> None:
    if not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            pass
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def down(state_dir: Path) -> None:
    state = load_state(state_dir)
    if state:
        stop_pid(state.apiserver_pid)
        stop_pid(state.etcd_pid)
        log("stopped kube-apiserver and etcd")
    shutil.rmtree(state_dir, ignore_errors=True)


def default_state_dir() -> Path:
    return Path(os.environ.get("CLUSTERPOOL_CONTROLPLANE_DIR", Path.cwd() / ".controlplane"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "up", "down", "env", "kubectl-path"])
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where `up` keeps certificates, logs, data (default ./.controlplane)",
    )
    args = p.parse_args(argv)
    state_dir = (args.state_dir or default_state_dir()).resolve()
    if args.command == "build":
        print(build())
    elif args.command == "up":
        state = up(state_dir)
        print(state.kubeconfig)
    elif args.command == "down":
        down(state_dir)
    elif args.command == "kubectl-path":
        print(kubectl_path())
    elif args.command == "env":
        state = load_state(state_dir)
        if state is None:
            print(f"no control plane state in {state_dir}: run `up` first", file=sys.stderr)
            return 1
        print(f"export KUBECONFIG={state.kubeconfig}")
        print(f"export PATH={Path(state.assets)}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
