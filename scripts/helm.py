#!/usr/bin/env python3
"""The real helm binary for tests: built from the Go module proxy with this machine's Go
toolchain and cached next to the control plane's binaries.

    python scripts/helm.py build     # build (or find) helm, print its path
    python scripts/helm.py path      # where it is (or will be), built or not

$HELM_BIN, when set, names an existing binary and wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlplane import build_released_command, cache_root, cached_or_built


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
    ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    build_released_command("helm", HELM_MODULE, HELM_VERSION, f"{HELM_MODULE}/cmd/helm", binary_path(), ldflags)


def main() -> None:
    if sys.argv[1:] == ["build"]:
        print(build())
    elif sys.argv[1:] == ["path"]:
        print(binary_path())
    else:
        raise SystemExit("usage: helm.py build | path")


if __name__ == "__main__":
    main()
