"""Promotion through the MLflow registry: sensors ticked with dg.build_sensor_context against a real
ephemeral instance and a real sqlite MLflow store (and a real MLflow server for the outage case)."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersionSearch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.entities.paged_list import PagedList

from llmops_dagster.assets.model_registry import REQUIRED_CHECKS
from llmops_dagster.core import endpoint, promotion, rag_model, registry
from llmops_dagster.core import store as lancedb_store
from llmops_dagster.resources import LanceDBResource, RegistryResource, SettingsSection, UpstreamRegistryResource
from llmops_dagster.sensors import build_champion_sensor, build_upstream_sensor
from llmops_dagster.sensors.promotion import RegistryUnavailableError
from llmops_dagster.settings import MlflowSettings

from helpers import UC_TAG_KEY
from processes import free_port, stop_group

TEST_MODEL, STAGING_MODEL = "test.llmops.rag_model", "staging.llmops.rag_model"


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def resource(uri: str, name: str = TEST_MODEL) -> RegistryResource:
    mlflow = MlflowSettings(tracking_uri=uri, experiment="promotion-tests", registered_model=name, artifact_location=None)
    return RegistryResource(mlflow=SettingsSection.of(mlflow))


def register(client, name: str, status: str, tmp_path: Path, failed: tuple[str, ...] = ()) -> str:
    """A registered version with a validation status, as the gate leaves it (artifacts are not read here)."""
    try:
        client.create_registered_model(name)
    except Exception:
        pass
    source = tmp_path / "artifacts"
    source.mkdir(exist_ok=True)
    version = str(client.create_model_version(name, source=str(source)).version)
    client.set_model_version_tag(name, version, registry.VALIDATION_STATUS, status)
    for check in failed:
        client.set_model_version_tag(name, version, f"check_{check}", registry.FAILED)
    client.set_registered_model_alias(name, registry.CHALLENGER, version)
    return version


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resources: dict, cursor: str | None = None):
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))


def champion_of(client, name: str = TEST_MODEL) -> str | None:
    version = registry.version_by_alias(client, name, registry.CHAMPION)
    return str(version.version) if version else None


def test_a_failed_or_pending_challenger_is_never_promoted(store: str, tmp_path: Path) -> None:
    client = registry.configure(store, None)
    sensor = build_champion_sensor("test", requires_approval=False)
    instance = dg.DagsterInstance.ephemeral()
    register(client, TEST_MODEL, registry.PENDING, tmp_path)
    assert tick(sensor, instance, {"registry": resource(store)}).skip_message == "challenger v1 is PENDING, not PASSED"
    register(client, TEST_MODEL, registry.FAILED, tmp_path, failed=("meets_thresholds",))
    result = tick(sensor, instance, {"registry": resource(store)})
    assert result.skip_message == "challenger v2 is FAILED (failed: meets_thresholds), not PASSED"
    assert champion_of(client) is None and promotion.history(client, TEST_MODEL) == []


def test_a_passed_challenger_becomes_champion_once_with_its_history(store: str, tmp_path: Path) -> None:
    client = registry.configure(store, None)
    sensor = build_champion_sensor("test", requires_approval=False)
    instance = dg.DagsterInstance.ephemeral()
    register(client, TEST_MODEL, registry.PASSED, tmp_path)
    first = tick(sensor, instance, {"registry": resource(store)})
    assert champion_of(client) == "1"
    assert json.loads(first.cursor)["champion"] == "1"
    assert first.asset_events[0].metadata["champion"].value == "1"
    # Double tick (or a restarted daemon): nothing moves again, nothing is recorded twice.
    again = tick(sensor, instance, {"registry": resource(store)}, first.cursor)
    assert again.skip_message == "challenger v1 is already the champion"
    register(client, TEST_MODEL, registry.PASSED, tmp_path)
    tick(sensor, instance, {"registry": resource(store)}, first.cursor)
    entries = promotion.history(client, TEST_MODEL)
    assert [(e.version, e.previous, e.action) for e in entries] == [("1", None, "promote"), ("2", "1", "promote")]
    assert all(e.actor == "sensor:test/champion" and e.at for e in entries)


def test_prod_waits_for_approval(store: str, tmp_path: Path) -> None:
    client = registry.configure(store, None)
    sensor = build_champion_sensor("prod", requires_approval=True)
    instance = dg.DagsterInstance.ephemeral()
    version = register(client, TEST_MODEL, registry.PASSED, tmp_path)
    skip = tick(sensor, instance, {"registry": resource(store)}).skip_message
    assert skip.startswith("awaiting approval for version 1: llmops approve --env prod --version 1")
    assert champion_of(client) is None
    promotion.approve(client, TEST_MODEL, version, "cli:alice")
    tick(sensor, instance, {"registry": resource(store)})
    assert champion_of(client) == "1"
    assert client.get_model_version(TEST_MODEL, "1").tags[promotion.APPROVED_BY] == "cli:alice"
    failed = register(client, TEST_MODEL, registry.FAILED, tmp_path)
    with pytest.raises(promotion.PromotionError, match="v2 of test.llmops.rag_model is FAILED; only a PASSED version can be approved"):
        promotion.approve(client, TEST_MODEL, failed, "cli:alice")


def test_rollback_restores_the_previous_champion_and_is_not_undone_by_the_sensor(store: str, tmp_path: Path) -> None:
    client = registry.configure(store, None)
    sensor = build_champion_sensor("test", requires_approval=False)
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(promotion.PromotionError, match="has no champion to roll back"):
        promotion.rollback(client, TEST_MODEL, "cli:bob")
    register(client, TEST_MODEL, registry.PASSED, tmp_path)
    tick(sensor, instance, {"registry": resource(store)})
    with pytest.raises(promotion.PromotionError, match="v1 has no previous champion"):
        promotion.rollback(client, TEST_MODEL, "cli:bob")
    register(client, TEST_MODEL, registry.PASSED, tmp_path)
    tick(sensor, instance, {"registry": resource(store)})
    assert champion_of(client) == "2"

    with pytest.raises(promotion.PromotionError, match="v7 was never champion of test.llmops.rag_model; known champions: v1, v2"):
        promotion.rollback(client, TEST_MODEL, "cli:bob", to="7")
    entry = promotion.rollback(client, TEST_MODEL, "cli:bob")
    assert (entry.version, entry.previous, entry.action) == ("1", "2", "rollback") and champion_of(client) == "1"
    # v2 is still the challenger and still PASSED, but it was rolled back: the sensor leaves it.
    assert "was rolled back" in tick(sensor, instance, {"registry": resource(store)}).skip_message
    assert champion_of(client) == "1"
    # A second rollback walks further back, never forward to the version just taken down.
    with pytest.raises(promotion.PromotionError, match=r"every earlier champion of test.llmops.rag_model \(v2\) was rolled back"):
        promotion.rollback(client, TEST_MODEL, "cli:bob")
    with pytest.raises(promotion.PromotionError, match="v2 of test.llmops.rag_model was rolled back at .*; approve it again"):
        promotion.rollback(client, TEST_MODEL, "cli:bob", to="2")
    assert champion_of(client) == "1"
    assert promotion.approve(client, TEST_MODEL, "2", "cli:alice") == promotion.CHALLENGER_APPROVED
    promotion.rollback(client, TEST_MODEL, "cli:bob", to="2")
    assert champion_of(client) == "2" and len(promotion.history(client, TEST_MODEL)) == 4


def test_rollbacks_walk_back_the_champions_and_the_version_taken_down_loses_its_approval(store: str, tmp_path: Path) -> None:
    client = registry.configure(store, None)
    for number in ("1", "2", "3"):
        register(client, TEST_MODEL, registry.PASSED, tmp_path)
        promotion.approve(client, TEST_MODEL, number, "cli:alice")
        promotion.promote(client, TEST_MODEL, number, "cli:alice", "approved")
    assert promotion.rollback(client, TEST_MODEL, "cli:bob").version == "2"
    taken_down = client.get_model_version(TEST_MODEL, "3").tags
    assert promotion.ROLLED_BACK_AT in taken_down and promotion.APPROVED_BY not in taken_down
    state = promotion.status(client, TEST_MODEL, requires_approval=True)
    assert (state["challenger"]["approved_by"], bool(state["challenger"]["rolled_back_at"])) == (None, True)
    assert "was rolled back" in state["pending"]
    assert promotion.rollback(client, TEST_MODEL, "cli:bob").version == "1"
    with pytest.raises(promotion.PromotionError, match=r"\(v2, v3\) was rolled back"):
        promotion.rollback(client, TEST_MODEL, "cli:bob")
    assert [(e.version, e.previous, e.action) for e in promotion.history(client, TEST_MODEL)][-2:] == [
        ("2", "3", "rollback"), ("1", "2", "rollback")]


def test_only_a_version_something_will_use_can_be_approved(store: str, tmp_path: Path) -> None:
    client = registry.configure(store, None)
    for _ in range(3):
        register(client, TEST_MODEL, registry.PASSED, tmp_path)
    client.set_registered_model_alias(TEST_MODEL, registry.CHALLENGER, "3")
    neither = r"v2 of test.llmops.rag_model is neither the challenger nor an earlier champion \(the challenger is v3\)"
    with pytest.raises(promotion.PromotionError, match=neither):
        promotion.approve(client, TEST_MODEL, "2", "cli:alice")
    assert promotion.APPROVED_BY not in client.get_model_version(TEST_MODEL, "2").tags
    promotion.promote(client, TEST_MODEL, "1", "cli:alice", "first")
    with pytest.raises(promotion.PromotionError, match="v1 is already the champion of test.llmops.rag_model; there is nothing to approve"):
        promotion.approve(client, TEST_MODEL, "1", "cli:alice")
    promotion.promote(client, TEST_MODEL, "3", "cli:alice", "second")
    assert promotion.approve(client, TEST_MODEL, "1", "cli:alice") == promotion.EARLIER_CHAMPION_APPROVED


def test_racing_promotions_leave_one_champion_and_every_history_entry(store: str, tmp_path: Path) -> None:
    client = registry.configure(store, None)
    versions = [register(client, TEST_MODEL, registry.PASSED, tmp_path) for _ in range(6)]
    done: list[promotion.HistoryEntry] = []
    errors: list[Exception] = []

    def promote(version: str) -> None:
        try:
            done.append(promotion.promote(registry.configure(store, None), TEST_MODEL, version, f"thread-{version}", "race"))
        except Exception as error:  # sqlite may refuse a concurrent writer; that promotion simply did not happen
            errors.append(error)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert done, errors
    entries = promotion.history(client, TEST_MODEL)
    recorded = {(e.actor, e.at) for e in entries}
    assert {(e.actor, e.at) for e in done} <= recorded  # every promotion that returned is in the history
    assert len(entries) <= len(done) + len(errors)
    assert champion_of(client) in {e.version for e in done}
    # Each entry names as previous what its writer read: nothing yet, or a version that a
    # promotion made champion, never the version it promoted itself.
    promoted = {e.version for e in entries}
    assert all(e.previous is None or e.previous in promoted for e in entries)
    assert all(e.previous != e.version for e in entries)


def test_staging_adopts_a_new_validated_champion_from_test_once(store: str, tmp_path: Path) -> None:
    client = registry.configure(store, None)
    sensor = build_upstream_sensor("adopt")
    instance = dg.DagsterInstance.ephemeral()
    lance = tmp_path / "staging-lancedb"
    resources = {
        "registry": resource(store, STAGING_MODEL),
        "upstream": UpstreamRegistryResource(env="test", registered_model=TEST_MODEL),
        "lancedb": LanceDBResource(uri=str(lance)),
    }
    register(client, TEST_MODEL, registry.PASSED, tmp_path)
    client.set_model_version_tag(TEST_MODEL, "1", "check_meets_thresholds", registry.PASSED)  # test's own verdicts
    client.set_model_version_tag(TEST_MODEL, "1", "index_embedding_model", "m")  # what the model needs, travels with it
    assert tick(sensor, instance, resources).skip_message == f"{TEST_MODEL} has no champion yet"
    promotion.promote(client, TEST_MODEL, "1", "cli:alice", "test")
    assert tick(sensor, instance, resources).skip_message.endswith("has no indexed documents to evaluate it on yet")
    schema = lancedb_store.embeddings_schema(2)
    rows = [{"id": "c1", "doc_id": "d", "source": "a.md", "text": "x", "vector": [1.0, 0.0], "embedding_model": "m"}]
    lancedb_store.LanceStore(str(lance)).apply(lancedb_store.EMBEDDINGS, schema, "id", pa.Table.from_pylist(rows, schema), [])
    result = tick(sensor, instance, resources)
    request = result.run_requests[0]
    assert request.run_key == "adopt-test-v1-0" and request.tags["llmops/source_version"] == "1"

    copied = promotion.copy_from(client, TEST_MODEL, "1", STAGING_MODEL, "run-1")
    version = client.get_model_version(STAGING_MODEL, copied)
    assert version.source == f"models:/{TEST_MODEL}/1"
    tags = version.tags
    assert tags[promotion.SOURCE_VERSION] == "1" and tags[registry.VALIDATION_STATUS] == registry.PENDING
    assert "check_meets_thresholds" not in tags  # staging judges the copy on its own data
    assert tags["index_embedding_model"] == "m" and tags["dagster_run_id"] == "run-1"
    assert str(registry.version_by_alias(client, STAGING_MODEL, registry.CHALLENGER).version) == copied
    assert "already copied" in tick(sensor, instance, resources).skip_message
    assert promotion.copy_from(client, TEST_MODEL, "1", STAGING_MODEL, "run-2") == copied  # idempotent


class UnityCatalogSearch(MlflowClient):
    """The real sqlite registry, searched as Unity Catalog's store searches (mlflow's
    ``_unity_catalog`` rest store): one ``name =`` or ``run_id =`` condition, versions without their
    tags, two to a page."""

    def search_model_versions(self, filter_string=None, max_results=None, order_by=None, page_token=None):  # noqa: ANN001, ANN201
        if not re.fullmatch(r"(name|run_id) = '[^']*'", filter_string or ""):
            raise MlflowException(f"unsupported filter {filter_string!r}: one name or run_id condition", INVALID_PARAMETER_VALUE)
        page = super().search_model_versions(filter_string, max_results=2, page_token=page_token)
        fields = ("name", "version", "creation_timestamp", "last_updated_timestamp", "description", "user_id", "source", "run_id", "status")
        searched = [ModelVersionSearch(**{field: getattr(found, field) for field in fields}) for found in page]
        return PagedList(searched, page.token)


def test_versions_are_found_by_their_tags_where_the_search_cannot_filter_on_tags(store: str, tmp_path: Path) -> None:
    """Registration's content lookup and adoption's "already copied" lookup, under Unity Catalog's search."""
    registry.configure(store, None)
    client = UnityCatalogSearch(tracking_uri=store, registry_uri=store)
    for digest in ("a", "b", "a", "c", "d"):
        version = register(client, TEST_MODEL, registry.PASSED, tmp_path)
        client.set_model_version_tag(TEST_MODEL, version, rag_model.CONTENT_TAG, digest)
    assert str(registry.find_version(client, TEST_MODEL, **{rag_model.CONTENT_TAG: "a"}).version) == "3"  # the newest, across pages
    assert registry.find_version(client, TEST_MODEL, **{rag_model.CONTENT_TAG: "z"}) is None
    assert registry.find_version(client, "test.llmops.never_registered", **{rag_model.CONTENT_TAG: "a"}) is None
    promotion.promote(client, TEST_MODEL, "5", "cli:alice", "test")
    copied = promotion.copy_from(client, TEST_MODEL, "5", STAGING_MODEL, "run-1")
    assert promotion.copied_version(client, TEST_MODEL, "5", STAGING_MODEL) == copied
    assert promotion.copy_from(client, TEST_MODEL, "5", STAGING_MODEL, "run-2") == copied  # no second copy
    assert promotion.copied_version(client, TEST_MODEL, "4", STAGING_MODEL) is None


