"""The operator runs as a uid with no passwd entry, as the image and the chart run it
(runAsUser 65532 in an image that has no such user)."""

import os
import pwd
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from conftest import OperatorProcess

UID = 65532


def test_the_operator_runs_as_a_uid_without_a_passwd_entry(cluster, crd, tmp_path):
    with pytest.raises(KeyError):
        pwd.getpwuid(UID)  # the point of the test: nobody can name this uid
    readable = Path(tempfile.mkdtemp(prefix="cp-identity-"))
    try:
        readable.chmod(0o755)
        kubeconfig = readable / "kubeconfig"
        shutil.copy(cluster.kubeconfig, kubeconfig)
        kubeconfig.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        op = OperatorProcess(str(kubeconfig), tmp_path, uid=UID)
        op.start()  # fails with the operator's log if it exits (it used to: getpwuid KeyError)
        try:
            assert op.proc is not None
            assert os.stat(f"/proc/{op.proc.pid}").st_uid == UID
            time.sleep(3)  # kopf has started its watches and handlers by now
            assert op.alive(), "the liveness endpoint stopped answering"
        finally:
            op.stop()
        assert "getpwuid" not in op.log.read_text()
    finally:
        shutil.rmtree(readable, ignore_errors=True)
