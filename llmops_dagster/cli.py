"""``llmops``: the operator's command line for what the Dagster UI does not express.

    llmops run     --env ENV [--landing DIR]
    llmops search  --env ENV [--k K] [--mode hybrid|vector|text] [--json] QUERY
    llmops ask     --env ENV [--k K] [--json] QUESTION
    llmops predict --env ENV --questions IN.jsonl --out OUT.jsonl
    llmops tick     --env ENV
    llmops approve  --env ENV --version N
    llmops rollback --env ENV [--to VERSION]
    llmops status   [--env ENV] [--json]

Bad arguments and missing state print one line and exit 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import NoReturn

from llmops_dagster.settings import ENVIRONMENTS, EnvSettings, SettingsError, load_settings
from llmops_dagster.tags import ENV_TAG, HOST_TAG, PID_TAG, TRIGGER_TAG

EXIT_USAGE = 2
# What is printed after a run: the asset and the markdown metadata entry that sums it up.
REPORTED_ASSETS = {"embedding_model": "summary", "rag_model": "retrieval_candidates", "evaluation": "summary", "batch_predictions": "summary"}


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _settings(args: argparse.Namespace) -> EnvSettings:
    try:
        settings = load_settings(args.env)
    except SettingsError as error:
        raise UserError(str(error)) from None
    landing = getattr(args, "landing", None)
    if landing:
        path = Path(landing).expanduser()
        if not path.is_dir():
            raise UserError(f"landing folder not found: {path}")
        settings = settings.with_landing(path)
    return settings


# Local sqlite storage under DAGSTER_HOME. Queued runs (sensor, UI) of one environment run one at a
# time, so two ingest runs never write the same tables at once.
DAGSTER_YAML = f"""# Created by llmops. Local sqlite storage under this folder.
telemetry:
  enabled: false
concurrency:
  runs:
    tag_concurrency_limits:
      - key: "{ENV_TAG}"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
