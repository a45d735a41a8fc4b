"""The gateway's command line: every flag also settable as $CLUSTERPOOL_GATEWAY_<FLAG>."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from clusterpool.client.outlier import OutlierSettings

ENV_PREFIX = "CLUSTERPOOL_GATEWAY_"


@dataclass(frozen=True)
class Limits:
    """What one client may send, and how long it may take (seconds, bytes)."""

    max_request_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_body_bytes: int = 16 << 20
    header_timeout: float = 10.0  # the whole head must arrive within this (slowloris)
    body_timeout: float = 60.0  # the whole body, once the head is in
    keepalive_timeout: float = 30.0  # an idle connection between requests
    max_connections: int = 10000
    max_in_flight_per_pool: int = 2048


@dataclass(frozen=True)
class Timeouts:
    """Per attempt upstream: connect, first byte (response head), idle between chunks;
    whole request: from the request's arrival to the last byte (0: none)."""

    connect: float = 2.0
    first_byte: float = 300.0
    idle: float = 60.0
    request: float = 900.0


@dataclass(frozen=True)
class Settings:
    listen: tuple[str, int] = ("0.0.0.0", 8080)
    admin_listen: tuple[str, int] = ("0.0.0.0", 9091)
    namespaces: tuple[str, ...] = ()
    routing_files: tuple[str, ...] = ()
    api_keys_secret: tuple[str, str] | None = None
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    outliers: OutlierSettings = field(default_factory=OutlierSettings)
    retries: int = 2
    retry_budget_ratio: float = 0.2
    retry_budget_burst: float = 10.0
    upstream_idle_connections: int = 256  # kept-alive connections per endpoint
    grace_seconds: float = 25.0  # after SIGTERM, in-flight requests may finish within this
    drain_delay_seconds: float = 0.0  # after SIGTERM, keep accepting this long while readiness is false
    access_log: bool = True
    log_bodies: bool = False
    tick_seconds: float = 0.1  # how often timeouts are checked (their precision) and the access log written


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (for example 0.0.0.0:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)


