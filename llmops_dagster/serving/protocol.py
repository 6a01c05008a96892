"""The payloads the server accepts, and one clear message for each way a payload can be wrong.

- ``/invocations``: the MLflow scoring protocol (``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs``, with ``params``), parsed by MLflow's own scoring-server functions, so
  what ``mlflow models serve`` and Databricks Model Serving accept is accepted here.
- ``/v1/chat/completions``: the OpenAI chat request; the question is the last user message.
- ``/search``: ``{"query", "k", "mode"}``, what ``llmops search`` sends.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from llmops_dagster.core.index import SEARCH_MODES
from llmops_dagster.core.questions import not_text
from llmops_dagster.core.rag import QUESTION_COLUMN

PARAMS = ("k", "mode")
MAX_CLIENT_ID_CHARS = 256


class BadRequest(Exception):
    """A client error: the status code and one line that says what to change."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_question_chars: int
    max_k: int
    max_questions: int


@dataclass(frozen=True)
class Query:
    questions: list[str]
    k: int | None
    mode: str | None
    stream: bool = False  # chat only: answer as server-sent events


def decode(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply to read as JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(payload).__name__}")
    return payload


def question(value: Any, limits: Limits, what: str = "question") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # a record without one: pandas fills in NaN
        raise BadRequest(f"{what} is missing")
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRequest(f"{what} is empty")
    encodable(value, what)
    if len(value) > limits.max_question_chars:
        raise BadRequest(f"{what} has {len(value)} characters; the limit is {limits.max_question_chars}")
    return value


def encodable(value: str, what: str) -> None:
    problem = not_text(value)
    if problem:
        raise BadRequest(f"{what} is not valid text: {problem}")


def client_request_id(payload: dict[str, Any]) -> str | None:
    """The body's ``client_request_id``, the caller's own id for the request, kept in the log."""
    return checked_client_id(payload.get("client_request_id"), "client_request_id")


def checked_client_id(value: Any, what: str) -> str | None:
    """A caller's own id for the request (``what`` names where it came from), refused when it is
    not a string of at most ``MAX_CLIENT_ID_CHARS`` characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_CLIENT_ID_CHARS:
        raise BadRequest(f"{what} has {len(value)} characters; the limit is {MAX_CLIENT_ID_CHARS}")
    encodable(value, what)
    return value or None


def loggable_client_id(value: str | None) -> str | None:
    """The id as the log may keep it before it was checked: none when it is over the limit."""
    return value if value and len(value) <= MAX_CLIENT_ID_CHARS else None


def retrieval_params(params: Any, limits: Limits) -> tuple[int | None, str | None]:
    """``k`` and ``mode``, checked; None where the model's own setting applies."""
    if params is None:
        return None, None
    if not isinstance(params, dict):
        raise BadRequest(f"params must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise BadRequest(f"unknown param(s) {unknown}; this model takes {list(PARAMS)}")
    k, mode = params.get("k"), params.get("mode")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int):
            raise BadRequest(f"k must be a whole number, got {k!r}")
        if not 1 <= k <= limits.max_k:
            raise BadRequest(f"k must be within 1-{limits.max_k}, got {k}")
    if mode is not None and mode not in SEARCH_MODES:
        raise BadRequest(f"unknown mode {mode!r}; choose one of {list(SEARCH_MODES)}")
    return k, mode


