"""bench/gateway_bench.py --quick end to end: real backend, real wrk, real HAProxy on loopback;
a proxy that is not installed gets a "not available" row and no number."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "gateway.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gateway_bench.py"), "--quick", "--no-plot", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    for tool in ("wrk", "haproxy", "taskset"):
        assert shutil.which(tool), f"{tool} is not installed: make bench-tools installs wrk and haproxy"
    return run_bench(
        tmp_path_factory.mktemp("bench"),
        "--proxies",
        "direct,haproxy,gateway",
        "--gateway-cmd",
        "python -m clusterpool.no_such_gateway",
    )


def rows(results: dict, proxy: str) -> list[dict]:
    return [r for r in results["rows"] if r["proxy"] == proxy]


def test_direct_rows_measure_the_backend_for_both_kinds(quick: dict) -> None:
    direct = rows(quick, "direct")
    assert [r["kind"] for r in direct] == ["completion", "stream"]
    for r in direct:
        assert r["available"], r
        assert r["capacity"]["req_per_s"] > 50, r
        assert r["capacity"]["errors"] == 0, r
        assert r["capacity"]["cpu_us_per_request"] > 0, r


def test_a_proxy_gets_capacity_cpu_added_latency_and_rss(quick: dict) -> None:
    for r in rows(quick, "haproxy"):
        assert r["available"], r
        c = r["capacity"]
        assert c["req_per_s_per_core"] >= c["req_per_s"] * 0.9, c  # it never uses more than its one core
        assert c["cpu_us_per_request"] == pytest.approx(1e6 / c["req_per_s_per_core"], rel=0.01)
        half = r["half_capacity"]
        assert half["added_p50_us"] == half["p50_us"] - half["direct_p50_us"]
        assert half["req_per_s"] > 0
    (rss,) = [m for m in quick["rss"] if m["proxy"] == "haproxy"]
    assert rss["streams_open"] == rss["streams_requested"] == 100
    assert rss["open_mib"] > 0


def test_a_missing_proxy_is_reported_not_measured(quick: dict) -> None:
    for r in rows(quick, "gateway"):
        assert not r["available"]
        assert "not available" in r["reason"] and "no_such_gateway" in r["reason"]
        assert "capacity" not in r
    assert quick["goals"] == []  # no goal is judged without the gateway's numbers
    assert quick["versions"]["haproxy"].startswith("HAProxy version")
    assert quick["machine"]["load_average_before"]
