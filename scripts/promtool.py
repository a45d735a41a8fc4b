#!/usr/bin/env python3
"""The real promtool for tests (`promtool check rules`, `promtool test rules`): built from the
Go module proxy with this machine's Go toolchain and cached next to the control plane's
binaries.

    python scripts/promtool.py build     # build (or find) promtool, print its path

$PROMTOOL_BIN, when set, names an existing binary and wins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlplane import cache_root, cached_or_built, go_build, go_env

PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
# Go module versions of Prometheus are v0.<major*100+minor>.<patch>: v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_VERSION = "v0.316.0"
PROMTOOL_VERSION = "3.16.0"


def log(msg: str) -> None:
    print(f"[promtool] {msg}", file=sys.stderr, flush=True)


def binary_path() -> Path:
    env = os.environ.get("PROMTOOL_BIN")
    if env:
        return Path(env)
    return cache_root() / "assets" / f"promtool-{PROMTOOL_VERSION}" / "promtool"


def build() -> Path:
    return cached_or_built(binary_path(), "PROMTOOL_BIN", "promtool", _build)


def _build() -> None:
    work = cache_root() / "src" / f"promtool-{PROMTOOL_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    # Prometheus' go.mod has no replace directives, so requiring it is enough: minimal version
    # selection then picks exactly the dependency versions it was released with.
    (work / "go.mod").write_text(
        f"module clusterpool.dev/promtool-build\n\ngo 1.26\n\nrequire {PROMETHEUS_MODULE} {PROMETHEUS_VERSION}\n"
    )
    log(f"downloading {PROMETHEUS_MODULE}@{PROMETHEUS_VERSION}")
    subprocess.run(
        ["go", "mod", "download", f"{PROMETHEUS_MODULE}@{PROMETHEUS_VERSION}"], cwd=work, env=go_env(), check=True
    )
    log(f"building promtool {PROMTOOL_VERSION} (cold: a few minutes on 2 cores)")
    ldflags = f"-s -w -X github.com/prometheus/common/version.Version={PROMTOOL_VERSION}"
    # remove_all_sd leaves out the cloud service discoveries (AWS, Azure, GCE, ...): checking
    # and unit-testing rules needs none of them, and their SDKs are most of the build.
    go_build(work, f"{PROMETHEUS_MODULE}/cmd/promtool", binary_path(), ldflags, "promtool", tags="remove_all_sd")


def main() -> None:
    if sys.argv[1:] == ["build"]:
        print(build())
    else:
        raise SystemExit("usage: promtool.py build")


if __name__ == "__main__":
    main()
