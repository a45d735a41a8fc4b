"""A plain client for the failover measurement, run in a pod:

    python /app/client.py URL FAIL_URL WARMUP_S DURATION_S INTERVAL_S

sends GET URL on a new connection every INTERVAL_S; after WARMUP_S it POSTs FAIL_URL (one
backend, by its pod IP) and keeps going until DURATION_S. Prints one JSON line: the time of
the failure and, per request, its start offset, status and the backend that answered."""

import http.client
import json
import sys
import time
import urllib.parse


def request(url: str, method: str = "GET") -> tuple[int, str]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=2)
    try:
        conn.request(method, u.path or "/")
        resp = conn.getresponse()
        body = resp.read()
        try:
            name = str(json.loads(body).get("name", ""))
        except ValueError:
            name = ""
        return resp.status, name
    except OSError as e:
        return 0, type(e).__name__
    finally:
        conn.close()


def main() -> None:
    url, fail_url = sys.argv[1], sys.argv[2]
    warmup, duration, interval = (float(a) for a in sys.argv[3:6])
    t0 = time.monotonic()
    t_fail = None
    failed_by = ""
    records = []
    while (now := time.monotonic() - t0) < duration:
        if t_fail is None and now >= warmup:
            status, failed_by = request(fail_url, "POST")
            t_fail = time.monotonic() - t0
        status, name = request(url)
        records.append((round(now, 4), status, name))
        time.sleep(max(0.0, interval - (time.monotonic() - t0 - now)))
    print(json.dumps({"t_fail": t_fail, "failed": failed_by, "records": records}), flush=True)


if __name__ == "__main__":
    main()
