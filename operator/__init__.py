"""moedeploy operator: reconciles ModelDeployments into runtime pods (imported as moe_operator)."""