def invocations(payload: dict[str, Any], input_schema: Any, limits: Limits) -> Query:
    """An MLflow scoring request: its questions and params."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import SUPPORTED_FORMATS, infer_and_parse_data

    data = {key: value for key, value in payload.items() if key in SUPPORTED_FORMATS}
    extra = sorted(set(payload) - set(SUPPORTED_FORMATS) - {"params", "client_request_id"})
    if extra:
        raise BadRequest(f"unknown field(s) {extra}; send one of {sorted(SUPPORTED_FORMATS)} and optionally params")
    if len(data) != 1:
        raise BadRequest(f"send exactly one of {sorted(SUPPORTED_FORMATS)}, got {sorted(data) or 'none'}")
    for position, value in enumerate(sent_questions(data)):
        if not isinstance(value, str):  # MLflow's parser of these two formats would make 5 into "5"
            question(value, limits, f"question {position + 1}")
    try:
        frame = as_frame(infer_and_parse_data(data, input_schema))
    except BadRequest:
        raise
    except MlflowException as error:
        raise BadRequest(error.message.splitlines()[0]) from None
    except Exception as error:  # pandas' own complaint about the shape
        raise BadRequest(f"the input is not a table of questions: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    if frame.empty and not len(frame.columns):
        raise BadRequest("the input holds no questions")
    if QUESTION_COLUMN not in frame.columns:
        raise BadRequest(f"the input needs a '{QUESTION_COLUMN}' column, got {list(frame.columns)}")
    questions = list(frame[QUESTION_COLUMN])
    if not questions:
        raise BadRequest("the input holds no questions")
    if len(questions) > limits.max_questions:
        raise BadRequest(f"{len(questions)} questions in one request; the limit is {limits.max_questions}")
    checked = [question(value, limits, f"question {position + 1}") for position, value in enumerate(questions)]
    return Query(checked, *retrieval_params(payload.get("params"), limits))


def sent_questions(data: dict[str, Any]) -> list[Any]:
    """The question values of an ``instances`` or ``inputs`` payload as they were sent, before
    MLflow's schema-driven parser turns each into a string (a number, null or an object alike)."""
    value = data.get("instances", data.get("inputs"))
    if isinstance(value, dict):
        column = value.get(QUESTION_COLUMN, [])
        return column if isinstance(column, list) else [column]
    if isinstance(value, list):
        return [row.get(QUESTION_COLUMN) if isinstance(row, dict) else row for row in value]
    return []


def as_frame(parsed: Any) -> Any:
    """What MLflow's parser returns (a DataFrame, a dict of columns, or a list of records) as a DataFrame."""
    import numpy as np
    import pandas as pd

    if isinstance(parsed, pd.DataFrame):
        return parsed
    if isinstance(parsed, dict):
        return pd.DataFrame({key: np.atleast_1d(value) for key, value in parsed.items()})
    if isinstance(parsed, list) and all(isinstance(row, dict) for row in parsed):
        return pd.DataFrame(parsed)
    raise BadRequest(f"the input must be named columns or records with a '{QUESTION_COLUMN}' field")


def chat(payload: dict[str, Any], limits: Limits) -> Query:
    """An OpenAI chat request: the last user message is the question."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content} objects")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise BadRequest("messages hold no user message to answer")
    content = users[-1].get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        if not all(isinstance(part, dict) for part in content):
            raise BadRequest('the content parts of the last user message must be objects such as {"type": "text", "text": ...}')
        texts = [part.get("text") for part in content if part.get("type") == "text"]
        for position, text in enumerate(texts, 1):
            if not isinstance(text, str):
                raise BadRequest(f"text part {position} of the last user message must be a string, got {type(text).__name__}")
        content = "\n".join(texts)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}")
    choices = payload.get("n", 1)
    if choices is not None and choices != 1:  # sampling parameters are the model's own; several choices it cannot give
        raise BadRequest(f"n must be 1: the model gives one answer per question, got {choices!r}")
    params = {name: payload[name] for name in PARAMS if name in payload}
    return Query([question(content, limits, "the last user message")], *retrieval_params(params or None, limits), stream=stream)


def search(payload: dict[str, Any], limits: Limits) -> Query:
    params = {name: payload[name] for name in PARAMS if name in payload}
    extra = sorted(set(payload) - {"query", "client_request_id", *PARAMS})
    if extra:
        raise BadRequest(f"unknown field(s) {extra}; send query, k, mode and optionally client_request_id")
    return Query([question(payload.get("query"), limits, "query")], *retrieval_params(params or None, limits))
