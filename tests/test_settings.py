from pathlib import Path

import pytest

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
