"""Sinks: the stages that take a pool's state elsewhere (Kubernetes objects, Consul, the cache check), each alone."""
