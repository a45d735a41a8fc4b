#!/usr/bin/env python3
"""The real helm binary for tests: built from the Go module proxy with this machine's Go
toolchain and cached next to the control plane's binaries.

    python scripts/helm.py build     # build (or find) helm, print its path

$HELM_BIN, when set, names an existing binary and wins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlplane import cache_root, cached_or_built, go_build, go_env


def log(msg: str) -> None:
    print(f"[helm] {msg}", file=sys.stderr, flush=True)


HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.22.0"


def binary_path() -> Path:
    env = os.environ.get("HELM_BIN")
    if env:
        return Path(env)
    return cache_root() / "assets" / f"helm-{HELM_VERSION}" / "helm"


def build() -> Path:
    return cached_or_built(binary_path(), "HELM_BIN", "helm", _build)


def _build() -> None:
    work = cache_root() / "src" / f"helm-{HELM_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    # helm's own go.mod has no replace directives, so requiring it is enough: minimal version
    # selection then picks exactly the dependency versions it was released with.
    (work / "go.mod").write_text(
        f"module clusterpool.dev/helm-build\n\ngo 1.26\n\nrequire {HELM_MODULE} {HELM_VERSION}\n"
    )
    subprocess.run(["go", "mod", "download", f"{HELM_MODULE}@{HELM_VERSION}"], cwd=work, env=go_env(), check=True)
    log(f"building helm {HELM_VERSION} (cold: a few minutes on 2 cores)")
    ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    go_build(work, f"{HELM_MODULE}/cmd/helm", binary_path(), ldflags, "helm")


def main() -> None:
    if sys.argv[1:] == ["build"]:
        print(build())
    else:
        raise SystemExit("usage: helm.py build")


if __name__ == "__main__":
    main()
