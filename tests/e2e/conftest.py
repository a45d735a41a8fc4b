"""A real single-node cluster (scripts/node.py) for the end-to-end tests: brought up once
per session in a network namespace of its own and always torn down.

The binaries and images are built before pytest starts (`make test` runs
`scripts/node.py build`), so bringing the node up here only finds them in the cache; on a
machine without them it builds them, which takes minutes but still fails loudly rather
than skipping."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from nodekit import Cluster

import helm
import node


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    run = node.Run(f"e2e{os.getpid()}")
    try:
        kubeconfig = node.up(run)
        yield Cluster(run, str(kubeconfig), str(helm.build()))
    finally:
        node.down(run)