def test_where_the_search_returns_tags_no_version_is_read_again(store: str, tmp_path: Path) -> None:
    reads = []

    class Counting(MlflowClient):
        def get_model_version(self, name, version):  # noqa: ANN001, ANN201
            reads.append(version)
            return super().get_model_version(name, version)

    registry.configure(store, None)
    client = Counting(tracking_uri=store, registry_uri=store)
    for digest in ("a", "b", "c"):
        version = register(client, TEST_MODEL, registry.PASSED, tmp_path)
        client.set_model_version_tag(TEST_MODEL, version, rag_model.CONTENT_TAG, digest)
    reads.clear()
    assert str(registry.find_version(client, TEST_MODEL, **{rag_model.CONTENT_TAG: "a"}).version) == "1"
    assert reads == []



class UnityCatalog(UnityCatalogSearch):
    """UnityCatalogSearch that also keeps Unity Catalog's tag rules: no ``. , - = / :`` in a key, values
    of at most ``UC_TAG_VALUE_CHARS``, and at most ``UC_TAG_LIMIT`` tags on a registered model or a
    model version, refused as UC refuses."""

    @staticmethod
    def _allowed(key: str, keys: set[str], value: str = "") -> None:
        if len(value) > registry.UC_TAG_VALUE_CHARS:
            raise MlflowException(f"tag {key}: the value has {len(value)} characters, over {registry.UC_TAG_VALUE_CHARS}", INVALID_PARAMETER_VALUE)
        if not UC_TAG_KEY.fullmatch(key):
            raise MlflowException(f"Tag name {key} contains one or more of the reserved characters . , - = / :", INVALID_PARAMETER_VALUE)
        if key not in keys and len(keys) >= registry.UC_TAG_LIMIT:
            raise MlflowException(f"cannot add tag {key}: the object already has {len(keys)} tags", INVALID_PARAMETER_VALUE)

    def set_model_version_tag(self, name, version, key, value, stage=None):  # noqa: ANN001, ANN201
        self._allowed(key, set(self.get_model_version(name, version).tags), value)
        return super().set_model_version_tag(name, version, key, value)

    def set_registered_model_tag(self, name, key, value):  # noqa: ANN001, ANN201
        self._allowed(key, set(self.get_registered_model(name).tags), value)
        return super().set_registered_model_tag(name, key, value)

    def create_model_version(self, name, source, run_id=None, tags=None, **kwargs):  # noqa: ANN001, ANN201, ANN003
        for key, value in (tags or {}).items():
            self._allowed(key, set(), value)
        return super().create_model_version(name, source, run_id=run_id, tags=tags, **kwargs)


