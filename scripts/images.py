#!/usr/bin/env python3
"""Container images built on this machine, without a registry: the operator (the project's
Dockerfile), a small backend HTTP server for tests, and the pause image for the node.

    python scripts/images.py build     # build (or find) the images, print the archive paths

No base image can be pulled here, so the Dockerfile's BASE_IMAGE (python:3.11-slim for
users) is replaced by a local stand-in: a Debian bookworm minbase made with debootstrap
from the mirror apt already uses, with Debian's python3 and a virtualenv at /usr/local so
the official image's layout holds (/usr/local/bin/python, site-packages under
/usr/local/lib/python3.11). docs/install.md lists the differences.

Builds use podman/buildah from Debian's packages with a storage of their own under the
cache ($CLUSTERPOOL_CACHE, default ~/.cache/clusterpool), runtime runc, cgroupfs and fixed
ulimits (CONTAINERS_CONF), and the host network only for pip (the package registry).
Each image is saved as a docker-archive keyed by a hash of its inputs; an unchanged input
finds the archive and builds nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "distributions"))
import layout
from controlplane import cache_root, go_env

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SRC = Path(__file__).resolve().parent / "images"
SUITE = "bookworm"
# Debian's python3 is 3.11 on bookworm, as in python:3.11-slim. ca-certificates as there.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
APT_PACKAGES = ("podman", "buildah", "debootstrap", "runc", "uidmap")
BACKEND_IMAGE = "localhost/clusterpool-backend"
PAUSE_IMAGE = "localhost/clusterpool-pause"


def log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def heartbeat(what: str, every: float = 20.0) -> Iterator[None]:
    """Print a line every `every` seconds while a long step runs."""
    done = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not done.wait(every):
            log(f"  {what}: {time.monotonic() - start:.0f}s so far")

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()


def images_dir() -> Path:
    return cache_root() / "images"


def ensure_apt(packages: tuple[str, ...], probe: dict[str, str]) -> None:
    """Install Debian packages whose probe command is missing (apt-get update once first)."""

    def present(pkg: str) -> bool:
        what = probe.get(pkg, pkg)
        return shutil.which(what) is not None or (what.startswith("/") and Path(what).exists())

    missing = [pkg for pkg in packages if not present(pkg)]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit(f"missing {', '.join(missing)}: install them (Debian packages) and retry")
    log(f"installing {' '.join(missing)} with apt-get (first run only)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    stamp = Path("/tmp/clusterpool-apt-updated")
    if not stamp.exists():
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
        stamp.touch()
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def debian_mirror() -> str:
    """The Debian mirror apt already uses (sources.list or deb822 .sources)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file() or not (f.name.endswith(".list") or f.name.endswith(".sources")):
            continue
        text = f.read_text(errors="replace")
        if f.name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
                    return uris.group(1)
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    uri = next(p for p in parts[1:] if not p.startswith("["))
                    return uri
    raise SystemExit(f"no Debian {SUITE} mirror found in /etc/apt/sources.list*")


