"""`python -m moe_runtime adapter-sync`: the sidecar of a vLLM or SGLang pod that keeps the engine's LoRA adapters
equal to the adapter list the operator writes (the ConfigMap <md>-adapters every pod mounts), through the
engine's own adapter API, and exports the per-adapter series our runtime exports, so that the operator reports
status.adapters the same way for every engine. No torch: it imports only the adapter list's parser."""
