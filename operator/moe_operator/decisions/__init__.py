"""Pure decisions over plain data: the spec, rendering, rollout, autoscaling, analysis, status, policy."""
