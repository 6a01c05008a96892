from pathlib import Path

import pytest

from llmops_dagster.core.bundle import BundleEnvironment, target_names
from llmops_dagster.settings import ENVIRONMENTS, SettingsError, load_settings


def declare(folder: Path, text: str) -> Path:
    """An environment declaration file with ``text`` as its YAML."""
    declaration = folder / "environments.yaml"
    declaration.write_text(text)
    return declaration


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_resolves_under_llmops_home(env: str, llmops_home: Path) -> None:
    settings = load_settings(env)
    assert settings.name == env
    assert settings.state_root == (llmops_home / env).resolve()
    assert settings.landing == (llmops_home / "landing" / env).resolve()
    assert settings.lancedb_uri == str(llmops_home.resolve() / env / "lancedb")
    assert settings.chunking.chunk_tokens > settings.chunking.overlap_tokens


def test_environments_do_not_share_state(llmops_home: Path) -> None:
    roots = {load_settings(env).lancedb_uri for env in ENVIRONMENTS}
    assert len(roots) == len(ENVIRONMENTS)


def test_unknown_environment_is_refused(llmops_home: Path) -> None:
    with pytest.raises(SettingsError, match="unknown environment 'dev'"):
        load_settings("dev")


def test_unknown_setting_is_refused(tmp_path: Path, llmops_home: Path) -> None:
    declaration = declare(tmp_path, "defaults:\n  chunking:\n    chunk_size: 10\nenvironments:\n  test: {}\n")
    with pytest.raises(SettingsError, match="unknown chunking setting"):
        load_settings("test", declaration)


def test_environment_overrides_defaults(tmp_path: Path, llmops_home: Path) -> None:
    declaration = declare(
        tmp_path,
        "defaults:\n  chunking:\n    chunk_tokens: 200\n    overlap_tokens: 20\n"
        "environments:\n  test: {}\n  prod:\n    lancedb_uri: s3://bucket/{env}\n    chunking:\n      chunk_tokens: 120\n"
    )
    prod = load_settings("prod", declaration)
    assert prod.lancedb_uri == "s3://bucket/prod"
    assert (prod.chunking.chunk_tokens, prod.chunking.overlap_tokens) == (120, 20)
    with pytest.raises(SettingsError, match="not declared"):
        load_settings("staging", declaration)


def test_invalid_chunking_is_a_settings_error(tmp_path: Path, llmops_home: Path) -> None:
    declaration = declare(tmp_path, "defaults:\n  chunking:\n    chunk_tokens: 100\n    overlap_tokens: 60\nenvironments:\n  test: {}\n")
    with pytest.raises(SettingsError, match="invalid chunking settings: overlap_tokens"):
        load_settings("test", declaration)


@pytest.mark.parametrize("value", ["-5", "0", ".nan"])
def test_a_file_size_limit_that_admits_nothing_is_a_settings_error(tmp_path: Path, llmops_home: Path, value: str) -> None:
    declaration = declare(tmp_path, f"defaults:\n  ingestion:\n    max_file_mb: {value}\nenvironments:\n  test: {{}}\n")
    with pytest.raises(SettingsError, match="invalid ingestion settings: max_file_mb must be positive"):
        load_settings("test", declaration)


def test_engine_is_declared_per_environment(tmp_path: Path, llmops_home: Path) -> None:
    declaration = declare(
        tmp_path,
        "defaults:\n  engine: local\nenvironments:\n  test: {}\n"
        "  staging:\n    engine: spark\n    spark_remote: sc://127.0.0.1:15002\n  prod:\n    engine: flink\n"
    )
    assert load_settings("test", declaration).engine == "local"
    staging = load_settings("staging", declaration)
    assert (staging.engine, staging.spark_remote) == ("spark", "sc://127.0.0.1:15002")
    with pytest.raises(SettingsError, match="engine must be one of local, spark"):
        load_settings("prod", declaration)


def test_the_upstream_model_comes_from_the_same_declaration(tmp_path: Path, llmops_home: Path) -> None:
    declaration = declare(
        tmp_path,
        "defaults:\n  mlflow:\n    registered_model: 'custom.{env}.rag'\n"
        "environments:\n  test: {}\n  staging:\n    promotion:\n      source: test\n",
    )
    staging = load_settings("staging", declaration)
    assert staging.upstream_model == "custom.test.rag" and load_settings("test", declaration).upstream_model is None
    cycle = declare(tmp_path, "environments:\n  test:\n    promotion:\n      source: staging\n  staging:\n    promotion:\n      source: test\n")
    with pytest.raises(SettingsError, match="cycle: test → staging → test"):
        load_settings("test", cycle)


