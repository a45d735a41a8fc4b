"""`make release`'s artifacts, built for real into a temporary folder: both distributions'
wheels and sdists, the chart packaged by the real helm, and the install manifests, all of
the one version; the wheels split the package between them without overlap.

The image is left out here (`--skip-image`): building it takes minutes, and the end-to-end
tier already builds the operator image from the same Dockerfile and runs it on the node.
`make release` builds it and checks its labels and recorded digest with the same `verify`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import layout
import release
from conftest import ROOT


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "release.py"), "build", "--skip-image", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_the_release_holds_every_artifact_of_the_one_version(dist):
    version = layout.version()
    verified = release.verify(dist, image=False)  # raises naming what is missing or disagrees
    assert sorted(p.name for p in dist.iterdir()) == [name for name, _ in verified]
    assert len(verified) == 6 and all(version in name for name, _ in verified)
    assert {name.rsplit(".", 1)[-1] for name, _ in verified} == {"whl", "gz", "tgz", "yaml"}

    with tarfile.open(dist / f"clusterpool-operator-{version}.tgz") as tar:
        chart = yaml.safe_load(tar.extractfile("clusterpool-operator/Chart.yaml").read())  # type: ignore[union-attr]
        values = yaml.safe_load(tar.extractfile("clusterpool-operator/values.yaml").read())  # type: ignore[union-attr]
    assert chart["version"] == chart["appVersion"] == version
    assert values["image"]["repository"] == layout.IMAGE

    operator_meta = release.wheel_metadata(dist / f"clusterpool_operator-{version}-py3-none-any.whl")
    assert operator_meta["License-Expression"] == "Apache-2.0"
    with zipfile.ZipFile(dist / f"clusterpool_operator-{version}-py3-none-any.whl") as zf:
        requires = zf.read(f"clusterpool_operator-{version}.dist-info/METADATA").decode().splitlines()
    assert f"Requires-Dist: clusterpool-client[kubernetes,redis]=={version}" in requires
    assert not [r for r in requires if r.startswith("Requires-Dist:") and "==" in r and "clusterpool" not in r]


def test_the_two_wheels_split_the_package_without_overlap(dist):
    version = layout.version()
    shipped = {}
    for dist_name in ("clusterpool_client", "clusterpool_operator"):
        with zipfile.ZipFile(dist / f"{dist_name}-{version}-py3-none-any.whl") as zf:
            shipped[dist_name] = {n for n in zf.namelist() if n.startswith("clusterpool/")}
    assert not shipped["clusterpool_client"] & shipped["clusterpool_operator"]
    expected = {f"clusterpool/{rel.as_posix()}" for rel in layout.package_files()}
    assert shipped["clusterpool_client"] | shipped["clusterpool_operator"] == expected
    assert "clusterpool/__init__.py" in shipped["clusterpool_client"]
    assert "clusterpool/handlers.py" in shipped["clusterpool_operator"]


def test_the_install_manifests_put_the_namespace_first_and_run_the_published_image(dist):
    docs = [d for d in yaml.safe_load_all((dist / f"clusterpool-operator-{layout.version()}.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace" and kinds[1] == "CustomResourceDefinition"
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{layout.IMAGE}:{layout.version()}"
    # the repository's own directory applies in the same order
    assert sorted(p.name for p in (ROOT / "manifests" / "install").glob("*.yaml"))[0] == "00-namespace.yaml"


@pytest.fixture
def fresh_cluster(tmp_path_factory: pytest.TempPathFactory):
    """An apiserver of its own: nothing applied yet, not even the Namespace."""
    import controlplane

    state_dir = tmp_path_factory.mktemp("fresh-controlplane")
    yield controlplane.up(state_dir)
    controlplane.down(state_dir)


def readme_command(prefix: str) -> list[str]:
    (line,) = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(prefix)]
    return line.split()


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(lambda dist: readme_command("kubectl apply -f manifests/install/"), id="README"),
        pytest.param(lambda dist: ["kubectl", "apply", "-f", str(next(dist.glob("*.yaml")))], id="release"),
    ],
)
def test_the_install_commands_apply_on_a_fresh_cluster(command, dist, fresh_cluster):
    import controlplane

    kubectl = str(controlplane.kubectl_path())
    env = {**os.environ, "KUBECONFIG": fresh_cluster.kubeconfig}
    args = command(dist)
    assert args[0] == "kubectl"
    r = subprocess.run([kubectl, *args[1:]], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    got = subprocess.run(
        [kubectl, "get", "deployment", "clusterpool-operator", "-n", "clusterpool-system", "-o", "name"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert got.stdout.strip() == "deployment.apps/clusterpool-operator", got.stderr
