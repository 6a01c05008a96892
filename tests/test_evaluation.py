"""The gate's verdicts and the evaluation set, as pure functions."""

from __future__ import annotations

import json

from llmops_dagster.core.evaluation import GateSettings, evaluation_set, meets_thresholds, no_worse_than_champion
from llmops_dagster.core.model_spec import signature_problems
from llmops_dagster.core.questions import Question
from llmops_dagster.core.rag import OUTPUT_COLUMNS
from llmops_dagster.core.registry import FAILED, PASSED, PENDING, validation_status
from llmops_dagster.core.training import Pair

THRESHOLDS = GateSettings(min_recall_at_5=0.6, min_mrr_at_10=0.5, champion_tolerance=0.02)


def test_thresholds() -> None:
    assert meets_thresholds({"recall@5": 0.8, "mrr@10": 0.5}, THRESHOLDS).passed
    verdict = meets_thresholds({"recall@5": 0.59, "mrr@10": 0.7}, THRESHOLDS)
    assert not verdict.passed and "recall@5 0.590 < 0.6" in verdict.description


def test_champion_comparison_allows_the_tolerance_and_no_more() -> None:
    champion = {"recall@5": 0.9, "mrr@10": 0.8}
    assert no_worse_than_champion({"recall@5": 0.89, "mrr@10": 0.785}, champion, 0.02, "champion v1").passed
    worse = no_worse_than_champion({"recall@5": 0.9, "mrr@10": 0.77}, champion, 0.02, "champion v1")
    assert not worse.passed and "mrr@10 0.770 vs champion 0.800" in worse.description
    assert no_worse_than_champion({"recall@5": 0.1, "mrr@10": 0.1}, None, 0.02, None).passed
    refused = no_worse_than_champion({"recall@5": 1, "mrr@10": 1}, None, 0.02, "champion v1", "needs another index")
    assert not refused.passed and refused.description == "needs another index"


def test_validation_status_fails_fast_and_passes_only_when_every_check_passed() -> None:
    required = ("a", "b")
    assert validation_status({"check_a": PASSED}, required) == PENDING
    assert validation_status({"check_a": PASSED, "check_b": FAILED}, required) == FAILED
    assert validation_status({"check_a": FAILED}, required) == FAILED
    assert validation_status({"check_a": PASSED, "check_b": PASSED}, required) == PASSED
    # verdicts written before the Unity Catalog key scheme still count; the current key wins
    assert validation_status({"check.a": PASSED, "check_b": PASSED}, required) == PASSED
    assert validation_status({"check.a": FAILED, "check_a": PASSED, "check_b": PASSED}, required) == PASSED


def test_gold_questions_about_unindexed_files_are_skipped_with_a_reason() -> None:
    held_out = [Pair("a sentence", frozenset({"c1"}), "cloze")]
    gold = [Question("q1", "ans", "guide.pdf", "g.jsonl:1"), Question("q2", None, "gone.pdf", "g.jsonl:2"), Question("q3", "x", None, "g.jsonl:3")]
    items, skipped = evaluation_set(held_out, gold, {"guide.pdf"})
    assert [(i.query, i.level, i.query_set) for i in items] == [
        ("a sentence", "chunk", "held_out"),
        ("q1", "source", "gold"),
        ("q3", "source", "gold"),
    ]
    assert skipped == ["g.jsonl:2: source 'gone.pdf' is not an indexed document"]


def test_signature_problems() -> None:
    good = {
        "inputs": json.dumps([{"name": "question", "type": "string"}]),
        "outputs": json.dumps([{"name": name, "type": "string"} for name in OUTPUT_COLUMNS]),
        "params": json.dumps([{"name": "k"}, {"name": "mode"}]),
    }
    assert signature_problems(good, True) == []
    assert signature_problems(None, True) == ["the model has no signature"]
    bad = {**good, "inputs": json.dumps([{"name": "query", "type": "string"}]), "params": "[]"}
    problems = signature_problems(bad, False)
    assert len(problems) == 3 and "no input example was logged" in problems


def test_one_mlflow_run_scores_one_evaluation_set(tmp_path) -> None:
    """rag_model's selection and the gate read the set the run kept, even if the landing zone changed between them."""
    from mlflow import MlflowClient

    from llmops_dagster.core.evaluation import EvalItem, run_evaluation_set

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("sets", artifact_location=str(tmp_path / "artifacts"))).info.run_id
    first = [EvalItem("a sentence", frozenset({"c2", "c1"}), "chunk", "held_out"), EvalItem("q1", frozenset({"guide.pdf"}), "source", "gold", "ans")]
    builds, warnings = [], []

    def build(items, skipped):
        return lambda: builds.append(len(items)) or (items, skipped)

    assert run_evaluation_set(client, run_id, build(first, ["g.jsonl:2: gone"]), warnings.append) == (first, 1)
    again = run_evaluation_set(client, run_id, build(first[:1], []), warnings.append)  # the landing zone changed since
    assert again == (first, 1) and builds == [2]
    assert warnings == ["gold question skipped: g.jsonl:2: gone"] * 2
    assert run_evaluation_set(client, None, build(first[:1], []), warnings.append) == (first[:1], 0) and builds == [2, 1]
    other = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    assert run_evaluation_set(client, other, build(first[:1], []))[0] == first[:1]
