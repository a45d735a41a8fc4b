"""Every shell command of README.md's and docs/install.md's code blocks, run as written on
the real node, so that a doc command that breaks fails here.

The ```sh blocks are read in document order; each block runs in one bash (`set -euo pipefail`)
from the repository's root, against the session's node (KUBECONFIG, kubectl and helm on
PATH), with the variables an earlier block set (`VERSION=...`, `eval "$(... node.py env)"`)
carried to the next. A block seen before (README.md and install.md share some) runs once.
After each block every operator it installed must become available and drive every
ClusterPool there is; then the objects the docs' commands create are removed, so that the
next block (the Helm install, then the same objects without Helm) starts from a clean node.

The commands not run, and the few rewritten, are listed in NOT_RUN and SUBSTITUTIONS below,
each with its reason."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nodekit import ROOT, Cluster, wait_for

import controlplane

pytestmark = pytest.mark.timeout(900)

DOCS = ("README.md", "docs/install.md")

# Commands not run here (a command is left out when it starts with one of these), and why.
NOT_RUN = {
    "make test": "it runs this test itself",
    "make node-up": "the session's node (tests/e2e/conftest.py) is the node it starts",
    "make node-down": "it would stop the session's node, which the next modules use",
    "docker ": "the test machines run no Docker daemon, and `docker build` pulls python:3.11-slim from a "
    "registry they cannot reach; `make node-build` builds the same Dockerfile over the local stand-in",
    "ctr ": "it imports what `docker save` wrote; scripts/node.py imports the image the same way on every up",
    "kind ": "kind needs Docker; the project's tests use the local node instead (docs/install.md)",
    "python -m clusterpool.gateway": "a server that runs until stopped; tests/e2e/test_gateway_node.py runs "
    "it on the node, as the chart does",
    "curl http://gateway:8080": "the gateway's Service by name, which needs cluster DNS (the node has none); "
    "tests/e2e/test_gateway_node.py sends these requests through the gateway",
}

# Placeholders a reader fills in, and what they stand for here: the one place a doc command
# is changed before it runs.
SUBSTITUTIONS = {
    "my-pool.yaml": "manifests/samples/static-pool.yaml",  # "your backends' addresses"
}

OPERATORS = "app.kubernetes.io/name=clusterpool-operator"
# What the docs' commands install, and where: removed after each block.
RELEASE, RELEASE_NAMESPACES = "clusterpool-operator", ("clusterpool-system", "ops")
DEMO_NAMESPACE = "clusterpool-demo"  # scripts/demo.py's Leases
CRD = "clusterpools.clusterpool.dev"


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    commands: tuple[str, ...]


def without_comment(line: str) -> str:
    """`line` up to a `#` that starts a shell comment (outside quotes, after a blank)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_blocks(doc: str) -> Iterator[Block]:
    """The ```sh blocks of `doc`, each as its commands (continuation lines joined)."""
    lines = (ROOT / doc).read_text().splitlines()
    start: int | None = None
    for number, line in enumerate(lines, start=1):
        if start is None and re.fullmatch(r"```(sh|bash|shell)\s*", line.strip()):
            start = number
        elif start is not None and line.strip() == "```":
            commands: list[str] = []
            pending = ""
            for text in lines[start:number - 1]:  # fmt: skip
                code = without_comment(text)
                if code.endswith("\\"):
                    pending += code[:-1]
                    continue
                if (pending + code).strip():
                    commands.append(" ".join((pending + code).split()))
                pending = ""
            yield Block(doc, start, tuple(commands))
            start = None


