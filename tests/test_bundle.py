"""databricks.yml generated from environments.yaml: one target per declared environment, the
permissions the design asks for, Unity Catalog names refused when Databricks would refuse them,
a structure `databricks bundle` accepts, and the same text on every run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmops_dagster.cli.app import main
from llmops_dagster.core.bundle import (
    INFERENCE_JOB,
    MODEL_KEY,
    PIPES_ENTRY_POINTS,
    TRAINING_JOB,
    BundleEnvironment,
    DatabricksConfig,
    JobCompute,
    bundle_from_settings,
    check_bundle,
    render_bundle,
    target_names,
    target_resources,
    validate_bundle,
)
from llmops_dagster.settings import load_settings

from helpers import REPO, llmops

DECLARATION = REPO / "environments.yaml"


def _declaration(tmp_path: Path, environments: dict, mlflow: dict | None = None) -> Path:
    """The repository's declaration with other environments (and optionally other MLflow defaults)."""
    document = yaml.safe_load(DECLARATION.read_text())
    document["environments"] = environments
    if mlflow:
        document["defaults"]["mlflow"].update(mlflow)
    path = tmp_path / "environments.yaml"
    path.write_text(yaml.safe_dump(document))  # sorted keys: staging comes before test in the file
    return path


def test_bundle_from_the_repository_declaration(llmops_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = bundle_from_settings(DECLARATION)
    document = yaml.safe_load(text)
    assert validate_bundle(document) == []
    assert document["bundle"]["name"] == "llmops-dagster"
    # No development mode: it would deploy dev_<user>_rag_model and "[dev <user>] llmops-test", names
    # the platform never uses. Each target is one shared copy; prod's root only its owner can write.
    assert {name: target.get("mode") for name, target in document["targets"].items()} == {"test": None, "staging": None, "prod": "production"}
    assert [name for name, target in document["targets"].items() if target.get("default")] == ["test"]
    roots = {name: target["workspace"]["root_path"] for name, target in document["targets"].items()}
    assert roots == {
        "test": "/Workspace/Shared/.bundle/${bundle.name}/${bundle.target}",
        "staging": "/Workspace/Shared/.bundle/${bundle.name}/${bundle.target}",
        "prod": "/Workspace/Users/${workspace.current_user.userName}/.bundle/${bundle.name}/${bundle.target}",
    }
    for env in ("test", "staging", "prod"):
        settings = load_settings(env, DECLARATION)
        resources = target_resources(document, env)
        (experiment,) = resources["experiments"].values()
        assert experiment["name"] == f"/Shared/{settings.mlflow.experiment}"
        assert experiment["permissions"] == [{"level": "CAN_READ", "group_name": "users"}]
        model = resources["registered_models"][MODEL_KEY]
        assert ".".join((model["catalog_name"], model["schema_name"], model["name"])) == settings.mlflow.registered_model
        assert model["grants"] == [{"principal": "account users", "privileges": ["EXECUTE"]}]
        (volume,) = resources["volumes"].values()
        assert (volume["catalog_name"], volume["schema_name"], volume["name"]) == (model["catalog_name"], model["schema_name"], "pipes")
        training = resources["jobs"][TRAINING_JOB]["tasks"]
        assert [task["task_key"] for task in training] == ["ingest", "train", "evaluate", "register"]
        assert [task.get("depends_on") for task in training] == [None, [{"task_key": "ingest"}], [{"task_key": "train"}], [{"task_key": "evaluate"}]]
        for task in (*training, *resources["jobs"][INFERENCE_JOB]["tasks"]):
            wheel = task["python_wheel_task"]
            assert wheel["entry_point"] in PIPES_ENTRY_POINTS and wheel["parameters"] == ["--env", env]
            assert PIPES_ENTRY_POINTS[wheel["entry_point"]] == f"llmops_dagster.pipes.{task['task_key']}:main"
            assert task["environment_key"] == "default"  # serverless by default
        assert [task["task_key"] for task in resources["jobs"][INFERENCE_JOB]["tasks"]] == ["predict"]

    # Deterministic, and independent of where local state lives, so a committed copy can be compared.
    assert bundle_from_settings(DECLARATION) == text
    monkeypatch.setenv("LLMOPS_HOME", str(llmops_home / "elsewhere"))
    assert bundle_from_settings(DECLARATION) == text


def test_check_bundle_lists_differences(tmp_path: Path, llmops_home: Path) -> None:
    text = bundle_from_settings(DECLARATION)
    committed = tmp_path / "databricks.yml"
    assert check_bundle(committed, text) == [f"{committed} does not exist: write it with `llmops bundle`"]
    committed.write_text(text)
    assert check_bundle(committed, text) == []
    committed.write_text(text.replace("mode: production", "mode: development").replace("- EXECUTE", "- SELECT"))
    assert check_bundle(committed, text) == [
        "targets.test.resources.registered_models.rag_model.grants[0].privileges[0]: committed 'SELECT', generated 'EXECUTE'",
        "targets.staging.resources.registered_models.rag_model.grants[0].privileges[0]: committed 'SELECT', generated 'EXECUTE'",
        "targets.prod.mode: committed 'development', generated 'production'",
        "targets.prod.resources.registered_models.rag_model.grants[0].privileges[0]: committed 'SELECT', generated 'EXECUTE'",
    ]
    document = yaml.safe_load(text)
    document["targets"]["qa"] = {"mode": "development"}
    committed.write_text(yaml.safe_dump(document, sort_keys=False))
    assert check_bundle(committed, text) == ["targets.qa: only in the committed file"]
    committed.write_text(text.replace("# Generated", "# Hand-edited, generated"))
    assert "only in layout or comments" in check_bundle(committed, text)[0]


def test_targets_are_the_declared_environments(tmp_path: Path, llmops_home: Path) -> None:
    with pytest.raises(ValueError, match=r"target 'qa' is not an environment declared in .*environments.yaml \(declared: test, staging, prod\)"):
        bundle_from_settings(DECLARATION, targets=["test", "qa"])
    two = _declaration(tmp_path, {"test": {}, "staging": {"promotion": {"source": "test"}}})
    assert list(yaml.safe_load(bundle_from_settings(two))["targets"]) == ["test", "staging"]
    with pytest.raises(ValueError, match="target 'prod' is not an environment declared"):
        bundle_from_settings(two, targets=["prod"])
    env = BundleEnvironment("prod", "llmops-prod", "prod.llmops.rag_model")
    with pytest.raises(ValueError, match="target 'prod' is not an environment declared in environments.yaml"):
        render_bundle({"prod": env}, declared=["test", "staging"])
    with pytest.raises(ValueError, match="target 'staging' was given the settings of environment 'prod'"):
        render_bundle({"staging": env})


def test_unity_catalog_model_names(tmp_path: Path, llmops_home: Path) -> None:
    unity = _declaration(tmp_path, {"test": {}}, {"registry_uri": "databricks-uc", "registered_model": "rag_model_{env}"})
    with pytest.raises(
        ValueError,
        match=r"environment 'test': mlflow.registered_model 'rag_model_test' must be catalog.schema.model when mlflow.registry_uri is databricks-uc",
    ):
        bundle_from_settings(unity)
    two_parts = BundleEnvironment("test", "e", "llmops.rag_model", "databricks-uc")
    with pytest.raises(ValueError, match="must be catalog.schema.model"):
        target_names(two_parts)
    # Outside Unity Catalog a plain name is placed in the configured catalog and schema...
    plain = BundleEnvironment("test", "/Users/me/e", "rag_model", None, DatabricksConfig(catalog="ml", schema="llmops_test"))
    names = target_names(plain)
    assert (names.full_model_name, names.experiment, names.volume_path) == (
        "ml.llmops_test.rag_model",
        "/Users/me/e",
        "/Volumes/ml/llmops_test/pipes",
    )
    with pytest.raises(ValueError, match="set databricks.catalog and databricks.schema"):
        target_names(BundleEnvironment("test", "e", "rag_model"))
    # ...and a catalog.schema.model name must agree with the configured catalog.
    with pytest.raises(ValueError, match="is in catalog 'test' but databricks.catalog is 'main'"):
        target_names(BundleEnvironment("test", "e", "test.llmops.rag_model", "databricks-uc", DatabricksConfig(catalog="main")))


PRINCIPAL = "6e0c1f2a-93b4-4c5d-8e7f-0a1b2c3d4e5f"  # an application ID, the form run_as takes


def test_databricks_settings(llmops_home: Path) -> None:
    assert DatabricksConfig.from_mapping(None) == DatabricksConfig()
    assert DatabricksConfig().cluster.serverless
    classic = DatabricksConfig.from_mapping(
        {
            "profile": "llmops",
            "service_principal": PRINCIPAL,
            "serving_endpoint": "rag-{env}",
            "cluster": {"spark_version": "15.4.x-scala2.12", "node_type_id": "i3.xlarge", "num_workers": 2},
        }
    )
    assert not classic.cluster.serverless and classic.endpoint_name("prod") == "rag-prod"
    envs = {env: BundleEnvironment.from_settings(load_settings(env, DECLARATION), classic) for env in ("test", "prod")}
    document = yaml.safe_load(render_bundle(envs))
    assert validate_bundle(document) == []
    prod = document["targets"]["prod"]
    assert prod["run_as"] == {"service_principal_name": PRINCIPAL} and prod["workspace"]["profile"] == "llmops"
    assert prod["workspace"]["root_path"] == f"/Workspace/Users/{PRINCIPAL}/.bundle/${{bundle.name}}/${{bundle.target}}"  # its own folder
    assert "run_as" not in document["targets"]["test"]  # test and staging run as whoever deploys them
    job = prod["resources"]["jobs"][TRAINING_JOB]
    assert job["job_clusters"] == [
        {
            "job_cluster_key": "main",
            "new_cluster": {"spark_version": "15.4.x-scala2.12", "node_type_id": "i3.xlarge", "num_workers": 2, "data_security_mode": "SINGLE_USER"},
        }
    ]
    assert all(task["job_cluster_key"] == "main" and task["libraries"] == [{"whl": "dist/*.whl"}] for task in job["tasks"])

    refusals = {
        "unknown databricks setting\\(s\\) \\['bogus'\\]": {"bogus": 1},
        "unknown databricks.cluster setting\\(s\\) \\['workers'\\]": {"cluster": {"workers": 2}},
        "databricks.cluster.spark_version is required for a classic job cluster": {"cluster": {"node_type_id": "i3.xlarge"}},
        "databricks.cluster.num_workers must be a whole number": {"cluster": {"node_type_id": "a", "spark_version": "b", "num_workers": -1}},
        "databricks.cluster.timeout_seconds must be a whole number": {"cluster": {"timeout_seconds": "1h"}},
        "databricks.token_env must name an environment variable": {"token_env": "my token"},
        "databricks.service_principal must be the service principal's application ID": {"service_principal": "llmops-sp"},
        "databricks.catalog must be one Unity Catalog name": {"catalog": "a.b"},
        "databricks.serving_endpoint gives 'llmops staging'": {"serving_endpoint": "llmops {env}"},
        "databricks.serving_endpoint may only use \\{env\\}": {"serving_endpoint": "llmops-{name}"},
        "databricks.experiment_root must be an absolute workspace path": {"experiment_root": "Shared"},
        "databricks must be a mapping": ["catalog"],
    }
    for message, raw in refusals.items():
        with pytest.raises(ValueError, match=message):
            DatabricksConfig.from_mapping(raw)
    assert JobCompute(environment_version="3").serverless


def test_validate_bundle_reports_what_databricks_would_refuse(llmops_home: Path) -> None:
    document = yaml.safe_load(bundle_from_settings(DECLARATION))
    resources = document["targets"]["test"]["resources"]
    resources["experiments"]["rag_experiment"]["permissions"][0]["level"] = "CAN_VIEW"
    del resources["registered_models"][MODEL_KEY]["catalog_name"]
    tasks = resources["jobs"][TRAINING_JOB]["tasks"]
    tasks[0]["python_wheel"] = tasks[0].pop("python_wheel_task")
    tasks[1]["depends_on"] = [{"task_key": "download"}]
    tasks[2]["environment_key"] = "gpu"
    document["targets"]["staging"]["mode"] = "staging"
    document["targets"]["prod"]["default"] = True
    where = "targets.test.resources"
    assert validate_bundle(document) == [
        "targets: more than one target is marked default",
        f"{where}.experiments.rag_experiment.permissions[0].level: 'CAN_VIEW' is not one of ['CAN_EDIT', 'CAN_MANAGE', 'CAN_READ']",
        f"{where}.registered_models.rag_model.catalog_name: required",
        f"{where}.jobs.{TRAINING_JOB}.tasks[0].python_wheel: not a field of Task",
        f"{where}.jobs.{TRAINING_JOB}.tasks[1].depends_on: no task 'download' in this job",
        f"{where}.jobs.{TRAINING_JOB}.tasks[2].environment_key: the job declares no environment 'gpu'",
        "targets.staging.mode: 'staging' is not one of ['development', 'production']",
    ]


def test_target_resources_lay_the_target_over_the_top_level() -> None:
    document = {
        "resources": {"jobs": {"a": {"name": "top", "max_concurrent_runs": 1}}},
        "targets": {"prod": {"resources": {"jobs": {"a": {"name": "prod"}, "b": {"name": "only prod"}}}}, "test": {}},
    }
    assert target_resources(document, "prod") == {"jobs": {"a": {"name": "prod", "max_concurrent_runs": 1}, "b": {"name": "only prod"}}}
    assert target_resources(document, "test") == {"jobs": {"a": {"name": "top", "max_concurrent_runs": 1}}}
    with pytest.raises(ValueError, match="no target 'qa'"):
        target_resources(document, "qa")


def test_committed_bundle_is_the_generated_one(tmp_path: Path) -> None:
    """databricks.yml in the repository is what `llmops bundle` makes of environments.yaml: edit the
    declaration without regenerating (or edit the bundle by hand) and this fails."""
    check = llmops("bundle", "--check", home=tmp_path / "home", timeout=120, extra_env={"LLMOPS_ENVIRONMENTS": str(DECLARATION)})
    assert check.returncode == 0, check.stdout + check.stderr
    assert "databricks.yml is up to date with" in check.stdout and "(targets: test, staging, prod)" in check.stdout


def test_bundle_command_writes_and_reports_an_edited_file(
    tmp_path: Path, llmops_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(DECLARATION))
    monkeypatch.chdir(tmp_path / "..")  # paths are shown relative to the working directory when under it
    written = tmp_path / "bundle" / "databricks.yml"
    assert main(["bundle", "--out", str(written)]) == 0
    assert written.read_text() == (REPO / "databricks.yml").read_text()
    assert main(["bundle", "--check", "--out", str(written)]) == 0
    capsys.readouterr()

    written.write_text(written.read_text().replace("- EXECUTE", "- ALL_PRIVILEGES", 1).replace("group_name: users", "group_name: admins", 1))
    assert main(["bundle", "--check", "--out", str(written)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{written.relative_to(tmp_path.parent)} differs from the bundle generated from {DECLARATION}:"
    assert out[1:] == [
        "  targets.test.resources.experiments.rag_experiment.permissions[0].group_name: committed 'admins', generated 'users'",
        "  targets.test.resources.registered_models.rag_model.grants[0].privileges[0]: committed 'ALL_PRIVILEGES', generated 'EXECUTE'",
        "regenerate it with `llmops bundle` and commit it",
    ]
    assert main(["bundle", "--check", "--out", str(tmp_path / "missing.yml")]) == 1
    assert "does not exist: write it with `llmops bundle`" in capsys.readouterr().out
    assert main(["bundle", "--check", "--out", str(written.parent)]) == 2  # a folder is no bundle file, not a missing one
    assert capsys.readouterr().err == f"llmops: error: --out {written.parent} is a folder; name a file\n"

    # A declaration Databricks would refuse: one line, exit 2, and nothing written.
    unity = _declaration(tmp_path, {"test": {}}, {"registry_uri": "databricks-uc", "registered_model": "rag_model_{env}"})
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(unity))
    assert main(["bundle"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llmops: error: environment 'test': mlflow.registered_model 'rag_model_test' must be catalog.schema.model" in err
    assert not (tmp_path / "databricks.yml").exists()
