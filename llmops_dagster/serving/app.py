"""The FastAPI application: the champion behind the protocols clients already speak.

``POST /invocations`` (MLflow scoring), ``POST /v1/chat/completions`` (OpenAI, with streaming),
``POST /search`` (ranked passages, for ``llmops search``), ``GET /ping``, ``/health``, ``/version``
and ``/metrics`` (Prometheus). Every request to the first three becomes one ``inference_log`` row,
success or failure. ``/ping`` and ``/health`` answer without a token, for load balancers; the rest
needs it when one is configured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from llmops_dagster.core.generation import GenerationStream
from llmops_dagster.core.index import Passage
from llmops_dagster.core.rag import Prediction, RagPipeline, source_label
from llmops_dagster.serving import protocol
from llmops_dagster.serving.inference_log import InferenceLog, clip
from llmops_dagster.serving.metrics import Metrics
from llmops_dagster.serving.models import ChampionFollower, ServedModel
from llmops_dagster.serving.protocol import BadRequest, Limits, Query

OPEN_PATHS = ("/ping", "/health")
MLFLOW_ERROR_CODES = {401: "UNAUTHENTICATED", 413: "RESOURCE_EXHAUSTED", 503: "TEMPORARILY_UNAVAILABLE"}
CHAT = "/v1/chat/completions"
INVOCATIONS = "/invocations"
SEARCH = "/search"
ANSWERING_PATHS = (INVOCATIONS, CHAT, SEARCH)  # every request to these is counted and logged
CLIENT_ID_HEADER = "x-client-request-id"  # a caller's own id for the request, as the client_request_id body field


@dataclass
class ServerState:
    follower: ChampionFollower
    log: InferenceLog
    metrics: Metrics
    limits: Limits
    token: str | None
    max_body_bytes: int
    field_chars: int
    max_concurrent: int
    started: float = field(default_factory=time.monotonic)


@dataclass
class Exchange:
    """One inference request as it is answered and logged."""

    endpoint: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    client_request_id: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    body: bytes = b""
    served: ServedModel | None = None
    query: Query | None = None
    predictions: list[Prediction] = field(default_factory=list)
    streaming: tuple[list[Passage], GenerationStream] | None = None  # a streamed chat answer, as it is generated
    error: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {"X-Request-Id": self.request_id}
        if self.served is not None:
            headers["X-Model-Version"] = self.served.version
        return headers


def error_body(endpoint: str, status: int, message: str, request_id: str) -> dict[str, Any]:
    """MLflow's error shape on /invocations, OpenAI's elsewhere; both carry the request id."""
    if endpoint == INVOCATIONS:
        code = MLFLOW_ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
        return {"error_code": code, "message": message, "request_id": request_id}
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "code": status, "request_id": request_id}}


def passages_of(prediction: Prediction) -> list[dict[str, Any]]:
    return [passage.as_json() for passage in prediction.passages]


def create_app(state: ServerState, on_shutdown: Callable[[], None] = lambda: None) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202, ARG001
        yield
        on_shutdown()

    app = FastAPI(title="llmops serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    running = asyncio.Semaphore(state.max_concurrent)  # predictions at once: more only contend for the cores

    def authorized(request: Request) -> bool:
        if state.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), state.token.encode())

    def refused(request: Request, status: int, message: str, headers: dict[str, str]) -> JSONResponse:
        """A request refused before its endpoint read it, answered with its request id; on the
        answering paths it is also counted and logged, as every request to them is."""
        exchange = Exchange(request.url.path, client_request_id=protocol.loggable_client_id(request.headers.get(CLIENT_ID_HEADER)))
        exchange.served = state.follower.current
        exchange.error = message
        body = error_body(request.url.path, status, message, exchange.request_id)
        if request.url.path in ANSWERING_PATHS:
            finish(exchange, status, body)
        return JSONResponse(body, status, headers={**exchange.headers(), **headers})

    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN001, ANN202
        if request.url.path in OPEN_PATHS or authorized(request):
            return await call_next(request)
        return refused(request, 401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def stamp(request: Request, call_next):  # noqa: ANN001, ANN202
        """Every response names its request and the version being served, /ping, /metrics and a 404 too."""
        response = await call_next(request)
        if response.status_code == 405 and request.url.path in ANSWERING_PATHS:  # a GET, say: the router's refusal, logged
            response = refused(request, 405, f"{request.method} is not allowed on {request.url.path}; send a POST", {"Allow": "POST"})
        response.headers.setdefault("X-Request-Id", uuid.uuid4().hex)
        served = state.follower.current
        if served is not None:
            response.headers.setdefault("X-Model-Version", served.version)
        return response

    async def read_body(request: Request, exchange: Exchange) -> None:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > state.max_body_bytes:
            raise BadRequest(f"the body has {declared} bytes; the limit is {state.max_body_bytes}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > state.max_body_bytes:
                raise BadRequest(f"the body is over the limit of {state.max_body_bytes} bytes", 413)
            chunks.append(chunk)
        exchange.body = b"".join(chunks)

    def finish(exchange: Exchange, status: int, response: Any) -> None:
        """Count the request and queue its inference_log row."""
        elapsed = time.perf_counter() - exchange.started
        state.metrics.observe(exchange.endpoint, status, elapsed)
        state.log.record(log_row(exchange, status, response, elapsed * 1000, state.field_chars))

    def failed(exchange: Exchange, what: str, error: Exception) -> JSONResponse:
        exchange.error = error_summary(error)
        body = error_body(exchange.endpoint, 500, f"{what}: {exchange.error}", exchange.request_id)
        finish(exchange, 500, body)
        return JSONResponse(body, 500, headers=exchange.headers())

    async def answer(request: Request, endpoint: str, parse: Callable[[dict, ServedModel], Query], respond: Callable[[Exchange], Any]):
        header = request.headers.get(CLIENT_ID_HEADER)
        exchange = Exchange(endpoint, client_request_id=protocol.loggable_client_id(header))
        exchange.served = state.follower.current  # this request finishes on this version, whatever swaps meanwhile
        try:
            protocol.checked_client_id(header, "the X-Client-Request-Id header")
            await read_body(request, exchange)
            payload = protocol.decode(exchange.body)
            exchange.client_request_id = exchange.client_request_id or protocol.client_request_id(payload)
            if exchange.served is None:
                raise BadRequest("no model is loaded yet", 503)
            exchange.query = parse(payload, exchange.served)
        except BadRequest as problem:
            body = error_body(endpoint, problem.status, str(problem), exchange.request_id)
            exchange.error = str(problem)
            finish(exchange, problem.status, body)
            return JSONResponse(body, problem.status, headers=exchange.headers())
        except Exception as error:  # a payload the checks above did not foresee: still a 500 with the request id, logged
            return failed(exchange, "the server could not read this request", error)
        try:
            async with running:  # the rest wait here, in the event loop, without a thread
                if endpoint == CHAT and exchange.query.stream:  # retrieve now; the answer streams as it is generated
                    exchange.streaming = await run_in_threadpool(start_stream, exchange.served, exchange.query)
                else:
                    exchange.predictions = await run_in_threadpool(predict, exchange.served, exchange.query, endpoint != SEARCH)
        except Exception as error:  # the model failed: 500 with the request id, and logged
            return failed(exchange, "the model failed on this request", error)
        result = respond(exchange)
        if isinstance(result, StreamingResponse):
            return result
        finish(exchange, 200, result)
        return JSONResponse(result, 200, headers=exchange.headers())

    @app.post(INVOCATIONS)
    async def invocations(request: Request) -> Response:
        def parse(payload: dict, served: ServedModel) -> Query:
            return protocol.invocations(payload, served.input_schema, state.limits)

        return await answer(request, INVOCATIONS, parse, lambda exchange: {"predictions": [p.row() for p in exchange.predictions]})

    @app.post(SEARCH)
    async def search(request: Request) -> Response:
        def respond(exchange: Exchange) -> dict[str, Any]:
            return {"query": exchange.query.questions[0], "mode": effective(exchange)[1],
                    "passages": passages_of(exchange.predictions[0])}

        return await answer(request, SEARCH, lambda payload, served: protocol.search(payload, state.limits), respond)

    @app.post(CHAT)
    async def chat(request: Request) -> Response:
        def respond(exchange: Exchange) -> Any:
            if exchange.streaming is None:
                return chat_completion(exchange)
            return EventStream(live_chunks(exchange, finish), headers=exchange.headers(), slot=running)

        return await answer(request, CHAT, lambda payload, served: protocol.chat(payload, state.limits), respond)

    @app.get("/ping")
    async def ping() -> Response:
        return PlainTextResponse("\n")

    @app.get("/health")
    async def health() -> Response:
        served = state.follower.current
        body = {
            "status": "ready" if served is not None else "loading",
            "model": served.name if served else None,
            "version": served.version if served else None,
            "uptime_s": round(time.monotonic() - state.started, 1),
            "model_load_failures": state.follower.failed_loads,
            "inference_log": state.log.snapshot().as_dict(),
        }
        return JSONResponse(body, 200 if served is not None else 503)

    @app.get("/version")
    async def version() -> Response:
        served = state.follower.current
        if served is None:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse(served.describe())

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    return app


def error_summary(error: Exception) -> str:
    """A failure as the log and the 500's message show it: its type and the first line of its message."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:500]}"