def reason_not_run(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def substituted(command: str) -> str:
    for placeholder, value in SUBSTITUTIONS.items():
        command = command.replace(placeholder, value)
    return command


def blocks() -> list[Block]:
    """Every block of DOCS in order; a block whose commands an earlier one ran is left out."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for doc in DOCS:
        for block in shell_blocks(doc):
            if block.commands not in seen:
                seen.add(block.commands)
                out.append(block)
    return out


def test_the_docs_have_their_commands_found() -> None:
    """The parsing above finds the blocks (an empty list would pass everything below), and
    each entry of NOT_RUN and SUBSTITUTIONS still names a command of the docs."""
    commands = [c for b in blocks() for c in b.commands]
    assert any(c.startswith("helm install") for c in commands), commands
    assert any(c.startswith("kubectl apply -f manifests/install/00-namespace.yaml") for c in commands), commands
    for prefix in NOT_RUN:
        assert any(c.startswith(prefix) for c in commands), f"NOT_RUN names {prefix!r}, which no doc runs now"
    for placeholder in SUBSTITUTIONS:
        assert any(placeholder in c for c in commands), f"SUBSTITUTIONS names {placeholder!r}, which no doc has now"


def docs_env(c: Cluster, demo_dir: Path) -> dict[str, str]:
    """The environment the docs' commands run in: the node's kubeconfig, kubectl and helm
    on PATH, `scripts/node.py env` finding the session's node, the demo's state apart."""
    tools = f"{controlplane.assets_dir()}:{Path(c.helm_bin).parent}"
    outer_make = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")  # as a user's shell would: `make -s` prints no directories
    return {
        **{k: v for k, v in c.env.items() if k not in outer_make},
        "PATH": f"{tools}:{os.environ['PATH']}",
        "CLUSTERPOOL_NODE_ID": c.run.id,
        "CLUSTERPOOL_DEMO_DIR": str(demo_dir),
    }


def run_block(block: Block, env: dict[str, str], env_file: Path) -> dict[str, str]:
    """Run the block's commands (those not in NOT_RUN) in one bash; the environment after."""
    runnable = [substituted(cmd) for cmd in block.commands if reason_not_run(cmd) is None]
    script = "\n".join(["set -euo pipefail", *runnable, f"env -0 > {env_file}"])
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)
    where = f"{block.doc}:{block.line}"
    assert r.returncode == 0, f"the commands of {where} failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    pairs = (item.partition("=") for item in env_file.read_text().split("\0") if item)
    return {key: value for key, _, value in pairs}


def operators_work(c: Cluster, where: str) -> str:
    """Every operator Deployment available, and every ClusterPool driven by one of them
    (the demo's operator runs on the host); what was checked, in words."""
    deployments = (c.get("deployments", "-A", "-l", OPERATORS) or {"items": []})["items"]
    for d in deployments:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        c.kubectl("rollout", "status", f"deployment/{name}", "-n", ns, "--timeout=180s", timeout=200)
    pools = (c.get("clusterpools", "-A") or {"items": []})["items"]
    for p in pools:
        ns, name = p["metadata"]["namespace"], p["metadata"]["name"]
        wait_for(lambda: c.pool_status(ns, name).get("drivenBy"), 90, f"pool {ns}/{name} of {where} driven")  # noqa: B023
    return f"{len(deployments)} operator Deployment(s) available, {len(pools)} pool(s) driven"


def remove_what_the_docs_installed(c: Cluster, env: dict[str, str]) -> None:
    """Pools first (their operator removes its finalizers), then the demo, the Helm release,
    the objects of manifests/install/ and the CRD, which the chart keeps on uninstall."""
    c.delete_every_pool()
    subprocess.run(["make", "-s", "demo-down"], cwd=ROOT, env=env, capture_output=True, timeout=120, check=False)
    for ns in RELEASE_NAMESPACES:
        c.helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout=2m", check=False)
    c.kubectl("delete", "-f", str(ROOT / "manifests" / "install"), "--ignore-not-found", "--timeout=120s", check=False)
    c.kubectl(
        "delete", "namespace", *RELEASE_NAMESPACES, DEMO_NAMESPACE, "--ignore-not-found", "--timeout=120s", check=False
    )
    c.kubectl("delete", "crd", CRD, "--ignore-not-found", "--timeout=60s", check=False)


def test_every_command_of_the_readme_and_install_guide_runs_on_the_node(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    env = docs_env(c, tmp_path / "demo")
    ran = []
    try:
        for i, block in enumerate(blocks()):
            where = f"{block.doc}:{block.line}"
            env = run_block(block, env, tmp_path / f"env-{i}")
            checked = operators_work(c, where)
            remove_what_the_docs_installed(c, env)
            ran.append(f"{where} ({checked})")
    finally:
        remove_what_the_docs_installed(c, env)
    print("ran the commands of", "; ".join(ran))
