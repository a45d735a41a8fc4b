"""Publishing a pool into Consul, health-correct: each endpoint is a service instance with
a TTL check that the operator sets from its own view every probe round (passing when
eligible and healthy, warning when degraded or kept in by a limit, critical otherwise),
with the probe's message as the check's note. Consul marks an instance critical by itself
if the operator stops refreshing it (TTL = 3 x the probe interval)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from clusterpool.api import ConsulPublish
from clusterpool.discovery.consul import SecretValue, consul_client, token_headers

_ID = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Instance:
    name: str
    address: str
    port: int
    status: str  # passing | warning | critical
    note: str


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
        self.ttl = f"{3 * interval_s}s"
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
            await self._http.aclose()
