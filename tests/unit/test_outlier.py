"""Passive outlier detection (client/outlier.py), with Envoy's semantics, on a fake clock."""

from __future__ import annotations

from clusterpool.client.outlier import ERROR_5XX, GATEWAY_FAILURE, SUCCESS, OutlierDetector, OutlierSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def detector(names: int = 4, **settings: float) -> tuple[OutlierDetector, Clock]:
    clock = Clock()
    d = OutlierDetector(OutlierSettings(**settings), clock)  # type: ignore[arg-type]
    d.retain([f"e{i}" for i in range(names)])
    return d, clock


def test_consecutive_5xx_eject_and_a_success_resets_the_count():
    d, _ = detector(consecutive_5xx=3)
    assert d.record("e0", ERROR_5XX) == () and d.record("e0", ERROR_5XX) == ()
    d.record("e0", SUCCESS)
    d.record("e0", ERROR_5XX)
    d.record("e0", ERROR_5XX)
    assert d.admits("e0")
    assert d.record("e0", ERROR_5XX) == ("e0",)
    assert not d.admits("e0") and d.ejected("e0") and d.avoid() == {"e0"}


def test_consecutive_gateway_failures_eject_and_a_500_breaks_the_run():
    d, _ = detector(consecutive_5xx=100, consecutive_gateway_failure=2)
    d.record("e1", GATEWAY_FAILURE)
    d.record("e1", ERROR_5XX)  # counts as 5xx, breaks the gateway-failure run
    d.record("e1", GATEWAY_FAILURE)
    assert d.admits("e1")
    assert d.record("e1", GATEWAY_FAILURE) == ("e1",)


def test_ejection_time_grows_with_each_ejection_up_to_the_max_and_shrinks_while_healthy():
    d, clock = detector(consecutive_5xx=1, base_ejection_seconds=10, max_ejection_seconds=25, interval_seconds=5)
    lengths = []
    for _ in range(3):
        d.record("e0", ERROR_5XX)
        start = clock.now
        while d.ejected("e0"):
            clock.now += 1
        lengths.append(clock.now - start)
    assert lengths == [10, 20, 25]
    for _ in range(3):  # three intervals served well: the multiplier is back to zero
        clock.now += 5
        d.record("e0", SUCCESS)
    d.record("e0", ERROR_5XX)
    start = clock.now
    while d.ejected("e0"):
        clock.now += 1
    assert clock.now - start == 10


def test_max_ejection_percent_and_at_least_one():
    d, _ = detector(names=3, consecutive_5xx=1, max_ejection_percent=10)
    assert d.record("e0", ERROR_5XX) == ("e0",)  # one may always go
    assert d.record("e1", ERROR_5XX) == ()  # a second would be 67% > 10%
    d2, _ = detector(names=4, consecutive_5xx=1, max_ejection_percent=50, panic_threshold_percent=0)
    assert d2.record("e0", ERROR_5XX) == ("e0",)
    assert d2.record("e1", ERROR_5XX) == ("e1",)
    assert d2.record("e2", ERROR_5XX) == ()


def test_panic_admits_everyone_when_too_few_are_left():
    d, _ = detector(names=2, consecutive_5xx=1, panic_threshold_percent=60)
    d.record("e0", ERROR_5XX)
    assert d.ejected("e0")
    assert d.admits("e0") and d.in_panic()  # 50% admitted < 60%: route to all


def test_failure_percentage_is_evaluated_per_interval():
    d, clock = detector(
        names=5,
        consecutive_5xx=0,
        consecutive_gateway_failure=0,
        failure_percentage_threshold=50,
        failure_percentage_minimum_hosts=5,
        failure_percentage_request_volume=10,
        interval_seconds=10,
    )
    for name in ("e0", "e1", "e2", "e3", "e4"):
        for i in range(10):
            d.record(name, ERROR_5XX if name == "e4" and i < 6 else SUCCESS)
    assert d.admits("e4")
    clock.now += 10
    assert d.record("e0", SUCCESS) == ("e4",)
    assert not d.admits("e4")


def test_back_off_keeps_traffic_off_without_an_ejection():
    d, clock = detector(names=3, max_back_off_seconds=30)
    d.back_off("e2", 5)
    assert not d.admits("e2") and not d.ejected("e2")
    clock.now += 5.01
    assert d.admits("e2")
    d.back_off("e2", 1000)
    clock.now += 30.01
    assert d.admits("e2")  # capped


def test_endpoints_that_leave_the_table_are_forgotten():
    d, _ = detector(names=2, consecutive_5xx=1)
    d.record("e0", ERROR_5XX)
    d.retain(["e1", "e9"])
    assert d.avoid() == frozenset() and d.record("e0", ERROR_5XX) == ()
