"""A steady stream of chat-completion POSTs for the gateway's node test, run in a pod:

    python chat_client.py WARMUP_S DURATION_S INTERVAL_S NAME=URL [NAME=URL ...]

Every INTERVAL_S it starts one POST to each URL, each on a new connection in a thread (an
open loop, one pool of threads per URL: a stalled request slows neither its stream nor the
other), for at most DURATION_S or until the file /tmp/stop exists. It prints `{"started": t}` at once and `{"warm": t}`
after WARMUP_S, then one JSON line: per request its path name, wall-clock start, status
(0 for a connection error or timeout), the backend that answered (X-Backend) and its
latency in ms."""

import http.client
import json
import os
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
TIMEOUT_S = 5.0


def post(name: str, url: str) -> tuple[str, float, int, str, float]:
    u = urllib.parse.urlsplit(url)
    start = time.time()
    conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=TIMEOUT_S)
    try:
        conn.request("POST", u.path, BODY, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        status, backend = resp.status, resp.getheader("X-Backend") or ""
    except OSError as e:
        status, backend = 0, type(e).__name__
    finally:
        conn.close()
    return name, round(start, 4), status, backend, round((time.time() - start) * 1000, 1)


def main() -> None:
    warmup, duration, interval = (float(a) for a in sys.argv[1:4])
    targets = [arg.split("=", 1) for arg in sys.argv[4:]]
    t0 = time.time()
    print(json.dumps({"started": t0}), flush=True)
    warm = False
    futures = []
    # One pool of threads per target, so that requests stalled on one path never delay the other.
    pools = [ThreadPoolExecutor(max_workers=256) for _ in targets]
    tick = 0
    while (now := time.time()) - t0 < duration and not os.path.exists("/tmp/stop"):
        if not warm and now - t0 >= warmup:
            warm = True
            print(json.dumps({"warm": now}), flush=True)
        futures += [pool.submit(post, name, url) for pool, (name, url) in zip(pools, targets, strict=True)]
        tick += 1
        time.sleep(max(0.0, t0 + tick * interval - time.time()))
    for pool in pools:
        pool.shutdown(wait=True)
    print(json.dumps({"records": [f.result() for f in futures]}), flush=True)


if __name__ == "__main__":
    main()
