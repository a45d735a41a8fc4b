"""Consul discovery: the health of a service's instances, followed with blocking queries.

`members_from_consul` (pure) maps one answer of /v1/health/service/<name>; ConsulWatcher
(the adapter) keeps a blocking query open, per Consul's rules: send the last
X-Consul-Index as `index` with a `wait`; a return does not mean a change, so compare;
if the index goes backwards, start over from 0. While Consul cannot be reached the last
membership stays, and the watcher reports the outage until it recovers.

Labels and capacity (docs/labels.md): an instance's Service.Meta entries are its labels,
except the key `capacity`, which is its capacity; its tags of the form `key=value` add
labels that Meta does not set. Entries that are not valid Kubernetes labels are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from clusterpool.api import ConsulConnection, ConsulDiscovery
from clusterpool.core.backoff import Backoff
from clusterpool.core.health import Endpoint
from clusterpool.core.labels import Labels, parse_capacity, valid_labels
from clusterpool.discovery.kubernetes import member_name
from clusterpool.stages import SecretValue

log = logging.getLogger(__name__)
RANK = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 2}
CAPACITY_META = "capacity"


def aggregate(checks: Iterable[Mapping[str, Any]]) -> str:
    worst = "passing"
    for c in checks:
        status = str(c.get("Status", "critical"))
        if RANK.get(status, 2) > RANK[worst]:
            worst = "critical" if status == "maintenance" else status
    return worst


def consul_labels(service: Mapping[str, Any]) -> tuple[Labels, int | None]:
    """An instance's labels (its Meta, then its `key=value` tags) and capacity (Meta `capacity`)."""
    meta = {str(k): str(v) for k, v in (service.get("Meta") or {}).items()}
    capacity = parse_capacity(meta.pop(CAPACITY_META)) if CAPACITY_META in meta else None
    tags = (str(t).partition("=") for t in service.get("Tags") or [])
    tagged = {k: v for k, eq, v in tags if eq}
    labels, _ = valid_labels({**tagged, **meta})
    return labels, capacity


def members_from_consul(entries: Iterable[Mapping[str, Any]], only_passing: bool) -> tuple[Endpoint, ...]:
    members: dict[str, Endpoint] = {}
    for e in entries:
        svc = e.get("Service") or {}
        node = e.get("Node") or {}
        address = svc.get("Address") or node.get("Address")
        port = svc.get("Port")
        if not address or not port:
            continue
        state = aggregate(e.get("Checks") or [])
        if only_passing and state != "passing":
            continue
        name = member_name({}, str(svc.get("ID") or f"{address}-{port}"))
        weights = svc.get("Weights") or {}
        weight = int(weights.get("Warning" if state == "warning" else "Passing") or 1)
        labels, capacity = consul_labels(svc)
        members[name] = Endpoint(
            name,
            str(address),
            int(port),
            max(1, min(weight, 1000)),
            source_ready=state != "critical",
            source_warning=state == "warning",
            labels=labels,
            capacity=capacity,
        )
    return tuple(members[n] for n in sorted(members))


OnChange = Callable[[tuple[Endpoint, ...]], None]
OnHealth = Callable[[str | None], None]  # None: reachable; else what failed


async def consul_client(spec: ConsulConnection, ca: SecretValue | None, **kw: Any) -> httpx.AsyncClient:
    """An HTTP client for Consul that verifies its certificate against caSecretRef's CA
    bundle when set (else the system's CAs, or nothing with insecureSkipVerify)."""
    verify: ssl.SSLContext | bool = not spec.insecure_skip_verify
    ref = spec.ca_secret_ref
    if ref is not None and not spec.insecure_skip_verify:
        pem = await ca() if ca is not None else None
        if not pem:
            raise ConsulError(f"Secret {ref.name} (key {ref.key}) named by caSecretRef cannot be read")
        verify = ssl.create_default_context(cadata=pem)
    return httpx.AsyncClient(verify=verify, **kw)


async def token_headers(spec: ConsulConnection, token: SecretValue, required: bool = True) -> dict[str, str]:
    """The X-Consul-Token header from tokenSecretRef. A Secret that cannot be read raises
    (unless not `required`): without it Consul would answer 403 or, with ACLs off, hide
    the missing Secret altogether."""
    value = await token()
    ref = spec.token_secret_ref
    if ref is not None and not value and required:
        raise ConsulError(f"Secret {ref.name} (key {ref.key}) named by tokenSecretRef cannot be read")
    return {"X-Consul-Token": value} if value else {}


class ConsulWatcher:
    def __init__(
        self,
        spec: ConsulDiscovery,
        token: SecretValue,
        on_change: OnChange,
        on_health: OnHealth,
        max_backoff: float = 30.0,
        ca: SecretValue | None = None,
    ) -> None:
        self.spec = spec
        self.token = token
        self.ca = ca
        self.on_change = on_change
        self.on_health = on_health
        self.max_backoff = max_backoff
        self.members: tuple[Endpoint, ...] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consul-watch-{self.spec.service}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _params(self, index: int) -> list[tuple[str, str | int | float | bool | None]]:
        s = self.spec
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("index", str(index)),
            ("wait", f"{s.wait_seconds}s"),
        ]
        params += [("tag", t) for t in s.tags]
        params += [(k, v) for k, v in (("dc", s.datacenter), ("ns", s.namespace), ("partition", s.partition)) if v]
        if s.only_passing:
            params.append(("passing", "1"))
        return params

    async def _run(self) -> None:
        index, backoff = 0, Backoff(0.5, self.max_backoff)
        url = f"{self.spec.address}/v1/health/service/{self.spec.service}"
        timeout = httpx.Timeout(10.0, read=self.spec.wait_seconds + 15.0)
        http: httpx.AsyncClient | None = None
        try:
            while True:
                try:
                    if http is None:
                        http = await consul_client(self.spec, self.ca, timeout=timeout)
                    headers = await token_headers(self.spec, self.token)
                    r = await http.get(url, params=self._params(index), headers=headers)
                    if r.status_code != 200:
                        raise ConsulError(f"Consul answered {r.status_code}: {r.text[:200]}")
                    new_index = int(r.headers.get("X-Consul-Index", "0"))
                    index = new_index if new_index >= index else 0  # backwards: start over
                    members = members_from_consul(r.json(), self.spec.only_passing)
                    self.on_health(None)
                    backoff.reset()
                    if members != self.members:
                        self.members = members
                        self.on_change(members)
                except asyncio.CancelledError:
                    raise
                except (httpx.HTTPError, ConsulError, ValueError, ssl.SSLError) as exc:
                    self.on_health(f"{type(exc).__name__}: {exc}"[:300])
                    await asyncio.sleep(backoff.next())
        finally:
            if http is not None:
                await http.aclose()


class ConsulError(Exception):
    pass
