"""new_documents against a real ephemeral instance: one run request per change of the landing zone."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from llmops_dagster.core.pipeline import ingest
from llmops_dagster.core.store import LanceStore
from llmops_dagster.definitions import build_defs
from llmops_dagster.resources import LanceDBResource, LandingZoneResource
from llmops_dagster.sensors import NEW_DOCUMENTS
from llmops_dagster.settings import load_settings
from llmops_dagster.tags import LANDING_CHANGE_TAG


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, landing: Path, cursor: str | None, lancedb: Path | None = None):
    resources = {"landing": LandingZoneResource(path=str(landing)), "lancedb": LanceDBResource(uri=str(lancedb or landing.parent / "lancedb"))}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = sensor.evaluate_tick(context)
    return result, result.cursor


def test_create_change_delete_each_trigger_exactly_one_run(llmops_home: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    sensor = build_defs(load_settings("test")).resolve_sensor_def(NEW_DOCUMENTS)
    instance = dg.DagsterInstance.ephemeral()

    result, cursor = tick(sensor, instance, landing, None)
    assert not result.run_requests and "empty" in result.skip_message

    keys = []
    steps = [
        lambda: (landing / "a.md").write_text("# A\n\nfirst"),  # create
        lambda: (landing / "a.md").write_text("# A\n\nsecond"),  # change
        lambda: (landing / "a.md").unlink(),  # delete
        lambda: (landing / "a.md").write_text("# A\n\nfirst"),  # back to an earlier state: still a change
    ]
    for step in steps:
        step()
        result, cursor = tick(sensor, instance, landing, cursor)
        assert len(result.run_requests) == 1
        keys.append(result.run_requests[0].run_key)
        # The same state again (a restarted daemon re-evaluating) requests nothing.
        again, cursor = tick(sensor, instance, landing, cursor)
        assert not again.run_requests
        assert again.skip_message.startswith("no new or changed files")
        ingest(landing, LanceStore(str(tmp_path / "lancedb")), 1 << 20)  # the requested run
    assert len(set(keys)) == len(keys)


def test_a_change_another_run_already_ingested_requests_nothing(llmops_home: Path, tmp_path: Path) -> None:
    """`llmops run`, or a run launched in the UI, ingested the new file between two ticks."""
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.md").write_text("# A\n\nfirst")
    sensor = build_defs(load_settings("test")).resolve_sensor_def(NEW_DOCUMENTS)
    instance = dg.DagsterInstance.ephemeral()
    first, cursor = tick(sensor, instance, landing, None)
    assert len(first.run_requests) == 1
    ingest(landing, LanceStore(str(tmp_path / "lancedb")), 1 << 20)
    (landing / "b.md").write_text("# B\n\nnew")
    ingest(landing, LanceStore(str(tmp_path / "lancedb")), 1 << 20)
    second, cursor = tick(sensor, instance, landing, cursor)
    assert not second.run_requests and second.skip_message == f"all 2 files in {landing} are already ingested"
    (landing / "c.md").write_text("# C\n\nnot ingested yet")
    third, _ = tick(sensor, instance, landing, cursor)
    assert len(third.run_requests) == 1 and third.run_requests[0].tags[LANDING_CHANGE_TAG] == "1 added, 0 changed, 0 deleted"


def test_touch_without_content_change_is_not_a_change(llmops_home: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    file = landing / "notes.txt"
    file.write_text("stable content")
    sensor = build_defs(load_settings("test")).resolve_sensor_def(NEW_DOCUMENTS)
    instance = dg.DagsterInstance.ephemeral()
    first, cursor = tick(sensor, instance, landing, None)
    assert len(first.run_requests) == 1
    os.utime(file, ns=(1, 1))
    second, _ = tick(sensor, instance, landing, cursor)
    assert not second.run_requests


def test_first_tick_after_a_cli_run_requests_nothing_until_something_changes(llmops_home: Path, tmp_path: Path) -> None:
    """`make ui` after `make demo`: the daemon's first tick finds the landing zone already ingested."""
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.md").write_text("# A\n\nfirst")
    (landing / "broken.pdf").write_bytes(b"not a pdf")
    ingest(landing, LanceStore(str(tmp_path / "lancedb")), 1 << 20)
    sensor = build_defs(load_settings("test")).resolve_sensor_def(NEW_DOCUMENTS)
    instance = dg.DagsterInstance.ephemeral()
    first, cursor = tick(sensor, instance, landing, None)
    assert not first.run_requests and first.skip_message == f"all 2 files in {landing} are already ingested"
    (landing / "b.md").write_text("# B\n\nnew")
    second, _ = tick(sensor, instance, landing, cursor)
    assert len(second.run_requests) == 1 and second.run_requests[0].tags[LANDING_CHANGE_TAG] == "1 added, 0 changed, 0 deleted"