def _deployment(where: str, version: str) -> endpoint.Deployment:
    return endpoint.Deployment(where, f"{where}-endpoint", version, None, "2026-11-24T00:00:00Z", "run-1")


def test_the_registry_keeps_unity_catalogs_tag_rules_through_a_long_life(store: str, tmp_path: Path) -> None:
    """Checks, metrics, content digests, approvals, rollbacks, copies, endpoint records and more
    champion changes than Unity Catalog keeps tags for, all through a client that refuses what UC
    refuses. The registered model keeps the newest HISTORY_KEPT changes, and rollback still works."""
    registry.configure(store, None)
    client = UnityCatalog(tracking_uri=store, registry_uri=store)
    metrics = {"recall_at_5": 0.9, "mrr_at_10": 0.8, "recall@1": 0.5}  # a name UC would refuse as written
    for number in ("1", "2"):
        register(client, TEST_MODEL, registry.PENDING, tmp_path)
        client.set_model_version_tag(TEST_MODEL, number, rag_model.CONTENT_TAG, f"digest-{number}")
        for check in REQUIRED_CHECKS:
            registry.record_check(client, TEST_MODEL, number, check, True, REQUIRED_CHECKS, f"run-{number}", metrics)
    assert registry.validation_status(client.get_model_version(TEST_MODEL, "2").tags, REQUIRED_CHECKS) == registry.PASSED
    assert registry.recorded_metrics(client.get_model_version(TEST_MODEL, "2").tags) == {"recall_at_5": 0.9, "mrr_at_10": 0.8, "recall_1": 0.5}
    assert str(registry.find_version(client, TEST_MODEL, **{rag_model.CONTENT_TAG: "digest-1"}).version) == "1"
    for where in ("local", "databricks"):
        endpoint.record(client, TEST_MODEL, _deployment(where, "1"))
    moves = promotion.HISTORY_KEPT + 7
    for move in range(moves):
        promotion.promote(client, TEST_MODEL, "12"[move % 2], "sensor:champion", f"move {move}")
    kept = promotion.history(client, TEST_MODEL)
    assert [entry.reason for entry in kept] == [f"move {move}" for move in range(moves - promotion.HISTORY_KEPT, moves)]
    assert endpoint.recorded(client, TEST_MODEL, "databricks") == _deployment("databricks", "1")

    champion = champion_of(client)
    promotion.approve(client, TEST_MODEL, "12"[champion == "1"], "cli:alice")  # the earlier champion
    rolled = promotion.rollback(client, TEST_MODEL, "cli:alice")
    assert rolled.previous == champion and champion_of(client) != champion
    copied = promotion.copy_from(client, TEST_MODEL, champion_of(client), STAGING_MODEL, "run-3")
    tags = client.get_model_version(STAGING_MODEL, copied).tags
    assert not [key for key in tags if key.startswith((registry.CHECK_TAG_PREFIX, registry.METRIC_TAG_PREFIX))]
    assert len(client.get_registered_model(TEST_MODEL).tags) <= registry.UC_TAG_LIMIT


