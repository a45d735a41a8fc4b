"""A test run stopped with SIGTERM still tears its fixtures down (tests/conftest.py)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent

INNER = """
import os, subprocess, time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def helper():
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)  # like a control plane
    Path(os.environ["STARTED"]).write_text(str(proc.pid))
    yield proc
    proc.kill()
    proc.wait()
    Path(os.environ["STARTED"]).with_suffix(".down").write_text("torn down")


def test_runs_long(helper):
    time.sleep(120)
"""


def test_sigterm_tears_the_session_fixtures_down(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    started = tmp_path / "helper.pid"
    env = {**os.environ, "STARTED": str(started), "PYTHONPATH": str(TESTS)}
    run = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-o", "addopts=", "-q"]
    inner = subprocess.Popen([*run, str(tmp_path)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    helper = None
    try:
        for _ in range(300):
            if started.exists() and started.read_text():
                helper = int(started.read_text())
                break
            time.sleep(0.1)
        assert helper is not None, "the inner run never started its helper"
        inner.send_signal(signal.SIGTERM)
        out, _ = inner.communicate(timeout=60)
        assert started.with_suffix(".down").exists(), f"the fixture was not torn down:\n{out}"
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
        if helper is not None:
            with contextlib.suppress(ProcessLookupError):  # left behind: the test has already failed
                os.kill(helper, signal.SIGKILL)
