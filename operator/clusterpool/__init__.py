"""ClusterPool Operator: a Kubernetes-native pool of LLM backends."""

__version__ = "0.1.0"  # the one version of the project: everything else reads or is stamped from it