def containers_conf() -> Path:
    conf = images_dir() / "containers.conf"
    text = (
        "# podman/buildah settings that work on this machine class (see docs/install.md)\n"
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    if not conf.exists() or conf.read_text() != text:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
    return conf


def podman(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(containers_conf())}
    cmd = [
        "podman",
        "--root",
        str(images_dir() / "storage"),
        "--runroot",
        f"/tmp/clusterpool-podman-{os.geteuid()}",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
        *args,
    ]
    with heartbeat(f"podman {args[0]}"):
        r = subprocess.run(cmd, env=env, text=True, capture_output=capture, check=False)
    if check and r.returncode != 0:
        out = (r.stdout or "")[-4000:] + (r.stderr or "")[-4000:]
        raise SystemExit(f"podman {' '.join(args[:3])} failed ({r.returncode}):\n{out}")
    return r


def has_image(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One image build at a time per cache (parallel runs wait for each other)."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def digest(*parts: bytes | str | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            paths = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for p in paths:
                if "__pycache__" in p.parts or p.suffix == ".pyc":
                    continue
                h.update(str(p.relative_to(ROOT)).encode())
                h.update(p.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:16]


def save(ref: str, archive: Path) -> Path:
    tmp = archive.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    podman("save", "--format", "docker-archive", "-o", str(tmp), ref)
    tmp.rename(archive)
    # Archives of earlier inputs go once an hour old (a parallel run may still import one).
    kind = archive.name.split("-", 1)[0]
    for old in images_dir().glob(f"{kind}-*.tar"):
        if old != archive and time.time() - old.stat().st_mtime > 3600:
            old.unlink(missing_ok=True)
    return archive


# --------------------------------------------------------------------------- base


BASE_CONTAINERFILE = """\
FROM {minbase}
# The official python image's layout: python, pip and site-packages under /usr/local.
RUN python3 -m venv /usr/local && /usr/local/bin/python --version \\
 && rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/*
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
CMD ["python3"]
"""


def base_image() -> str:
    """localhost/clusterpool-python-base:<key>: the stand-in for python:3.11-slim."""
    mirror = debian_mirror()
    key = digest(SUITE, mirror, " ".join(BASE_PACKAGES), BASE_CONTAINERFILE)
    ref = f"localhost/clusterpool-python-base:{key}"
    if has_image(ref):
        log(f"base image {ref} cached")
        return ref
    minbase = f"localhost/clusterpool-debian-minbase:{key}"
    if not has_image(minbase):
        rootfs = images_dir() / "rootfs" / f"minbase-{key}"
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        log(f"debootstrap --variant=minbase {SUITE} from {mirror} (about a minute)")
        start = time.monotonic()
        with heartbeat("debootstrap"):
            r = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    SUITE,
                    str(rootfs),
                    mirror,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        if r.returncode != 0:
            raise SystemExit(f"debootstrap failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        log(f"  rootfs made in {time.monotonic() - start:.0f}s; importing it")
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / sub).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        env = {**os.environ, "CONTAINERS_CONF": str(containers_conf())}
        imp = subprocess.run(
            [
                "podman",
                "--root",
                str(images_dir() / "storage"),
                "--runroot",
                f"/tmp/clusterpool-podman-{os.geteuid()}",
                "import",
                "-",
                minbase,
            ],
            stdin=tar.stdout,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise SystemExit(f"podman import failed: {imp.stderr}")
        shutil.rmtree(rootfs, ignore_errors=True)
    work = images_dir() / "ctx" / "base"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "Containerfile").write_text(BASE_CONTAINERFILE.format(minbase=minbase))
    log("building the python base (venv at /usr/local)")
    podman("build", "--pull=never", "--network=none", "-t", ref, str(work))
    return ref


# --------------------------------------------------------------------------- images


def pip_mounts() -> list[str]:
    """pip inside a build needs the host's CA bundle (the package proxy's authority)."""
    conf = images_dir() / "pip.conf"
    ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    lines = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
    index = os.environ.get("PIP_INDEX_URL")
    if index:
        lines.append(f"index-url = {index}")
    conf.write_text("\n".join(lines) + "\n")
    mounts = ["-v", f"{conf}:/etc/pip.conf:ro,Z"]
    if ca.exists():
        mounts += ["-v", f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro"]
    return mounts


def operator_archive(base: str) -> Path:
    tag = layout.version()
    inputs = ("Dockerfile", ".dockerignore", "requirements", "distributions", "LICENSE", "README.md", "operator")
    key = digest(base, *(ROOT / name for name in inputs))
    archive = images_dir() / f"operator-{tag}-{key}.tar"
    if archive.exists():
        log(f"operator image cached ({archive.name})")
        return archive
    # The name the project publishes under (the chart's default), so that the chart's
    # defaults find the image that the node imported.
    ref = f"{layout.IMAGE}:{tag}"
    log(f"building {ref} from the Dockerfile (BASE_IMAGE={base})")
    start = time.monotonic()
    podman(
        "build",
        "--pull=never",
        "--network=host",
        *pip_mounts(),
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        f"VERSION={tag}",
        "-t",
        ref,
        "-f",
        str(ROOT / "Dockerfile"),
        str(ROOT),
    )
    log(f"  built in {time.monotonic() - start:.0f}s; saving")
    return save(ref, archive)


def backend_archive(base: str) -> Path:
    src = IMAGE_SRC / "backend"
    key = digest(base, src)
    archive = images_dir() / f"backend-{key}.tar"
    if archive.exists():
        log(f"backend image cached ({archive.name})")
        return archive
    ref = f"{BACKEND_IMAGE}:{key}"
    log(f"building {ref}")
    podman("build", "--pull=never", "--network=none", "--build-arg", f"BASE_IMAGE={base}", "-t", ref, str(src))
    podman("tag", ref, f"{BACKEND_IMAGE}:latest")
    return save(f"{BACKEND_IMAGE}:latest", archive)


PAUSE_GO = """\
// The pod sandbox's process: sleeps until told to stop, reaps orphans.
package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tsigs := make(chan os.Signal, 4)
\tsignal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
\tfor s := range sigs {
\t\tif s == syscall.SIGCHLD {
\t\t\tfor {
\t\t\t\tvar st syscall.WaitStatus
\t\t\t\tpid, err := syscall.Wait4(-1, &st, syscall.WNOHANG, nil)
\t\t\t\tif pid <= 0 || err != nil {
\t\t\t\t\tbreak
\t\t\t\t}
\t\t\t}
\t\t\tcontinue
\t\t}
\t\tos.Exit(0)
\t}
}
"""

PAUSE_TAG = "3.10"


def pause_archive() -> Path:
    key = digest(PAUSE_GO)
    archive = images_dir() / f"pause-{key}.tar"
    if archive.exists():
        log(f"pause image cached ({archive.name})")
        return archive
    work = images_dir() / "ctx" / "pause"
    shutil.rmtree(work, ignore_errors=True)
    (work / "rootfs").mkdir(parents=True)
    (work / "go.mod").write_text("module clusterpool.local/pause\n\ngo 1.21\n")
    (work / "main.go").write_text(PAUSE_GO)
    log("building the pause image (a static Go binary)")
    subprocess.run(
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(work / "rootfs" / "pause"), "."],
        cwd=work,
        env=go_env(),
        check=True,
    )
    (work / "Containerfile").write_text(
        'FROM scratch\nCOPY rootfs/pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
    )
    ref = f"{PAUSE_IMAGE}:{PAUSE_TAG}"
    podman("build", "--pull=never", "--network=none", "-t", ref, str(work))
    return save(ref, archive)


def build() -> dict[str, Path]:
    """Every image the node needs, as docker-archives: {"operator", "backend", "pause"}."""
    ensure_apt(APT_PACKAGES, {"uidmap": "newuidmap"})
    with locked():
        start = time.monotonic()
        base = base_image()
        out = {"pause": pause_archive(), "backend": backend_archive(base), "operator": operator_archive(base)}
        log(f"images ready ({time.monotonic() - start:.0f}s)")
        return out


def pause_ref() -> str:
    return f"{PAUSE_IMAGE}:{PAUSE_TAG}"


def backend_ref() -> str:
    return f"{BACKEND_IMAGE}:latest"


def main() -> None:
    if sys.argv[1:] == ["build"]:
        for name, path in build().items():
            print(f"{name}\t{path}")
    else:
        raise SystemExit("usage: images.py build")


if __name__ == "__main__":
    main()
