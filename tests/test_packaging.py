"""What ``pip install llmops-dagster`` brings, against ``llmops-dagster[platform]``: a job on
Databricks compute installs the wheel alone, and a PySpark from PyPI over the runtime's own breaks
the session there. Read from the installed metadata (``make`` installs the package editable with
both extras); ``tests/test_pipes.py`` runs every step under the core install."""

import importlib.metadata as metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llmops_dagster.cli.common import PLATFORM_MODULES

from helpers import LLMOPS, REPO, core_only_environment, requirement_closure

# What must never reach Databricks compute through the wheel, and the Dagster host's own parts.
NOT_ON_DATABRICKS = {"pyspark", "py4j", "dagster-pyspark", "dagster-spark", "dagster-databricks", "dagster-webserver"}


def test_the_wheel_alone_brings_no_spark_and_the_platform_extra_brings_the_host() -> None:
    core = requirement_closure("llmops-dagster")
    platform = requirement_closure("llmops-dagster", ("platform",))
    assert core & NOT_ON_DATABRICKS == set()
    assert NOT_ON_DATABRICKS <= platform
    # and what every step runs on is in the core: the model, the index, the registry, the Pipes context
    assert {"torch", "transformers", "lancedb", "mlflow", "dagster", "dagster-pipes", "databricks-sdk"} <= core


def test_the_clis_list_of_platform_modules_is_the_platform_extra() -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["platform"]
    distributions = {canonicalize_name(Requirement(line).name) for line in extra}
    modules = {
        module
        for module, owners in metadata.packages_distributions().items()
        if {canonicalize_name(owner) for owner in owners} & distributions and module != "tests"
    }
    # mlflow[auth] is mlflow with an extra: the core's mlflow, so not a platform module
    assert PLATFORM_MODULES == {module for module in modules if module != "mlflow"}


@pytest.fixture(scope="module")
def core_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import os

    return {**os.environ, **core_only_environment(tmp_path_factory.mktemp("core-install")), "HF_HUB_OFFLINE": "1"}


def test_a_core_install_has_the_steps_and_not_the_platform(core_env: dict[str, str]) -> None:
    probe = (
        "import importlib.util as u, importlib.metadata as m\n"
        "absent = ('pyspark', 'dagster_databricks', 'dagster_webserver', 'prometheus_client', 'google.rpc', 'pytest', 'playwright')\n"
        "print(sorted(name for name in absent if u.find_spec(name)))\n"
        "print([name for name in ('pyspark', 'dagster-databricks') if any(d.metadata['Name'] == name for d in m.distributions())])\n"
        "import llmops_dagster.pipes.embed, torch, lancedb, mlflow, dagster_pipes\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=core_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "[]"]


def test_a_command_that_needs_the_platform_says_which_extra_to_install(core_env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = subprocess.run([LLMOPS, "serve", "--env", "test"], env={**core_env, "LLMOPS_HOME": str(home)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("llmops: error: this command needs the platform extra (")
    assert "pip install 'llmops-dagster[platform]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("missing", "code", "line"), [
    ("pyspark.sql", 2, "llmops: error: this command needs the platform extra (pyspark is not installed): pip install 'llmops-dagster[platform]'"),
    ("not_a_dependency", 1, "llmops: error: ModuleNotFoundError: No module named 'not_a_dependency' (set LLMOPS_DEBUG=1 for the traceback)"),
])
def test_a_missing_module_is_one_line_naming_the_extra_only_when_it_is_the_extras(
    missing: str, code: int, line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmops_dagster.cli import app

    def status(_args: object) -> int:
        raise ModuleNotFoundError(f"No module named {missing.split('.')[0]!r}", name=missing)

    monkeypatch.setattr(app, "cmd_status", status)
    monkeypatch.delenv("LLMOPS_DEBUG", raising=False)
    assert app.main(["status"]) == code
    assert capsys.readouterr().err.strip() == line
