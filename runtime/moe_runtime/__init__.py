"""moedeploy MoE inference runtime (imported as moe_runtime)."""
