"""What the router reads from an OpenAI request body to place it: model, prompt text, streaming, cost. Pure.

The router forwards the body untouched; a body it cannot read still goes to a pod, which answers it (400).
The cost is an estimate in tokens (about four characters a token, no tokenizer here): prompt plus the most
tokens it may generate, for every choice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
COMPLETIONS_MAX_TOKENS = 16  # the OpenAI API's default for /v1/completions
CHAT_MAX_TOKENS = 256  # the runtime's --default-max-tokens (vLLM: the rest of the context)


@dataclass(frozen=True)
class RequestView:
    model: str | None = None
    prompt: str = ""  # what prefixes are hashed over
    stream: bool = False
    cost_tokens: int = 1


def read_request(path: str, body: bytes) -> RequestView:
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return RequestView()
    if not isinstance(raw, Mapping):
        return RequestView()
    chat = path.rstrip("/").endswith("chat/completions")
    prompt, prompt_tokens = _chat_text(raw.get("messages")) if chat else _prompt_text(raw.get("prompt"))
    limit = raw.get("max_completion_tokens") or raw.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        limit = CHAT_MAX_TOKENS if chat else COMPLETIONS_MAX_TOKENS
    n = raw.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    model = raw.get("model")
    return RequestView(
        model=model if isinstance(model, str) else None,
        prompt=prompt,
        stream=raw.get("stream") is True,
        cost_tokens=max(1, prompt_tokens + limit * choices),
    )


def _prompt_text(prompt: Any) -> tuple[str, int]:
    """(text to hash, estimated tokens) of a completions prompt: text, token ids, or a list of either."""
    if isinstance(prompt, str):
        return prompt, len(prompt) // CHARS_PER_TOKEN
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return " ".join(map(str, prompt)), len(prompt)
    if isinstance(prompt, list):
        parts = [_prompt_text(p) for p in prompt]
        return (parts[0][0] if parts else ""), sum(tokens for _, tokens in parts)
    return "", 0


def _chat_text(messages: Any) -> tuple[str, int]:
    texts = []
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                part.get("text", "")
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        if isinstance(content, str):
            texts.append(f"<{message.get('role', '')}>{content}")
    text = "".join(texts)
    return text, len(text) // CHARS_PER_TOKEN