def effective(exchange: Exchange) -> tuple[int, str]:
    """The k and mode the request was answered with: its own, else the model's."""
    config = exchange.served.pipeline.config
    return exchange.query.k or config.k, exchange.query.mode or config.mode


def predict(served: ServedModel, query: Query, answers: bool = True) -> list[Prediction]:
    """Each question's prediction; with ``answers`` off, only the ranked passages (for /search)."""
    pipeline = served.pipeline
    if answers:
        return [pipeline.answer(question, query.k, query.mode) for question in query.questions]
    return [Prediction(question, "", False, pipeline.retrieve(question, query.k, query.mode)) for question in query.questions]


def start_stream(served: ServedModel, query: Query) -> tuple[list[Passage], GenerationStream]:
    return served.pipeline.stream_answer(query.questions[0], query.k, query.mode)


def chat_completion(exchange: Exchange) -> dict[str, Any]:
    """An OpenAI ``chat.completion``; sources and passages ride in the ``llmops`` field. ``usage`` is
    the generator's (an endpoint's own figures, else counted with its tokenizer)."""
    served, prediction = exchange.served, exchange.predictions[0]
    if prediction.generation is not None:
        prompt_tokens, completion_tokens = prediction.generation.usage.prompt_tokens, prediction.generation.usage.completion_tokens
    else:
        prompt_tokens, completion_tokens = served.count_tokens(prediction.question), served.count_tokens(prediction.answer)
    k, mode = effective(exchange)
    return {
        "id": f"chatcmpl-{exchange.request_id}",
        "object": "chat.completion",
        "created": int(exchange.started_at.timestamp()),
        "model": f"{served.name}/{served.version}",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": prediction.answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        "llmops": {
            "request_id": exchange.request_id,
            "model_version": served.version,
            "found": prediction.found,
            "cited": list(prediction.generation.cited) if prediction.generation else [],
            "generator": prediction.generation.identity if prediction.generation else None,
            "error": prediction.generation.error if prediction.generation else None,
            "k": k,
            "mode": mode,
            "passages": passages_of(prediction),
        },
    }