SHARED_STATE = (
    "    lancedb_uri: 's3://llmops-state/{env}/lancedb'\n    landing: '/Volumes/{env}/llmops/landing'\n"
    "    mlflow: {tracking_uri: databricks, registry_uri: databricks-uc}\n"
)


def test_compute_is_declared_per_environment(tmp_path: Path, llmops_home: Path) -> None:
    declaration = declare(tmp_path, f"environments:\n  test: {{}}\n  staging:\n    compute: databricks\n{SHARED_STATE}  prod:\n    compute: gpu\n")
    assert load_settings("test", declaration).compute == "local"
    staging = load_settings("staging", declaration)
    assert staging.compute == "databricks" and staging.landing == Path("/Volumes/staging/llmops/landing")
    # On Databricks an experiment is a workspace path: the one the bundle deploys, where the runs go.
    assert staging.mlflow.experiment == "/Shared/llmops-staging" == target_names(BundleEnvironment.from_settings(staging)).experiment
    with pytest.raises(SettingsError, match="environment 'prod': compute must be one of local, databricks, got 'gpu'"):
        load_settings("prod", declaration)
    assert {load_settings(env).compute for env in ENVIRONMENTS} == {"local"}  # the repository's declaration


@pytest.mark.parametrize(
    ("local", "message"),
    [
        ("lancedb_uri: '{home}/lancedb'", "lancedb_uri '.*/lancedb' must be object storage"),
        ("lancedb_uri: 'file:///srv/lancedb'", "lancedb_uri 'file:///srv/lancedb' must be object storage"),
        ("landing: '{home}/landing'", "landing '.*/landing' must be a Unity Catalog volume path"),
        ("mlflow: {tracking_uri: 'sqlite:///{home}/mlflow.db', registry_uri: databricks-uc}", "mlflow.tracking_uri 'sqlite:.*' must be databricks"),
    ],
)
def test_compute_on_databricks_refuses_state_only_this_machine_sees(tmp_path: Path, llmops_home: Path, local: str, message: str) -> None:
    """The remote steps would write the index or the MLflow runs to the cluster's own disk, gone with it."""
    key = local.split(":")[0]
    shared = "".join(line + "\n" for line in SHARED_STATE.splitlines() if not line.strip().startswith(key))
    declaration = declare(tmp_path, f"environments:\n  test:\n    compute: databricks\n{shared}    {local}\n")
    with pytest.raises(SettingsError, match=f"environment 'test': compute: databricks runs its steps on a cluster that cannot see .*; {message}"):
        load_settings("test", declaration)
    assert load_settings("test", declare(tmp_path, f"environments:\n  test:\n    compute: databricks\n{SHARED_STATE}")).compute == "databricks"


def test_databricks_section_is_parsed_and_checked(tmp_path: Path, llmops_home: Path) -> None:
    declaration = declare(
        tmp_path,
        "defaults:\n  databricks:\n    profile: llmops\n    cluster: {node_type_id: i3.xlarge, spark_version: 15.4.x-scala2.12}\n"
        "environments:\n  test: {}\n  prod:\n    databricks: {volume: 'bad.volume'}\n  staging:\n    databricks: {bogus: 1}\n",
    )
    test = load_settings("test", declaration)
    assert test.databricks.profile == "llmops" and not test.databricks.cluster.serverless
    with pytest.raises(SettingsError, match=r"environment 'prod': databricks.volume must be one Unity Catalog name"):
        load_settings("prod", declaration)
    with pytest.raises(SettingsError, match=r"environment 'staging': unknown databricks setting\(s\) \['bogus'\]"):
        load_settings("staging", declaration)


def test_unity_catalog_model_names_are_refused_at_load(tmp_path: Path, llmops_home: Path) -> None:
    unity = declare(
        tmp_path,
        "defaults:\n  mlflow:\n    registry_uri: databricks-uc\n    registered_model: 'rag_model_{env}'\n"
        "environments:\n  test: {}\n  prod:\n    mlflow: {registered_model: 'ml.llmops_prod.rag_model'}\n",
    )
    message = "environment 'test': mlflow.registered_model 'rag_model_test' must be catalog.schema.model when mlflow.registry_uri is databricks-uc"
    with pytest.raises(SettingsError, match=message):
        load_settings("test", unity)
    assert load_settings("prod", unity).mlflow.registered_model == "ml.llmops_prod.rag_model"
    # Jobs on Databricks need Unity Catalog names too: a plain name needs databricks.catalog and schema.
    jobs = declare(
        tmp_path,
        "defaults:\n  compute: databricks\n  mlflow:\n    registered_model: rag_model\n    tracking_uri: databricks\n"
        "  lancedb_uri: 's3://llmops-state/{env}'\n  landing: '/Volumes/ml/{env}/landing'\n"
        "environments:\n  test: {}\n  prod:\n    databricks: {catalog: ml, schema: llmops_prod}\n",
    )
    with pytest.raises(SettingsError, match="environment 'test': .* set databricks.catalog and databricks.schema"):
        load_settings("test", jobs)
    assert load_settings("prod", jobs).compute == "databricks"
    # A catalog.schema.model name that contradicts databricks.catalog is refused as well.
    mismatch = declare(tmp_path, "defaults:\n  mlflow: {registry_uri: databricks-uc}\n  databricks: {catalog: main}\nenvironments:\n  test: {}\n")
    with pytest.raises(SettingsError, match="is in catalog 'test' but databricks.catalog is 'main'"):
        load_settings("test", mismatch)


