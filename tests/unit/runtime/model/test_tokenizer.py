"""The checkpoint's tokenizer: same ids as transformers' own loader, eos ids, chat template."""

from __future__ import annotations

import pytest
import transformers

from moe_runtime.model.tokenizer import CHATML_TEMPLATE, Tokenizer

TEXT = "Experts that nobody chose cost nothing. 12 + 30 = 42!"


def test_encode_matches_transformers_and_round_trips(checkpoints, family):
    ours = Tokenizer.from_dir(checkpoints[family])
    theirs = transformers.AutoTokenizer.from_pretrained(checkpoints[family])
    ids = ours.encode(TEXT)
    assert ids == theirs(TEXT)["input_ids"]
    assert ours.decode(ids) == TEXT
    assert (ids[0] == theirs.bos_token_id) == (family == "mixtral")  # Mixtral starts with <s>


def test_eos_ids_come_from_the_checkpoint(checkpoints):
    qwen = Tokenizer.from_dir(checkpoints["qwen2_moe"])
    assert qwen.eos_token_ids == {qwen.encode("<|im_end|>")[0], qwen.encode("<|endoftext|>")[0]}
    mixtral = Tokenizer.from_dir(checkpoints["mixtral"])
    assert mixtral.eos_token_ids == {2}


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_chat_template_renders_like_transformers(checkpoints, family):
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Count to 3"},
    ]
    ours = Tokenizer.from_dir(checkpoints[family])
    theirs = transformers.AutoTokenizer.from_pretrained(checkpoints[family])
    expected = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(messages) == expected
    assert ours.encode_chat(messages) == theirs(expected, add_special_tokens=False)["input_ids"]


def test_chatml_is_the_default_template(checkpoints, tmp_path):
    tokenizer = Tokenizer(Tokenizer.from_dir(checkpoints["qwen2_moe"])._tokenizer, frozenset())
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
