"""The adapter API of each engine, over HTTP to the engine in the same pod.

- vLLM (with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True): POST /v1/load_lora_adapter {lora_name, lora_path,
  load_inplace}, POST /v1/unload_lora_adapter {lora_name}; success is a 200 with a plain-text body, failures
  are OpenAI-style JSON errors (400 already loaded, 404 no such path or adapter, 500 the worker refused it).
- SGLang: POST /load_lora_adapter and /unload_lora_adapter with the same names; 200 or 400 with
  {"success": false, "error_message": ...}. It has no in-place reload: unload, then load.
Both list the loaded adapters in GET /v1/models, after the base model: {"id": name, "root": path, "parent":
<the base model>}.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

LIST_TIMEOUT_S = 5.0
LOAD_TIMEOUT_S = 600.0  # a large adapter on many GPUs takes a while; the engine answers when it is done


class EngineUnavailable(Exception):
    """The engine did not answer (starting, restarting, gone): nothing can be told about its adapters."""


@dataclass(frozen=True)
class Refused(Exception):
    status: int
    message: str


@dataclass(frozen=True)
class EngineApi:
    url: str  # http://127.0.0.1:8000
    engine: str  # vllm or sglang

    def loaded(self) -> dict[str, str]:
        """name -> path of every adapter the engine holds."""
        status, body = self._call("GET", "/v1/models", None, LIST_TIMEOUT_S)
        if status != 200:
            raise EngineUnavailable(f"GET /v1/models answered {status}: {body[:200]}")
        try:
            models = json.loads(body)["data"]
            return {m["id"]: m.get("root") or "" for m in models if m.get("parent")}
        except (ValueError, KeyError, TypeError) as err:
            raise EngineUnavailable(f"GET /v1/models answered no model list: {err}") from None

    def load(self, name: str, path: str, replace: bool) -> None:
        if replace and self.engine != "vllm":
            self.unload(name)
        body = {"lora_name": name, "lora_path": path}
        if replace and self.engine == "vllm":
            body["load_inplace"] = True
        status, text = self._call("POST", self._route("load_lora_adapter"), body, LOAD_TIMEOUT_S)
        self._check(status, text)

    def unload(self, name: str) -> None:
        status, text = self._call(
            "POST", self._route("unload_lora_adapter"), {"lora_name": name}, LIST_TIMEOUT_S
        )
        if status == 404:
            return  # gone already
        self._check(status, text)

    def _route(self, action: str) -> str:
        return f"/v1/{action}" if self.engine == "vllm" else f"/{action}"

    def _check(self, status: int, text: str) -> None:
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and answer.get("success") is False:  # SGLang may say so with a 200
            raise Refused(status, str(answer.get("error_message") or answer))
        if status != 200:
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                raise Refused(status, str(answer["error"].get("message", text)))
            raise Refused(status, text[:500])

    def _call(self, method: str, path: str, body: dict | None, timeout: float) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        except (OSError, ValueError) as err:  # refused, reset, timed out, or no HTTP at all
            raise EngineUnavailable(f"{method} {path}: {err}") from None
