"""The llmops command line: real runs in a subprocess, queries in this process (the same entry point,
without loading torch and the model once per call), and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import LLMOPS, SAMPLE_CORPUS, TrainedHome, assert_every_chunk_embedded_once, llmops, llmops_here, lock_held_elsewhere


@pytest.mark.slow
def test_run_then_search_ask_and_predict(trained_home: TrainedHome, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    home, run = trained_home.home, trained_home.run
    assert "▶ embeddings" in run.stderr and "✔ check documents/no_files_lost: " in run.stderr
    assert "✔ check evaluation/meets_thresholds: " in run.stderr and "## test/evaluation" in run.stdout
    assert "▶ documents_no_files_lost" not in run.stderr  # a check-only step shows its verdict, not its start and end
    assert (home / "dagster" / "dagster.yaml").exists()  # the run is recorded where the UI looks

    for mode in ("hybrid", "vector", "text"):
        query = ("search", "--env", "test", "--k", "3", "--mode", mode, "--json", "token window of the embedding model")
        found = llmops_here(*query, home=home, capsys=capsys)
        assert found.returncode == 0, found.stderr
        payload = json.loads(found.stdout)
        assert payload["query"] == "token window of the embedding model"
        passages = payload["passages"]
        assert 1 <= len(passages) <= 3
        assert {"text", "source", "page", "score"} <= set(passages[0])
        scores = [p["score"] for p in passages]
        assert scores == sorted(scores, reverse=True)
        assert all(
            p["source"] in {"operations-guide.pdf", "chunking-notes.md", "vector-search-primer.html", "release-checklist.txt"} for p in passages
        )

    plain = llmops_here("search", "--env", "test", "which quarantine reasons exist", home=home, capsys=capsys)
    assert plain.returncode == 0 and "1. [" in plain.stdout
    assert "Traceback" not in plain.stderr

    # The run registered a challenger; with no champion yet, ask and predict use it and say so.
    asked = llmops_here("ask", "--env", "test", "--k", "2", "--json", "How is a release rolled back?", home=home, capsys=capsys)
    assert asked.returncode == 0, asked.stderr[-3000:]
    answer = json.loads(asked.stdout)
    assert answer["model_alias"] == "challenger" and answer["model_version"] == "1"
    assert answer["answer"] and len(answer["passages"]) == len(answer["sources"]) == 2
    assert "(challenger)" in asked.stderr

    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"question": "What is BM25?"}\n{"question": 7}\n\n{"question": "Which formats are supported?"}\n')
    out = tmp_path / "answers" / "out.jsonl"
    predicted = llmops_here("predict", "--env", "test", "--questions", str(questions), "--out", str(out), home=home, capsys=capsys)
    assert predicted.returncode == 1  # some lines were rejected; the valid ones are still answered
    assert 'questions.jsonl:2: "question" must be a string, got int' in predicted.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["question"] for line in lines] == ["What is BM25?", "Which formats are supported?"]
    assert [path.name for path in out.parent.iterdir()] == ["out.jsonl"], "written through a partial file renamed into place"
    assert all(set(line) == {"question", "answer", "passages", "sources", "model_version"} for line in lines)
    assert all(line["passages"] and line["model_version"] == "1" for line in lines)


@pytest.mark.slow
def test_tick_promotes_once_and_status_and_rollback_read_the_history(
    trained_home: TrainedHome, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from llmops_dagster.core import registry
    from llmops_dagster.settings import load_settings

    home = tmp_path / "home"
    shutil.copytree(trained_home.home, home)  # promotion changes the registry; the session's home stays as it is
    first = llmops("tick", "--env", "test", home=home)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "test/champion: champion is now v1 (was none)" in first.stdout
    # What the endpoint sensor logs is a line of the tick's output, not a Dagster log record.
    assert "test/champion_endpoint: champion v1; local serves nothing recorded yet" in first.stdout
    assert " - dagster - " not in first.stdout + first.stderr and "test/serving_endpoint          v1" in first.stdout
    again = llmops("tick", "--env", "test", home=home)
    assert again.returncode == 0 and "test/champion: challenger v1 is already the champion" in again.stdout

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:  # where the UI shows it
        observed = instance.fetch_observations(dg.AssetKey(["test", "rag_model"]), limit=5).records
        [served] = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": "champion_endpoint"}))
    assert [record.asset_observation.metadata["champion"].value for record in observed] == ["1"]
    # The endpoint run carries the daemon's run-key tags; with its record gone the sensor asks for
    # the same key again, and the tick, as the daemon would, does not run it twice.
    assert served.status == dg.DagsterRunStatus.SUCCESS and served.tags["dagster/run_key"].startswith("local-v1-")
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    settings = load_settings("test")
    registry.configure(settings.mlflow.tracking_uri, None).delete_registered_model_tag(settings.mlflow.registered_model, "serving_endpoint_local")
    third = llmops("tick", "--env", "test", home=home)
    assert third.returncode == 0 and f"run key {served.tags['dagster/run_key']} already ran as {served.run_id} (SUCCESS); skipped" in third.stdout

    status = llmops_here("status", "--env", "test", "--json", home=home, capsys=capsys)
    assert status.returncode == 0, status.stderr
    [state] = json.loads(status.stdout)
    assert state["champion"]["version"] == "1" and state["champion"]["validation_status"] == "PASSED"
    assert [(entry["version"], entry["actor"]) for entry in state["history"]] == [("1", "sensor:test/champion")]

    refused = llmops_here("rollback", "--env", "test", home=home, capsys=capsys)
    assert refused.returncode == 2 and refused.stderr.strip() == "llmops: error: v1 has no previous champion in the history of test.llmops.rag_model"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--env", "test", "anything"], "no index for environment 'test'"),
        (["ask", "--env", "test", "anything"], "no model registered as test.llmops.rag_model"),
        (["approve", "--env", "prod", "--version", "3"], "prod.llmops.rag_model has no version 3"),
        (["rollback", "--env", "prod"], "prod.llmops.rag_model has no champion to roll back"),
        (["predict", "--env", "test", "--questions", "/no/such.jsonl", "--out", "x.jsonl"], "questions file not found"),
        (["search", "--env", "dev", "anything"], "invalid choice: 'dev'"),
        (["search", "--env", "test", "--k", "0", "anything"], "must be within 1-10000, got 0"),
        (["ask", "--env", "test", "--k", "99999999999999999999", "anything"], "must be within 1-10000, got 99999999999999999999"),
        (["approve", "--env", "prod", "--version", "99999999999999999999"], "must be within 1-2147483647"),
        (["monitor", "--env", "test", "--window", "99999999999999999999d"], "expected a duration such as 1d, 7d, 12h or 1w"),
        (["search", "--env", "test", "--mode", "fuzzy", "anything"], "invalid choice: 'fuzzy'"),
        (["search", "--env", "test", "   "], "the query is empty"),
        # A byte that is not UTF-8 in an argument arrives as a lone surrogate (Python's surrogateescape).
        (["search", "--env", "test", "roll back \udcff"], "the query is not valid text: a lone surrogate '\\udcff' at character 11"),
        (["ask", "--env", "test", "--local", "roll back \udcff"], "the question is not valid text: a lone surrogate"),
        (["run", "--env", "test", "--landing", "/does/not/exist"], "landing folder not found"),
        (["run", "--env", "test"], "landing folder not found"),
        (["run", "--env", "test", "--landing", __file__], f"landing folder {__file__} is a file, not a folder"),
        (["predict", "--env", "test", "--questions", __file__, "--out", "/"], "--out / is a folder; name a file"),
        (["predict", "--env", "test", "--questions", __file__, "--out", "/proc/answers.jsonl"], "--out /proc/answers.jsonl cannot be written"),
        (["predict", "--env", "test", "--questions", __file__, "--out", __file__], "is the questions file; the answers would replace the questions"),
        (["bundle", "--out", "/tmp"], "--out /tmp is a folder; name a file"),
        (["serve", "--env", "test", "--port", "99999"], "a port is within 1-65535, got 99999"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    assert_one_line(llmops_here(*args, home=tmp_path / "home", capsys=capsys), message)


def test_bad_input_is_one_line_across_the_process_boundary_too(tmp_path: Path) -> None:
    """The installed console script, not just main(): nothing else reaches the terminal."""
    assert_one_line(llmops("run", "--env", "test", "--landing", "/does/not/exist", home=tmp_path / "home", timeout=120), "landing folder not found")


def assert_one_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_quarantine_lists_the_files_set_aside_with_their_reasons_and_status_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmops_dagster.core.pipeline import ingest
    from llmops_dagster.core.store import LanceStore
    from llmops_dagster.settings import load_settings

    from bad_files import write_bad_corpus

    home = tmp_path / "home"
    empty = llmops_here("quarantine", "--env", "test", home=home, capsys=capsys)
    assert (empty.returncode, empty.stdout) == (0, "test: no quarantined files (nothing ingested yet: run `llmops run --env test`)\n")
    assert not (home / "state").exists() and not any(home.rglob("lancedb")), "reading leaves no trace"

    landing = tmp_path / "landing"
    shutil.copytree(SAMPLE_CORPUS, landing)
    bad = write_bad_corpus(landing / "incoming")
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    ingest(landing, LanceStore(load_settings("test").lancedb_uri), 1 << 20)

    listed = llmops_here("quarantine", "--env", "test", home=home, capsys=capsys)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"test: {len(bad)} quarantined files (paths inside the landing zone of its last run)"
    rows = {line.split()[0]: line.split()[1] for line in lines[1:-1]}
    assert rows == {f"incoming/{path}": reason for path, reason in bad.items()}
    [link] = [line.split(maxsplit=2) for line in lines if "handbook.md" in line]
    assert link == ["incoming/links/handbook.md", "broken_link", "a link to ../moved-away/handbook.md, which does not exist"]
    as_json = json.loads(llmops_here("quarantine", "--env", "test", "--json", home=home, capsys=capsys).stdout)
    assert {row["path"]: row["reason"] for row in as_json} == rows and all(row["detail"] and row["quarantined_at"] for row in as_json)

    status = llmops_here("status", "--env", "test", home=home, capsys=capsys)
    assert status.returncode == 0, status.stderr
    assert f"  documents  4 parsed, {len(bad)} quarantined (`llmops quarantine --env test` lists them)" in status.stdout.splitlines()


def test_dagster_home_queues_runs_one_environment_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    from llmops_dagster.cli import ensure_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert limits == [{"key": "llmops/env", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]


def test_the_queue_tags_runs_launched_from_the_asset_graph_with_their_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A materialization or backfill from the UI runs in Dagster's implicit asset job, which has no tags:
    the instance's queue gives it its environment's tag, so it waits for that environment's other runs.
    Launched through the webserver's GraphQL mutation, as the UI launches them."""
    import dagster as dg
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster_graphql.client.query import LAUNCH_PIPELINE_EXECUTION_MUTATION
    from dagster_graphql.test.utils import execute_dagster_graphql, infer_job_selector, materialize_assets

    from llmops_dagster.cli import DAGSTER_YAML, ensure_dagster_home
    from llmops_dagster.cli.instance import EARLIER_DAGSTER_YAML, RUN_RETRIES
    from llmops_dagster.definitions import INGEST_JOB
    from llmops_dagster.run_queue import EnvironmentRunQueue

    home = tmp_path / "dagster"
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    home.mkdir()
    for earlier in reversed(EARLIER_DAGSTER_YAML):
        (home / "dagster.yaml").write_text(earlier)
        ensure_dagster_home()  # an earlier version's file is brought up to date
        assert (home / "dagster.yaml").read_text() == DAGSTER_YAML
    origin = LoadableTargetOrigin(module_name="llmops_dagster.definitions", attribute="staging_defs")
    with dg.DagsterInstance.get() as instance, in_process_test_workspace(instance, origin) as workspace:
        assert isinstance(instance.run_coordinator, EnvironmentRunQueue)
        # a dead run worker's run is run again, a failing asset's is not
        assert instance.run_retries_enabled and instance.run_retries_max_retries == RUN_RETRIES
        assert not instance.run_retries_retry_on_asset_or_op_failure

        def launched(result) -> dg.DagsterRun:  # noqa: ANN001
            outcome = result.data["launchPipelineExecution"]
            assert outcome["__typename"] == "LaunchRunSuccess", outcome
            return instance.get_run_by_id(outcome["run"]["runId"])

        selected = launched(materialize_assets(workspace, [dg.AssetKey(["staging", key]) for key in ("documents", "quarantine", "chunks")]))
        assert selected.status == dg.DagsterRunStatus.QUEUED and selected.job_name == "__ASSET_JOB"
        assert selected.tags["llmops/env"] == "staging"
        # as update_endpoint: a redeploy of the champion does not wait behind a long ingest run
        endpoint = launched(materialize_assets(workspace, [dg.AssetKey(["staging", "serving_endpoint"])]))
        assert endpoint.tags["llmops/operator_env"] == "staging" and "llmops/env" not in endpoint.tags
        ingest = launched(execute_dagster_graphql(
            workspace, LAUNCH_PIPELINE_EXECUTION_MUTATION, {"executionParams": {"selector": infer_job_selector(workspace, INGEST_JOB)}}
        ))
        assert ingest.tags["llmops/env"] == "staging"  # the job's own tag, unchanged
        queued = instance.get_runs(filters=dg.RunsFilter(tags={"llmops/env": "staging"}, statuses=[dg.DagsterRunStatus.QUEUED]))
        assert {run.run_id for run in queued} == {selected.run_id, ingest.run_id}

    for user_written in ("telemetry:\n  enabled: false\n", EARLIER_DAGSTER_YAML[0] + "run_monitoring:\n  enabled: true\n"):
        (home / "dagster.yaml").write_text(user_written)
        ensure_dagster_home()
        assert (home / "dagster.yaml").read_text() == user_written  # the user's, or edited by the user: left alone