"""


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME (default $LLMOPS_HOME/dagster) with its dagster.yaml; shared by `llmops` and `make ui`."""
    from llmops_dagster.settings import llmops_home

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(llmops_home() / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    if not (home / "schedules").exists():
        # Create the sqlite storage once, here: a daemon and its code servers starting together on
        # an empty DAGSTER_HOME race to create it and leave two alembic heads behind.
        import dagster as dg

        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.get_runs(limit=1)
            instance.all_instigator_state()
    return home


def _instance():
    """The persistent Dagster instance, as the UI sees it."""
    import dagster as dg

    ensure_dagster_home()
    return dg.DagsterInstance.get()


def _refuse_if_running(instance, env: str) -> None:
    """The CLI runs in process, outside the run queue: check for a run of this environment first.

    A CLI run whose process is gone (killed, or its machine restarted) is marked failed with the
    reason, so that a crash never locks the environment.
    """
    import dagster as dg

    active = instance.get_runs(
        filters=dg.RunsFilter(
            tags={ENV_TAG: env},
            statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
        ),
    )
    for run in active:
        reason = _orphaned(run.tags)
        if reason is None:
            raise UserError(f"run {run.run_id} for environment '{env}' is still in progress; try again when it ends")
        instance.report_run_failed(run, message=f"{reason}; marked failed by a later llmops command")
        print(f"llmops: run {run.run_id} was left unfinished ({reason}); marked it failed", file=sys.stderr)


def _orphaned(tags: dict[str, str]) -> str | None:
    """Why a run started by the CLI on this host can no longer be running, or None if it may be."""
    import socket

    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if host != socket.gethostname() or not (pid or "").isdigit():
        return None  # started elsewhere (the daemon, another machine): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return f"its process {pid} on {host} is gone"
    except PermissionError:
        return None  # alive, under another user
    return None


class _Progress(threading.Thread):
    """Prints step starts, finishes, our own log lines and check verdicts while a run executes."""

    def __init__(self, instance, run_id: str, stream=sys.stderr) -> None:
        super().__init__(daemon=True)
        self.instance, self.run_id, self.stream = instance, run_id, stream
        self.done = threading.Event()
        self.seen = 0
        self.started: dict[str, float] = {}

    def run(self) -> None:
        while not self.done.is_set():
            self.flush()
            self.done.wait(0.3)
        self.flush()

    def flush(self) -> None:
        records = self.instance.all_logs(self.run_id)
        for record in records[self.seen :]:
            self._show(record)
        self.seen = len(records)

    def _show(self, record) -> None:
        event = record.dagster_event
        step = record.step_key or ""
        if event is None:
            if record.user_message and record.level >= 20 and step:
                print(f"    {step}: {record.user_message}", file=self.stream)
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            self.started[step] = time.monotonic()
            print(f"  ▶ {step}", file=self.stream)
        elif kind == "STEP_SUCCESS":
            print(f"  ✔ {step} ({time.monotonic() - self.started.get(step, time.monotonic()):.1f}s)", file=self.stream)
        elif kind == "STEP_SKIPPED":
            print(f"  – {step} skipped: an input it needs was not produced", file=self.stream)
        elif kind == "STEP_FAILURE":
            error = event.step_failure_data.error
            while error.cause is not None:  # the innermost error says what went wrong, not the wrapper
                error = error.cause
            print(f"  ✘ {step}: {error.message.strip()}", file=self.stream)
        elif kind == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            mark = "✔" if data.passed else "✘"
            print(f"    check {data.check_name}: {mark} {data.description or ''}", file=self.stream)


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.landing.is_dir():
        raise UserError(f"landing folder not found: {settings.landing} (create it, or pass --landing DIR)")
    print(f"llmops run: environment '{settings.name}', landing {settings.landing}", file=sys.stderr)
    from llmops_dagster.definitions import INGEST_JOB, build_defs

    job = build_defs(settings).resolve_job_def(INGEST_JOB)
    instance = _instance()
    _refuse_if_running(instance, settings.name)
    return _execute(job, instance, {TRIGGER_TAG: "cli"})


def _execute(job, instance, tags: dict[str, str]) -> int:
    """Run a job in process against the persistent instance, showing progress; 1 on failure or a failed check."""
    import socket

    run_id = str(uuid.uuid4())
    tags = {**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    progress = _Progress(instance, run_id)
    progress.start()
    try:
        result = job.execute_in_process(
            instance=instance,
            run_id=run_id,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            tags=tags,
        )
    finally:
        progress.done.set()
        progress.join()
    failed_checks = [e.asset_check_key.name for e in result.get_asset_check_evaluations() if not e.passed]
    reports = []
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        rows = materialization.metadata.get("dagster/row_count")
        version = materialization.metadata.get("model_version")
        detail = f"{rows.value:>8} rows" if rows else (f"{'v' + str(version.value):>8}" if version else f"{'-':>8}")
        print(f"{materialization.asset_key.to_user_string():<24} {detail}")
        entry = REPORTED_ASSETS.get(materialization.asset_key.path[-1])
        if entry in materialization.metadata:
            reports.append((materialization.asset_key.to_user_string(), materialization.metadata[entry].value))
    for asset, summary in reports:
        print(f"\n## {asset}\n{summary}")
    if not result.success:
        print(f"run {run_id} failed; see the Dagster UI for details", file=sys.stderr)
        return 1
    if failed_checks:
        print(f"run {run_id} finished, but check(s) failed: {', '.join(failed_checks)}", file=sys.stderr)
        return 1
    print(f"run {run_id} succeeded", file=sys.stderr)
    return 0


def cmd_tick(args: argparse.Namespace) -> int:
    """Evaluate the environment's promotion sensors once, as the daemon would, and run what they request."""
    import dagster as dg

    from llmops_dagster.definitions import build_defs
    from llmops_dagster.sensors import CHAMPION_SENSOR, UPSTREAM_SENSOR
    from llmops_dagster.sensors.promotion import RegistryUnavailableError

    settings = _settings(args)
    defs = build_defs(settings)
    instance = _instance()
    # The sensors' resources (registry, upstream, lancedb): the typed ones; the MLflow run resource is for jobs.
    resources = {key: value for key, value in (defs.resources or {}).items() if isinstance(value, dg.ConfigurableResource)}
    status = 0
    for name in (UPSTREAM_SENSOR, CHAMPION_SENSOR):
        try:
            sensor = defs.resolve_sensor_def(name)
        except Exception:
            continue  # test has no upstream sensor
        context = dg.build_sensor_context(instance=instance, resources=resources)
        try:
            result = sensor.evaluate_tick(context)
        except RegistryUnavailableError as error:
            raise UserError(f"{settings.name}/{name}: {error}") from None
        if result.skip_message:
            print(f"{settings.name}/{name}: {result.skip_message}")
        for event in result.asset_events or []:  # the daemon records these; so does a tick by hand
            instance.report_runless_asset_event(event)
        for request in result.run_requests or []:
            print(f"{settings.name}/{name}: starting {sensor.job_name} ({request.run_key})")
            _refuse_if_running(instance, settings.name)
            status = max(status, _execute(defs.resolve_job_def(sensor.job_name), instance, {**request.tags, TRIGGER_TAG: f"cli-tick:{name}"}))
    return status


def cmd_search(args: argparse.Namespace) -> int:
    from llmops_dagster.core import store
    from llmops_dagster.core.chunking import index_fingerprint
    from llmops_dagster.core.embedding import load_embedder
    from llmops_dagster.core.index import search

    settings = _settings(args)
    if not args.query.strip():
        raise UserError("the query is empty")
    local = "://" not in settings.lancedb_uri
    if local and not Path(settings.lancedb_uri).is_dir():
        table = None
    else:
        table = store.LanceStore(settings.lancedb_uri).open(store.EMBEDDINGS)
    if table is None or table.count_rows() == 0:
        raise UserError(f"no index for environment '{settings.name}' at {settings.lancedb_uri}; run `llmops run --env {settings.name}` first")
    embedder = None
    if args.mode != "text":
        embedder = load_embedder(settings.embedding)
        models = set(table.search().select(["embedding_model"]).limit(1).to_arrow().column("embedding_model").to_pylist())
        expected = index_fingerprint(embedder.fingerprint, settings.chunking)
        if models and models != {expected}:
            raise UserError(
                f"index was built for {models.pop()} but '{settings.name}' is configured for {expected}; "
                f"run `llmops run --env {settings.name}` to re-embed"
            )
    passages = search(table, args.query, args.k, args.mode, settings.index.ann_params(), embedder, settings.rag.fusion_config())
    if args.json:
        payload = {
            "query": args.query,
            "mode": args.mode,
            "passages": [
                {"text": p.text, "source": p.source, "page": p.page, "heading": p.heading, "score": round(p.score, 6), "chunk_id": p.id}
                for p in passages
            ],
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return 0
    if not passages:
        print("no passages found")
    for rank, p in enumerate(passages, 1):
        where = p.source + (f", page {p.page}" if p.page else "") + (f" — {p.heading}" if p.heading else "")
        text = p.text if len(p.text) <= 400 else p.text[:400] + "…"
        print(f"{rank}. [{p.score:.3f}] {where}\n   {text}\n")
    return 0


def _serving_model(settings: EnvSettings):
    """The environment's champion, or its challenger while there is none: (alias, version, pyfunc)."""
    from llmops_dagster.core import registry
    from llmops_dagster.core.rag import IndexMismatchError
    from llmops_dagster.core.rag_model import load_version

    name = settings.mlflow.registered_model
    serving = registry.serving_version(_registry(settings), name)
    if serving is None:
        raise UserError(f"no model registered as {name}; run `llmops run --env {settings.name}` first")
    alias, version = serving
    print(f"answering with {name} v{version.version} ({alias})", file=sys.stderr)
    try:
        return alias, str(version.version), load_version(name, str(version.version), settings.lancedb_uri)
    except (IndexMismatchError, FileNotFoundError) as error:
        raise UserError(str(error)) from None


def cmd_ask(args: argparse.Namespace) -> int:
    import pandas as pd

    settings = _settings(args)
    if not args.question.strip():
        raise UserError("the question is empty")
    alias, version, model = _serving_model(settings)
    params = {"k": args.k} if args.k else None
    row = model.predict(pd.DataFrame({"question": [args.question]}), params=params).iloc[0]
    if args.json:
        payload = {
            "question": args.question,
            "answer": row["answer"],
            "found": bool(row["found"]),
            "passages": list(row["passages"]),
            "sources": list(row["sources"]),
            "scores": [float(s) for s in row["scores"]],
            "model": settings.mlflow.registered_model,
            "model_version": version,
            "model_alias": alias,
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return 0
    print(row["answer"])
    print("\nSources:")
    for rank, (source, passage) in enumerate(zip(row["sources"], row["passages"], strict=True), 1):
        text = passage if len(passage) <= 300 else passage[:300] + "…"
        print(f"  {rank}. {source}\n     {text}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from llmops_dagster.core.questions import read_questions

    settings = _settings(args)
    source = Path(args.questions).expanduser()
    if not source.is_file():
        raise UserError(f"questions file not found: {source}")
    questions, rejected = read_questions(source)
    for problem in rejected:
        print(f"llmops: skipped {problem}", file=sys.stderr)
    if not questions:
        raise UserError(f"{source} has no valid question lines")
    _, version, model = _serving_model(settings)
    answers = model.predict(pd.DataFrame({"question": [q.question for q in questions]}))
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for question, (_, row) in zip(questions, answers.iterrows(), strict=True):
            line = {
                "question": question.question,
                "answer": row["answer"],
                "passages": list(row["passages"]),
                "sources": list(row["sources"]),
                "model_version": version,
            }
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"wrote {len(questions)} answer(s) to {out}; {len(rejected)} line(s) rejected", file=sys.stderr)
    return 1 if rejected else 0


def _actor() -> str:
    import getpass

    return os.environ.get("LLMOPS_ACTOR") or f"cli:{getpass.getuser()}"


def _registry(settings: EnvSettings):
    from llmops_dagster.core import registry

    return registry.configure(settings.mlflow.tracking_uri, settings.mlflow.registry_uri)


def _promotion_call(call, *args):
    from mlflow.exceptions import MlflowException

    from llmops_dagster.core.promotion import PromotionError
    from llmops_dagster.core.registry import error_line

    try:
        return call(*args)
    except PromotionError as error:
        raise UserError(str(error)) from None
    except MlflowException as error:
        raise UserError(f"registry: {error_line(error)}") from None


def cmd_approve(args: argparse.Namespace) -> int:
    from llmops_dagster.core import promotion

    settings = _settings(args)
    name = settings.mlflow.registered_model
    _promotion_call(promotion.approve, _registry(settings), name, args.version, _actor())
    waits = "the champion sensor promotes it on its next tick" if settings.promotion.requires_approval else "no approval is needed here"
    print(f"{name} v{args.version} approved by {_actor()}; {waits}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from llmops_dagster.core import promotion

    settings = _settings(args)
    name = settings.mlflow.registered_model
    entry = _promotion_call(promotion.rollback, _registry(settings), name, _actor(), args.to)
    print(f"{name}: champion v{entry.previous} → v{entry.version} ({entry.at}, {entry.actor})")
    return 0


def _describe(client, settings: EnvSettings) -> dict:
    from mlflow.exceptions import MlflowException

    from llmops_dagster.core import promotion, registry

    name = settings.mlflow.registered_model
    state: dict = {"environment": settings.name, "model": name, "requires_approval": settings.promotion.requires_approval,
                   "adopts_from": settings.promotion.source}
    try:
        client.get_registered_model(name)
    except MlflowException:
        state["pending"] = "nothing registered yet"
        return state
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        version = registry.version_by_alias(client, name, alias)
        if version is None:
            state[alias] = None
            continue
        tags = version.tags
        state[alias] = {
            "version": str(version.version),
            "validation_status": tags.get(registry.VALIDATION_STATUS, registry.PENDING),
            "failed_checks": registry.failed_checks(tags),
            "metrics": {k.removeprefix(registry.METRIC_TAG_PREFIX): float(v) for k, v in tags.items() if k.startswith(registry.METRIC_TAG_PREFIX)},
            "approved_by": tags.get(promotion.APPROVED_BY),
            "source": f"{tags[promotion.SOURCE_MODEL]} v{tags[promotion.SOURCE_VERSION]}" if promotion.SOURCE_MODEL in tags else None,
        }
    state["pending"] = promotion.champion_decision(client, name, settings.promotion.requires_approval).reason
    state["history"] = [vars(e) for e in promotion.history(client, name)[-5:]]
    return state


def cmd_status(args: argparse.Namespace) -> int:
    envs = [args.env] if args.env else list(ENVIRONMENTS)
    states = []
    for env in envs:
        settings = _settings(argparse.Namespace(env=env))
        states.append(_promotion_call(_describe, _registry(settings), settings))
    if args.json:
        print(json.dumps(states, indent=2))
        return 0
    for state in states:
        flags = ", ".join(f for f in (f"adopts {state['adopts_from']}'s champion" if state["adopts_from"] else "trains",
                                      "needs approval" if state["requires_approval"] else "") if f)
        print(f"{state['environment']}: {state['model']} ({flags})")
        for alias in ("champion", "challenger"):
            info = state.get(alias)
            if not info:
                print(f"  {alias:<10} none")
                continue
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(info["metrics"].items()) if k in ("mrr_at_10", "recall_at_5", "answer_f1"))
            extra = [f"failed: {', '.join(info['failed_checks'])}" if info["failed_checks"] else "",
                     f"approved by {info['approved_by']}" if info["approved_by"] else "",
                     f"from {info['source']}" if info["source"] else ""]
            print(f"  {alias:<10} v{info['version']} {info['validation_status']}" + (f" ({metrics})" if metrics else "")
                  + "".join(f"; {e}" for e in extra if e))
        print(f"  pending    {state['pending']}")
        for entry in state.get("history", [])[-3:]:
            print(f"  history    {entry['at']} {entry['action']} v{entry['previous'] or '-'} → v{entry['version']} by {entry['actor']}")
    return 0


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{value}'") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    from llmops_dagster.core.index import SEARCH_MODES

    parser = _Parser(prog="llmops", description="Operate the llmops-dagster environments.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="materialize an environment's whole graph, with progress")
    run.add_argument("--env", required=True, choices=ENVIRONMENTS)
    run.add_argument("--landing", help="ingest this folder instead of the environment's landing zone")
    run.set_defaults(handler=cmd_run)

    find = commands.add_parser("search", help="ranked passages for a query, with sources and scores")
    find.add_argument("--env", required=True, choices=ENVIRONMENTS)
    find.add_argument("--k", type=_positive, default=5, help="passages to return (default 5)")
    find.add_argument("--mode", choices=SEARCH_MODES, default="hybrid")
    find.add_argument("--json", action="store_true", help='print {"query", "passages": [...]} as JSON')
    find.add_argument("query")
    find.set_defaults(handler=cmd_search)

    ask = commands.add_parser("ask", help="answer a question with the champion (or the challenger), with sources")
    ask.add_argument("--env", required=True, choices=ENVIRONMENTS)
    ask.add_argument("--k", type=_positive, help="passages to retrieve (default: the model's setting)")
    ask.add_argument("--json", action="store_true", help="print the answer, passages and sources as JSON")
    ask.add_argument("question")
    ask.set_defaults(handler=cmd_ask)

    predict = commands.add_parser("predict", help="answer a JSON Lines file of questions into another")
    predict.add_argument("--env", required=True, choices=ENVIRONMENTS)
    predict.add_argument("--questions", required=True, help='input: one {"question": ...} per line')
    predict.add_argument("--out", required=True, help="output: one answer object per question, same order")
    predict.set_defaults(handler=cmd_predict)

    tick = commands.add_parser("tick", help="evaluate the environment's promotion sensors once, as the daemon would")
    tick.add_argument("--env", required=True, choices=ENVIRONMENTS)
    tick.set_defaults(handler=cmd_tick)

    approve = commands.add_parser("approve", help="approve a validated version for promotion into the environment")
    approve.add_argument("--env", required=True, choices=ENVIRONMENTS)
    approve.add_argument("--version", required=True, type=_positive)
    approve.set_defaults(handler=cmd_approve)

    rollback = commands.add_parser("rollback", help="put the previous champion back (or --to a version that was champion)")
    rollback.add_argument("--env", required=True, choices=ENVIRONMENTS)
    rollback.add_argument("--to", type=_positive, help="a version that was champion before")
    rollback.set_defaults(handler=cmd_rollback)

    status = commands.add_parser("status", help="champion and challenger of each environment, their checks and what is pending")
    status.add_argument("--env", choices=ENVIRONMENTS)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"llmops: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llmops: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an outage: one line; LLMOPS_DEBUG=1 shows the traceback
        if os.environ.get("LLMOPS_DEBUG"):
            raise
        first_line = (str(error).splitlines() or [""])[0]
        print(f"llmops: error: {type(error).__name__}: {first_line} (set LLMOPS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
