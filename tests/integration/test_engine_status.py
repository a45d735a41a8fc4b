"""The engines' load in a pool's status, against the real apiserver and the operator process,
with fake engines (scripts/fake_engine.py) as the backends: the queue each engine reports is
shown per endpoint and summed in `-o wide`, it rides along on writes the operator makes
anyway (a change of the queue alone writes nothing), and a gauge the engine lacks is absent
with a reason, read at the normal pace (no error loop)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pytest
from fake_engines import Engine, in_background

from clusterpool import api
from clusterpool.core.health import Endpoint
from clusterpool.core.load import EngineReading
from clusterpool.core.status import parse_rfc3339
from clusterpool.health.load import load_reader_for
from conftest import Kubectl, OperatorProcess, Pools, wait_for

CHECK = {"intervalSeconds": 2, "timeoutSeconds": 1, "healthyThreshold": 1, "unhealthyThreshold": 1, "http": {}}
HUNG = {"prompt": "hello " * 20, "max_tokens": 5}


class StatusWrites:
    """Every status of one pool the API server stores, in order, as a watch sees them."""

    def __init__(self, k8s: kubernetes.client.ApiClient, namespace: str, name: str) -> None:
        self.custom = kubernetes.client.CustomObjectsApi(k8s)
        self.namespace, self.name = namespace, name
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self.following = threading.Event()  # set once it has listed: every later change is seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        assert self.following.wait(10), "the pool could not be listed"

    def _list(self, **kw: Any) -> Any:
        return self.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, field_selector=f"metadata.name={self.name}", **kw
        )

    def _follow(self) -> None:
        rv = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = self._list()
                    rv = listed["metadata"]["resourceVersion"]
                    self.seen += [(time.monotonic(), i.get("status") or {}) for i in listed["items"]]
                    self.following.set()
                for ev in kubernetes.watch.Watch().stream(self._list, resource_version=rv, timeout_seconds=5):
                    rv = ev["object"]["metadata"]["resourceVersion"]
                    self.seen.append((time.monotonic(), ev["object"].get("status") or {}))
                    if self._stop.is_set():
                        break
            except Exception:  # an expired version or a dropped stream: list again
                rv = None
                time.sleep(0.2)

    def window(self, start: float, end: float) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(before, after) of each status change stored between start and end."""
        pairs = list(zip(self.seen, self.seen[1:], strict=False))
        return [(a, b) for (_, a), (t, b) in pairs if start <= t < end and a != b]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def but_load(status: dict[str, Any]) -> dict[str, Any]:
    """The status without status.load and status.endpoints[].load (written here, not taken
    from the code under test)."""
    out = {k: v for k, v in status.items() if k != "load"}
    out["endpoints"] = [{k: v for k, v in e.items() if k != "load"} for e in status.get("endpoints") or []]
    return out


