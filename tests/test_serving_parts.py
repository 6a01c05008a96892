"""The server's parts on their own: the micro-batcher, the inference-log writer and payload parsing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from llmops_dagster.core import store
from llmops_dagster.serving import protocol
from llmops_dagster.serving.batching import MicroBatcher
from llmops_dagster.serving.inference_log import TRUNCATION_MARK, InferenceLog, clip

LIMITS = protocol.Limits(max_question_chars=50, max_k=10, max_questions=4)


def fake_encode(calls: list[list[str]]):  # noqa: ANN201
    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        time.sleep(0.02)  # a model call takes a while, so callers pile up behind it
        return np.array([[len(text), sum(map(ord, text))] for text in texts], dtype=np.float32)

    return encode


def test_concurrent_callers_share_model_calls_and_get_their_own_rows() -> None:
    calls: list[list[str]] = []
    batcher = MicroBatcher(window_seconds=0.05, max_texts=64)
    encode = batcher.wrap(fake_encode(calls))
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = encode([f"text {i}", "shared", f"other {i % 3}"])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    batcher.close()
    direct = fake_encode([])
    for i, rows in results.items():
        assert np.array_equal(rows, direct([f"text {i}", "shared", f"other {i % 3}"]))
    assert len(calls) < 12, "callers that arrived together were embedded together"
    assert all(len(call) == len(set(call)) for call in calls), "each distinct text is embedded once per call"


def test_a_model_error_reaches_every_caller_of_that_batch() -> None:
    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(window_seconds=0.0, max_texts=8)
    with pytest.raises(RuntimeError, match="model exploded"):
        batcher.wrap(broken)(["a"])
    assert batcher.wrap(fake_encode([]))(["still works"]).shape == (1, 2)
    batcher.close()


def row(request_id: str) -> dict:
    return {"databricks_request_id": request_id, "status_code": 200, "endpoint": "/invocations", "question": "q?"}


def test_the_log_writes_in_batches_and_everything_at_close(tmp_path: Path) -> None:
    log = InferenceLog(str(tmp_path / "lancedb"), flush_rows=5, flush_seconds=30, max_queued=100)
    for i in range(12):
        log.record(row(f"r{i}"))
    deadline = time.monotonic() + 10
    while log.snapshot().written < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.snapshot().written >= 10, "full batches of 5 are written without waiting for the 30 s timer"
    counts = log.close()
    assert (counts.written, counts.dropped, counts.failed, counts.pending) == (12, 0, 0, 0)
    table = store.LanceStore(str(tmp_path / "lancedb")).open(store.INFERENCE_LOG)
    assert sorted(table.to_arrow().column("databricks_request_id").to_pylist()) == sorted(f"r{i}" for i in range(12))
    assert table.version <= 4, "a commit per batch, not per row"


def test_a_full_queue_drops_and_counts_and_a_failed_write_is_counted(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the database should be")
    warnings: list[str] = []
    log = InferenceLog(str(blocked / "lancedb"), flush_rows=1000, flush_seconds=30, max_queued=3, warn=warnings.append)
    for i in range(5):
        log.record(row(f"r{i}"))
    counts = log.close()
    assert counts.dropped == 2 and counts.failed == 3 and counts.written == 0
    assert warnings and "3 row(s) not written" in warnings[0]


def test_clip_flags_what_it_cuts() -> None:
    assert clip({"a": 1}, 100) == ('{"a": 1}', False)
    text, cut = clip("x" * 500, 100)
    assert cut and len(text) == 100 and text.endswith(TRUNCATION_MARK)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"query": "ok", "k": 11}, "k must be within 1-10"),
        ({"query": "ok", "k": True}, "k must be a whole number"),
        ({"query": "x" * 51}, "the limit is 50"),
        ({"query": None}, "query is missing"),
        ({"query": 5}, "query must be a string"),
        ({"query": "ok", "extra": 1}, "unknown field(s) ['extra']"),
    ],
)
def test_search_payloads_are_checked(payload: dict, message: str) -> None:
    with pytest.raises(protocol.BadRequest, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        protocol.search(payload, LIMITS)


def test_search_takes_a_client_request_id_as_the_other_protocols_do() -> None:
    assert protocol.search({"query": "ok", "client_request_id": "mine-1"}, LIMITS).questions == ["ok"]
    assert protocol.client_request_id({"client_request_id": "mine-1"}) == "mine-1"
    with pytest.raises(protocol.BadRequest, match="client_request_id has 257 characters; the limit is 256"):
        protocol.client_request_id({"client_request_id": "x" * 257})


def test_chat_takes_the_last_user_message_and_text_parts() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {"url": "x"}}]},
    ]
    query = protocol.chat({"messages": messages, "stream": True, "k": 2}, LIMITS)
    assert query.questions == ["second"] and query.k == 2 and query.stream


def test_too_many_questions_in_one_request_are_refused() -> None:
    with pytest.raises(protocol.BadRequest, match="5 questions in one request; the limit is 4"):
        protocol.invocations({"dataframe_records": [{"question": "q?"}] * 5}, None, LIMITS)


class Tokens:
    """What ``log_row`` asks of the served model: its name, version, default k and mode, and token counts."""

    name, version = "test.llmops.rag_model", "3"
    pipeline = SimpleNamespace(config=SimpleNamespace(k=5, mode="hybrid"))

    @staticmethod
    def count_tokens(text: str) -> int:
        return len(text.split())


def test_an_answer_the_generator_failed_is_logged_with_its_error_for_monitoring() -> None:
    from llmops_dagster.core.generation import Generation, Usage
    from llmops_dagster.core.rag import RagPipeline
    from llmops_dagster.serving.app import INVOCATIONS, Exchange, log_row

    failed = Generation("", False, (), Usage(12, 0, "counted"), {"kind": "openai"}, error="http://llm:8080/v1: unreachable")
    answered = Generation("Roll back [1].", True, (1,), Usage(12, 4, "endpoint"), {"kind": "openai"})
    rows = []
    for generation in (failed, answered):
        exchange = Exchange(INVOCATIONS, body=b'{"dataframe_records": [{"question": "How?"}]}', served=Tokens())
        exchange.query = protocol.Query(["How?"], None, None)
        exchange.predictions = [RagPipeline.prediction("How?", [], generation, exchange.started)]
        rows.append(log_row(exchange, 200, {"predictions": []}, 5.0, 1000))
    assert rows[0]["error"] == "generation failed: http://llm:8080/v1: unreachable" and rows[0]["found"] is False
    assert rows[1]["error"] is None and rows[1]["answer"] == "Roll back [1]."