def test_history_that_cannot_make_room_moves_no_champion(store: str, tmp_path: Path) -> None:
    """With the kept history full, a promotion first deletes the oldest entry. When the registry
    refuses that, the champion has not moved: a rollback is not left half done."""

    class NoDeletes(MlflowClient):
        def delete_registered_model_tag(self, name, key):  # noqa: ANN001, ANN201
            raise MlflowException(f"User does not have permission to delete tag {key}", INVALID_PARAMETER_VALUE)

    plain = registry.configure(store, None)
    for _ in range(2):
        register(plain, TEST_MODEL, registry.PASSED, tmp_path)
    for move in range(promotion.HISTORY_KEPT):
        promotion.promote(plain, TEST_MODEL, "12"[move % 2], "sensor:champion", f"move {move}")
    champion = champion_of(plain)
    with pytest.raises(MlflowException, match="permission"):
        promotion.rollback(NoDeletes(tracking_uri=store, registry_uri=store), TEST_MODEL, "cli:alice")
    assert champion_of(plain) == champion and promotion.ROLLED_BACK_AT not in plain.get_model_version(TEST_MODEL, champion).tags
    assert len(promotion.history(plain, TEST_MODEL)) == promotion.HISTORY_KEPT


def test_a_registry_written_with_the_keys_before_unity_catalogs_reads_the_same(store: str, tmp_path: Path) -> None:
    """Verdicts, metrics, content digest, champion history and endpoint record under the old dotted
    keys: read as before, and the next promotion, rollback and copy carry on from them."""
    client = registry.configure(store, None)
    register(client, TEST_MODEL, registry.PASSED, tmp_path)
    for check in REQUIRED_CHECKS:
        client.set_model_version_tag(TEST_MODEL, "1", f"check.{check}", registry.PASSED)
        client.set_model_version_tag(TEST_MODEL, "1", f"check.{check}.dagster_run_id", "run-0")
    client.set_model_version_tag(TEST_MODEL, "1", "metric.mrr_at_10", "0.9000")
    client.set_model_version_tag(TEST_MODEL, "1", "llmops.content_digest", "old-digest")
    entry = promotion.HistoryEntry("2026-01-01T00:00:00.000000Z", "1", None, "sensor:champion", "promote", "first")
    client.set_registered_model_tag(TEST_MODEL, "champion_history.2026-01-01T00:00:00.000000Z.abcd1234", json.dumps(dataclasses.asdict(entry)))
    client.set_registered_model_alias(TEST_MODEL, registry.CHAMPION, "1")
    client.set_registered_model_tag(TEST_MODEL, "serving_endpoint.local", json.dumps(dataclasses.asdict(_deployment("local", "1"))))

    old = client.get_model_version(TEST_MODEL, "1").tags
    assert registry.validation_status(old, REQUIRED_CHECKS) == registry.PASSED and registry.recorded_metrics(old) == {"mrr_at_10": 0.9}
    client.set_model_version_tag(TEST_MODEL, "1", f"check.{REQUIRED_CHECKS[0]}", registry.FAILED)
    assert registry.failed_checks(client.get_model_version(TEST_MODEL, "1").tags) == [REQUIRED_CHECKS[0]]
    client.set_model_version_tag(TEST_MODEL, "1", f"check_{REQUIRED_CHECKS[0]}", registry.PASSED)  # the current key wins
    assert registry.failed_checks(client.get_model_version(TEST_MODEL, "1").tags) == []
    assert str(registry.find_version(client, TEST_MODEL, **{rag_model.CONTENT_TAG: "old-digest"}).version) == "1"  # not registered again
    assert endpoint.recorded(client, TEST_MODEL, "local") == _deployment("local", "1")
    assert promotion.history(client, TEST_MODEL) == [entry]

    register(client, TEST_MODEL, registry.PASSED, tmp_path)
    promotion.promote(client, TEST_MODEL, "2", "sensor:champion", "second")
    assert [e.reason for e in promotion.history(client, TEST_MODEL)] == ["first", "second"]
    assert promotion.rollback(client, TEST_MODEL, "cli:alice").version == "1"
    copied = promotion.copy_from(client, TEST_MODEL, "1", STAGING_MODEL, "run-1")
    tags = client.get_model_version(STAGING_MODEL, copied).tags
    assert tags[rag_model.CONTENT_TAG] == "old-digest" and not [key for key in tags if key.startswith(("check", "metric", "llmops."))]