def test_a_run_whose_worker_is_gone_is_marked_failed_and_the_others_are_left(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run the daemon launched names its run worker's process on its RUN_START event. When
    `dagster dev` was killed with it, nothing else marks it failed and its environment's queue stays
    held: the next llmops command, or `make ui`, does. A run whose worker lives, or one still being
    launched, is left in progress."""
    import dagster as dg
    from dagster._core.storage.tags import WILL_RETRY_TAG
    from dagster._daemon.auto_run_reexecution.event_log_consumer import DAGSTER_EVENT_TYPES, _create_cursor_key

    from llmops_dagster.cli import DAGSTER_YAML
    from llmops_dagster.cli.common import UserError
    from llmops_dagster.cli.instance import mark_orphaned_failed, refuse_if_running
    from llmops_dagster.tags import ENV_TAG

    @dg.op
    def nothing() -> None:
        pass

    @dg.job
    def idle() -> None:
        nothing()

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "dagster.yaml").write_text(DAGSTER_YAML)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:

        def run(env: str, worker: int | None, status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED) -> dg.DagsterRun:
            created = instance.create_run_for_job(idle, status=status, tags={ENV_TAG: env})
            if worker is not None:
                started = dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value, job_name=created.job_name, pid=worker)
                instance.report_dagster_event(started, created.run_id)
            return created

        orphan, alive, launching = run("test", gone.pid), run("staging", os.getpid()), run("prod", None, dg.DagsterRunStatus.STARTING)
        # Killed and not yet reaped, as a run worker whose code server went with it: a zombie.
        zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        zombie.kill()
        stat = Path(f"/proc/{zombie.pid}/stat")
        deadline = time.monotonic() + 30
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        undead = run("test", zombie.pid)
        # This home's daemon never ran: its run-retry consumer has no cursor, and would start at the
        # latest event, after the failures marked below. They start it first, before them.
        cursors = {_create_cursor_key(event_type) for event_type in DAGSTER_EVENT_TYPES}
        assert not instance.daemon_cursor_storage.get_cursor_values(cursors)
        before = instance.event_log_storage.get_maximum_record_id()
        try:
            assert {live.run_id for live in mark_orphaned_failed(instance)} == {alive.run_id, launching.run_id}
        finally:
            zombie.wait()
        assert instance.daemon_cursor_storage.get_cursor_values(cursors) == dict.fromkeys(cursors, str(before))
        assert instance.event_log_storage.get_maximum_record_id() > before, "the failures come after the cursor: the daemon reads them"
        assert instance.get_run_by_id(undead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.all_logs(orphan.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert f"its run worker, process {gone.pid} on " in failure.dagster_event.message
        assert f"run {orphan.run_id} was left unfinished" in capsys.readouterr().err
        refuse_if_running(instance, "test")  # nothing in progress any more
        with pytest.raises(UserError, match=f"run {alive.run_id} for environment 'staging' is still in progress"):
            refuse_if_running(instance, "staging")
        # Marked by `make ui`, the daemon may run it again (run_retries); marked by the CLI, which
        # runs the environment itself next, it is not to be.
        assert instance.get_run_by_id(orphan.run_id).tags[WILL_RETRY_TAG] == "true"
        taken_over = run("test", gone.pid)
        refuse_if_running(instance, "test")
        mark_orphaned_failed(instance)  # the daemon's cursors are there now: left where they are
        assert instance.daemon_cursor_storage.get_cursor_values(cursors) == dict.fromkeys(cursors, str(before))
        assert instance.get_run_by_id(taken_over.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(taken_over.run_id).tags[WILL_RETRY_TAG] == "false"


@pytest.mark.parametrize("started_by", ["daemon", "live cli process"])
def test_run_is_refused_while_the_environment_has_a_run_in_progress(tmp_path: Path, sample_landing: Path, started_by: str) -> None:
    """A run the daemon started, or one whose CLI process is alive on this host, is in progress, not orphaned."""
    import socket

    import dagster as dg

    from llmops_dagster.cli import DAGSTER_YAML
    from llmops_dagster.definitions import INGEST_JOB, build_defs
    from llmops_dagster.settings import load_settings
    from llmops_dagster.tags import HOST_TAG, PID_TAG

    home = tmp_path / "home"
    env = {**os.environ, "LLMOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text(DAGSTER_YAML)
    tags = {"llmops/env": "test"}
    if started_by == "live cli process":
        tags |= {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        job = build_defs(load_settings("test")).resolve_job_def(INGEST_JOB)
        running = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags=tags)
    result = subprocess.run(
        [LLMOPS, "run", "--env", "test", "--landing", str(sample_landing)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert f"run {running.run_id} for environment 'test' is still in progress" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_llmops_process_in_the_same_environment_is_refused_until_the_first_ends(tmp_path: Path, sample_landing: Path) -> None:
    """Two `llmops run` started together both found no run in progress; now the second one finds the
    first holding the environment's lock, and says so. The lock goes with the process that holds it."""
    from filelock import FileLock

    from llmops_dagster.executor import lock_path

    home = tmp_path / "home"
    env = {**os.environ, "LLMOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    (home / "dagster").mkdir(parents=True)
    command = [LLMOPS, "run", "--env", "test", "--landing", str(sample_landing)]
    path = lock_path(env["DAGSTER_HOME"], "test")
    with lock_held_elsewhere(path):
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, refused.stderr
        said = f"another llmops process is running a job in environment 'test' (it holds {path}); try again when it ends"
        assert refused.stderr.strip().endswith(said) and "Traceback" not in refused.stderr
    assert FileLock(str(path), timeout=0).acquire()  # killed: the lock went with it


def test_status_of_an_empty_registry(tmp_path: Path) -> None:
    result = llmops("status", "--json", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    states = json.loads(result.stdout)
    assert [s["environment"] for s in states] == ["test", "staging", "prod"]
    assert all(s["pending"] == "nothing registered yet" for s in states)
    assert [s["adopts_from"] for s in states] == [None, "test", "staging"] and states[2]["requires_approval"] is True


@pytest.mark.slow
def test_a_run_killed_mid_embedding_does_not_lock_the_environment(tmp_path: Path) -> None:
    """kill -9 of `llmops run` while it embeds: the next run marks the dead run failed, completes,
    and the index holds every chunk exactly once."""
    import dagster as dg

    home = tmp_path / "home"
    landing = tmp_path / "landing"
    shutil.copytree(SAMPLE_CORPUS, landing, ignore=shutil.ignore_patterns("questions"))
    env = {**os.environ, "LLMOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    command = [LLMOPS, "run", "--env", "test", "--landing", str(landing)]
    victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in victim.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if "▶ embeddings" in line:
            break
    else:
        pytest.fail("the run ended before embedding:\n" + "".join(seen))
    time.sleep(1.0)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        killed = instance.get_runs(limit=1)[0]
        assert killed.status == dg.DagsterRunStatus.STARTED, "the killed run is left STARTED, as after any crash"

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"run {killed.run_id} was left unfinished (its process {victim.pid}" in again.stderr
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
    assert_every_chunk_embedded_once(str(home / "test" / "lancedb"))


def test_monitor_lists_no_window_before_monitoring_start_and_a_run_of_missing_windows_as_one_line(
    llmops_home: Path, capsys: pytest.CaptureFixture
) -> None:
    from datetime import UTC, date, datetime, timedelta

    from llmops_dagster.cli.monitor import _print, window_count
    from llmops_dagster.settings import load_settings

    day, start = timedelta(days=1), date(2026, 1, 1)
    now = datetime(2026, 1, 10, tzinfo=UTC)
    assert window_count(3 * day, day, now, start) == 3
    assert capsys.readouterr().err == ""
    assert window_count(400 * day, day, now, start) == 10 == window_count(10**6 * day, day, now, start)
    assert "windows begin at monitoring.start (2026-01-01); the 390 asked for before it are not listed" in capsys.readouterr().err
    # Weekly windows are epoch-aligned Thursdays; 2026-01-01 is one, and the window under way began 2026-01-08.
    assert window_count(52 * 7 * day, 7 * day, datetime(2026, 1, 8, tzinfo=UTC), start) == 2

    windows = [{"window_start": now - n * day, "rows": []} for n in (3, 2, 1, 0)]
    _print(load_settings("test"), windows, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("  2026-01-07T00:00:00+00:00 … 2026-01-10T00:00:00+00:00  4 windows not materialized;")
    assert lines[1].endswith("--select test/monitoring --partition 2026-01-07 (to 2026-01-10)") and len(lines) == 4, lines
