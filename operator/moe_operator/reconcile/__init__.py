"""One reconcile pass over a ModelDeployment: observe, decide, act."""
