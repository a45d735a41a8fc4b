"""An application pod using the SDK (run by tests/e2e in the operator image, which carries
the clusterpool package), with the pool's routing ConfigMap mounted as a volume:

    python sdk_app.py TABLE FAIL_URL WARMUP_S DURATION_S INTERVAL_S
    python sdk_app.py cache TABLE DURATION_S

The first GETs through PoolTransport every INTERVAL_S; after WARMUP_S it POSTs FAIL_URL
(one backend); it notes when the mounted table stops listing that backend. The second
caches an entry through PoolCache, prints a `ready` line, and waits for the table's cache
version to change: it notes whether the entry was gone under the new version and whether
a new one is kept. Each prints one JSON line at the end."""

import json
import sys
import time
import urllib.request

import httpx

from clusterpool.client import FileTable, PoolCache, PoolClient, PoolTransport


def cache_version(table: FileTable) -> int | None:
    settings = table.current().cache
    return settings.version if settings is not None else None


def follow_cache_version(path: str, duration: float) -> None:
    table = FileTable(path)
    cache = PoolCache(table)
    t0 = time.monotonic()
    first = cache_version(table)
    cache.set("greeting", b"hello")
    kept = cache.get("greeting")
    print(json.dumps({"ready": first, "kept": kept.decode() if kept else None}), flush=True)
    result: dict[str, object] = {"first": first, "changed_after_s": None}
    while time.monotonic() - t0 < duration:
        version = cache_version(table)
        if version != first:
            old = cache.get("greeting")
            cache.set("greeting", b"again")
            new = cache.get("greeting")
            result.update(
                changed_after_s=round(time.monotonic() - t0, 2),
                version=version,
                old_entry=old.decode() if old else None,
                new_entry=new.decode() if new else None,
            )
            break
        time.sleep(0.2)
    print(json.dumps(result), flush=True)


def main() -> None:
    if sys.argv[1] == "cache":
        follow_cache_version(sys.argv[2], float(sys.argv[3]))
        return
    path, fail_url = sys.argv[1], sys.argv[2]
    warmup, duration, interval = (float(a) for a in sys.argv[3:6])
    table = FileTable(path)
    http = httpx.Client(transport=PoolTransport(PoolClient(table)), timeout=2)
    t0 = time.monotonic()
    t_fail = None
    victim = ""
    dropped = None
    records = []
    while (now := time.monotonic() - t0) < duration:
        if t_fail is None and now >= warmup:
            req = urllib.request.Request(fail_url, method="POST", data=b"")
            with urllib.request.urlopen(req, timeout=5) as r:
                victim = json.loads(r.read())["name"]
            t_fail = time.monotonic() - t0
        try:
            resp = http.get("http://pool/")
            status, name = resp.status_code, str(resp.json().get("name", ""))
        except (httpx.HTTPError, ValueError) as e:
            status, name = 0, type(e).__name__
        records.append((round(now, 4), status, name))
        if t_fail is not None and dropped is None and victim not in {t.name for t in table.current().targets}:
            dropped = time.monotonic() - t0
        if dropped is not None and now > dropped + 5:
            break
        time.sleep(max(0.0, interval - (time.monotonic() - t0 - now)))
    print(json.dumps({"t_fail": t_fail, "failed": victim, "table_dropped": dropped, "records": records}), flush=True)


if __name__ == "__main__":
    main()
