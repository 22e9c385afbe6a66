"""moedeploy operator (imported as moe_operator): reconciles ModelDeployments into engine pods."""