def _start_server(backend: str, port: int) -> subprocess.Popen:
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", backend, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                time.sleep(1)
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("mlflow server did not start")


@pytest.mark.slow
def test_with_the_registry_stopped_no_alias_moves_and_the_next_tick_retries(store: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    register(registry.configure(store, None), TEST_MODEL, registry.PASSED, tmp_path)  # the store the server serves
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    sensor = build_champion_sensor("test", requires_approval=False)
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(RegistryUnavailableError, match="connecting to the registry|reading test.llmops.rag_model"):
        tick(sensor, instance, {"registry": resource(uri)})
    assert champion_of(registry.configure(store, None)) is None  # straight from the store: nothing moved

    server = _start_server(store, port)
    try:
        result = tick(sensor, instance, {"registry": resource(uri)})
        assert json.loads(result.cursor)["champion"] == "1"
        assert champion_of(registry.configure(uri, None)) == "1"
    finally:
        stop_group(server)


def test_the_training_record_is_this_runs_own_else_the_newest(store: str) -> None:
    """rag_model and evaluation read what training left in MLflow, not the latest Dagster event."""
    import time

    client = registry.configure(store, None)
    experiment = client.create_experiment("llmops-record")
    assert registry.training_record(client, "llmops-record", None) is None
    runs = []
    for winner, adapter in (("trained", "true"), ("base", "false")):
        run = client.create_run(experiment, tags={registry.TRAINING_WINNER_TAG: winner, registry.TRAINING_ADAPTER_TAG: adapter})
        client.set_terminated(run.info.run_id)
        runs.append(run.info.run_id)
        time.sleep(0.01)
    untrained = client.create_run(experiment).info.run_id  # a run that did not train (a subset run)
    newest = registry.training_record(client, "llmops-record", untrained)
    assert newest == {"winner": "base", "has_adapter": False, "artifacts": f"runs:/{runs[1]}/embedding_model", "mlflow_run_id": runs[1]}
    own = registry.training_record(client, "llmops-record", runs[0])
    assert own["winner"] == "trained" and own["has_adapter"] is True and own["mlflow_run_id"] == runs[0]


def test_serve_without_a_champion_names_the_step_that_is_missing(store: str, tmp_path: Path, llmops_home: Path) -> None:
    from llmops_dagster.serving.server import next_step
    from llmops_dagster.settings import load_settings

    client = registry.configure(store, None)
    prod = load_settings("prod")  # requires approval
    name = prod.mlflow.registered_model
    client.create_registered_model(name)
    assert next_step(client, prod) == "run `llmops run --env prod` and `llmops tick --env prod` first"
    register(client, name, registry.FAILED, tmp_path, failed=("meets_thresholds",))
    assert next_step(client, prod) == "challenger v1 is FAILED (failed: meets_thresholds), not PASSED (`llmops status --env prod` shows why)"
    register(client, name, registry.PASSED, tmp_path)
    assert next_step(client, prod) == "v2 awaits approval: `llmops approve --env prod --version 2`, then `llmops tick --env prod`"
    promotion.approve(client, name, "2", "cli:alice")
    assert next_step(client, prod) == "challenger v2 passed its checks: `llmops tick --env prod` promotes it"
