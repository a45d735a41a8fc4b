"""The Consul sink: a pool's endpoints registered in Consul, with checks carrying the probe results.

Health-correct: each endpoint is a service instance with a TTL check that the operator
sets from its own view every probe round (passing when eligible and healthy, warning
when degraded or kept in by a limit, critical otherwise), with the probe's message as
the check's note. Consul marks an instance critical by itself
if the operator stops refreshing it (TTL = 3 x the probe interval)."""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from clusterpool import api
from clusterpool.api import ConsulPublish
from clusterpool.core.pool import PoolState
from clusterpool.core.status import PUBLISHED_TO_CONSUL, ConditionSpec
from clusterpool.discovery.consul import ConsulError, consul_client, token_headers
from clusterpool.stages import Emit, PoolRef, PoolSecrets, SecretValue, Snapshot

_ID = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Instance:
    name: str
    address: str
    port: int
    status: str  # passing | warning | critical
    note: str


def consul_ttl(interval_seconds: int) -> str:
    """The TTL of each instance's check: three probe intervals without a refresh turn it critical."""
    return f"{3 * interval_seconds}s"


def instance_id(namespace: str, pool: str, endpoint: str) -> str:
    return _ID.sub("-", f"clusterpool-{namespace}-{pool}-{endpoint}")


class ConsulPublisher:
    def __init__(
        self,
        spec: ConsulPublish,
        namespace: str,
        pool: str,
        interval_s: int,
        token: SecretValue,
        ca: SecretValue | None = None,
    ) -> None:
        self.spec, self.namespace, self.pool = spec, namespace, pool
        self.ttl = consul_ttl(interval_s)
        self.token, self.ca = token, ca
        self.registered: dict[str, Instance] = {}  # id -> what was registered
        self._http: httpx.AsyncClient | None = None

    async def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = await consul_client(self.spec, self.ca, base_url=self.spec.address, timeout=10.0)
        return self._http

    async def _headers(self, required: bool = True) -> dict[str, str]:
        return await token_headers(self.spec, self.token, required)

    async def _existing(self, headers: dict[str, str]) -> list[str]:
        """This pool's instances on the agent (also those registered before a restart)."""
        expr = f'Meta["clusterpool-namespace"] == "{self.namespace}" and Meta["clusterpool-pool"] == "{self.pool}"'
        r = await (await self._client()).get("/v1/agent/services", headers=headers, params={"filter": expr})
        r.raise_for_status()
        return list(r.json())

    async def sync(self, instances: list[Instance]) -> None:
        """Register new and moved instances, refresh every TTL check, deregister the gone.
        After a failure, what the agent holds is asked again: an agent that restarted
        without its state (a -dev agent, a lost data directory) gets everything again."""
        try:
            await self._sync(instances)
        except Exception:
            self.registered.clear()
            raise

    async def _sync(self, instances: list[Instance]) -> None:
        headers = await self._headers()
        if not self.registered:
            for iid in await self._existing(headers):
                self.registered[iid] = Instance("", "", 0, "", "")  # unknown: re-registered below if wanted
        want = {instance_id(self.namespace, self.pool, i.name): i for i in instances}
        for iid, inst in want.items():
            old = self.registered.get(iid)
            if old is None or (old.address, old.port) != (inst.address, inst.port):
                r = await (await self._client()).put(
                    "/v1/agent/service/register",
                    headers=headers,
                    json={
                        "ID": iid,
                        "Name": self.spec.service or self.pool,
                        "Address": inst.address,
                        "Port": inst.port,
                        "Tags": list(self.spec.tags),
                        "Meta": {
                            "clusterpool-namespace": self.namespace,
                            "clusterpool-pool": self.pool,
                            "clusterpool-endpoint": inst.name,
                        },
                        "Check": {
                            "CheckID": f"{iid}-health",
                            "Name": "clusterpool probe",
                            "TTL": self.ttl,
                            "Status": inst.status,
                            "Notes": "set by the ClusterPool operator from its probes",
                        },
                    },
                )
                r.raise_for_status()
            verb = {"passing": "pass", "warning": "warn"}.get(inst.status, "fail")
            r = await (await self._client()).put(
                f"/v1/agent/check/{verb}/{iid}-health", headers=headers, params={"note": inst.note[:500]}
            )
            r.raise_for_status()
            self.registered[iid] = inst
        for iid in [i for i in self.registered if i not in want]:
            await self._deregister(iid, headers)

    async def _deregister(self, iid: str, headers: dict[str, str]) -> None:
        r = await (await self._client()).put(f"/v1/agent/service/deregister/{iid}", headers=headers)
        if r.status_code not in (200, 404):
            r.raise_for_status()
        self.registered.pop(iid, None)

    async def deregister_all(self) -> None:
        headers = await self._headers(required=False)  # a pool whose Secret is gone can still be deleted
        for iid in set(self.registered) | set(await self._existing(headers)):
            await self._deregister(iid, headers)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()  # a use after this fails loudly rather than opening a new client


