"""The measurement loop: Prometheus reads taken off the reconcile pass, kept for the passes to use."""
