"""The OpenAI-compatible HTTP API: request checks and limits, the choices a request runs, response bodies and streams, the FastAPI app."""
