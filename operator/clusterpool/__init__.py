"""ClusterPool Operator: a Kubernetes-native pool of LLM backends."""

__version__ = "0.1.0"
