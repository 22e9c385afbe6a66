"""OpenAI response bodies of the two generation endpoints: whole answers, streamed chunks, and
log-probabilities in each endpoint's shape (as vLLM fills them, `stop_reason` included).

Log-probability entries name tokens by their own text (`Tokenizer.token_text`, special tokens shown); -inf is
written as -9999.0, as OpenAI and vLLM do, since JSON has no infinity.
- completions: `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, one item per token; a token's
  `top_logprobs` maps the token itself and the `logprobs` likeliest tokens to their log-probabilities (so up to
  logprobs + 1 entries); the first prompt token (echo) has null for both; `text_offset` is where each token's
  text begins, counting the texts of the tokens before it in this choice.
- chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}...]}]}`
  with the `top_logprobs` likeliest tokens, best first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from moe_runtime.engine.logprobs import TokenLogprob

NEG_INF_LOGPROB = -9999.0


@dataclass(frozen=True)
class Choice:
    """One choice of a whole answer."""

    index: int
    text: str
    logprobs: dict | None
    finish_reason: str
    stop_reason: int | str | None


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else NEG_INF_LOGPROB


def completion_logprobs(entries: Sequence[TokenLogprob], tokenizer, offset: int = 0) -> tuple[dict, int]:
    """The completions shape of these entries, with text offsets from `offset`; and the offset after them."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for entry in entries:
        text = tokenizer.token_text(entry.token)
        tokens.append(text)
        text_offset.append(offset)
        offset += len(text)
        if entry.logprob is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(_logprob(entry.logprob))
        top = {text: _logprob(entry.logprob)}
        for token, value in entry.top:
            top.setdefault(tokenizer.token_text(token), _logprob(value))
        top_logprobs.append(top)
    body = {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }
    return body, offset


def chat_logprobs(entries: Sequence[TokenLogprob], tokenizer) -> dict:
    def item(token: int, value: float) -> dict:
        text = tokenizer.token_text(token)
        return {
            "token": text,
            "logprob": _logprob(value),
            "bytes": list(text.encode("utf-8", errors="replace")),
        }

    return {
        "content": [
            {**item(entry.token, entry.logprob), "top_logprobs": [item(t, v) for t, v in entry.top]}
            for entry in entries
        ]
    }


def _envelope(request_id: str, object_: str, model: str, choices: list[dict], usage: dict | None) -> dict:
    body = {
        "id": request_id,
        "object": object_,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def _choice(index: int, content: dict, logprobs, finish_reason, stop_reason) -> dict:
    """One choice of a body or chunk; `content` is its text, message or delta."""
    return {
        "index": index,
        **content,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
    }


def completion_body(request_id: str, model: str, choices: Sequence[Choice], usage: dict) -> dict:
    return _envelope(
        request_id,
        "text_completion",
        model,
        [_choice(c.index, {"text": c.text}, c.logprobs, c.finish_reason, c.stop_reason) for c in choices],
        usage,
    )


def completion_chunk(
    request_id: str,
    model: str,
    index: int,
    text: str,
    logprobs: dict | None = None,
    finish_reason: str | None = None,
    stop_reason: int | str | None = None,
    usage: dict | None = None,
) -> dict:
    choice = _choice(index, {"text": text}, logprobs, finish_reason, stop_reason)
    return _envelope(request_id, "text_completion", model, [choice], usage)


def chat_body(request_id: str, model: str, choices: Sequence[Choice], usage: dict) -> dict:
    return _envelope(
        request_id,
        "chat.completion",
        model,
        [
            _choice(
                c.index,
                {"message": {"role": "assistant", "content": c.text}},
                c.logprobs,
                c.finish_reason,
                c.stop_reason,
            )
            for c in choices
        ],
        usage,
    )


def chat_chunk(
    request_id: str,
    model: str,
    index: int,
    delta: dict,
    logprobs: dict | None = None,
    finish_reason: str | None = None,
    stop_reason: int | str | None = None,
    usage: dict | None = None,
) -> dict:
    choice = _choice(index, {"delta": delta}, logprobs, finish_reason, stop_reason)
    return _envelope(request_id, "chat.completion.chunk", model, [choice], usage)
