"""LeastLoaded and PrefixAffinity over a view of engine load, and the affinity keys."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterpool.balancer import (
    LeastLoaded,
    NoEndpointError,
    PrefixAffinity,
    Target,
    affinity_key,
    make_balancer,
    rendezvous_order,
)
from clusterpool.balancer.prefix import block_hashes, prefix_key, prompt_text
from clusterpool.core.load import NO_SIGNAL, SATURATED, Load, LoadBound


class View:
    """A LoadView the test sets by hand: address -> Load (unset: no signal)."""

    def __init__(self, loads=None):
        self.loads = dict(loads or {})

    def load(self, address, port):
        return self.loads.get(address, NO_SIGNAL)


def targets(n):
    return [Target(f"e{i}", f"198.18.0.{i + 1}", 8000) for i in range(n)]


def test_least_loaded_takes_the_shortest_queue_and_least_kv_use():
    view = View({"198.18.0.1": Load(waiting=5, kv_usage=0.2), "198.18.0.2": Load(waiting=0, kv_usage=0.9),
                 "198.18.0.3": Load(waiting=0, kv_usage=0.1)})  # fmt: skip
    b = LeastLoaded(view)
    b.update(targets(3))
    assert {b.pick().name for _ in range(20)} == {"e2"}


def test_least_loaded_never_prefers_a_stale_reading_to_a_fresh_busy_one():
    view = View({"198.18.0.1": SATURATED, "198.18.0.2": Load(waiting=40, kv_usage=1.0)})
    b = LeastLoaded(view)
    b.update(targets(2))
    assert {b.pick().name for _ in range(20)} == {"e1"}


def test_least_loaded_counts_its_own_requests_in_flight_between_scrapes():
    b = LeastLoaded(View())
    b.update(targets(2))
    first = b.pick()
    b.started(first)
    assert b.pick().name != first.name


def test_without_a_view_the_load_strategies_work_on_in_flight_counts():
    for name in ("LeastLoaded", "PrefixAffinity"):
        b = make_balancer(name)
        with pytest.raises(NoEndpointError):
            b.pick("k")
        b.update(targets(3))
        t = b.pick("k")
        assert t.name in {"e0", "e1", "e2"}


def test_missing_gauges_are_reported_per_target():
    view = View({"198.18.0.1": Load(waiting=1, missing=("kvUsage",))})
    b = LeastLoaded(view)
    b.update(targets(2))
    assert b.missing_gauges() == {"e0": ("kvUsage",)}


def test_prefix_affinity_sends_a_prefix_to_one_endpoint_and_spreads_prefixes():
    b = PrefixAffinity(View())
    b.update(targets(4))
    chosen = {}
    for tenant in range(200):
        key = prefix_key(f"tenant {tenant} system prompt " * 20)
        picks = {b.pick(key).name for _ in range(5)}
        assert len(picks) == 1
        chosen[tenant] = picks.pop()
    counts = [list(chosen.values()).count(f"e{i}") for i in range(4)]
    assert min(counts) > 25, counts  # 200 prefixes over 4 endpoints: about 50 each


def test_prefix_affinity_moves_to_the_next_in_order_when_the_preferred_is_over_the_bound():
    ts = targets(4)
    key = "p:0123"
    order = [ts[i].name for i in rendezvous_order(key, ts)]
    view = View()
    b = PrefixAffinity(view, bound=LoadBound(waiting=4))
    b.update(ts)
    assert b.pick(key).name == order[0]
    view.loads[f"198.18.0.{int(order[0][1:]) + 1}"] = Load(waiting=5)
    assert b.pick(key).name == order[1]
    view.loads[f"198.18.0.{int(order[1][1:]) + 1}"] = SATURATED
    assert b.pick(key).name == order[2]


def test_a_session_id_wins_over_the_prompt():
    body = {"messages": [{"role": "user", "content": "hello"}]}
    assert affinity_key(body, "abc") == "s:abc"
    assert affinity_key(body) == prefix_key(prompt_text(body))
    assert affinity_key({}) is None


def test_chat_prompts_with_the_same_system_prompt_share_a_key():
    system = {"role": "system", "content": "You answer questions about the tenant's invoices. " * 10}
    a = affinity_key({"messages": [system, {"role": "user", "content": "Why is March high?"}]})
    b = affinity_key({"messages": [system, {"role": "user", "content": "Who paid in May?"}]})
    other = affinity_key({"messages": [{**system, "content": "Another tenant. " * 40}]})
    assert a == b != other


def test_block_hashes_are_chained():
    one = block_hashes("a" * 64 + "b" * 64)
    two = block_hashes("c" * 64 + "b" * 64)
    assert len(one) == 2 and one[1] != two[1]  # same second block, different prefix


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 12), leaving=st.integers(0, 11), keys=st.lists(st.text(min_size=1), min_size=50, max_size=200))
def test_when_an_endpoint_leaves_only_its_prefixes_move(n, leaving, keys):
    leaving %= n
    all_targets = targets(n)
    rest = [t for i, t in enumerate(all_targets) if i != leaving]
    before, after = PrefixAffinity(View()), PrefixAffinity(View())
    before.update(all_targets)
    after.update(rest)
    for key in keys:
        was, now = before.pick(key).name, after.pick(key).name
        if was != all_targets[leaving].name:
            assert now == was, key
    # and joining is the reverse: only keys the newcomer wins move, all of them to it
    for key in keys:
        was, now = after.pick(key).name, before.pick(key).name
        assert now in (was, all_targets[leaving].name)


@settings(max_examples=60, deadline=None)
@given(
    waits=st.lists(st.integers(0, 10), min_size=2, max_size=8),
    kvs=st.lists(st.floats(0, 1), min_size=8, max_size=8),
    key=st.text(min_size=1),
)
def test_the_load_bound_is_respected_whenever_some_endpoint_is_under_it(waits, kvs, key):
    bound = LoadBound(waiting=4, kv_usage=0.8)
    ts = targets(len(waits))
    view = View({t.address: Load(waiting=w, kv_usage=kvs[i]) for i, (t, w) in enumerate(zip(ts, waits, strict=True))})
    b = PrefixAffinity(view, bound=bound)
    b.update(ts)
    picked = b.pick(key)
    under = [t for t in ts if not bound.over(view.load(t.address, t.port), 0, 0.0)]
    if under:
        assert picked in under
        first_under = next(ts[i] for i in rendezvous_order(key, ts) if ts[i] in under)
        assert picked == first_under


def test_in_flight_bound_spreads_a_hot_prefix():
    b = PrefixAffinity(View(), bound=LoadBound(inflight_factor=1.5))
    b.update(targets(4))
    hot = prefix_key("the one tenant everybody uses " * 10)
    names = []
    for _ in range(12):
        t = b.pick(hot)
        b.started(t)
        names.append(t.name)
    assert len(set(names)) >= 2  # the bound moved the overflow on
    assert max(names.count(n) for n in set(names)) <= 6  # 1.5 x (mean 3 + 1)


def test_rendezvous_honours_weights():
    ts = [Target("heavy", "198.18.0.1", 8000, weight=3), Target("light", "198.18.0.2", 8000, weight=1)]
    firsts = [ts[rendezvous_order(f"k{i}", ts)[0]].name for i in range(4000)]
    share = firsts.count("heavy") / len(firsts)
    assert 0.70 < share < 0.80, share


CHOOSER = """
import json, sys
from clusterpool.balancer import PrefixAffinity, Target, affinity_key
b = PrefixAffinity()
b.update([Target(f"e{i}", f"198.18.0.{i + 1}", 8000) for i in range(8)])
prompts = json.loads(sys.stdin.read())
print(json.dumps([b.pick(affinity_key({"prompt": p})).name for p in prompts]))
"""


def test_three_processes_choose_alike_for_the_same_prefixes():
    prompts = [f"tenant {i}: " + "shared instructions " * (5 + i % 7) + f"question {i}" for i in range(300)]
    runs = []
    for seed in ("0", "1", "random"):  # different hash seeds: Python's hash() would differ
        env = {"PYTHONHASHSEED": seed, "PATH": ""}
        out = subprocess.run([sys.executable, "-c", CHOOSER], input=json.dumps(prompts), env=env,
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        runs.append(json.loads(out.stdout))
    assert runs[0] == runs[1] == runs[2]
    assert len(set(runs[0])) == 8


def test_load_weights_are_configurable():
    from clusterpool.core.load import LoadWeights

    view = View({"198.18.0.1": Load(waiting=2, kv_usage=0.0), "198.18.0.2": Load(waiting=0, kv_usage=0.9)})
    by_queue = LeastLoaded(view, LoadWeights(waiting=1.0, kv_usage=0.0))
    by_kv = LeastLoaded(view, replace(LoadWeights(), waiting=0.1, kv_usage=10.0))
    for b in (by_queue, by_kv):
        b.update(targets(2))
    assert by_queue.pick().name == "e1"
    assert by_kv.pick().name == "e0"


def test_prefix_affinity_keeps_the_keys_endpoint_while_nothing_is_known_of_any():
    ts = targets(4)
    b = PrefixAffinity(View({t.address: SATURATED for t in ts}))
    b.update(ts)
    key = "p:feed"
    assert b.pick(key) == ts[rendezvous_order(key, ts)[0]]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def served(b, clock, latency_of, requests=200, every=0.01):
    """`requests` one at a time, each answered after latency_of[name] seconds (the clock
    moves on by `every`): the picks, by name."""
    picks = []
    for _ in range(requests):
        clock.t += every
        t = b.pick()
        b.started(t)
        b.finished(t, latency_of[t.name])
        picks.append(t.name)
    return picks


def test_a_slow_endpoint_loses_against_an_equally_loaded_fast_one():
    # the engines report the same queue and KV use: only the latencies this process saw differ
    loads = {f"198.18.0.{i + 1}": Load(waiting=1, running=2, kv_usage=0.3) for i in range(4)}
    clock = Clock()
    b = LeastLoaded(View(loads), clock=clock)
    b.update(targets(4))
    for t in b.targets:  # one answer from each: e0 five times slower
        b.started(t)
        b.finished(t, 1.0 if t.name == "e0" else 0.2)
    clock.t += 1.0
    for t in b.targets[1:]:  # the fast ones even carry a request in flight more than the slow one
        b.started(t)
    picks = served(b, clock, {"e0": 1.0, "e1": 0.2, "e2": 0.2, "e3": 0.2}, requests=60)
    assert "e0" not in picks
    assert set(picks) == {"e1", "e2", "e3"}


def test_with_equal_latencies_the_order_is_that_of_the_load_alone():
    from clusterpool.core.load import LoadWeights

    loads = {f"198.18.0.{i + 1}": Load(waiting=i % 3, running=i, kv_usage=0.1 * i) for i in range(6)}
    clock = Clock()
    with_latency = LeastLoaded(View(loads), clock=clock)
    without = LeastLoaded(View(loads), replace(LoadWeights(), latency=0.0), clock=clock)
    for b in (with_latency, without):
        b.update(targets(6))
        for t in b.targets:
            b.started(t)
            b.finished(t, 0.3)
    clock.t += 0.5
    picks = []
    for _ in range(30):
        a, z = with_latency.pick(), without.pick()
        picks.append((a.name, z.name))
        for b, t in ((with_latency, a), (without, z)):
            b.started(t)
    assert all(a == z for a, z in picks)
    assert len({a for a, _ in picks}) > 1  # the in-flight counts moved the choice around


def test_a_slow_endpoint_is_tried_again_and_wins_back_its_share_once_fast():
    clock = Clock()
    b = LeastLoaded(View(), clock=clock)
    b.update(targets(4))
    slow = {"e0": 1.0, "e1": 0.2, "e2": 0.2, "e3": 0.2}
    served(b, clock, slow, requests=100)
    shunned = served(b, clock, slow, requests=200)
    assert shunned.count("e0") < 0.05 * len(shunned)
    clock.t += 30.0  # no answer from e0 for a while: its estimate decays, it is tried again
    fast = {name: 0.2 for name in slow}
    served(b, clock, fast, requests=50)
    back = served(b, clock, fast, requests=200)
    assert back.count("e0") > 0.15 * len(back)


def test_slowness_is_against_the_fleets_median_beyond_its_spread_and_ignores_the_unheard():
    from clusterpool.core.latency import relative_slowness

    assert relative_slowness([0.2, 0.2, 1.0, 0.2]) == [0.0, 0.0, 4.0, 0.0]
    assert relative_slowness([0.0, 0.1, 0.3, 0.1]) == pytest.approx([0.0, 0.0, 2.0, 0.0])
    assert relative_slowness([0.1, 0.3, 0.2]) == [0.0, 0.0, 0.0]  # within 1.5x the median: the spread
    assert relative_slowness([0.0, 5.0]) == [0.0, 0.0]  # one heard from: no fleet to compare with


def test_the_latency_estimate_means_the_same_for_an_endpoint_answering_often_or_seldom():
    from clusterpool.core.latency import LatencyEwma

    ewma, t = LatencyEwma(peak=False), 0.0
    for step in range(3001):  # 30 s: "often" answers every 10 ms, "seldom" every 2 s, all in 0.5 s
        t = step * 0.01
        ewma.observe("often", 0.5, True, t)
        if step % 200 == 0:
            ewma.observe("seldom", 0.5, True, t)
    assert ewma.estimate("often", t) == pytest.approx(0.5, rel=0.01)
    assert ewma.estimate("seldom", t) == pytest.approx(0.5, rel=0.01)


def test_a_slow_endpoint_tried_again_gets_one_request_until_it_answers():
    clock = Clock()
    b = LeastLoaded(View(), clock=clock)
    b.update(targets(4))
    for t in b.targets:  # e0 five times slower
        b.started(t)
        b.finished(t, 1.0 if t.name == "e0" else 0.2)
    for _ in range(60):  # 30 s of answers from the fast ones only: e0's estimate decays
        clock.t += 0.5
        for t in b.targets[1:]:
            b.started(t)
            b.finished(t, 0.2)
    picks = []
    for _ in range(12):  # requests arriving faster than anything answers
        clock.t += 0.01
        t = b.pick()
        b.started(t)
        picks.append(t.name)
    assert picks.count("e0") == 1, picks  # tried again, once, not once per free turn
