"""The official openai client against a real server process: outputs equal the engine's greedy output."""

import concurrent.futures

import pytest

from moe_runtime.engine.sampling import SamplingParams

pytestmark = pytest.mark.integration


def greedy_text(reference, prompt_ids: list[int], max_tokens: int) -> str:
    ids = reference.generate([prompt_ids], SamplingParams(max_tokens=max_tokens))[0]
    return reference.tokenizer.decode(ids)


def test_models_lists_the_served_model(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny-qwen2-moe"]


def test_completion_equals_greedy_generation(client, reference):
    prompt = "The quick brown fox"
    answer = client.completions.create(model="tiny-qwen2-moe", prompt=prompt, max_tokens=12, temperature=0)
    expected = greedy_text(reference, reference.tokenizer.encode(prompt), 12)
    assert answer.choices[0].text == expected
    assert answer.usage.prompt_tokens == len(reference.tokenizer.encode(prompt))


def test_completion_from_token_ids_with_echo(client, reference):
    ids = reference.tokenizer.encode("Experts that nobody chose")
    answer = client.completions.create(
        model="tiny-qwen2-moe", prompt=ids, max_tokens=5, temperature=0, echo=True
    )
    assert answer.choices[0].text == reference.tokenizer.decode(ids) + greedy_text(reference, ids, 5)


def test_chat_equals_greedy_generation_on_the_chat_template(client, reference):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about the sea."},
    ]
    answer = client.chat.completions.create(
        model="tiny-qwen2-moe", messages=messages, max_tokens=10, temperature=0
    )
    expected = greedy_text(reference, reference.tokenizer.encode_chat(messages), 10)
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].message.role == "assistant"


def test_streaming_chat_concatenates_to_the_greedy_output(client, reference):
    messages = [{"role": "user", "content": "Count the tokens."}]
    chunks = list(
        client.chat.completions.create(
            model="tiny-qwen2-moe",
            messages=messages,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy_text(reference, reference.tokenizer.encode_chat(messages), 10)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert chunks[-1].usage.completion_tokens <= 10


def test_streaming_completion(client, reference):
    prompt = "Once upon a time"
    stream = client.completions.create(
        model="tiny-qwen2-moe", prompt=prompt, max_tokens=8, temperature=0, stream=True
    )
    text = "".join(chunk.choices[0].text for chunk in stream)
    assert text == greedy_text(reference, reference.tokenizer.encode(prompt), 8)


def test_seeded_sampling_is_reproducible(client):
    def sample() -> str:
        answer = client.completions.create(
            model="tiny-qwen2-moe",
            prompt="Numbers and names",
            max_tokens=8,
            temperature=1.0,
            top_p=0.9,
            seed=42,
        )
        return answer.choices[0].text

    assert sample() == sample()


def test_stop_string_cuts_the_text(client, reference):
    prompt = "The operator watches"
    full = greedy_text(reference, reference.tokenizer.encode(prompt), 12)
    stop = full[3:5]
    answer = client.completions.create(
        model="tiny-qwen2-moe", prompt=prompt, max_tokens=12, temperature=0, stop=[stop]
    )
    assert answer.choices[0].text == full[: full.index(stop)]
    assert answer.choices[0].finish_reason == "stop"


def test_concurrent_clients_with_mixed_prompt_lengths_all_get_their_own_answer(client, reference):
    words = ["Readability", "counts", "and", "experts", "route", "tokens", "to", "the", "best", "of", "them"]
    prompts = [" ".join(words[: 1 + (i * 7) % len(words)] * (1 + i % 4)) for i in range(24)]
    max_tokens = [4 + i % 9 for i in range(24)]

    def ask(i: int) -> str:
        answer = client.completions.create(
            model="tiny-qwen2-moe", prompt=prompts[i], max_tokens=max_tokens[i], temperature=0
        )
        return answer.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(ask, range(24)))
    for i, answer in enumerate(answers):
        assert answer == greedy_text(reference, reference.tokenizer.encode(prompts[i]), max_tokens[i]), i
