"""The official openai client with what vLLM's clients use: log-probabilities (chat and completions, streamed
too), n choices, streaming with usage in every chunk, and the prompt tokens found in the prefix cache."""

import uuid

import pytest
import torch

from moe_runtime.engine.sampling import SamplingParams

pytestmark = pytest.mark.integration

MODEL = "tiny-qwen2-moe"
TOLERANCE = 1e-5
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


def test_chat_logprobs_are_the_top_k_of_the_engine_distribution_including_the_chosen_token(client, reference):
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    ids = reference.tokenizer.encode_chat(MESSAGES)
    generated = reference.generate([ids], SamplingParams(max_tokens=6))[0]
    content = answer.choices[0].logprobs.content
    assert [entry.token for entry in content] == [reference.tokenizer.token_text(t) for t in generated]
    seq = reference.new_sequence()
    logits = reference.forward([(seq, ids + generated)], every_position=[True])
    reference.release(seq)
    expected = torch.log_softmax(logits.double(), dim=-1)[len(ids) - 1 :]
    for entry, token, row in zip(content, generated, expected, strict=False):
        assert abs(entry.logprob - row[token].item()) <= TOLERANCE
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
            row.topk(3).values.tolist(), abs=TOLERANCE
        )
        assert entry.top_logprobs[0].logprob == pytest.approx(
            entry.logprob, abs=TOLERANCE
        )  # greedy: the best
        assert entry.bytes == list(entry.token.encode("utf-8", errors="replace"))


def test_streamed_logprobs_concatenate_to_the_whole_answers(client):
    whole = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=6,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
    )
    streamed = [
        entry
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for entry in c.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [
        (e.token, e.logprob) for e in whole.choices[0].logprobs.content
    ]

    text = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=5, temperature=0, logprobs=2, echo=True
    )
    pieces = list(
        client.completions.create(
            model=MODEL, prompt="Once upon", max_tokens=5, temperature=0, logprobs=2, echo=True, stream=True
        )
    )
    tokens = [t for p in pieces if p.choices[0].logprobs for t in p.choices[0].logprobs.tokens]
    assert "".join(p.choices[0].text for p in pieces) == text.choices[0].text
    assert tokens == text.choices[0].logprobs.tokens


def test_n_gives_independent_choices_and_the_same_seed_the_same_texts(client):
    def ask():
        answer = client.completions.create(
            model=MODEL, prompt="Numbers and names", max_tokens=8, temperature=1.0, n=3, seed=5
        )
        return {choice.index: choice.text for choice in answer.choices}, answer.usage

    first, usage = ask()
    again, _ = ask()
    assert sorted(first) == [0, 1, 2] and first == again
    assert len(set(first.values())) > 1  # each its own sequence, with its own seed (vLLM: seed + index)
    assert usage.completion_tokens == 24
    single = client.completions.create(
        model=MODEL, prompt="Numbers and names", max_tokens=8, temperature=1.0, seed=7
    )
    assert single.choices[0].text == first[2]

    chat = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0.9, n=2, seed=1
    )
    assert sorted(c.index for c in chat.choices) == [0, 1]


def test_streaming_with_usage_in_every_chunk(client):
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    )
    assert all(chunk.usage is not None for chunk in chunks)
    counts = [chunk.usage.completion_tokens for chunk in chunks]
    assert counts == sorted(counts) and counts[-1] == 6
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 6

    chat = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_completion_tokens=5,
            n=2,
            temperature=1.0,
            seed=3,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert all(chunk.usage is not None for chunk in chat)
    assert {c.choices[0].index for c in chat if c.choices} == {0, 1}
    assert chat[-1].usage.completion_tokens == 10


def test_usage_says_how_many_prompt_tokens_came_from_the_prefix_cache(client):
    messages = [{"role": "user", "content": f"{uuid.uuid4().hex} " + "experts share the load " * 12}]

    def cached(**kw) -> tuple[int, int]:
        answer = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=2, temperature=0, **kw
        )
        usage = list(answer)[-1].usage if kw.get("stream") else answer.usage
        return usage.prompt_tokens_details.cached_tokens, usage.prompt_tokens

    assert cached()[0] == 0
    found, prompt_tokens = cached()
    assert 0 < found <= prompt_tokens and found % 16 == 0  # whole KV blocks (--block-size 16)
    assert cached(stream=True, stream_options={"include_usage": True}) == (found, prompt_tokens)
