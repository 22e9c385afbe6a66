"""Text <-> token ids from a checkpoint's tokenizer.json, with eos ids and the chat template."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when the checkpoint has no chat template: ChatML, the format of the Qwen families.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TokenizerError(ValueError):
    """A checkpoint's tokenizer files are missing or unreadable."""


class Tokenizer:
    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        eos_token_ids: frozenset[int],
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ):
        self._tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.chat_template = chat_template or CHATML_TEMPLATE
        self.special_tokens = special_tokens or {}
        self._template = _jinja().from_string(self.chat_template)
        self._token_texts: dict[int, str] = {}

    @classmethod
    def from_dir(cls, model_dir: str | Path, extra_eos_ids: tuple[int, ...] = ()) -> Tokenizer:
        """Reads tokenizer.json and, when present, tokenizer_config.json and generation_config.json."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path}: missing (the checkpoint needs a tokenizer.json)")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:
            raise TokenizerError(f"{path}: unreadable ({err})") from err
        settings = _read_json(model_dir / "tokenizer_config.json")
        special = {
            key: _token_text(settings[key])
            for key in ("bos_token", "eos_token")
            if settings.get(key) is not None
        }
        eos = set(extra_eos_ids)
        generation_eos = _read_json(model_dir / "generation_config.json").get("eos_token_id")
        if generation_eos is not None:
            eos.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        if "eos_token" in special and tokenizer.token_to_id(special["eos_token"]) is not None:
            eos.add(tokenizer.token_to_id(special["eos_token"]))
        return cls(tokenizer, frozenset(eos), settings.get("chat_template"), special)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL while it works and encode does not: a long prompt tokenized in a
        # thread must not stop the event loop (3 s for 2 MB here).
        return self._tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """One token on its own, special tokens included: what log-probability entries show (as vLLM does)."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self._tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    def apply_chat_template(self, messages: list[dict]) -> str:
        """The prompt text for a chat, ending with the assistant's turn opened."""
        return self._template.render(messages=messages, add_generation_prompt=True, **self.special_tokens)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat prompt; the template already holds any special tokens (e.g. Mixtral's <s>),
        so the tokenizer adds none, as transformers does."""
        return self.encode(self.apply_chat_template(messages), add_special_tokens=False)


def _jinja() -> ImmutableSandboxedEnvironment:
    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TokenizerError(f"{path}: not valid JSON ({err})") from err


def _token_text(token) -> str:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} objects."""
    return token["content"] if isinstance(token, dict) else token