def endpoint(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next((e for e in status.get("endpoints") or [] if e["name"] == name), {})


def wide_row(kubectl: Kubectl, pools: Pools, name: str) -> dict[str, str]:
    """The row by column name, cut at the header's offsets (an empty cell prints nothing)."""
    header, row = kubectl("get", "clusterpool", name, "-n", pools.namespace, "-o", "wide").stdout.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def flip(engine: Engine, pools: Pools, pool: str, ep: str, healthy: bool) -> None:
    """Turn an endpoint's health over and wait for the status to say so (a write the
    operator makes for a reason of its own)."""
    engine.faults(healthy=healthy)
    want = "Healthy" if healthy else "Unhealthy"
    wait_for(lambda: endpoint(pools.status(pool), ep).get("health") == want, 15, f"{ep} {want} in status")


def test_the_queue_rides_along_on_existing_writes_and_shows_in_wide(
    pools: Pools, engines: Any, k8s: kubernetes.client.ApiClient, kubectl: Kubectl
) -> None:
    busy = engines("vllm", "--max-running", "1")  # one request runs (its first token never comes), the rest wait
    idle = engines("vllm")
    spare = engines("vllm")  # turned unhealthy and back: writes the operator makes anyway
    busy.faults(hang_first_token=True)
    named = (("busy", busy), ("idle", idle), ("spare", spare))
    eps = [{"name": n, "address": e.host, "port": e.port} for n, e in named]
    pools.create("engines", {"engine": "vLLM", "healthCheck": CHECK, "discovery": {"static": {"endpoints": eps}}})
    pools.wait_ready("engines", healthy=3)
    writes = StatusWrites(k8s, pools.namespace, "engines")
    try:
        in_background(busy, 3, HUNG)
        wait_for(lambda: busy.stats()["waiting"] == 2, 10, "1 running and 2 waiting on busy")

        # A window with the queue constant, then one of the same length with it changing.
        window = 12.0
        constant = (time.monotonic(), time.monotonic() + window)
        time.sleep(window)
        changing_start = time.monotonic()
        for more in (3, 3, 3):
            in_background(busy, more, HUNG)
            time.sleep(window / 3)
        changing = (changing_start, time.monotonic())
        assert busy.stats()["waiting"] == 11
        constant_writes, changing_writes = writes.window(*constant), writes.window(*changing)
        load_only = [
            (a.get("load"), b.get("load")) for a, b in constant_writes + changing_writes if but_load(a) == but_load(b)
        ]
        assert load_only == [], f"status writes that changed nothing but the load: {load_only}"
        # a paced informational write (a latency that moved) may fall in either window
        assert len(changing_writes) <= len(constant_writes) + 1, (constant_writes, changing_writes)

        # A write made for a reason of its own carries the latest reading (read every 3 rounds).
        def written() -> dict[str, Any] | None:
            flip(spare, pools, "engines", "spare", healthy=False)
            status = pools.status("engines")
            if endpoint(status, "busy")["load"]["waiting"] == 11:
                return status
            flip(spare, pools, "engines", "spare", healthy=True)
            return None

        status = wait_for(written, 40, "the queue of 11 written along with a health change", interval=1)
        load = endpoint(status, "busy")["load"]
        assert load["running"] == 1 and load["kvCacheUsagePercent"] >= 0 and "reason" not in load, load
        read_at = parse_rfc3339(load["readAt"])
        assert read_at is not None and 0 <= (datetime.now(UTC) - read_at).total_seconds() < 60, load
        assert endpoint(status, "idle")["load"]["waiting"] == 0
        assert "load" not in endpoint(status, "spare")  # not serving: not shown, not summed
        assert (status["load"]["waiting"], status["load"]["running"], status["load"]["reporting"]) == (11, 1, 2)
        row = wide_row(kubectl, pools, "engines")
        assert row["WAITING"] == "11" and row["LOAD-READ"].endswith("s"), row  # the oldest reading's age
    finally:
        writes.stop()


def test_a_missing_gauge_is_absent_with_a_reason_and_read_at_the_normal_pace(
    pools: Pools, engines: Any, operator: OperatorProcess
) -> None:
    tgi = engines("tgi")  # TGI's metric names under the vLLM profile: its gauges are missing
    spare = engines("vllm")
    eps = [{"name": "tgi", "address": tgi.host, "port": tgi.port}, {"name": "spare", "address": spare.host,
           "port": spare.port}]  # fmt: skip
    mark = operator.log_mark()
    pools.create("mislabelled", {"engine": "vLLM", "healthCheck": CHECK, "discovery": {"static": {"endpoints": eps}}})
    pools.wait_ready("mislabelled", healthy=2)
    logged = f"engine load of tgi ({tgi.host}:{tgi.port}) not read in full"
    wait_for(lambda: logged in operator.log_since(mark), 15, "the first reading of tgi")
    flip(spare, pools, "mislabelled", "spare", healthy=False)
    first = endpoint(pools.status("mislabelled"), "tgi")["load"]
    assert first["reason"] == "GaugesMissing" and "vllm:num_requests_waiting" in first["message"]
    assert not {"waiting", "running", "kvCacheUsagePercent"} & set(first)
    assert pools.status("mislabelled")["load"] == {"waiting": 0, "running": 0, "reporting": 0}

    def read_again() -> bool:  # another write, after another reading (every 5 s)
        flip(spare, pools, "mislabelled", "spare", healthy=True)
        flip(spare, pools, "mislabelled", "spare", healthy=False)
        return bool(endpoint(pools.status("mislabelled"), "tgi")["load"]["readAt"] > first["readAt"])

    wait_for(read_again, 30, "a later reading written", interval=2)
    assert operator.log_since(mark).count(logged) == 1  # said once, not at every reading
    assert pools.condition("mislabelled", "Ready")["status"] == "True"


@pytest.mark.parametrize(("mode", "engine"), [("sglang", "SGLang"), ("tgi", "TGI"), ("llamacpp", "LlamaCpp")])
def test_each_profiles_queue_reaches_the_status(pools: Pools, engines: Any, mode: str, engine: str) -> None:
    busy = engines(mode, "--max-running", "1")
    spare = engines(mode)
    busy.faults(hang_first_token=True)
    in_background(busy, 3, HUNG)
    wait_for(lambda: busy.stats()["waiting"] == 2, 10, "1 running and 2 waiting")
    eps = [{"name": "busy", "address": busy.host, "port": busy.port}, {"name": "spare", "address": spare.host,
           "port": spare.port}]  # fmt: skip
    pools.create("p", {"engine": engine, "healthCheck": CHECK, "discovery": {"static": {"endpoints": eps}}})
    pools.wait_ready("p", healthy=2)

    def written() -> bool:
        flip(spare, pools, "p", "spare", healthy=False)
        flip(spare, pools, "p", "spare", healthy=True)
        return bool(endpoint(pools.status("p"), "busy").get("load"))

    wait_for(written, 30, "a reading written", interval=1)
    load = endpoint(pools.status("p"), "busy")["load"]
    assert (load["waiting"], load["running"]) == (2, 1) and "reason" not in load, load


def test_the_reader_reads_serving_endpoints_when_due_and_a_refusal_is_a_reason(engines: Any) -> None:
    engine = engines("vllm")
    spec = api.parse_spec(
        {"engine": "vLLM", "healthCheck": CHECK,
         "discovery": {"static": {"endpoints": [{"name": "e", "address": engine.host, "port": engine.port}]}}}
    )  # fmt: skip
    reader = load_reader_for(spec)
    assert reader is not None
    members = (Endpoint("e", engine.host, engine.port),)

    async def rounds() -> list[EngineReading | None]:
        seen = []
        await reader.read(members, serving=set())  # not serving: not read, and the read stays due
        seen.append(reader.readings.get("e"))
        for _ in range(4):  # every 3rd round at a 2 s interval: read in the 1st and 4th
            await reader.read(members, serving={"e"})
            seen.append(reader.readings.get("e"))
        engine.stop()
        for _ in range(3):
            await reader.read(members, serving={"e"})
        seen.append(reader.readings.get("e"))
        reader.close()
        return seen

    idle, first, kept, kept2, second, refused = asyncio.run(rounds())
    assert idle is None and first is not None and first.load is not None and first.load.waiting == 0
    assert kept is first and kept2 is first and second is not first
    assert refused is not None and refused.load is None and refused.reason == "ConnectionRefused", refused
