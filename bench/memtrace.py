"""Run the operator with tracemalloc on, and dump its memory on a signal.

    python bench/memtrace.py OUT_DIR [--frames N] -- [operator arguments]

runs `python -m clusterpool [operator arguments]` in this process with tracemalloc
tracing N frames per allocation (default 12; 0: no tracing, the operator at full speed,
only the counters below and no snapshot file). Then:

- SIGUSR1: a full garbage collection, then `OUT_DIR/snap-<k>.tracemalloc` (a
  tracemalloc.Snapshot) and one JSON line appended to `OUT_DIR/memtrace.jsonl`: RSS,
  what tracemalloc traces, glibc's malloc counters (mallinfo2: bytes in use, free bytes
  held in the heap, mmapped bytes), pymalloc's arenas, live asyncio tasks by name and the
  most common live object types. The line is written last: a reader waits for it.
- SIGUSR2: the same JSON line, then glibc's malloc_trim(0) and the RSS after it (does
  the heap hold free memory the process could give back?).

`python bench/memtrace.py compare A.tracemalloc B.tracemalloc [--top N]` prints the
largest growths from A to B grouped by traceback.

The signal handlers run on the main thread, which is the operator's event loop thread:
taking a snapshot pauses the operator for as long as it takes (seconds at a few hundred
pools). For measuring memory only, never CPU or latency.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import ctypes.util
import gc
import json
import os
import re
import runpy
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


LIBC = _libc()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def mallinfo() -> dict[str, float] | None:
    """glibc's heap counters in MiB: in use (uordblks), free but held (fordblks), mmapped."""
    fn = getattr(LIBC, "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _Mallinfo2
    m = fn()
    mib = 1024 * 1024
    return {
        "heap_mib": round(m.arena / mib, 1),
        "in_use_mib": round(m.uordblks / mib, 1),
        "free_held_mib": round(m.fordblks / mib, 1),
        "mmapped_mib": round(m.hblkhd / mib, 1),
        "releasable_top_mib": round(m.keepcost / mib, 1),
    }


def pymalloc() -> dict[str, int]:
    """Arena counts from sys._debugmallocstats (it writes to the C stderr: borrowed here)."""
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    out = {}
    for key, pattern in (
        ("arenas_allocated_current", r"# arenas allocated current\s*=\s*([\d,]+)"),
        ("arenas_highwater", r"# arenas highwater mark\s*=\s*([\d,]+)"),
        ("bytes_in_allocated_blocks", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
        ("bytes_in_available_blocks", r"# bytes in available blocks\s*=\s*([\d,]+)"),
        ("arenas_reclaimed", r"# arenas reclaimed\s*=\s*([\d,]+)"),
        ("total_arena_bytes", r"Total\s*=\s*([\d,]+)"),
    ):
        m = re.search(pattern, text)
        if m:
            out[key] = int(m.group(1).replace(",", ""))
    return out


def live_tasks() -> dict[str, int]:
    loop = asyncio.events._get_running_loop()
    if loop is None:
        return {}
    names = collections.Counter(re.sub(r"\d+", "N", t.get_name()) for t in asyncio.all_tasks(loop))
    return dict(names.most_common(25))


def object_types(top: int = 30) -> dict[str, int]:
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    return dict(counts.most_common(top))


class Dumper:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.k = 0

    def facts(self) -> dict[str, Any]:
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        return {
            "at": time.time(),
            "rss_mib": rss_mib(),
            "traced_mib": round(current / 2**20, 1),
            "traced_peak_mib": round(peak / 2**20, 1),
            "tracemalloc_overhead_mib": round(tracemalloc.get_tracemalloc_memory() / 2**20, 1),
            "malloc": mallinfo(),
            "pymalloc": pymalloc(),
            "tasks": live_tasks(),
            "types": object_types(),
            "gc_garbage": len(gc.garbage),
        }

    def _line(self, facts: dict[str, Any]) -> None:
        with (self.out / "memtrace.jsonl").open("a") as f:
            f.write(json.dumps(facts) + "\n")

    def snapshot(self, _signum: int, _frame: Any) -> None:
        self.k += 1
        facts = self.facts()
        facts.update(kind="snapshot", k=self.k)
        if tracemalloc.is_tracing():
            path = self.out / f"snap-{self.k}.tracemalloc"
            tracemalloc.take_snapshot().dump(str(path))
            facts.update(snapshot=path.name)
        self._line(facts)

    def trim(self, _signum: int, _frame: Any) -> None:
        facts = self.facts()
        if LIBC is not None:
            LIBC.malloc_trim(0)
        facts.update(kind="trim", rss_after_trim_mib=rss_mib(), malloc_after_trim=mallinfo())
        self._line(facts)


def compare(a: str, b: str, top: int) -> None:
    old, new = tracemalloc.Snapshot.load(a), tracemalloc.Snapshot.load(b)
    filters = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    ]
    old, new = old.filter_traces(filters), new.filter_traces(filters)
    total_old = sum(s.size for s in old.statistics("filename"))
    total_new = sum(s.size for s in new.statistics("filename"))
    print(f"traced: {total_old / 2**20:.1f} MiB -> {total_new / 2**20:.1f} MiB")
    for stat in new.compare_to(old, "traceback")[:top]:
        print(f"\n{stat.size_diff / 2**10:+.1f} KiB ({stat.count_diff:+d} blocks), now {stat.size / 2**10:.1f} KiB")
        for line in stat.traceback.format(limit=12, most_recent_first=True):
            print("  " + line.strip())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        p = argparse.ArgumentParser(prog="memtrace.py compare")
        p.add_argument("a")
        p.add_argument("b")
        p.add_argument("--top", type=int, default=15)
        args = p.parse_args(sys.argv[2:])
        compare(args.a, args.b, args.top)
        return 0
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        prog="memtrace.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=12)
    args = p.parse_args(own)
    args.out.mkdir(parents=True, exist_ok=True)
    # Imported before tracing starts: what modules allocate once is no leak, and tracing
    # the imports of kopf, kubernetes and pydantic takes ten times as long as the imports.
    import kubernetes

    import clusterpool.handlers  # noqa: F401

    # the kubernetes client imports its API and model modules on first use: here, once
    for api in ("CoordinationV1Api", "CoreV1Api", "CustomObjectsApi", "DiscoveryV1Api", "VersionApi"):
        getattr(kubernetes.client, api)
    for model in ("V1Lease", "V1LeaseList", "V1Service", "V1EndpointSliceList", "V1Secret", "VersionInfo", "V1Status"):
        getattr(kubernetes.client, model)

    if args.frames > 0:
        tracemalloc.start(args.frames)
    dumper = Dumper(args.out)
    signal.signal(signal.SIGUSR1, dumper.snapshot)
    signal.signal(signal.SIGUSR2, dumper.trim)
    sys.argv = ["clusterpool", *rest]
    runpy.run_module("clusterpool", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
