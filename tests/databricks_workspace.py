"""A stand-in for a Databricks workspace's REST API on 127.0.0.1, for ``WorkspaceClient(host=...)``.

It answers the calls dagster-databricks' Pipes clients really make (databricks-sdk 0.60): who am I
(the credential check), ``/api/2.2/jobs/runs/submit|get|list|cancel`` and the Files API on volumes
(``/api/2.0/fs/files|directories``). A submitted run does what a real run of a Pipes entry point
does to the volume: it reads the injected context and writes message chunks (``1.json``, ...)
into the messages folder, then ends as the scenario says (success, failure, or running until it
is cancelled).

It also keeps Model Serving endpoints (``/api/2.0/serving-endpoints``: list, get, create, PUT
``{name}/config``, PUT ``{name}/ai-gateway``, delete) as the workspace does: a create or config
update leaves the endpoint ``IN_PROGRESS`` with a ``pending_config`` for ``Endpoint.settle_after``
reads, then makes it the live ``config`` (or, with ``fail_updates``, ends ``UPDATE_FAILED`` and
keeps the old one); an update while one is in progress is refused as the API refuses it.

And a SQL warehouse (``/api/2.0/sql/statements``: execute, get, result chunks), whose statements a
test gives to ``Workspace.sql`` (a real Spark session in ``tests/test_inference_table.py``); results
come back in the JSON_ARRAY format, cut into chunks of ``chunk_rows``, after ``statement_polls``
reads in PENDING, then RUNNING; a result larger than ``inline_limit`` fails the statement, as the API
fails an INLINE result over 25 MiB.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PIPES_PROTOCOL_VERSION,
    PIPES_PROTOCOL_VERSION_FIELD,
    decode_param,
)

SUCCEED, FAIL, HANG = "succeed", "fail", "hang"
FAILURE_MESSAGE = "Workload failed, see run output for details"
REMOTE_ERROR = "RuntimeError: CUDA out of memory while answering question 7"


def _message(method: str, params: dict[str, Any] | None) -> str:
    return json.dumps({PIPES_PROTOCOL_VERSION_FIELD: PIPES_PROTOCOL_VERSION, "method": method, "params": params})


@dataclass
class Run:
    run_id: int
    submission: dict[str, Any]
    scenario: str
    polls: int = 0
    state: str = "PENDING"
    result: str | None = None
    message: str = ""
    run_type: str = "SUBMIT_RUN"

    @property
    def active(self) -> bool:
        return self.state in ("QUEUED", "PENDING", "RUNNING", "TERMINATING")

    def described(self) -> dict[str, Any]:
        """The run as runs/get and runs/list return it."""
        state = {"life_cycle_state": self.state, "state_message": self.message, **({"result_state": self.result} if self.result else {})}
        url = f"http://workspace/#job/run/{self.run_id}"
        return {"run_id": self.run_id, "run_name": self.submission.get("run_name"), "run_type": self.run_type, "state": state, "run_page_url": url}


@dataclass
class Endpoint:
    """One serving endpoint: its live config, the one it is moving to, and its AI Gateway settings."""

    name: str
    config: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None
    ai_gateway: dict[str, Any] = field(default_factory=dict)
    tags: list[dict[str, Any]] = field(default_factory=list)
    config_update: str = "NOT_UPDATING"
    reads_left: int = 0  # reads of an update in progress before it is over
    config_version: int = 0

    def start_update(self, config: dict[str, Any], settle_after: int) -> None:
        self.config_version += 1
        self.pending = {**config, "config_version": self.config_version, "start_time": 1_700_000_000_000}
        self.config_update, self.reads_left = "IN_PROGRESS", settle_after

    def read(self, fail: bool, hang: bool) -> None:
        """A GET: an update in progress moves on by one read."""
        if self.config_update != "IN_PROGRESS" or hang:
            return
        if self.reads_left > 0:
            self.reads_left -= 1
            return
        if fail:
            self.config_update = "UPDATE_FAILED"
        else:
            entities = [{**e, "state": {"deployment": "DEPLOYMENT_READY"}} for e in self.pending.get("served_entities", [])]
            self.config = {**self.pending, "served_entities": entities}
            self.config.pop("start_time", None)
            self.config_update = "NOT_UPDATING"
        self.pending = None

    def as_dict(self) -> dict[str, Any]:
        ready = "READY" if self.config else "NOT_READY"
        body: dict[str, Any] = {
            "name": self.name,
            "id": f"id-{self.name}",
            "creator": "dagster@example.com",
            "state": {"ready": ready, "config_update": self.config_update},
            "tags": self.tags,
            "permission_level": "CAN_MANAGE",
        }
        if self.config:
            body["config"] = self.config
        if self.pending:
            body["pending_config"] = self.pending
        if self.ai_gateway:
            body["ai_gateway"] = self.ai_gateway
        return body


@dataclass
class Statement:
    """One SQL statement: its text and parameters, and its outcome once the warehouse ran it."""

    statement_id: str
    text: str
    parameters: dict[str, Any]
    reads_left: int
    columns: list[str] = field(default_factory=list)
    chunks: list[list[list[Any]]] = field(default_factory=list)
    error: str | None = None

    def chunk(self, index: int) -> dict[str, Any]:
        offset = sum(len(chunk) for chunk in self.chunks[:index])
        body = {"chunk_index": index, "row_offset": offset, "row_count": len(self.chunks[index]), "data_array": self.chunks[index]}
        return body | ({"next_chunk_index": index + 1} if index + 1 < len(self.chunks) else {})

    def described(self) -> dict[str, Any]:
        if self.reads_left > 0:
            return {"statement_id": self.statement_id, "status": {"state": "PENDING" if self.reads_left > 1 else "RUNNING"}}
        if self.error is not None:
            return {"statement_id": self.statement_id, "status": {"state": "FAILED", "error": {"error_code": "BAD_REQUEST", "message": self.error}}}
        columns = [{"name": name, "position": position, "type_name": "STRING", "type_text": "STRING"} for position, name in enumerate(self.columns)]
        manifest = {
            "format": "JSON_ARRAY",
            "schema": {"column_count": len(columns), "columns": columns},
            "total_chunk_count": len(self.chunks),
            "total_row_count": sum(len(chunk) for chunk in self.chunks),
            "chunks": [{key: value for key, value in self.chunk(i).items() if key != "data_array"} for i in range(len(self.chunks))],
        }
        body = {"statement_id": self.statement_id, "status": {"state": "SUCCEEDED"}, "manifest": manifest}
        return body | ({"result": self.chunk(0)} if self.chunks else {})  # no rows: no result, as the API answers


PARAMETER_TYPES: dict[str, Callable[[str], Any]] = {"BIGINT": int, "INT": int, "STRING": str, "DOUBLE": float, "DATE": date.fromisoformat}


def sql_statements(ws: Workspace, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """Execute a statement (at once, answered RUNNING for ``statement_polls`` reads), read it, read a chunk."""
    parts = path.removeprefix(STATEMENTS).strip("/").split("/")
    if method == "POST" and parts == [""]:
        parameters = {
            item["name"]: None if item.get("value") is None else PARAMETER_TYPES[item.get("type", "STRING")](item["value"])
            for item in body.get("parameters") or []
        }
        with ws.lock:
            statement = Statement(f"stmt-{len(ws.statements) + 1}", body["statement"], parameters, ws.statement_polls)
            ws.statements[statement.statement_id] = statement
            hang = ws.hang_statement == len(ws.statements)
        if hang:
            threading.Event().wait()  # never answered: the caller is killed while it waits
        try:
            statement.columns, rows = ws.sql(statement.text, parameters)
        except Exception as error:  # noqa: BLE001 - the warehouse's own message, as the API reports it
            statement.error = (str(error).splitlines() or [type(error).__name__])[0]
        else:
            if len(json.dumps(rows)) > ws.inline_limit:
                statement.error = f"The INLINE disposition result exceeds the limit of {ws.inline_limit} bytes; the statement execution is aborted."
            statement.chunks = [rows[start : start + ws.chunk_rows] for start in range(0, len(rows), ws.chunk_rows)]
        return 200, statement.described()
    statement = ws.statements.get(parts[0])
    if statement is None:
        return 404, {"error_code": "NOT_FOUND", "message": f"statement {parts[0]} not found"}
    if method == "GET" and len(parts) == 1:
        statement.reads_left -= 1
        return 200, statement.described()
    if method == "GET" and parts[1:3] == ["result", "chunks"]:
        return 200, statement.chunk(int(parts[3]))
    if method == "POST" and parts[1:] == ["cancel"]:
        statement.error = "cancelled"
        return 200, {}
    return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no such endpoint {method} {path}"}


@dataclass
class Workspace:
    token: str
    scenario: str = SUCCEED
    metadata: dict[str, Any] = field(default_factory=lambda: {"dagster/row_count": 11, "table_version": 4})
    checks: dict[str, list[str]] = field(default_factory=dict)  # asset name -> checks a run of it reports, passed
    files: dict[str, bytes] = field(default_factory=dict)
    directories: set[str] = field(default_factory=set)
    runs: dict[int, Run] = field(default_factory=dict)
    cancelled: list[int] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    contexts: list[dict[str, Any]] = field(default_factory=list)  # what each run read from the volume
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    endpoint_calls: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)  # method, path, body
    settle_after: int = 1  # reads of an endpoint update in progress before it is live
    fail_updates: bool = False  # endpoint updates end UPDATE_FAILED
    hang_updates: bool = False  # endpoint updates never end
    deny_endpoint_writes: bool = False  # the caller may read endpoints but not create or change them
    gateway_updates: bool = False  # a PUT of the AI Gateway sets the endpoint updating, as a workspace may
    lose_submit_replies: int = 0  # this many run submissions are accepted but answered 503, as if the reply was lost
    fail_run_gets: int = 0  # this many runs/get of a running run are answered 500, as a workspace's bad moment is
    down: bool = False  # every call is answered 502, as by a proxy in front of a workspace that is down
    secrets: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (scope, key) -> value, for /api/2.0/secrets/get
    idempotency_tokens: dict[str, int] = field(default_factory=dict)  # token -> the run it created
    uncancellable: set[int] = field(default_factory=set)  # runs the caller may not cancel (another user's)
    # The warehouse: statement, parameters (typed) -> column names and rows; an exception fails the statement.
    sql: Callable[[str, dict[str, Any]], tuple[list[str], list[list[Any]]]] | None = None
    statements: dict[str, Statement] = field(default_factory=dict)
    statement_polls: int = 0  # reads of a statement in RUNNING before it is done
    chunk_rows: int = 1000  # rows per result chunk
    hang_statement: int | None = None  # this statement (1-based) is never answered, as a warehouse that stalls
    inline_limit: int = 25 * 1024 * 1024  # bytes an INLINE result may hold; a larger one fails the statement
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def submissions(self) -> list[dict[str, Any]]:
        return [run.submission for run in self.runs.values()]

    # ---- what a run does ---------------------------------------------------------------------

    def _bootstrap(self, submission: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        task = submission["tasks"][0]
        if "python_wheel_task" in task and "--dagster-pipes-context" in task["python_wheel_task"].get("parameters", []):
            args = task["python_wheel_task"]["parameters"]
            return decode_param(args[args.index("--dagster-pipes-context") + 1]), decode_param(args[args.index("--dagster-pipes-messages") + 1])
        env = task["new_cluster"]["spark_env_vars"]
        return decode_param(env[DAGSTER_PIPES_CONTEXT_ENV_VAR]), decode_param(env[DAGSTER_PIPES_MESSAGES_ENV_VAR])

    def _play(self, run: Run) -> None:
        """What the entry point writes to the volume while it runs."""
        context_params, message_params = self._bootstrap(run.submission)
        context = json.loads(self.files[context_params["path"]])
        self.contexts.append(context)
        folder = message_params["path"]
        lines = [_message("opened", {}), _message("log", {"message": "answering 11 question(s) with champion v1", "level": "INFO"})]
        if run.scenario == SUCCEED:
            metadata = {k: {"raw_value": v, "type": "__infer__"} for k, v in self.metadata.items()}
            asset_key = context["asset_keys"][0] if context.get("asset_keys") else None
            lines.append(_message("report_asset_materialization", {"asset_key": asset_key, "metadata": metadata, "data_version": None}))
            for check in self.checks.get((asset_key or "").split("/")[-1], []):
                verdict = {"asset_key": asset_key, "check_name": check, "passed": True, "metadata": None, "severity": "ERROR"}
                lines.append(_message("report_asset_check", verdict))
            lines.append(_message("closed", {}))
        elif run.scenario == FAIL:
            lines.append(_message("log", {"message": "Traceback (most recent call last): ...", "level": "ERROR"}))
            error = {"name": "RuntimeError", "message": REMOTE_ERROR, "stack": ["  File predict.py, line 20\n"], "cause": None, "context": None}
            lines.append(_message("closed", {"exception": error}))
        if run.scenario != HANG:
            self.files[f"{folder}/1.json"] = ("\n".join(lines) + "\n").encode()

    def poll(self, run_id: int) -> Run:
        with self.lock:
            run = self.runs[run_id]
            run.polls += 1
            if run.state == "PENDING":
                run.state = "RUNNING"
                self._play(run)
            elif run.state == "RUNNING" and run.scenario != HANG:
                run.state, run.result = "TERMINATED", "SUCCESS" if run.scenario == SUCCEED else "FAILED"
                run.message = "" if run.scenario == SUCCEED else FAILURE_MESSAGE
            elif run.state == "TERMINATING":
                run.state = "TERMINATED"
            return run

    def cancel(self, run_id: int) -> None:
        with self.lock:
            self.cancelled.append(run_id)
            run = self.runs[run_id]
            run.state, run.result, run.message = "TERMINATING", "CANCELED", "Run cancelled by the user"


def invalid_submission(submission: dict[str, Any]) -> str | None:
    """What the Jobs API refuses in a one-off run (runs/submit), as far as this stand-in knows it."""
    tasks = submission.get("tasks") or []
    if not tasks:
        return "At least one task is required."
    environments = {e.get("environment_key"): e.get("spec") or {} for e in submission.get("environments") or []}
    for task in tasks:
        if not task.get("task_key"):
            return "Task key is required."
        wheel = task.get("python_wheel_task")
        if not wheel or not wheel.get("package_name") or not wheel.get("entry_point"):
            return f"Task {task.get('task_key')}: python_wheel_task needs package_name and entry_point."
        if "new_cluster" in task:
            cluster = task["new_cluster"]
            missing = [key for key in ("spark_version", "node_type_id") if not cluster.get(key)]
            if missing:
                return f"Task {task['task_key']}: new_cluster.{missing[0]} is required."
            if not task.get("libraries"):
                return f"Task {task['task_key']}: a wheel task on a new cluster needs the wheel in libraries."
        elif "environment_key" in task:
            spec = environments.get(task["environment_key"])
            if spec is None:
                return f"Task {task['task_key']}: environment_key {task['environment_key']!r} is not in environments."
            if not spec.get("environment_version") and not spec.get("client"):
                return f"Task {task['task_key']}: the environment spec needs environment_version."
        else:
            return f"Task {task['task_key']}: serverless tasks need an environment_key; others a cluster."
    token = submission.get("idempotency_token")
    if token is not None and len(token) > 64:
        return "idempotency_token must be at most 64 characters."
    return None


ENDPOINTS = "/api/2.0/serving-endpoints"
STATEMENTS = "/api/2.0/sql/statements"


def serving_endpoints(ws: Workspace, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """The Serving Endpoints API: (status, JSON body)."""
    ws.endpoint_calls.append((method, path, body))
    parts = path.removeprefix(ENDPOINTS).strip("/").split("/") if path != ENDPOINTS else []
    if ws.deny_endpoint_writes and method != "GET":
        return 403, {"error_code": "PERMISSION_DENIED", "message": "User does not have permission 'CAN_MANAGE' on serving endpoints."}
    with ws.lock:
        if not parts:
            if method == "GET":
                return 200, {"endpoints": [e.as_dict() for e in ws.endpoints.values()]}
            if method == "POST":
                name = body["name"]
                if name in ws.endpoints:
                    return 400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": f"Endpoint with name '{name}' already exists."}
                endpoint = Endpoint(name, ai_gateway=body.get("ai_gateway") or {}, tags=body.get("tags") or [])
                endpoint.start_update(body.get("config") or {}, ws.settle_after)
                ws.endpoints[name] = endpoint
                return 200, endpoint.as_dict()
        endpoint = ws.endpoints.get(parts[0])
        if endpoint is None:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint with name '{parts[0]}' does not exist."}
        if len(parts) == 1 and method == "GET":
            endpoint.read(ws.fail_updates, ws.hang_updates)
            return 200, endpoint.as_dict()
        if len(parts) == 1 and method == "DELETE":
            del ws.endpoints[parts[0]]
            return 200, {}
        if parts[1:] == ["config"] and method == "PUT":
            if endpoint.config_update == "IN_PROGRESS":
                message = f"Endpoint {endpoint.name} is currently updating; wait for the update to finish before making another."
                return 409, {"error_code": "RESOURCE_CONFLICT", "message": message}
            endpoint.start_update(body, ws.settle_after)
            return 200, endpoint.as_dict()
        if parts[1:] == ["ai-gateway"] and method == "PUT":
            endpoint.ai_gateway = {key: value for key, value in body.items() if value}
            if ws.gateway_updates:
                endpoint.start_update({k: v for k, v in (endpoint.config or {}).items() if k != "config_version"}, ws.settle_after)
            return 200, endpoint.ai_gateway
    return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no such endpoint {method} {path}"}


class _Handler(BaseHTTPRequestHandler):
    workspace: Workspace

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, {"error_code": code, "message": message})

    def _error_retry_after(self, status: int, code: str, message: str) -> None:
        data = json.dumps({"error_code": code, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self, method: str) -> None:
        ws = self.workspace
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        ws.requests.append((method, path))
        if ws.down:
            self._body()
            return self._error(502, "BAD_GATEWAY", "Bad Gateway")
        if self.headers.get("Authorization") != f"Bearer {ws.token}":
            self._body()
            return self._error(401, "UNAUTHENTICATED", "Invalid access token.")
        if path == "/api/2.0/preview/scim/v2/Me":
            return self._reply(200, {"userName": "dagster@example.com", "id": "1"})
        if path == "/api/2.2/jobs/runs/submit" and method == "POST":
            submission = json.loads(self._body())
            refusal = invalid_submission(submission)
            if refusal:
                return self._error(400, "INVALID_PARAMETER_VALUE", refusal)
            token = submission.get("idempotency_token")
            with ws.lock:
                run_id = ws.idempotency_tokens.get(token) if token else None
                if run_id is None:  # as Databricks does: a token already used returns the run it created
                    run_id = 1000 + len(ws.runs)
                    ws.runs[run_id] = Run(run_id, submission, ws.scenario)
                    if token:
                        ws.idempotency_tokens[token] = run_id
                lost = ws.lose_submit_replies > 0
                ws.lose_submit_replies -= lost
            if lost:
                return self._error_retry_after(503, "TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable.")
            return self._reply(200, {"run_id": run_id})
        if path == "/api/2.2/jobs/runs/get":
            run_id = int(query["run_id"][0])
            with ws.lock:
                failing = ws.fail_run_gets > 0 and ws.runs[run_id].state == "RUNNING"
                ws.fail_run_gets -= failing
            if failing:
                return self._error(500, "INTERNAL_ERROR", "Internal error while reading the run.")
            return self._reply(200, ws.poll(run_id).described())
        if path == "/api/2.0/secrets/get":
            scope, key = query["scope"][0], query["key"][0]
            if (scope, key) not in ws.secrets:
                return self._error(404, "RESOURCE_DOES_NOT_EXIST", f"Secret does not exist with scope: {scope} and key: {key}")
            return self._reply(200, {"key": key, "value": base64.b64encode(ws.secrets[scope, key]).decode()})
        if path == "/api/2.2/jobs/runs/list":
            # Two to a page, newest first, so that a caller has to follow next_page_token.
            with ws.lock:
                runs = [run for run in sorted(ws.runs.values(), key=lambda run: -run.run_id)
                        if (query.get("active_only") != ["true"] or run.active) and query.get("run_type", [run.run_type]) == [run.run_type]]
            start = int(query.get("page_token", ["0"])[0])
            body: dict[str, Any] = {"runs": [run.described() for run in runs[start : start + 2]], "has_more": start + 2 < len(runs)}
            if body["has_more"]:
                body["next_page_token"] = str(start + 2)
            return self._reply(200, body)
        if path == "/api/2.2/jobs/runs/cancel" and method == "POST":
            run_id = int(json.loads(self._body())["run_id"])
            if run_id in ws.uncancellable:
                return self._error(403, "PERMISSION_DENIED", f"User does not have permission to cancel run {run_id}.")
            ws.cancel(run_id)
            return self._reply(200, {})
        if path.startswith(STATEMENTS):
            raw = self._body()
            status, body = sql_statements(ws, method, path, json.loads(raw) if raw else None)
            return self._reply(status, body)
        if path == ENDPOINTS or path.startswith(ENDPOINTS + "/"):
            raw = self._body()
            status, body = serving_endpoints(ws, method, path, json.loads(raw) if raw else None)
            return self._reply(status, body)
        if path.startswith("/api/2.0/fs/directories"):
            folder = path.removeprefix("/api/2.0/fs/directories").rstrip("/")
            if method == "PUT":
                ws.directories.add(folder)
                return self._reply(200, {})
            if method == "DELETE":
                ws.directories.discard(folder)
                return self._reply(200, {})
            if folder not in ws.directories:
                return self._error(404, "NOT_FOUND", f"{folder} does not exist")
            names = sorted(p.removeprefix(folder + "/") for p in ws.files if p.startswith(folder + "/"))
            return self._reply(200, {"contents": [{"path": f"{folder}/{n}", "name": n, "is_directory": False} for n in names if "/" not in n]})
        if path.startswith("/api/2.0/fs/files"):
            file = path.removeprefix("/api/2.0/fs/files")
            if method == "PUT":
                ws.files[file] = self._body()
                return self._reply(200, {})
            if method == "DELETE":
                ws.files.pop(file, None)
                return self._reply(200, {})
            if file not in ws.files:
                return self._error(404, "NOT_FOUND", f"{file} does not exist")
            return self._reply(200, raw=ws.files[file])
        self._error(404, "ENDPOINT_NOT_FOUND", f"no such endpoint {method} {path}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_HEAD(self) -> None:
        self._handle("HEAD")


class WorkspaceServer:
    """``with WorkspaceServer(token) as server:`` serves ``server.workspace`` at ``server.host``."""

    def __init__(self, token: str, scenario: str = SUCCEED) -> None:
        self.workspace = Workspace(token=token, scenario=scenario)
        handler = type("Handler", (_Handler,), {"workspace": self.workspace})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.host = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WorkspaceServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
