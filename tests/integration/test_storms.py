"""A write and Event storm, bounded: a fleet of pools whose backends fail and recover
together, every few seconds, for minutes. Counted from the API server's side (watches
on the pools and on their Events: every stored change is one event of the watch), the
status writes and Event writes per pool per minute stay within the budget that
docs/reliability.md ("Write and Event budget") states.
"""

import collections
import threading
import time

import kubernetes

from clusterpool import api
from clusterpool.k8s.events import BURST, REFILL_SECONDS
from conftest import endpoints_of, wait_for

POOLS = 40
INTERVAL = 2  # seconds between probe rounds
FLIP = 5  # seconds between the backends' flips (healthy -> failing -> healthy ...)
MEASURE = 180  # seconds of flapping measured

# The budget, per pool per minute (docs/reliability.md):
ROUNDS_PER_MINUTE = 60 / INTERVAL
STATUS_WRITES = 2 * ROUNDS_PER_MINUTE  # two per probe round: on the first health change, at the round's end
# Event writes, creations and count updates together: the per-pool token bucket, BURST
# then one per REFILL_SECONDS (so also the new Event objects over the pools' life)


class WriteCounter:
    """Counts, per pool, the changes the API server stores: ClusterPool modifications
    and Event creations/updates (each seen as one watch event)."""

    def __init__(self, k8s, namespace):
        self.custom = kubernetes.client.CustomObjectsApi(k8s)
        self.core = kubernetes.client.CoreV1Api(k8s)
        self.namespace = namespace
        self.status = collections.Counter()
        self.events = collections.Counter()
        self.unready = collections.Counter()  # Ready True -> False, as stored
        self._ready: dict[str, str] = {}
        self.counting = False
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._follow, args=(self._pools, self.status), daemon=True),
            threading.Thread(target=self._follow, args=(self._events, self.events), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pools(self, **kw):
        return self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, **kw)

    def _events(self, **kw):
        return self.core.list_namespaced_event(self.namespace, **kw)

    def _follow(self, lister, counts):
        rv = None
        while not self._stop.is_set():
            w = kubernetes.watch.Watch()
            try:
                if rv is None:  # start after what exists: only changes count
                    listed = lister()
                    meta = listed["metadata"] if isinstance(listed, dict) else None
                    rv = meta["resourceVersion"] if meta else listed.metadata.resource_version
                for ev in w.stream(lister, resource_version=rv, timeout_seconds=10):
                    obj = ev["object"]
                    if not isinstance(obj, dict):
                        obj = obj.to_dict(serialize=True)
                    rv = obj["metadata"]["resourceVersion"]
                    pool = (obj.get("involvedObject") or obj["metadata"])["name"]  # an Event's pool, or the pool
                    if self.counting and ev["type"] in ("ADDED", "MODIFIED"):
                        counts[pool] += 1
                    if "involvedObject" not in obj:
                        self._follow_ready(pool, obj)
                    if self._stop.is_set():
                        break
            except Exception:  # an expired resourceVersion or a dropped stream: list again
                rv = None
                time.sleep(0.2)

    def _follow_ready(self, pool, obj):
        ready = next((c["status"] for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), "")
        if self.counting and self._ready.get(pool) == "True" and ready == "False":
            self.unready[pool] += 1
        self._ready[pool] = ready

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


def test_a_fleet_flapping_together_stays_within_the_write_and_event_budget(pools, http_backends, k8s):
    backends = http_backends(2)
    names = [f"s{i:02d}" for i in range(POOLS)]
    created = time.monotonic()
    for name in names:
        pools.create(
            name,
            {
                "discovery": {"static": {"endpoints": endpoints_of(backends)}},
                "healthCheck": {
                    "intervalSeconds": INTERVAL,
                    "timeoutSeconds": 1,
                    "healthyThreshold": 1,
                    "unhealthyThreshold": 1,
                    "http": {},
                },
                "failover": {"circuitBreaker": {"openSeconds": 2, "maxOpenSeconds": 4}},
            },
        )
    for name in names:
        pools.wait_ready(name, healthy=2, timeout=120)
    counter = WriteCounter(k8s, pools.namespace)
    try:
        time.sleep(2)  # the watches are up
        counter.counting = True
        started = time.monotonic()
        flips = 0
        while time.monotonic() - started < MEASURE:
            mode = "fail" if flips % 2 == 0 else "ok"
            for b in backends:
                b.mode = mode
            flips += 1
            time.sleep(FLIP)
        counter.counting = False
        minutes = (time.monotonic() - started) / 60
        for b in backends:
            b.mode = "ok"
    finally:
        counter.stop()
    # the storm happened: every pool went unready and back many times
    for name in names:
        wait_for(lambda n=name: pools.condition(n, "Ready").get("status") == "True", 120, f"{name} Ready again")
    not_ready = {n: counter.unready[n] for n in names}

    status = {n: counter.status[n] / minutes for n in names}
    events = {n: counter.events[n] / minutes for n in names}
    event_budget = BURST + minutes * 60 / REFILL_SECONDS  # over the measured minutes
    objects = {n: len(pools.events(n)) for n in names}
    lifetime = (time.monotonic() - created) / 60  # the bucket refills over the pools' whole life
    print(
        f"\n{POOLS} pools, {flips} flips in {minutes:.1f} min; per pool per minute: status writes "
        f"max {max(status.values()):.1f} mean {sum(status.values()) / POOLS:.1f} (budget {STATUS_WRITES:g}); "
        f"Event writes max {max(events.values()):.1f} mean {sum(events.values()) / POOLS:.1f} "
        f"(budget {BURST} + {60 / REFILL_SECONDS:g}/min = {event_budget / minutes:.1f}/min); "
        f"Event objects per pool max {max(objects.values())} "
        f"(budget {BURST} + {60 / REFILL_SECONDS:g}/min = {BURST + lifetime * 60 / REFILL_SECONDS:.0f}); "
        f"Ready True->False per pool min {min(not_ready.values())}"
    )
    assert min(not_ready.values()) >= flips // 8, f"too few transitions to call it a storm: {not_ready}"
    assert max(status.values()) <= STATUS_WRITES, status
    assert max(counter.events[n] for n in names) <= event_budget, counter.events
    assert max(objects.values()) <= BURST + lifetime * 60 / REFILL_SECONDS, objects
