#!/usr/bin/env python3
"""Release artifacts, all carrying the one version (`__version__` in operator/clusterpool/__init__.py).

    python scripts/release.py stamp          # write the version into Chart.yaml and the install manifests
    python scripts/release.py lock           # requirements/operator.lock and build.lock, with hashes (uv)
    python scripts/release.py build [--out dist] [--skip-image] [--base-image REF]
    python scripts/release.py verify [--out dist]    # check what build made; print names and sizes
    python scripts/release.py wheelhouse     # the client wheel and the wheels its test installs offline

`build` makes, in --out (dist/ by default): both distributions' wheels and sdists, the Helm
chart packaged (`helm package`, pushable with `helm push ... oci://`), the install manifests
rendered into one file in a working order (Namespace, CRD, RBAC, Deployment), and the
operator image as an OCI archive with org.opencontainers.image.* labels, its manifest digest
written beside it. The image build takes minutes (podman, scripts/images.py); --skip-image
leaves it out. Wheels and sdists are built offline with the setuptools of the running
interpreter (>= 77), through the PEP 517 hooks.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "distributions"))
import layout
from controlplane import cache_root

ROOT = layout.ROOT

CHART = ROOT / "charts" / "clusterpool-operator"
INSTALL = ROOT / "manifests" / "install"
CRDS = ROOT / "crds"
LOCKS = ROOT / "requirements"
# The client test's own dependencies next to the SDK's: what the examples import.
EXAMPLE_REQUIREMENTS = ("openai", "langchain-openai")


def log(msg: str) -> None:
    print(f"[release] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- stamping


def stamped_files(version: str) -> dict[Path, str]:
    """Each file that carries the version, as it must read for `version`."""
    chart = (CHART / "Chart.yaml").read_text()
    chart = re.sub(r"^version: .*$", f"version: {version}", chart, count=1, flags=re.M)
    chart = re.sub(r"^appVersion: .*$", f'appVersion: "{version}"', chart, count=1, flags=re.M)
    deployment = (INSTALL / "20-deployment.yaml").read_text()
    deployment = re.sub(r"^(\s+image: ).*$", rf"\g<1>{layout.IMAGE}:{version}", deployment, count=1, flags=re.M)
    return {CHART / "Chart.yaml": chart, INSTALL / "20-deployment.yaml": deployment}


def unstamped() -> list[Path]:
    """The files whose version is not the one version (empty when all agree)."""
    return [path for path, text in stamped_files(layout.version()).items() if path.read_text() != text]


def stamp() -> list[Path]:
    changed = unstamped()
    for path in changed:
        path.write_text(stamped_files(layout.version())[path])
        log(f"stamped {path.relative_to(ROOT)} with {layout.version()}")
    return changed


# --------------------------------------------------------------------------- distributions


def build_distribution(tree: Path, out: Path) -> list[Path]:
    """The sdist and the wheel of one staged tree, through setuptools' PEP 517 hooks (offline)."""
    code = (  # setuptools rewrites sys.argv and prints its steps: the names go last, on stdout
        "import contextlib, sys, setuptools.build_meta as b\n"
        "out = sys.argv[1]\n"
        "with contextlib.redirect_stdout(sys.stderr):\n"
        "    names = [b.build_sdist(out), b.build_wheel(out)]\n"
        "print(*names)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tree, text=True, capture_output=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"building {tree.name} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return [out / name for name in r.stdout.split()]


def build_distributions(out: Path) -> list[Path]:
    built = []
    with tempfile.TemporaryDirectory(prefix="clusterpool-stage-") as tmp:
        for tree in layout.stage(Path(tmp)).values():
            built += build_distribution(tree, out)
    for path in built:
        log(f"built {path.name}")
    return built


# --------------------------------------------------------------------------- chart and manifests


def package_chart(out: Path) -> Path:
    import helm

    version = layout.version()
    subprocess.run(
        [str(helm.build()), "package", str(CHART), "--version", version, "--app-version", version, "-d", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    path = out / f"clusterpool-operator-{version}.tgz"
    log(f"packaged {path.name}")
    return path


INSTALL_ORDER = ("00-namespace.yaml", "CRD", "10-rbac.yaml", "11-rbac-aggregate.yaml", "20-deployment.yaml")


def render_manifests(out: Path) -> Path:
    """One file, applied in a working order: `kubectl apply -f clusterpool-operator-<v>.yaml`."""
    version = layout.version()
    parts = []
    for name in INSTALL_ORDER:
        files = sorted(CRDS.glob("*.yaml")) if name == "CRD" else [INSTALL / name]
        for path in files:
            text = stamped_files(version)[path] if path in stamped_files(version) else path.read_text()
            parts.append(f"# Source: {path.relative_to(ROOT)}\n{text.strip()}\n")
    path = out / f"clusterpool-operator-{version}.yaml"
    header = f"# ClusterPool Operator {version}: the CRD and the operator, without Helm.\n"
    path.write_text(header + "---\n".join(parts))
    log(f"rendered {path.name}")
    return path


# --------------------------------------------------------------------------- image


def git_revision() -> str:
    """The commit built, with `-dirty` when the tree has changes not committed."""
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, capture_output=True, check=False)
    if r.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, text=True, capture_output=True, check=False)
    return r.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def build_image(out: Path, base: str | None) -> tuple[Path, Path]:
    """The operator image from the Dockerfile, saved as an OCI archive; its manifest digest
    (what a registry shows once the archive is copied there unchanged) in a file beside it."""
    import images

    version = layout.version()
    ref = f"{layout.IMAGE}:{version}"
    images.ensure_apt(images.APT_PACKAGES, {"uidmap": "newuidmap"})
    with images.locked():
        base_ref = base or images.base_image()
        log(f"building {ref} over {base_ref} (minutes)")
        images.podman(
            "build",
            "--pull=never",
            "--network=host",
            *images.pip_mounts(),
            *build_args(version, base_ref),
            "-t",
            ref,
            "-f",
            str(ROOT / "Dockerfile"),
            str(ROOT),
        )
        archive = out / f"clusterpool-operator-{version}-image.oci.tar"
        archive.unlink(missing_ok=True)
        images.podman("save", "--format", "oci-archive", "-o", str(archive), ref)
    digest = oci_manifest_digest(archive)
    digest_file = out / f"clusterpool-operator-{version}-image.digest"
    digest_file.write_text(f"{ref}@{digest}\n")
    log(f"image {ref}@{digest}")
    return archive, digest_file


def build_args(version: str, base: str) -> list[str]:
    """The Dockerfile's arguments for a release: the base and the OCI labels' values."""
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {"BASE_IMAGE": base, "VERSION": version, "REVISION": git_revision(), "CREATED": created}
    return [arg for key, value in values.items() for arg in ("--build-arg", f"{key}={value}")]


def oci_manifest_digest(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise SystemExit(f"{archive}: no index.json (not an OCI archive)")
        index = json.load(member)
    digest: str = index["manifests"][0]["digest"]
    return digest


def image_labels(archive: Path) -> dict[str, str]:
    """The labels of the (single) image in an OCI archive."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> dict[str, object]:
            member = tar.extractfile("blobs/" + digest.replace(":", "/"))
            if member is None:
                raise SystemExit(f"{archive}: blob {digest} missing")
            loaded: dict[str, object] = json.load(member)
            return loaded

        manifest = blob(oci_manifest_digest(archive))
        config = blob(manifest["config"]["digest"])  # type: ignore[index]
    labels: dict[str, str] = config.get("config", {}).get("Labels") or {}  # type: ignore[attr-defined]
    return labels


# --------------------------------------------------------------------------- verify


def verify(out: Path, image: bool) -> list[tuple[str, int]]:
    """Check the release in `out`: every artifact there, each saying the one version.
    Returns (name, size) of each; raises SystemExit naming what is wrong."""
    version = layout.version()
    problems: list[str] = []
    expected = {
        f"clusterpool_client-{version}-py3-none-any.whl",
        f"clusterpool_client-{version}.tar.gz",
        f"clusterpool_operator-{version}-py3-none-any.whl",
        f"clusterpool_operator-{version}.tar.gz",
        f"clusterpool-operator-{version}.tgz",
        f"clusterpool-operator-{version}.yaml",
    }
    if image:
        expected |= {f"clusterpool-operator-{version}-image.oci.tar", f"clusterpool-operator-{version}-image.digest"}
    missing = sorted(name for name in expected if not (out / name).exists())
    problems += [f"{out / name} is missing" for name in missing]
    for dist in ("clusterpool_client", "clusterpool_operator"):
        wheel = out / f"{dist}-{version}-py3-none-any.whl"
        if wheel.exists():
            meta = wheel_metadata(wheel)
            if meta.get("Version") != version:
                problems.append(f"{wheel.name}: METADATA says Version {meta.get('Version')}, not {version}")
    chart = out / f"clusterpool-operator-{version}.tgz"
    if chart.exists():
        with tarfile.open(chart) as tar:
            member = tar.extractfile("clusterpool-operator/Chart.yaml")
            text = member.read().decode() if member else ""
        for key, want in (("version", version), ("appVersion", version)):
            got = re.search(rf"^{key}: \"?([^\"\n]+)\"?$", text, re.M)
            if got is None or got.group(1) != want:
                problems.append(f"{chart.name}: Chart.yaml {key} is {got.group(1) if got else None}, not {want}")
    manifests = out / f"clusterpool-operator-{version}.yaml"
    if manifests.exists() and f"image: {layout.IMAGE}:{version}" not in manifests.read_text():
        problems.append(f"{manifests.name}: the Deployment's image is not {layout.IMAGE}:{version}")
    archive = out / f"clusterpool-operator-{version}-image.oci.tar"
    if image and archive.exists():
        labels = image_labels(archive)
        if labels.get("org.opencontainers.image.version") != version:
            problems.append(f"{archive.name}: label org.opencontainers.image.version is not {version}: {labels}")
        recorded = (out / f"clusterpool-operator-{version}-image.digest").read_text().strip()
        if not recorded.endswith("@" + oci_manifest_digest(archive)):
            problems.append(f"{archive.name}: its digest file says {recorded}, the archive another digest")
    if problems:
        raise SystemExit("the release is not consistent:\n  " + "\n  ".join(problems))
    return [(name, (out / name).stat().st_size) for name in sorted(expected)]


def wheel_metadata(wheel: Path) -> dict[str, str]:
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(name).decode()
    return {k: v for k, _, v in (line.partition(": ") for line in text.split("\n\n", 1)[0].splitlines()) if v}


# --------------------------------------------------------------------------- locks and wheelhouse


def dev_pins() -> list[str]:
    """The exact versions the tests run (the top-level pyproject.toml): constraints of the locks."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return sorted({p.split(";")[0].strip() for p in pins if "==" in p})


def uv(*args: str) -> None:
    exe = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if exe is None:
        raise SystemExit("uv is missing: run `make venv` (it installs the dev tools)")
    subprocess.run([exe, *args], check=True)


def lock() -> None:
    """The image installs these with --require-hashes: the operator's and the client's
    dependencies (the client's gateway extra too: the same image runs the gateway) at the
    versions the tests run, and setuptools to build the two."""
    LOCKS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clusterpool-lock-") as tmp:
        trees = layout.stage(Path(tmp))
        (Path(tmp) / "constraints.txt").write_text("\n".join(dev_pins()) + "\n")
        (Path(tmp) / "operator.in").write_text(
            f"clusterpool-operator @ {trees[layout.OPERATOR].as_uri()}\n"
            f"clusterpool-client[redis,kubernetes,gateway] @ {trees[layout.CLIENT].as_uri()}\n"
        )
        (Path(tmp) / "build.in").write_text("setuptools>=77\n")
        common = ["--generate-hashes", "--python-version", "3.11", "--universal", "--no-annotate"]
        common += ["-c", f"{tmp}/constraints.txt", "--custom-compile-command", "make lock", "--quiet"]
        uv(
            "pip",
            "compile",
            f"{tmp}/operator.in",
            "-o",
            str(LOCKS / "operator.lock"),
            *common,
            "--no-emit-package",
            layout.OPERATOR,
            "--no-emit-package",
            layout.CLIENT,
        )
        uv("pip", "compile", f"{tmp}/build.in", "-o", str(LOCKS / "build.lock"), *common)
    log(f"wrote {LOCKS / 'operator.lock'} and {LOCKS / 'build.lock'}")


PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:")


def wheelhouse_dir() -> Path:
    return cache_root() / "wheelhouse"


def wheelhouse() -> Path:
    """The wheels a fresh virtualenv needs, with no network, to install the client wheel with
    all its extras and the examples' own dependencies, at the versions the tests run
    (downloaded once). The client wheel itself is not kept: tests build it from the tree."""
    house = wheelhouse_dir()
    house.mkdir(parents=True, exist_ok=True)
    client_project = (ROOT / "distributions" / layout.CLIENT / "pyproject.toml").read_text()  # its extras
    key = hashlib.sha256("\n".join([*EXAMPLE_REQUIREMENTS, *dev_pins(), client_project]).encode()).hexdigest()[:16]
    if (house / f".complete-{key}").exists():
        return house
    log("downloading the client's dependencies as wheels (first run only)")
    with tempfile.TemporaryDirectory(prefix="clusterpool-stage-") as tmp:
        tree = layout.stage(Path(tmp))[layout.CLIENT]
        wheel = next(p for p in build_distribution(tree, Path(tmp)) if p.suffix == ".whl")
        (Path(tmp) / "constraints.txt").write_text("\n".join(dev_pins()) + "\n")
        wanted = [f"{wheel}[redis,langchain,kubernetes,gateway]", *EXAMPLE_REQUIREMENTS]
        subprocess.run([*PIP_DOWNLOAD, "-d", str(house), "-c", f"{tmp}/constraints.txt", *wanted], check=True)
    for old in [*house.glob(".complete-*"), *house.glob("clusterpool_client-*")]:
        old.unlink()
    (house / f".complete-{key}").touch()
    log(f"wheelhouse ready: {house}")
    return house


# --------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["stamp", "lock", "build", "verify", "wheelhouse"])
    p.add_argument("--out", type=Path, default=ROOT / "dist")
    p.add_argument("--skip-image", action="store_true", help="leave the image out (it takes minutes)")
    p.add_argument("--base-image", help="BASE_IMAGE for the image (default: the local stand-in of scripts/images.py)")
    args = p.parse_args()
    out: Path = args.out.resolve()
    if args.command == "stamp":
        stamp()
    elif args.command == "lock":
        lock()
    elif args.command == "wheelhouse":
        print(wheelhouse())
    elif args.command == "build":
        if unstamped():
            raise SystemExit(
                f"{', '.join(str(p.relative_to(ROOT)) for p in unstamped())} do not carry version "
                f"{layout.version()}: run `python scripts/release.py stamp` and commit"
            )
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("clusterpool*"):
            old.unlink()
        build_distributions(out)
        package_chart(out)
        render_manifests(out)
        if not args.skip_image:
            build_image(out, args.base_image)
    if args.command in ("build", "verify"):
        for name, size in verify(out, image=not args.skip_image):
            print(f"{size:>12,}  {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