def live_chunks(exchange: Exchange, finish: Callable[[Exchange, int, Any], None]) -> Generator[str, None, None]:
    """Server-sent ``chat.completion.chunk`` events as the generator writes: the role, each piece of
    text, then the finish reason with usage and the ``llmops`` field, then ``[DONE]``.

    The request is logged once, when the generator ends or is closed: a 200 once the answer is
    complete (a client that leaves during the last two events has had all of its text), a 499 with
    the text sent so far when the client leaves before that, a 500 when the stream itself failed.
    """
    served, question = exchange.served, exchange.query.questions[0]
    passages, stream = exchange.streaming
    base = {"id": f"chatcmpl-{exchange.request_id}", "object": "chat.completion.chunk",
            "created": int(exchange.started_at.timestamp()), "model": f"{served.name}/{served.version}"}

    def event(delta: dict[str, Any], **extra: Any) -> str:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": extra.pop("finish_reason", None)}], **extra}
        return "data: " + json.dumps(chunk, ensure_ascii=False) + "\n\n"

    status, completion, sent = 499, None, []
    try:
        yield event({"role": "assistant", "content": ""})
        for piece in stream:
            sent.append(piece)
            yield event({"content": piece})
        exchange.predictions = [RagPipeline.prediction(question, passages, stream.result, exchange.started)]
        completion = chat_completion(exchange)
        if stream.result.error:  # the text so far was streamed; the failure rides in llmops.error
            exchange.error = stream.result.error
        status = 200
        yield event({}, finish_reason="stop", usage=completion["usage"], llmops=completion["llmops"])
        yield "data: [DONE]\n\n"
    except Exception as error:
        status, exchange.error = 500, error_summary(error)
        raise
    finally:
        if status == 499:  # the client went away: stop generating, and log what it was sent
            stream.close()
            exchange.error = "the client closed the stream before the answer was complete"
            cut = dataclasses.replace(stream.result, text="".join(sent), found=False, cited=(), error=None)
            exchange.predictions = [RagPipeline.prediction(question, passages, cut, exchange.started)]
        finish(exchange, status, completion)


