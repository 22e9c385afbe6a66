"""From a request to its choices: one sequence per prompt and sample, vLLM's sampling fields resolved, and
the checks that involve several fields or the vocabulary (400s naming the parameter)."""

from __future__ import annotations

import pytest

from moe_runtime.api.choices import Limits, chat_choices, completion_choices
from moe_runtime.api.limits import RequestLimits
from moe_runtime.api.protocol import ApiError, ChatCompletionRequest, CompletionRequest

EOS = 0
VOCAB = 300


class CharTokenizer:
    """One token per character (code point + 1), id 0 the eos."""

    eos_token_ids = frozenset({EOS})

    def encode(self, text: str) -> list[int]:
        return [ord(c) + 1 for c in text]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.encode("".join(m["content"] for m in messages))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(
            "<eos>" if i == EOS else chr(i - 1) for i in ids if i != EOS or not skip_special_tokens
        )


LIMITS = Limits(max_context=64, vocab_size=VOCAB, default_max_tokens=8, max_sequences=6)


def completion(**body):
    return completion_choices(CompletionRequest.model_validate(body), CharTokenizer(), LIMITS)


def refusal(make, **body) -> ApiError:
    with pytest.raises(ApiError) as caught:
        make(**body)
    assert caught.value.status == 400
    return caught.value


def test_a_batch_times_n_gives_choices_prompt_by_prompt_each_with_its_seed():
    choices = completion(prompt=[[98, 99], [5, 6, 7]], n=2, seed=10, temperature=0.7, max_tokens=3)
    assert [job.prompt_ids for job in choices.jobs] == [[98, 99], [98, 99], [5, 6, 7], [5, 6, 7]]
    assert [job.params.seed for job in choices.jobs] == [10, 11, 10, 11]  # vLLM: seed + index within n
    assert choices.prompt_tokens == 5  # each prompt once, whatever n
    assert [job.prompt_ids for job in completion(prompt=["ab", "c"]).jobs] == [[98, 99], [100]]
    unseeded = completion(prompt="ab", n=3, temperature=1.0)
    assert [job.params.seed for job in unseeded.jobs] == [None] * 3
    assert completion(prompt="a", n=2, temperature=1, seed=2**64 - 1).jobs[1].params.seed == 0


def test_vllm_sampling_fields_reach_the_sampling_parameters():
    job = completion(
        prompt="ab", ignore_eos=True, stop_token_ids=[7, 7, 9], min_tokens=2, repetition_penalty=1.3,
        presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={"5": 300, "6": -250.5, "7": 1.5},
    ).jobs[0]  # fmt: skip
    params = job.params
    assert params.stop_token_ids == (7, 9) and params.eos_token_ids == (EOS,) and params.ignore_eos
    assert (params.min_tokens, params.repetition_penalty) == (2, 1.3)
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)
    assert params.logit_bias == {5: 100.0, 6: -100.0, 7: 1.5}  # clamped to [-100, 100], as vLLM does
    assert job.stop_reason_ids == {7, 9}
    assert completion(prompt="ab", stop_token_ids=[7]).jobs[0].params.stop_token_ids == (EOS, 7)


def test_logprobs_and_echo():
    job = completion(prompt="abc", logprobs=2, echo=True).jobs[0]
    assert (job.params.logprobs, job.params.prompt_logprobs, job.echo, job.prefix) == (2, 2, True, "abc")
    assert completion(prompt="abc", logprobs=2).jobs[0].params.prompt_logprobs is None
    only_prompt = completion(prompt=[98, EOS, 99], echo=True, max_tokens=0, skip_special_tokens=False).jobs[0]
    assert (only_prompt.show_output, only_prompt.params.max_tokens, only_prompt.prefix) == (
        False,
        1,
        "a<eos>b",
    )
    chat = chat_choices(
        ChatCompletionRequest.model_validate(
            {"messages": [{"role": "user", "content": "hi"}], "logprobs": True}
        ),
        CharTokenizer(),
        LIMITS,
    )
    assert chat.jobs[0].params.logprobs == 0 and chat.jobs[0].params.prompt_logprobs is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a", "n": 2, "temperature": 0}, "n"),  # vLLM: greedy sampling takes n = 1
        ({"prompt": ["a", "b", "c"], "n": 3}, "n"),  # 9 sequences; the queue takes 6
        ({"prompt": ["a"] * 7}, "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": 3, "min_tokens": 4}, "min_tokens"),
        ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "a", "logit_bias": {"300": 1}}, "logit_bias"),
        ({"prompt": "a", "logit_bias": {"x": 1}}, "logit_bias"),
        ({"prompt": "a", "stop_token_ids": [300]}, "stop_token_ids"),
        ({"prompt": "a", "min_tokens": 1, "stop_token_ids": list(range(1, VOCAB))}, "stop_token_ids"),
        ({"prompt": "a", "logprobs": 21}, "logprobs"),
        ({"prompt": [[5], [VOCAB]]}, "prompt"),
    ],
)
def test_refusals_name_the_parameter(body, param):
    assert refusal(completion, **body).param == param


def test_chat_refusals():
    def chat(**body):
        body = {"messages": [{"role": "user", "content": "hi"}], **body}
        return chat_choices(ChatCompletionRequest.model_validate(body), CharTokenizer(), LIMITS)

    assert refusal(chat, top_logprobs=2).param == "top_logprobs"
    assert refusal(chat, logprobs=True, top_logprobs=21).param == "top_logprobs"
    assert refusal(chat, n=7, temperature=1).param == "n"
    assert refusal(chat, max_completion_tokens=2, min_tokens=3).param == "min_tokens"
    small = Limits(
        max_context=64, vocab_size=VOCAB, default_max_tokens=8, request=RequestLimits(max_logprobs=1)
    )
    body = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 2}
    )
    with pytest.raises(ApiError, match="--max-logprobs"):
        chat_choices(body, CharTokenizer(), small)
