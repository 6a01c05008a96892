"""End to end under ``dagster dev`` (webserver and daemon, as ``make ui`` starts them), with no
other action than copying files:

1. staging already holds documents: its sensor's run ingests them, and with no champion in test yet
   the model steps are skipped, not failed;
2. files dropped into the test landing zone are ingested by the sensor's run and become searchable,
   and the run's validated challenger becomes test's champion;
3. staging's sensor copies that champion, the adopt run evaluates it on staging's own data with the
   Spark engine (batch predictions through ``mlflow.pyfunc.spark_udf``), and it becomes staging's
   champion;
4. the UI, in headless Chromium (Debian's chromium driven by Playwright), shows the three code
   locations, their assets and checks, and staging's adopted model; screenshots go to
   ``test-artifacts/``.

Loopback only, a temp DAGSTER_HOME and LLMOPS_HOME, bounded waits.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, RETRY_NUMBER_TAG, WILL_RETRY_TAG

from llmops_dagster.cli import ensure_dagster_home
from llmops_dagster.core import promotion, registry, store
from llmops_dagster.core.embedding import EmbedderConfig, load_embedder
from llmops_dagster.core.index import AnnParams, search
from llmops_dagster.sensors import NEW_DOCUMENTS, UPSTREAM_SENSOR
from llmops_dagster.settings import EnvSettings, load_settings
from llmops_dagster.tags import ENV_TAG, LANDING_CHANGE_TAG, SOURCE_VERSION_TAG, TRIGGER_TAG

from helpers import REPO, SAMPLE_CORPUS, SHORT_DOCUMENTS, assert_every_chunk_embedded_once, gold_questions, short_landing, wait_for
from processes import free_port, stop_group

pytestmark = pytest.mark.slow
# The Python that `make ui` runs, read from the Makefile so that the test starts what a user starts.
UI_COMMAND = re.search(r"python -c '([^']+)'", (REPO / "Makefile").read_text().split("\nui:", 1)[1]).group(1)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
LOCATIONS = ("llmops-test", "llmops-staging", "llmops-prod")
GROUPS = {
    "ingestion": ("documents", "quarantine", "chunks"),
    "index": ("embeddings", "vector_index"),
    "predictions": ("batch_predictions",),
    "model": ("embedding_model", "rag_model", "evaluation"),  # last: the screenshot shows it
}
TEST_DOCUMENTS = ("chunking-notes.md", "release-checklist.txt")


def start_dagster_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log) -> tuple[subprocess.Popen, str]:  # noqa: ANN001
    """``make ui``'s command on a free loopback port, on a new LLMOPS_HOME whose staging landing zone
    holds the short documents; (process, the webserver's base URL) once it answers."""
    home = tmp_path / "home"
    declaration = yaml.safe_load((REPO / "environments.yaml").read_text())
    declaration["defaults"]["sensor_interval_seconds"] = 3  # the daemon ticks each sensor every 3 s
    (tmp_path / "environments.yaml").write_text(yaml.safe_dump(declaration))
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(tmp_path / "environments.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ensure_dagster_home()
    (home / "landing" / "test").mkdir(parents=True)
    short_landing(home / "landing" / "staging")
    return launch_ui(tmp_path, log)


def launch_ui(tmp_path: Path, log) -> tuple[subprocess.Popen, str]:  # noqa: ANN001
    """``make ui``'s command on the environment as it is; (process, the webserver's base URL) once it answers."""
    port = free_port()
    # SIGINT ignored, as a shell without job control starts `make ui &`: a plain SIGTERM must still stop it.
    process = subprocess.Popen(
        [sys.executable, "-c", UI_COMMAND, "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/server_info") or process.poll() is not None, 180, "dagster-webserver", every=1)
        assert process.poll() is None, f"dagster dev exited; see {tmp_path / 'dagster-dev.log'}"
    except BaseException:
        stop_group(process)
        raise
    return process, base


@pytest.fixture
def dagster_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``make ui``'s command (``start_dagster_dev``); yields the webserver's base URL."""
    log = (tmp_path / "dagster-dev.log").open("w")
    try:
        process, base = start_dagster_dev(tmp_path, monkeypatch, log)
    except BaseException:
        log.close()
        raise
    stopped = False
    try:
        yield base
        process.terminate()
        process.wait(timeout=120)
        stopped = wait_for(lambda: _group_gone(process.pid), 60, "the webserver and daemon to exit after dagster dev")
    finally:
        if not stopped:
            stop_group(process)
        log.close()


def _group_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def finished_run(instance: dg.DagsterInstance, **tags: str) -> dg.DagsterRun | None:
    runs = instance.get_runs(filters=dg.RunsFilter(tags=tags))
    return next((run for run in runs if run.is_finished), None)


def served(settings: EnvSettings, alias: str = registry.CHAMPION):
    client = registry.configure(settings.mlflow.tracking_uri, None)
    return registry.version_by_alias(client, settings.mlflow.registered_model, alias)


def test_a_dropped_file_becomes_a_champion_in_test_and_then_in_staging(dagster_dev: str) -> None:
    test, staging = load_settings("test"), load_settings("staging")
    instance = dg.DagsterInstance.get()

    staged = wait_for(lambda: finished_run(instance, **{ENV_TAG: "staging", TRIGGER_TAG: NEW_DOCUMENTS}), 600, "staging's ingest run")
    assert staged.status == dg.DagsterRunStatus.SUCCESS, staged.status
    skipped = {record.step_key for record in instance.all_logs(staged.run_id, of_type=dg.DagsterEventType.STEP_SKIPPED)}
    assert skipped == {
        "rag_model_model_loads_and_answers", "rag_model_signature_valid", "evaluation", "batch_predictions", "batch_predictions_one_row_per_question"
    }
    assert served(staging, registry.CHALLENGER) is None  # nothing upstream to adopt yet
    # staging's engine is Spark: its vectors are the ones the local embedder gives, row for row
    embedded = store.LanceStore(staging.lancedb_uri).read(store.EMBEDDINGS, store.embeddings_schema(384), ["search_text", "vector"])
    vectors = np.asarray(embedded.column("vector").to_pylist(), dtype=np.float32)
    reference = load_embedder(EmbedderConfig()).encode(embedded.column("search_text").to_pylist())
    assert len(vectors) > 0 and (vectors * reference).sum(1).min() > 0.999

    for name in TEST_DOCUMENTS:
        shutil.copy(SAMPLE_CORPUS / name, test.landing / name)
    run = wait_for(lambda: finished_run(instance, **{ENV_TAG: "test", TRIGGER_TAG: NEW_DOCUMENTS}), 600, "test's ingest run")
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
    assert run.tags[LANDING_CHANGE_TAG] == "2 added, 0 changed, 0 deleted"

    table = store.LanceStore(test.lancedb_uri).open(store.EMBEDDINGS)
    hits = search(table, "release checklist approver", 3, "hybrid", AnnParams(), load_embedder(EmbedderConfig()))
    assert "release-checklist.txt" in {hit.source for hit in hits}

    in_test = wait_for(lambda: served(test), 120, "test's champion sensor")
    assert in_test.tags[registry.VALIDATION_STATUS] == registry.PASSED
    assert in_test.tags[registry.DAGSTER_RUN_TAG] == run.run_id

    adopted = wait_for(lambda: finished_run(instance, **{ENV_TAG: "staging", TRIGGER_TAG: UPSTREAM_SENSOR}), 600, "staging's adopt run")
    assert adopted.status == dg.DagsterRunStatus.SUCCESS, adopted.status
    assert adopted.tags[SOURCE_VERSION_TAG] == str(in_test.version)
    in_staging = wait_for(lambda: served(staging), 120, "staging's champion sensor")
    assert in_staging.tags[registry.VALIDATION_STATUS] == registry.PASSED
    assert in_staging.tags[registry.DAGSTER_RUN_TAG] == adopted.run_id
    assert (in_staging.tags[promotion.SOURCE_MODEL], in_staging.tags[promotion.SOURCE_VERSION]) == (
        test.mlflow.registered_model,
        str(in_test.version),
    )

    # the adopt run answered staging's questions with the copied model as a Spark UDF
    event = instance.get_latest_materialization_event(dg.AssetKey(["staging", "batch_predictions"]))
    assert event.run_id == adopted.run_id
    metadata = event.asset_materialization.metadata
    assert metadata["engine"].value == "spark" and metadata["questions_this_run"].value == len(gold_questions(SHORT_DOCUMENTS))
    rows = (
        store.LanceStore(staging.lancedb_uri)
        .read(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, where=f"dagster_run_id = '{adopted.run_id}'")
        .to_pylist()
    )
    assert len(rows) == len(gold_questions(SHORT_DOCUMENTS)) and all(row["answer"] and row["passages"] for row in rows)

    check_ui(dagster_dev)


def test_a_run_left_by_a_killed_dagster_dev_is_marked_failed_and_the_next_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of `make ui` (webserver, daemon, code servers and the run worker, one process group)
    while staging's sensor run embeds: the run is left STARTED, holding staging's queue. The next
    `llmops run --env staging` marks it failed with the reason, completes, and the index holds every
    chunk once."""
    instance, left = left_by_a_killed_ui(tmp_path, monkeypatch)
    assert instance.get_run_by_id(left.run_id).status == dg.DagsterRunStatus.STARTED  # nothing else marks it

    again = subprocess.run([str(Path(sys.executable).with_name("llmops")), "run", "--env", "staging"],
                           env=os.environ.copy(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"run {left.run_id} was left unfinished (its run worker, process " in again.stderr
    assert instance.get_run_by_id(left.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(left.run_id).tags[WILL_RETRY_TAG] == "false", "the CLI ran it; the daemon is not to as well"
    assert_every_chunk_embedded_once(load_settings("staging").lancedb_uri)


def test_a_run_left_by_a_killed_dagster_dev_is_run_again_by_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of `make ui` while staging's sensor run embeds, then `make ui` again and nothing else:
    the new one marks the run failed (its run worker is gone), its daemon runs it again from the
    steps it had not finished (run_retries), and the retry completes with every chunk embedded once."""
    instance, left = left_by_a_killed_ui(tmp_path, monkeypatch)

    def retried() -> dg.DagsterRun | None:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={PARENT_RUN_ID_TAG: left.run_id}))
        return runs[0] if runs and runs[0].is_finished else None

    with (tmp_path / "dagster-dev-again.log").open("w") as log:
        process, _ = launch_ui(tmp_path, log)
        try:
            retry = wait_for(retried, 600, "the daemon's retry of the killed run to finish", every=1)
        finally:
            stop_group(process)
    killed = instance.get_run_by_id(left.run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE and killed.tags[WILL_RETRY_TAG] == "true"
    assert retry.status == dg.DagsterRunStatus.SUCCESS, f"see {tmp_path / 'dagster-dev-again.log'}"
    assert retry.tags[ENV_TAG] == "staging" and retry.tags[RETRY_NUMBER_TAG] == "1"
    done = {record.step_key for record in instance.all_logs(retry.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)}
    assert "embeddings" in done and "documents" not in done, "run again from the steps it had not finished"
    assert_every_chunk_embedded_once(load_settings("staging").lancedb_uri)


def left_by_a_killed_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dg.DagsterInstance, dg.DagsterRun]:
    """`make ui` on a new home until staging's sensor run is embedding, then kill -9 of its whole
    process group (webserver, daemon, code servers and the run worker); the instance, and the run it left."""

    def embedding() -> dg.DagsterRun | None:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={ENV_TAG: "staging"}, statuses=[dg.DagsterRunStatus.STARTED]))
        steps = {record.step_key for run in runs for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)}
        return runs[0] if runs and "embeddings" in steps else None

    with (tmp_path / "dagster-dev.log").open("w") as log:
        process, _ = start_dagster_dev(tmp_path, monkeypatch, log)
        try:
            instance = dg.DagsterInstance.get()
            left = wait_for(embedding, 600, "staging's sensor run to start embedding", every=0.5)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                stop_group(process)
    return instance, left


def check_ui(base: str) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{base}/locations")
        for location in LOCATIONS:
            _visible(page, location)
        _dismiss_welcome(page)
        page.screenshot(path=str(ARTIFACTS / "ui-locations.png"))

        for env in ("test", "staging", "prod"):
            for group, assets in GROUPS.items():
                page.goto(f"{base}/locations/llmops-{env}/asset-groups/{group}")
                for asset in assets:
                    if env == "test" or asset != "embedding_model":  # staging and prod adopt, they do not train
                        _visible(page, asset)
            # the nodes' live data (latest event, checks) has loaded
            page.get_by_text("Loading...", exact=True).first.wait_for(state="hidden", timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / f"ui-{env}-model-group.png"))

        page.goto(f"{base}/assets/test/evaluation?view=checks")
        for check in ("meets_thresholds", "no_worse_than_champion", "beats_naive_baseline"):
            _visible(page, check)
        page.goto(f"{base}/assets/test/rag_model?view=checks")
        for check in ("model_loads_and_answers", "signature_valid"):
            _visible(page, check)
        page.screenshot(path=str(ARTIFACTS / "ui-test-rag-model-checks.png"))

        # staging's adopted model: its latest materialization names the test version it copied
        page.goto(f"{base}/assets/staging/rag_model")
        for key in ("source_model", "source_version", "test.llmops.rag_model"):
            _visible(page, key)
        page.screenshot(path=str(ARTIFACTS / "ui-staging-rag-model.png"))
        browser.close()


def _dismiss_welcome(page) -> None:
    """A new instance greets with a 'Join the Dagster community' dialog; its Skip is remembered."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.first.wait_for(state="visible", timeout=10_000)
    except Exception:  # no dialog this time
        return
    skip.first.click()


def _visible(page, text: str, timeout: float = 90_000) -> None:
    page.get_by_text(text, exact=True).first.wait_for(state="visible", timeout=timeout)