def test_auth_section_names_accounts_and_password_variables(tmp_path: Path, llmops_home: Path) -> None:
    accounts = (
        "    service: {username: llmops-service, password_env: LLMOPS_SERVICE_PASSWORD}\n"
        "    readers: [{username: users, password_env: LLMOPS_USERS_PASSWORD}]\n"
        "    admin: {username: admin, password_env: MLFLOW_AUTH_ADMIN_PASSWORD}\n"
    )
    declaration = declare(tmp_path, f"defaults:\n  auth:\n{accounts}environments:\n  test: {{}}\n  prod:\n    auth: null\n")
    auth = load_settings("test", declaration).auth
    assert (auth.service.username, auth.service.password_env) == ("llmops-service", "LLMOPS_SERVICE_PASSWORD")
    assert [reader.username for reader in auth.readers] == ["users"] and auth.admin.username == "admin"
    policy = auth.policy("llmops-test", "test.llmops.rag_model")
    assert policy.grants("7") == [
        ("llmops-service", "experiment", "7", "MANAGE"),
        ("llmops-service", "registered_model", "test.llmops.rag_model", "MANAGE"),
        ("users", "experiment", "7", "READ"),
        ("users", "registered_model", "test.llmops.rag_model", "READ"),
    ]
    assert load_settings("prod", declaration).auth is None
    assert {load_settings(env).auth for env in ENVIRONMENTS} == {None}  # the repository declares none

    service = "service: {username: s, password_env: A}"
    refusals = {
        "auth.service is required": "auth: {readers: []}",
        r"unknown auth.service setting\(s\) \['password'\]": "auth: {service: {username: s, password_env: S_PASSWORD, password: hunter2}}",
        r"auth.readers\[0\].password_env must name an environment variable": f"auth: {{{service}, readers: [{{username: r, password_env: 'a b'}}]}}",
        "an account may hold one role only: s": f"auth: {{{service}, readers: [{{username: s, password_env: B}}]}}",
        "admin 'r' cannot be a reader": f"auth: {{{service}, readers: [{{username: r, password_env: B}}], admin: {{username: r, password_env: C}}}}",
        r"unknown auth setting\(s\) \['users'\]": f"auth: {{{service}, users: []}}",
    }
    for message, section in refusals.items():
        refused = declare(tmp_path, f"defaults:\n  {section}\nenvironments:\n  test: {{}}\n")
        with pytest.raises(SettingsError, match=f"environment 'test': .*{message}"):
            load_settings("test", refused)


