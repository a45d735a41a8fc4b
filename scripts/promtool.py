#!/usr/bin/env python3
"""The real promtool for tests (`promtool check rules`, `promtool test rules`): built from the
Go module proxy with this machine's Go toolchain and cached next to the control plane's
binaries.

    python scripts/promtool.py build     # build (or find) promtool, print its path

$PROMTOOL_BIN, when set, names an existing binary and wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlplane import build_released_command, cache_root, cached_or_built

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
    ldflags = f"-s -w -X github.com/prometheus/common/version.Version={PROMTOOL_VERSION}"
    # remove_all_sd leaves out the cloud service discoveries (AWS, Azure, GCE, ...): checking
    # and unit-testing rules needs none of them, and their SDKs are most of the build.
    package = f"{PROMETHEUS_MODULE}/cmd/promtool"
    build_released_command(
        "promtool", PROMETHEUS_MODULE, PROMETHEUS_VERSION, package, binary_path(), ldflags, tags="remove_all_sd"
    )


def main() -> None:
    if sys.argv[1:] == ["build"]:
        print(build())
    else:
        raise SystemExit("usage: promtool.py build")


if __name__ == "__main__":
    main()
