"""Helpers for the end-to-end tests: kubectl and helm against the node, waiting, pods."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import controlplane
import images
import node

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "clusterpool-operator"
BACKEND_IMAGE = images.backend_ref()


def wait_for(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@dataclass
class Cluster:
    run: node.Run
    kubeconfig: str
    helm_bin: str

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "HELM_CACHE_HOME": f"/tmp/clusterpool-helm-{self.run.id}/cache",
            "HELM_CONFIG_HOME": f"/tmp/clusterpool-helm-{self.run.id}",
            "HELM_DATA_HOME": f"/tmp/clusterpool-helm-{self.run.id}/data",
        }

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [str(controlplane.assets_dir() / "kubectl"), *args],
            env=self.env,
            text=True,
            capture_output=True,
            input=stdin,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([self.helm_bin, *args], env=self.env, text=True, capture_output=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def get(self, *args: str) -> Any:
        r = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(obj))

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        out = self.get("pods", "-n", namespace, "-l", selector)
        return [p for p in (out or {}).get("items", []) if not p["metadata"].get("deletionTimestamp")]

    def ready_pods(self, namespace: str, selector: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            pods = self.pods(namespace, selector)
            ok = [
                p
                for p in pods
                if any(
                    c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", [])
                )
            ]
            return ok if len(ok) == count and len(pods) == count else None

        return wait_for(ready, timeout, f"{count} Ready pods {selector} in {namespace}")  # type: ignore[no-any-return]

    def delete_every_pool(self, timeout: int = 60) -> None:
        """Delete every ClusterPool. A pool whose finalizer no operator released within
        `timeout` (its operator is gone, or never ran where the pool is) loses it here, so
        that the CRD, and a namespace, can be deleted after."""
        self.kubectl(
            "delete", "clusterpools", "--all", "-A", f"--timeout={timeout}s", check=False, timeout=timeout + 30
        )
        for p in (self.get("clusterpools", "-A") or {"items": []})["items"]:
            name, namespace = p["metadata"]["name"], p["metadata"]["namespace"]
            unfinalize = ("--type=merge", "-p", '{"metadata":{"finalizers":null}}')
            self.kubectl("patch", "clusterpool", name, "-n", namespace, *unfinalize, check=False)

    def pool_status(self, namespace: str, name: str) -> dict[str, Any]:
        return ((self.get("clusterpool", name, "-n", namespace) or {}).get("status")) or {}

    def slice_addresses(self, namespace: str, selector: str) -> set[str]:
        out = self.get("endpointslices", "-n", namespace, "-l", selector) or {"items": []}
        return {
            a
            for s in out["items"]
            for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready", True)
            for a in e["addresses"]
        }

    def start_pod(self, namespace: str, name: str, command: list[str], files: str | None = None) -> None:
        """A one-off pod (restartPolicy Never) of the backend image running `command`, with
        the ConfigMap `files` mounted at /files if given; an earlier pod of that name goes first."""
        self.kubectl("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=true")
        container: dict[str, Any] = {
            "name": "c",
            "image": BACKEND_IMAGE,
            "imagePullPolicy": "Never",
            "command": command,
        }
        spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
        if files is not None:
            container["volumeMounts"] = [{"name": "files", "mountPath": "/files", "readOnly": True}]
            spec["volumes"] = [{"name": "files", "configMap": {"name": files}}]
        self.apply(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        )

    def finished_pod_log(self, namespace: str, name: str, timeout: float) -> str:
        """The log of a one-off pod once it has finished, which must be with success; the pod
        is deleted then."""

        def done() -> str | None:
            phase = ((self.get("pod", name, "-n", namespace) or {}).get("status") or {}).get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        phase = wait_for(done, timeout, f"pod {name} to finish", interval=0.5)
        out = self.kubectl("logs", "-n", namespace, name).stdout
        assert phase == "Succeeded", f"pod {name} {phase}: {out[-2000:]}"
        self.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
        return out

    def exec_http(self, namespace: str, pod: str, method: str, path: str) -> None:
        code = (
            "import urllib.request as u;"
            f"u.urlopen(u.Request('http://127.0.0.1:8080{path}', method='{method}', data=b''), timeout=5).read()"
        )
        self.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", code)


def backend_objects(namespace: str, replicas: int = 3) -> list[dict[str, Any]]:
    """The backend Deployment (no readinessProbe: only the pool's own checks notice a sick
    backend) and its Service."""
    labels = {"app": "backend"}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "backend", "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "server",
                                "image": BACKEND_IMAGE,
                                "imagePullPolicy": "Never",
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "env": [
                                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                                ],
                                "securityContext": {"readOnlyRootFilesystem": True, "runAsNonRoot": True},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "backend", "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    ]


def pool_object(namespace: str, name: str, interval: int = 2, unhealthy: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "clusterpool.dev/v1alpha1",
        "kind": "ClusterPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "strategy": "RoundRobin",
            "discovery": {"kubernetes": {"service": "backend", "port": "http"}},
            "healthCheck": {
                "intervalSeconds": interval,
                "timeoutSeconds": 1,
                "intervalJitterPercent": 0,
                "healthyThreshold": 1,
                "unhealthyThreshold": unhealthy,
                "http": {"path": "/health"},
            },
            # A recovered backend comes back after 2 s (the default first ejection is 30 s).
            "failover": {"circuitBreaker": {"openSeconds": 2, "maxOpenSeconds": 4}},
        },
    }