def test_the_ann_settings_reach_core_by_their_own_names(tmp_path: Path, llmops_home: Path) -> None:
    """index.ann_min_rows and friends are AnnParams' own fields; a model registered with the older
    stored names (min_rows, index_type) still loads them."""
    from llmops_dagster.core.index import AnnParams
    from llmops_dagster.core.model_spec import ModelSpec
    from llmops_dagster.core.rag import RagConfig

    declaration = declare(tmp_path, "environments:\n  test:\n    index:\n      ann_min_rows: 500\n      ann_index_type: IVF_PQ\n      nprobes: 8\n")
    params = load_settings("test", declaration).index.ann_params()
    assert params == AnnParams(ann_min_rows=500, nprobes=8, refine_factor=10, ann_index_type="IVF_PQ") and type(params) is AnnParams
    with pytest.raises(SettingsError, match="invalid index settings: ann_index_type must be one of"):
        load_settings("test", declare(tmp_path, "environments:\n  test:\n    index:\n      ann_index_type: HNSW\n"))
    spec = ModelSpec("uri", "embeddings", "fp", RagConfig(), params, "base")
    assert ModelSpec.from_config(spec.to_config()).ann == params
    stored = {**spec.to_config(), "ann": '{"min_rows": 500, "nprobes": 8, "refine_factor": 10, "index_type": "IVF_PQ"}'}
    assert ModelSpec.from_config(stored).ann == params


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("environments: [\n", r"is not valid YAML: expected the node content, but found '<stream end>' at line 2, column 1$"),
        ("- test\n", r"environments.yaml must be a mapping of settings, got \['test'\]$"),
        ("envs: {}\n", r"unknown top-level key\(s\) \['envs'\]; expected defaults and environments$"),
        ("environments: [test]\n", r"environments must be a mapping of settings, got \['test'\]$"),
        ("defaults: 3\nenvironments: {test: {}}\n", r"defaults must be a mapping of settings, got 3$"),
        ("environments: {test: local}\n", r"^environment 'test' must be a mapping of settings, got 'local'$"),
        ("environments: {test: {state_root: '{hom}/{env}'}}\n", r"^environment 'test': state_root '\{hom\}/\{env\}' is not a template"),
        ("environments: {test: {state_root: 5}}\n", r"^environment 'test': state_root must be a string, got 5$"),
        ("environments: {test: {mlflow: {experiment: '{x}'}}}\n", r"^environment 'test': mlflow.experiment '\{x\}' is not a template"),
        ("environments: {test: {embedding: fast}}\n", r"^environment 'test': embedding must be a mapping of settings, got 'fast'$"),
        ("environments: {test: {rag: {k: many}}}\n", r"^environment 'test': rag.k must be a whole number, got 'many'$"),
        ("environments: {test: {rag: {k: true}}}\n", r"^environment 'test': rag.k must be a whole number, got True$"),
        ("environments: {test: {rag: {select_by_evaluation: 1}}}\n", r"^environment 'test': rag.select_by_evaluation must be true or false, got 1$"),
        ("environments: {test: {serving: {port: '80'}}}\n", r"^environment 'test': serving.port must be a whole number, got '80'$"),
        ("environments: {test: {index: {ann_min_recall: high}}}\n", r"^environment 'test': index.ann_min_recall must be a number, got 'high'$"),
        ("environments: {test: {spark_remote: 15002}}\n", r"^environment 'test': spark_remote must be a string, got 15002$"),
        ("environments: {test: {monitoring: 3}}\n", r"^environment 'test': monitoring must be a mapping of settings, got 3$"),
        ("environments: {test: {sensor_interval_seconds: true}}\n", r"^environment 'test': sensor_interval_seconds must be a whole number"),
    ],
)
def test_a_malformed_declaration_is_one_line_naming_the_setting(tmp_path: Path, llmops_home: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings("test", declare(tmp_path, text))
    assert "\n" not in str(raised.value)


def test_a_float_setting_takes_a_whole_number_and_an_optional_one_takes_null(tmp_path: Path, llmops_home: Path) -> None:
    settings = load_settings("test", declare(tmp_path, "environments: {test: {rag: {text_weight: 1}, embedding: {model: null}}}\n"))
    assert settings.rag.text_weight == 1 and settings.embedding.model is None


def test_without_llmops_home_state_is_beside_the_declaration_whatever_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmops_dagster.settings import CHECKOUT_DECLARATION

    monkeypatch.delenv("LLMOPS_HOME", raising=False)
    monkeypatch.delenv("LLMOPS_ENVIRONMENTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_settings("test").state_root == CHECKOUT_DECLARATION.parent.resolve() / ".llmops" / "test"


def test_the_wheel_carries_the_declaration_a_step_on_databricks_reads(tmp_path: Path) -> None:
    """Installed from the wheel, away from any checkout, settings load from the declaration it ships."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    from llmops_dagster.settings import CHECKOUT_DECLARATION

    root, source = CHECKOUT_DECLARATION.parent, tmp_path / "source"  # built from a copy: the checkout gets no build/
    shutil.copytree(root / "llmops_dagster", source / "llmops_dagster", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "environments.yaml"):
        shutil.copy(root / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "dist")]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("llmops_dagster-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("llmops_dagster/environments.yaml") == CHECKOUT_DECLARATION.read_bytes()
        archive.extractall(tmp_path / "site")
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("LLMOPS_HOME", "LLMOPS_ENVIRONMENTS")}
    probe = "from llmops_dagster import settings as s; print(s.__file__); print(s.load_settings('staging').state_root)"
    loaded = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); {probe}"],
                            capture_output=True, text=True, timeout=120, cwd=work, env=env)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    module, state_root = loaded.stdout.split()
    assert module.startswith(str(tmp_path / "site")) and state_root == str(work / ".llmops" / "staging")
