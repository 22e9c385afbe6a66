"""LoRA adapters through the HTTP API of a real server process, with the official `openai` client: selection by
the model field, /v1/models, 404s, refusals reported while the others serve, the watched --lora-list, and more
adapters than --max-loras swapping without failing a request.

The server serves a and b from --lora-modules and c plus one broken adapter of each kind from --lora-list, at
most two in memory; the reference is an engine in this process with the same adapters."""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import openai
import pytest

from moe_runtime.engine.sampling import SamplingParams
from tests.integration.lora_support import broken_adapters, peft_adapter, write_list
from tests.integration.runtime_server.harness import RuntimeServer
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = "tiny-qwen2-moe"


@pytest.fixture(scope="module")
def adapters(checkpoint, tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("lora-adapters")
    good = {name: peft_adapter(checkpoint, root / name, seed=seed) for seed, name in enumerate("abcd")}
    return {"good": good, "broken": broken_adapters(checkpoint, good["a"], root)}


@pytest.fixture(scope="module")
def lora_list(adapters, tmp_path_factory):
    path = tmp_path_factory.mktemp("lora-list") / "adapters.json"
    write_list(path, {"c": adapters["good"]["c"], **{n: p for n, (p, _) in adapters["broken"].items()}})
    return path


@pytest.fixture(scope="module")
def lora_server(checkpoint, adapters, lora_list):
    good = adapters["good"]
    options = (
        "--dtype", "float32", "--max-loras", "2", "--lora-list", str(lora_list),
        "--lora-modules", f"a={good['a']}", f'{{"name": "b", "path": "{good["b"]}"}}',
    )  # fmt: skip
    with RuntimeServer(checkpoint, *options) as running:
        yield running


@pytest.fixture(scope="module")
def lora_client(lora_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lora_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def lora_reference(checkpoint, adapters):
    from moe_runtime.engine.engine import Engine

    engine = Engine.load(str(checkpoint), device="cpu", dtype="float32")
    for name, path in adapters["good"].items():
        engine.load_adapter(name, str(path))
    return engine


def expected_text(engine, prompt: str, adapter: str | None, max_tokens: int) -> str:
    ids = engine.tokenizer.encode(prompt)
    return engine.tokenizer.decode(
        engine.generate([ids], SamplingParams(max_tokens=max_tokens), [adapter])[0]
    )


def metrics(server) -> str:
    return httpx.get(f"{server.url}/metrics").text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a /metrics text, None when absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{wanted}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


def test_each_adapter_answers_as_the_engine_does_with_that_adapter(lora_client, lora_reference):
    prompt = "The adapters answer"
    texts = {}
    for model in (BASE, "a", "b", "c"):
        answer = lora_client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
        assert answer.model == model
        texts[model] = answer.choices[0].text
        assert texts[model] == expected_text(lora_reference, prompt, None if model == BASE else model, 12)
    assert len(set(texts.values())) == 4, "every adapter changes the output"
    chat = lora_client.chat.completions.create(
        model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
    )
    ids = lora_reference.tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    reference = lora_reference.generate([ids], SamplingParams(max_tokens=6), ["b"])[0]
    assert chat.choices[0].message.content == lora_reference.tokenizer.decode(reference)


def test_models_lists_each_adapter_that_loaded_with_the_base_as_parent(lora_server, adapters):
    listed = {m["id"]: m for m in httpx.get(f"{lora_server.url}/v1/models").json()["data"]}
    assert set(listed) == {BASE, "a", "b", "c"}, "the refused adapters are not listed"
    assert listed[BASE]["parent"] is None
    for name in "abc":
        assert listed[name]["parent"] == BASE and listed[name]["root"] == str(adapters["good"][name])


def test_an_unknown_model_is_a_404_in_the_openai_format(lora_client):
    with pytest.raises(openai.NotFoundError) as refused:
        lora_client.completions.create(model="gpt-17", prompt="x", max_tokens=2)
    error = refused.value.body
    assert (refused.value.status_code, error["code"], error["type"]) == (
        404,
        "model_not_found",
        "invalid_request_error",
    )
    assert error["message"] == "The model `gpt-17` does not exist" and error["param"] == "model"


def test_every_refused_adapter_is_reported_by_reason_and_retried_while_the_others_serve(
    lora_server, lora_client, adapters, lora_reference
):
    broken = adapters["broken"]
    text = metrics(lora_server)
    log = lora_server.log.read_text()
    for name, (path, reason) in broken.items():
        assert sample(text, "moe_runtime_lora_adapter_load_error", adapter=name, reason=reason) == 1
        assert sample(text, "moe_runtime_lora_adapter_loaded", adapter=name) == 0
        assert f"LoRA adapter '{name}' from {path} failed to load ({reason}): " in log
        with pytest.raises(
            openai.NotFoundError, match=f"The model `{name}` does not exist: adapter failed to load"
        ):
            lora_client.completions.create(model=name, prompt="x", max_tokens=2)
    wait_for(
        lambda: all(
            (sample(metrics(lora_server), "moe_runtime_lora_load_failures_total", adapter=n, reason=r) or 0)
            >= 2
            for n, (_, r) in broken.items()
        ),
        timeout=60,
        what="a second try of every broken adapter (back-off 1 s, then 2 s)",
    )
    answer = lora_client.completions.create(model="a", prompt="still here", max_tokens=8, temperature=0)
    assert answer.choices[0].text == expected_text(lora_reference, "still here", "a", 8)


def test_more_adapters_than_max_loras_swap_and_every_request_is_answered(lora_server, lora_reference):
    evictions_before = sample(metrics(lora_server), "moe_runtime_lora_evictions_total") or 0
    jobs = [(f"prompt {i}", model) for i in range(4) for model in (BASE, "a", "b", "c")]

    def ask(job):
        prompt, model = job
        response = httpx.post(
            f"{lora_server.url}/v1/completions",
            json={"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0},
            timeout=120,
        )
        return response.status_code, response.json()

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    for (prompt, model), (status, body) in zip(jobs, answers, strict=True):
        assert status == 200, body
        assert body["choices"][0]["text"] == expected_text(
            lora_reference, prompt, None if model == BASE else model, 6
        )
    text = metrics(lora_server)
    assert sample(text, "moe_runtime_lora_evictions_total") > evictions_before
    assert sample(text, "moe_runtime_lora_adapters_resident") <= 2


def test_the_list_adds_and_removes_adapters_and_a_removed_one_finishes_its_request(
    lora_server, lora_client, adapters, lora_list, lora_reference
):
    good, broken = adapters["good"], adapters["broken"]
    write_list(lora_list, {"c": good["c"], "d": good["d"], **{n: p for n, (p, _) in broken.items()}})
    wait_for(lambda: "d" in models(lora_server), timeout=30, what="d to load from the list")
    answer = lora_client.completions.create(model="d", prompt="new", max_tokens=8, temperature=0)
    assert answer.choices[0].text == expected_text(lora_reference, "new", "d", 8)

    prompt, max_tokens = "a long one", 1500
    stream = lora_client.completions.create(
        model="c", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
    )
    chunks = iter(stream)
    text = next(chunks).choices[0].text
    write_list(lora_list, {"d": good["d"]})
    wait_for(lambda: "c" not in models(lora_server), timeout=30, what="c to leave /v1/models")
    info = next(
        line for line in metrics(lora_server).splitlines() if line.startswith("vllm:lora_requests_info")
    )
    assert re.search(r'running_lora_adapters="[^"]*\bc\b', info), f"the request for c still runs: {info}"
    with pytest.raises(openai.NotFoundError):
        lora_client.completions.create(model="c", prompt="x", max_tokens=2)
    finish = None
    for chunk in chunks:
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "length" and text == expected_text(lora_reference, prompt, "c", max_tokens)
    wait_for(
        lambda: sample(metrics(lora_server), "moe_runtime_lora_adapter_loaded", adapter="c") is None,
        timeout=30,
        what="c's series to go once its request finished",
    )
    assert set(models(lora_server)) == {BASE, "a", "b", "d"}


def models(server) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
