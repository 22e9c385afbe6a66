"""The operator's I/O: the Kubernetes API, Prometheus, Events, the policy file, its own metrics."""
