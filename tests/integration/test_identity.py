"""The operator runs as a uid with no passwd entry, as the image and the chart run it
(runAsUser 65532 in an image that has no such user): kopf must not ask for a login name."""

import os
import subprocess
import sys
import time

from conftest import OperatorProcess, as_uid_without_passwd_entry

UID = 65532


def test_the_operator_runs_as_a_uid_without_a_passwd_entry(cluster, crd, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME", "LNAME", "USERNAME")}
    probe = subprocess.run(
        [*as_uid_without_passwd_entry(UID), sys.executable, "-c", "import getpass; getpass.getuser()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode != 0 and "uid not found: 65532" in probe.stderr  # the condition that crashed it
    op = OperatorProcess(cluster.kubeconfig, tmp_path, uid=UID, identity="")
    op.start()  # fails with the operator's log if it exits
    try:
        time.sleep(3)  # kopf has started its watches and handlers by now
        assert op.alive(), "the liveness endpoint stopped answering"
    finally:
        op.stop()
    assert "getpwuid" not in op.log.read_text()
