"""The client distribution installs alone: its wheel, built from this tree, goes into fresh
virtualenvs with no kopf and no Kubernetes client, and the SDK's examples run there against
real OpenAI-compatible backends and a real Redis on loopback.

The virtualenvs install offline from the wheelhouse that `make wheelhouse` fills (part of
`make test-tools`): the wheels of the client's dependencies at the versions the tests run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import layout
import release
from backends import HTTPBackend, free_port
from clusterpool.core.cache_settings import CacheSettings, RedisSettings
from conftest import labelled_table

EXAMPLES = layout.ROOT / "examples"


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client wheel of this tree (built offline, as `make release` builds it)."""
    house = release.wheelhouse_dir()
    if not any(house.glob("httpx-*.whl")):
        pytest.fail(f"no wheelhouse at {house}: run `make wheelhouse` (outside the network namespace) first")
    out = tmp_path_factory.mktemp("dist")
    tree = layout.stage(tmp_path_factory.mktemp("stage"))[layout.CLIENT]
    return next(p for p in release.build_distribution(tree, out) if p.suffix == ".whl")


def fresh_venv(where: Path, wheel: Path, *requirements: str) -> Path:
    """A virtualenv of its own (no system site-packages) with `requirements` installed
    offline; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index"]
    pip += ["--find-links", str(release.wheelhouse_dir()), "--find-links", str(wheel.parent)]
    subprocess.run([*pip, *requirements], check=True)
    return python


def installed(python: Path) -> set[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {p["name"].lower() for p in json.loads(out)}


def run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=120, check=False)


def test_the_bare_client_installs_with_httpx_and_xxhash_only_and_names_the_extra_it_lacks(client_wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv", client_wheel, "clusterpool-client")
    packages = installed(python)
    assert {"clusterpool-client", "httpx", "xxhash"} <= packages
    assert not packages & {"kopf", "kubernetes", "redis", "pydantic", "prometheus-client", "langchain-core"}
    probe = run(
        python,
        "-c",
        "import sys, clusterpool, clusterpool.client\n"
        "print(clusterpool.__version__, sorted(m for m in ('redis', 'kopf', 'kubernetes') if m in sys.modules))\n"
        "try:\n"
        "    clusterpool.client.PoolCache\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n",
    )
    assert probe.returncode == 0, probe.stderr
    first, second = probe.stdout.splitlines()
    assert first == f"{layout.version()} []"  # nothing heavy imported by `import clusterpool.client`
    assert "pip install 'clusterpool-client[redis]'" in second


@pytest.fixture
def llm_backends() -> Iterator[list[HTTPBackend]]:
    port = free_port()
    servers = [HTTPBackend(f"127.0.3.{i + 1}", port, name=f"llm-{i}").start() for i in range(3)]
    yield servers
    for server in servers:
        server.stop()


def routing_table(servers: list[HTTPBackend], models: list[str], cache: CacheSettings | None = None) -> str:
    return json.dumps({**labelled_table(servers, models), "cache": cache.to_json() if cache else None})


def test_the_sdk_examples_run_with_the_client_wheel_alone(client_wheel, tmp_path, llm_backends, redis_server):
    python = fresh_venv(
        tmp_path / "venv",
        client_wheel,
        "clusterpool-client[redis,langchain,gateway]",
        *release.EXAMPLE_REQUIREMENTS,  # what the examples themselves import
    )
    packages = installed(python)
    assert "kopf" not in packages and "kubernetes" not in packages
    assert run(python, "-c", "import kopf").returncode != 0
    assert run(python, "-c", "import kubernetes").returncode != 0
    # every module the wheel ships imports with the wheel's own dependencies and extras
    modules = sorted(
        ".".join(("clusterpool", *rel.with_suffix("").parts)).removesuffix(".__init__")
        for rel in layout.package_files()
        if rel.suffix == ".py" and layout.owner(rel) == layout.CLIENT
    )
    imported = run(python, "-c", f"import importlib\nfor m in {modules!r}: importlib.import_module(m)")
    assert imported.returncode == 0, imported.stderr

    table = tmp_path / "routing.json"
    table.write_text(routing_table(llm_backends, ["llama-3-8b", "qwen-2-7b", "llama-3-8b"]))
    openai_example = run(python, str(EXAMPLES / "openai_through_the_pool.py"), str(table))
    assert openai_example.returncode == 0, openai_example.stderr
    assert openai_example.stdout.startswith("hello from llm-")
    assert sum(s.requests for s in llm_backends) == 1

    by_label = run(python, str(EXAMPLES / "models_by_label.py"), str(table))
    assert by_label.returncode == 0, by_label.stderr
    replies = dict(line.split(" -> ") for line in by_label.stdout.splitlines())
    assert replies["qwen-2-7b"] == "hello from llm-1"  # the only endpoint labelled with that model
    assert replies["llama-3-8b"] in {"hello from llm-0", "hello from llm-2"}

    redis = redis_server()
    cache = CacheSettings(
        type="Layered", version=1, key_prefix="cp:apps/p:", redis=RedisSettings(address=redis.address)
    )
    table.write_text(routing_table(llm_backends, ["llama-3-8b"] * 3, cache))
    before = sum(s.requests for s in llm_backends)
    langchain_example = run(python, str(EXAMPLES / "langchain_cached_through_the_pool.py"), str(table))
    assert langchain_example.returncode == 0, langchain_example.stderr
    first, second = langchain_example.stdout.splitlines()
    assert first == second and first.startswith("hello from llm-")
    assert sum(s.requests for s in llm_backends) == before + 1  # the second answer came from the pool's cache