class EventStream(StreamingResponse):
    """Server-sent events from a blocking generator: each chunk made in one worker thread of its own,
    which also closes the generator once the response is over, however it ended.

    Starlette runs a plain generator one chunk at a time in its thread pool and, when the client
    disconnects, only stops asking: the generator stayed open until the garbage collector came, so a
    request cut short was logged late or not at all. Here the close is queued behind any chunk still
    being made and runs in that thread as soon as it is done.
    """

    def __init__(self, chunks: Generator[str, None, None], headers: dict[str, str], slot: asyncio.Semaphore) -> None:
        self.chunks = chunks
        self.first = next(chunks)  # started now, so that closing it always ends it (an unstarted generator ignores close)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="llmops-stream")
        self.slot = slot
        super().__init__(self._made_in_worker(), media_type="text/event-stream", headers=headers)

    async def _made_in_worker(self) -> AsyncIterator[str]:
        yield self.first
        loop = asyncio.get_running_loop()
        while (chunk := await loop.run_in_executor(self.worker, next, self.chunks, _END)) is not _END:
            yield chunk

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with self.slot:  # the answer is generated in a prediction slot, as a request's without a stream
                await super().__call__(scope, receive, send)
        finally:
            self.worker.submit(self.chunks.close)
            self.worker.shutdown(wait=False)


_END = object()


def log_row(exchange: Exchange, status: int, response: Any, elapsed_ms: float, field_chars: int) -> dict[str, Any]:
    """The inference_log row of one request: the first question's RAG fields in its columns, the
    later questions' in ``later_questions``."""
    request_text, request_cut = clip(exchange.body.decode("utf-8", "replace") if status != 401 else "", field_chars)
    response_text, response_cut = clip(response, field_chars)
    served = exchange.served
    row: dict[str, Any] = {
        "databricks_request_id": exchange.request_id,
        "client_request_id": exchange.client_request_id,
        "date": exchange.started_at.date(),
        "timestamp_ms": int(exchange.started_at.timestamp() * 1000),
        "status_code": status,
        "execution_time_ms": round(elapsed_ms, 3),
        "request": request_text,
        "response": response_text,
        "truncated": request_cut or response_cut,
        "served_model_name": served.name if served else None,
        "served_model_version": served.version if served else None,
        "endpoint": exchange.endpoint,
        "error": exchange.error,
    }
    try:
        row.update(rag_fields(exchange))
    except Exception as error:  # the row is written all the same: a request is never missing from the log
        row["error"] = "; ".join(filter(None, [exchange.error, f"RAG fields not logged: {type(error).__name__}: {error}"]))
    return row


def rag_fields(exchange: Exchange) -> dict[str, Any]:
    """The question, retrieval and answer columns of a request's log row, as far as it got: the
    first question's in the columns, each later one's in ``later_questions``."""
    if exchange.query is None:
        return {}
    served, questions, answers = exchange.served, exchange.query.questions, exchange.endpoint != SEARCH
    predictions = exchange.predictions or []
    each = [question_fields(served, question, predictions[n] if n < len(predictions) else None, answers) for n, question in enumerate(questions)]
    k, mode = effective(exchange)
    row = {**each[0], "k": k, "mode": mode, "later_questions": each[1:] or None}
    failure = row.pop("error", None)
    if failure and not exchange.error:  # answered 200, but by no generator: monitoring counts it apart
        row["error"] = f"generation failed: {failure}"
    generation = predictions[0].generation if predictions and answers else None
    if generation is not None:
        row.update({"generator": json.dumps(generation.identity, sort_keys=True), "usage_source": generation.usage.source})
    return row


def question_fields(served: ServedModel, question: str, prediction: Prediction | None, answers: bool) -> dict[str, Any]:
    """One question's RAG fields, named as ``store.LATER_QUESTION``'s: with ``answers`` off (/search)
    only its passages, and only the question where the request did not get as far as its prediction."""
    fields: dict[str, Any] = {"question": question, "question_tokens": served.count_tokens(question)}
    if prediction is None:
        return fields
    fields.update({
        "chunk_ids": [p.id for p in prediction.passages],
        "sources": [source_label(p) for p in prediction.passages],
        "scores": [round(p.score, 6) for p in prediction.passages],
    })
    if answers:
        fields.update({"answer": prediction.answer, "found": prediction.found, "answer_tokens": served.count_tokens(prediction.answer)})
        generation = prediction.generation
        if generation is not None:
            fields.update({
                "cited": list(generation.cited),
                "prompt_tokens": generation.usage.prompt_tokens,
                "completion_tokens": generation.usage.completion_tokens,
                "error": generation.error or None,
            })
    return fields