def namespaced(text: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME (for example clusterpool/gateway-keys)")
    return ns, name


def _env(flag: str) -> str | None:
    return os.environ.get(ENV_PREFIX + flag.upper().replace("-", "_"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clusterpool.gateway",
        description="An OpenAI-compatible HTTP/1.1 gateway in front of ClusterPools (docs/gateway.md). "
        f"Every flag can also be set as ${ENV_PREFIX}<FLAG> (dashes as underscores; lists space-separated).",
    )

    def add(flag: str, default: object, help_: str, type_: object = None, **kw: object) -> None:
        env = _env(flag)
        if env is not None:
            if kw.get("action") == "append":
                default = [type_(v) if callable(type_) else v for v in env.split()]
            elif kw.get("action") == argparse.BooleanOptionalAction:
                default = env.lower() in ("1", "true", "yes", "on")
            else:
                default = type_(env) if callable(type_) else env
        if type_ is not None:
            kw["type"] = type_
        p.add_argument(f"--{flag}", default=default, help=help_, **kw)  # type: ignore[arg-type]

    d, lim, t, o = Settings(), Limits(), Timeouts(), OutlierSettings()
    add("listen", d.listen, "HOST:PORT for clients (default 0.0.0.0:8080)", host_port)
    add("admin-listen", d.admin_listen, "HOST:PORT for /metrics, /healthz, /readyz (default 0.0.0.0:9091)", host_port)
    add("namespace", [], "follow the routing ConfigMaps of this namespace (repeatable)", str, action="append")
    add("routing-file", [], "a routing-table JSON file to serve (repeatable; re-read on change)", str, action="append")
    add("api-keys-secret", None, "NAMESPACE/NAME of a Secret of API keys (docs/gateway.md)", namespaced)
    for name, default, help_ in (
        ("max-request-line", lim.max_request_line, "bytes of the request line"),
        ("max-header-bytes", lim.max_header_bytes, "bytes of all request headers"),
        ("max-headers", lim.max_headers, "number of request headers"),
        ("max-body-bytes", lim.max_body_bytes, "bytes of a request body"),
        ("max-connections", lim.max_connections, "client connections open at once"),
        ("max-in-flight-per-pool", lim.max_in_flight_per_pool, "requests in flight per pool"),
        ("retries", d.retries, "retries on another endpoint before the first response byte"),
        ("upstream-idle-connections", d.upstream_idle_connections, "kept-alive connections per endpoint"),
        ("consecutive-5xx", o.consecutive_5xx, "outlier detection: 5xx in a row that eject (0: off)"),
        ("consecutive-gateway-failure", o.consecutive_gateway_failure, "gateway failures in a row that eject"),
        ("failure-percentage-threshold", o.failure_percentage_threshold, "failure %% that ejects (0: off)"),
        ("failure-percentage-minimum-hosts", o.failure_percentage_minimum_hosts, "endpoints needed for it"),
        ("failure-percentage-request-volume", o.failure_percentage_request_volume, "requests per interval needed"),
        ("max-ejection-percent", o.max_ejection_percent, "most endpoints ejected at once, %%"),
        ("panic-threshold-percent", o.panic_threshold_percent, "below this %% admitted, all are admitted"),
    ):
        add(name, default, f"{help_} (default {default})", int)
    for name, seconds, help_ in (
        ("header-timeout", lim.header_timeout, "seconds for a request's head to arrive (slowloris)"),
        ("body-timeout", lim.body_timeout, "seconds for a request's body to arrive"),
        ("keepalive-timeout", lim.keepalive_timeout, "seconds an idle client connection stays open"),
        ("connect-timeout", t.connect, "seconds to connect to an endpoint"),
        ("first-byte-timeout", t.first_byte, "seconds for an endpoint's response head (per attempt)"),
        ("idle-timeout", t.idle, "seconds allowed between two chunks of a response"),
        ("request-timeout", t.request, "seconds for a whole request (0: none)"),
        ("retry-budget-ratio", d.retry_budget_ratio, "retries may add this fraction of requests"),
        ("retry-budget-burst", d.retry_budget_burst, "plus this many"),
        ("outlier-interval", o.interval_seconds, "seconds between failure-percentage evaluations"),
        ("base-ejection-time", o.base_ejection_seconds, "seconds of the first ejection"),
        ("max-ejection-time", o.max_ejection_seconds, "longest ejection, seconds"),
        ("max-back-off", o.max_back_off_seconds, "longest back-off for an overloaded endpoint, seconds"),
        ("grace-period", d.grace_seconds, "seconds in-flight requests get after SIGTERM"),
        ("drain-delay", d.drain_delay_seconds, "seconds to keep accepting after SIGTERM, not ready"),
        ("tick", d.tick_seconds, "seconds between timeout checks (and access-log writes)"),
    ):
        add(name, seconds, f"{help_} (default {seconds})", float)
    add("access-log", d.access_log, "one JSON line per request on stdout", None, action=argparse.BooleanOptionalAction)
    add("log-bodies", d.log_bodies, "put request bodies (prompts) in the access log", None,
        action=argparse.BooleanOptionalAction)  # fmt: skip
    return p


def parse(argv: Sequence[str] | None = None) -> Settings:
    p = parser()
    a = p.parse_args(argv)
    if not a.namespace and not a.routing_file:
        p.error("nothing to serve: give --namespace NS (routing ConfigMaps) or --routing-file PATH, or both")
    return Settings(
        listen=a.listen,
        admin_listen=a.admin_listen,
        namespaces=tuple(a.namespace),
        routing_files=tuple(a.routing_file),
        api_keys_secret=a.api_keys_secret,
        limits=Limits(
            a.max_request_line,
            a.max_header_bytes,
            a.max_headers,
            a.max_body_bytes,
            a.header_timeout,
            a.body_timeout,
            a.keepalive_timeout,
            a.max_connections,
            a.max_in_flight_per_pool,
        ),
        timeouts=Timeouts(a.connect_timeout, a.first_byte_timeout, a.idle_timeout, a.request_timeout),
        outliers=OutlierSettings(
            a.consecutive_5xx,
            a.consecutive_gateway_failure,
            a.failure_percentage_threshold,
            a.failure_percentage_minimum_hosts,
            a.failure_percentage_request_volume,
            a.outlier_interval,
            a.base_ejection_time,
            a.max_ejection_time,
            a.max_ejection_percent,
            a.panic_threshold_percent,
            a.max_back_off,
        ),
        retries=a.retries,
        retry_budget_ratio=a.retry_budget_ratio,
        retry_budget_burst=a.retry_budget_burst,
        upstream_idle_connections=a.upstream_idle_connections,
        grace_seconds=a.grace_period,
        drain_delay_seconds=a.drain_delay,
        access_log=a.access_log,
        log_bodies=a.log_bodies,
        tick_seconds=a.tick,
    )