class ConsulSink:
    """Sink: the pool's endpoints in Consul. The publisher is made, replaced (spec.publish.consul
    or the probe interval changed) and closed here only, inside the sink's own task, so no
    round closes it under a sync that is still using it."""

    condition_type = PUBLISHED_TO_CONSUL

    def __init__(self, body: Mapping[str, Any], secrets: PoolSecrets, emit: Emit) -> None:
        self.body, self.secrets, self.emit = body, secrets, emit
        self.condition: ConditionSpec | None = None
        self.publisher: ConsulPublisher | None = None

    async def sync(self, snapshot: Snapshot) -> ConditionSpec | None:
        publisher = await self._publisher_for(snapshot.spec)
        if publisher is None:
            return None
        instances = instances_of(snapshot.state)
        try:
            await publisher.sync(instances)
        except (httpx.HTTPError, ConsulError, ssl.SSLError, ValueError) as exc:
            problem = ConditionSpec(PUBLISHED_TO_CONSUL, "False", "ConsulUnreachable", f"{type(exc).__name__}: {exc}")
            if self.condition is None or self.condition.status == "True":
                self.emit("Warning", "ConsulPublishFailed", problem.message)
            return problem
        service = publisher.spec.service or PoolRef.of(self.body).name
        return ConditionSpec(
            PUBLISHED_TO_CONSUL, "True", "UpToDate", f"{len(instances)} instances of {service} in Consul"
        )

    async def _publisher_for(self, spec: api.ClusterPoolSpec) -> ConsulPublisher | None:
        want = spec.publish.consul if spec.publish else None
        interval = spec.health_check.interval_seconds
        current = self.publisher
        if current is not None and (want is None or want != current.spec or current.ttl != consul_ttl(interval)):
            if want is None:  # no longer published there: its instances go
                with contextlib.suppress(Exception):
                    await current.deregister_all()
            self.publisher = None
            await current.close()
        if want is not None and self.publisher is None:
            self.publisher = publisher_of(want, PoolRef.of(self.body), interval, self.secrets)
        return self.publisher

    async def close(self) -> None:
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            await publisher.close()

    async def remove(self) -> None:
        """Deregister every instance of the pool (found by their Meta, so also those an
        earlier operator registered)."""
        publish = (self.body.get("spec") or {}).get("publish") or {}
        if publish.get("consul") is None:
            return
        spec = ConsulPublish.model_validate(dict(publish["consul"]))
        consul = publisher_of(spec, PoolRef.of(self.body), 1, self.secrets)
        try:
            await consul.deregister_all()
        finally:
            await consul.close()


def publisher_of(spec: ConsulPublish, pool: PoolRef, interval_s: int, secrets: PoolSecrets) -> ConsulPublisher:
    return ConsulPublisher(
        spec,
        pool.namespace,
        pool.name,
        interval_s,
        secrets.value(spec.token_secret_ref),
        secrets.value(spec.ca_secret_ref),
    )


def instances_of(state: PoolState) -> list[Instance]:
    """Each member as an instance whose check says what the probes say: passing when eligible
    and healthy, warning when degraded or kept in by a limit, critical otherwise."""
    decisions = {d.name: d for d in state.decision.decisions} if state.decision else {}
    instances = []
    for ep in state.members:
        h, d = state.health.of(ep.name), decisions.get(ep.name)
        if d is None or not d.eligible:
            status = "critical"
        elif h.health == "Healthy" and not ep.source_warning and not d.ejection_limited:
            status = "passing"
        else:
            status = "warning"
        instances.append(Instance(ep.name, ep.address, ep.port, status, h.message or h.health))
    return instances
