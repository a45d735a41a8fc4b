"""The gateway benchmark's verdicts and backend payloads: goals are judged only on rows that
were measured, and the backend answers what the benchmark says it does."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import gateway_backend
from gateway_bench import goal_verdicts, markdown_table


def measured(proxy: str, kind: str, per_core: int, added: tuple[float, float] = (100, 500)) -> dict:
    return {
        "proxy": proxy,
        "kind": kind,
        "available": True,
        "capacity": {
            "req_per_s": per_core // 2,
            "req_per_s_per_core": per_core,
            "cpu_us_per_request": 1e6 / per_core,
            "proxy_core_util": 0.5,
        },
        "half_capacity": {"req_per_s": per_core // 4, "added_p50_us": added[0], "added_p99_us": added[1]},
    }


def absent(proxy: str, kind: str) -> dict:
    return {"proxy": proxy, "kind": kind, "available": False, "reason": f"not available: {proxy}"}


def test_ratios_and_latency_are_judged_against_the_measured_peers_only() -> None:
    rows = [
        measured("gateway", "completion", 50_000, added=(250, 1500)),
        measured("haproxy", "completion", 90_000),
        absent("vllm-router", "completion"),
        measured("litellm-proxy", "completion", 100),
    ]
    verdicts = {g["goal"]: g for g in goal_verdicts(rows, [])}
    assert set(verdicts) == {
        "completion: share of HAProxy's req/s per core",
        "completion: times LiteLLM proxy's req/s per core",
        "completion: added latency p50 at half capacity",
        "completion: added latency p99 at half capacity",
    }
    assert verdicts["completion: share of HAProxy's req/s per core"]["met"]  # 0.556 >= 0.5
    assert verdicts["completion: times LiteLLM proxy's req/s per core"]["value"] == 500
    assert verdicts["completion: added latency p50 at half capacity"]["met"]
    assert not verdicts["completion: added latency p99 at half capacity"]["met"]


def test_a_negative_added_latency_is_not_judged() -> None:
    rows = [measured("gateway", "stream", 5_000, added=(120, -2_000))]
    verdicts = {g["goal"]: g["met"] for g in goal_verdicts(rows, [])}
    assert verdicts == {
        "stream: added latency p50 at half capacity": True,
        "stream: added latency p99 at half capacity": None,
    }


def test_without_the_gateway_no_goal_is_judged() -> None:
    rows = [absent("gateway", "completion"), measured("haproxy", "completion", 90_000)]
    rss = [{"proxy": "gateway", "available": False, "reason": "not available"}]
    assert goal_verdicts(rows, rss) == []


def test_memory_goal_needs_all_1000_streams_open() -> None:
    def rss(opened: int, requested: int = 1000) -> list[dict]:
        return [{"proxy": "gateway", "available": True, "streams_requested": requested, "streams_open": opened,
                 "idle_mib": 40.0, "open_mib": 60.0}]  # fmt: skip

    assert goal_verdicts([], rss(1000))[0]["met"]
    assert not goal_verdicts([], rss(999))[0]["met"]
    assert goal_verdicts([], rss(100, requested=100)) == []  # a quick run's 100 streams judge nothing


def test_table_shows_the_reason_for_a_proxy_that_did_not_run() -> None:
    results = {"rows": [absent("gateway", "stream"), measured("haproxy", "stream", 10_000)], "rss": []}
    table = markdown_table(results)
    assert "| gateway | stream | not available: gateway |" in table
    assert "| haproxy | stream | 5,000 | 50% | 10,000 | 100.0 us | 100 / 500 us at 2,500/s |" in table


def test_backend_answers_a_290_byte_completion_and_100_sse_chunks() -> None:
    assert len(gateway_backend.COMPLETION) == gateway_backend.COMPLETION_BYTES == 290
    assert json.loads(gateway_backend.COMPLETION)["object"] == "chat.completion"
    events = []
    for chunk in gateway_backend.STREAM_BODY:
        size, rest = chunk.split(b"\r\n", 1)
        assert int(size, 16) == len(rest) - 2  # one HTTP chunk per SSE event
        events.append(json.loads(rest[len(b"data: ") :].strip()))
    assert len(events) == 100
    assert [e["choices"][0]["finish_reason"] for e in events[-2:]] == [None, "stop"]
