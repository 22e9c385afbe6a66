"""vLLM's request extensions and the OpenAI fields that go with them, against a real server process: each
field changes the output the way vLLM documents, and log-probabilities equal log_softmax of the engine's own
logits (the reference engine in this process, fp32, within 1e-5)."""

import httpx
import pytest
import torch

from moe_runtime.engine.sampling import SamplingParams

pytestmark = pytest.mark.integration

MODEL = "tiny-qwen2-moe"
TOLERANCE = 1e-5


def complete(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def reference_logprobs(reference, ids: list[int]) -> torch.Tensor:
    """log_softmax of the reference engine's logits at every position of `ids`: row i predicts ids[i + 1]."""
    seq = reference.new_sequence()
    try:
        logits = reference.forward([(seq, ids)], every_position=[True])
    finally:
        reference.release(seq)
    return torch.log_softmax(logits.double(), dim=-1)


def eos_of(reference) -> int:
    return min(reference.tokenizer.eos_token_ids)


def test_ignore_eos_yields_exactly_max_tokens_where_eos_would_stop_at_once(server, reference):
    eos = eos_of(reference)
    common = {"prompt": "Experts", "max_tokens": 7, "temperature": 0, "logit_bias": {str(eos): 100}}
    stopped = complete(server, **common)
    assert stopped["usage"]["completion_tokens"] == 1  # the eos, counted as vLLM counts it
    assert (stopped["choices"][0]["finish_reason"], stopped["choices"][0]["text"]) == ("stop", "")
    ignored = complete(server, **common, ignore_eos=True)
    assert ignored["usage"]["completion_tokens"] == 7 and ignored["choices"][0]["finish_reason"] == "length"
    assert ignored["choices"][0]["text"] == ""  # eos is a special token: skipped in the text
    shown = complete(server, **common, ignore_eos=True, skip_special_tokens=False)
    assert shown["choices"][0]["text"] == reference.tokenizer.token_text(eos) * 7


def test_min_tokens_suppresses_eos_and_stop_token_ids_before_it(server, reference):
    eos = eos_of(reference)
    bias = {str(eos): 100}
    answer = complete(server, prompt="Experts", max_tokens=9, temperature=0, logit_bias=bias, min_tokens=4)
    expected = reference.generate(
        [reference.tokenizer.encode("Experts")],
        SamplingParams(max_tokens=9, min_tokens=4, logit_bias={eos: 100.0}),
    )[0]
    assert len(expected) == 4
    choice = answer["choices"][0]
    assert choice["text"] == reference.tokenizer.decode(expected) and choice["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == 5  # 4, then the eos

    forced = reference.tokenizer.encode(" the")[0]  # an ordinary token, made the likeliest
    common = {"prompt": "Experts", "max_tokens": 9, "temperature": 0, "logit_bias": {str(forced): 100}}
    at_once = complete(server, **common, stop_token_ids=[forced])["choices"][0]
    assert (at_once["text"], at_once["finish_reason"], at_once["stop_reason"]) == ("", "stop", forced)
    later = complete(server, **common, stop_token_ids=[forced], min_tokens=3)
    assert later["usage"]["completion_tokens"] == 4 and later["choices"][0]["stop_reason"] == forced
    included = complete(server, **common, stop_token_ids=[forced], include_stop_str_in_output=True)
    assert included["choices"][0]["text"] == " the"


def test_a_stop_string_stays_in_the_text_with_include_stop_str_in_output(server, reference):
    full = complete(server, prompt="The operator watches", max_tokens=12, temperature=0)["choices"][0]["text"]
    stop = full[3:5]
    cut = complete(server, prompt="The operator watches", max_tokens=12, temperature=0, stop=[stop])
    kept = complete(
        server,
        prompt="The operator watches",
        max_tokens=12,
        temperature=0,
        stop=[stop],
        include_stop_str_in_output=True,
    )
    assert cut["choices"][0]["text"] == full[: full.index(stop)]
    assert kept["choices"][0]["text"] == full[: full.index(stop) + len(stop)]
    assert kept["choices"][0]["stop_reason"] == stop


@pytest.mark.parametrize(
    ("penalty", "fewer_repeats"),
    [
        ({"repetition_penalty": 1.5}, True),
        ({"frequency_penalty": 1.5}, True),
        ({"presence_penalty": 1.5}, True),
        ({"frequency_penalty": -2.0}, False),
        ({"repetition_penalty": 0.5}, False),
    ],
)
def test_penalties_move_greedy_output_the_way_vllm_defines_them(server, reference, penalty, fewer_repeats):
    prompt = "The quick brown fox"

    def distinct(body: dict) -> int:
        return len(set(body["choices"][0]["logprobs"]["tokens"]))

    common = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 0}
    plain, penalised = complete(server, **common), complete(server, **common, **penalty)
    assert (
        (distinct(penalised) > distinct(plain)) if fewer_repeats else (distinct(penalised) < distinct(plain))
    )
    expected = reference.generate(
        [reference.tokenizer.encode(prompt)], SamplingParams(max_tokens=24, **penalty)
    )
    assert penalised["choices"][0]["text"] == reference.tokenizer.decode(expected[0])


def test_logit_bias_forces_and_forbids_tokens(server, reference):
    forced = reference.tokenizer.encode(" the")[0]
    answer = complete(server, prompt="Numbers", max_tokens=5, temperature=0, logit_bias={str(forced): 100})
    assert answer["choices"][0]["text"] == " the" * 5
    plain = complete(server, prompt="Numbers", max_tokens=6, temperature=0, logprobs=0)
    first = reference.tokenizer.encode("Numbers")
    banned = reference.generate([first], SamplingParams(max_tokens=6))[0][0]
    assert plain["choices"][0]["logprobs"]["tokens"][0] == reference.tokenizer.token_text(banned)
    avoided = complete(
        server, prompt="Numbers", max_tokens=6, temperature=0, logprobs=0, logit_bias={str(banned): -100}
    )
    tokens = avoided["choices"][0]["logprobs"]["tokens"]
    assert reference.tokenizer.token_text(banned) not in tokens


def test_echo_with_logprobs_gives_the_prompt_log_probabilities_of_the_engine(server, reference):
    prompt = "Readability counts. Errors should never pass silently."
    ids = reference.tokenizer.encode(prompt)
    answer = complete(server, prompt=prompt, max_tokens=1, temperature=0, logprobs=3, echo=True)
    logprobs = answer["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1  # every prompt token, then the generated one
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    expected = reference_logprobs(reference, ids)
    for position in range(1, len(ids)):
        row = expected[position - 1]
        assert abs(logprobs["token_logprobs"][position] - row[ids[position]].item()) <= TOLERANCE
        top = logprobs["top_logprobs"][position]
        best = row.topk(3)
        # the token itself, then the likeliest (tokens with the same text keep the first value)
        wanted = {reference.tokenizer.token_text(ids[position]): row[ids[position]].item()}
        for token, value in zip(best.indices.tolist(), best.values.tolist(), strict=True):
            wanted.setdefault(reference.tokenizer.token_text(token), value)
        assert top.keys() == wanted.keys()
        assert all(abs(top[key] - wanted[key]) <= TOLERANCE for key in wanted)
    assert logprobs["tokens"][: len(ids)] == [reference.tokenizer.token_text(t) for t in ids]
    assert answer["choices"][0]["text"].startswith(prompt)


def test_generated_logprobs_are_the_raw_model_distribution_whatever_the_sampling_settings(server, reference):
    prompt = "A mixture of experts"
    ids = reference.tokenizer.encode(prompt)
    answer = complete(server, prompt=prompt, max_tokens=6, temperature=0, logprobs=2, frequency_penalty=1.0)
    generated = reference.generate([ids], SamplingParams(max_tokens=6, frequency_penalty=1.0))[0]
    expected = reference_logprobs(reference, ids + generated)
    values = answer["choices"][0]["logprobs"]["token_logprobs"]
    for step, token in enumerate(generated):
        assert abs(values[step] - expected[len(ids) - 1 + step][token].item()) <= TOLERANCE


def test_lm_eval_loglikelihood_request(server, reference):
    """lm-eval's local-completions loglikelihood payload, parsed as lm-eval parses it."""
    context = reference.tokenizer.encode("The router scores each expert,")
    continuation = reference.tokenizer.encode(" keeps the best ones")
    payload = {"model": MODEL, "prompt": [context + continuation], "temperature": 0, "max_tokens": 1,
               "logprobs": 1, "seed": 1234, "echo": True}  # fmt: skip
    answer = httpx.post(f"{server.url}/v1/completions", json=payload, timeout=120).json()
    choice = sorted(answer["choices"], key=lambda c: c["index"])[0]
    ctxlen = len(context)
    loglikelihood = sum(choice["logprobs"]["token_logprobs"][ctxlen:-1])
    is_greedy = all(
        token == max(top.values())
        for token, top in zip(
            choice["logprobs"]["token_logprobs"][ctxlen:-1],
            choice["logprobs"]["top_logprobs"][ctxlen:-1],
            strict=True,
        )
    )
    expected = reference_logprobs(reference, context + continuation)
    wanted = sum(expected[ctxlen - 1 + i][t].item() for i, t in enumerate(continuation))
    assert abs(loglikelihood - wanted) <= TOLERANCE * len(continuation)
    greedy = all(expected[ctxlen - 1 + i].argmax().item() == t for i, t in enumerate(continuation))
    assert is_greedy == greedy


@pytest.mark.parametrize("as_ids", [False, True])
def test_a_batch_of_prompts_gets_one_choice_per_prompt_with_its_index(server, reference, as_ids):
    texts = ["Once upon a time", "The operator", "Numbers and names"]
    ids = [reference.tokenizer.encode(text) for text in texts]
    answer = complete(server, prompt=ids if as_ids else texts, max_tokens=5, temperature=0)
    by_index = {c["index"]: c["text"] for c in answer["choices"]}
    assert sorted(by_index) == [0, 1, 2]
    for index, prompt in enumerate(ids):
        assert by_index[index] == reference.tokenizer.decode(
            reference.generate([prompt], SamplingParams(max_tokens=5))[0]
        )
    assert answer["usage"]["prompt_tokens"] == sum(map(len, ids))


def test_n_with_a_batch_numbers_choices_prompt_by_prompt(server):
    answer = complete(server, prompt=["Once upon", "The sea"], n=2, max_tokens=4, temperature=1.0, seed=11)
    assert sorted(c["index"] for c in answer["choices"]) == [0, 1, 2, 3]
    alone = complete(server, prompt="The sea", n=1, max_tokens=4, temperature=1.0, seed=12)
    assert {c["index"]: c["text"] for c in answer["choices"]}[3] == alone["choices"][0]["text"]
    assert answer["usage"]["completion_tokens"] == 16


def test_vllm_bench_serve_request(server):
    """The body `vllm bench serve` sends to /v1/completions with --ignore-eos, read as it reads it."""
    payload = {"model": MODEL, "prompt": "The quick brown fox " * 8, "repetition_penalty": 1.0,
               "max_tokens": 12, "logprobs": None, "stream": True, "stream_options": {"include_usage": True},
               "ignore_eos": True}  # fmt: skip
    chunks, output_tokens = 0, None
    with httpx.stream("POST", f"{server.url}/v1/completions", json=payload, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            data = httpx.Response(200, content=line.removeprefix("data: ")).json()
            if data.get("choices"):
                chunks += 1
            elif usage := data.get("usage"):
                output_tokens = usage["completion_tokens"]
    assert output_tokens == 12 and chunks >= 12  # a chunk per token, and the closing one
