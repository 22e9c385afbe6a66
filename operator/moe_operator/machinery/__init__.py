"""Generic controller machinery: watch cache, work queue, workers, leader election. Knows nothing of ModelDeployments."""
