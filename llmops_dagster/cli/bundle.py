"""llmops bundle: databricks.yml generated from environments.yaml, or compared with it (--check)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from llmops_dagster.cli.common import UserError, writable_file
from llmops_dagster.settings import declaration_path

BUNDLE_FILE = "databricks.yml"
EXIT_DIFFERS = 1


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _write(path: Path, text: str) -> None:
    # A reader (or `databricks bundle deploy`) never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as output:
            output.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def cmd_bundle(args: argparse.Namespace) -> int:
    import yaml

    from llmops_dagster.core.bundle import bundle_from_settings, check_bundle, validate_bundle

    declaration = declaration_path()
    # The bundle sits beside its declaration: in this repository, at its root, where `databricks bundle` runs.
    out = Path(args.out).expanduser() if args.out else declaration.parent / BUNDLE_FILE
    try:
        text = bundle_from_settings(declaration)
    except ValueError as error:  # SettingsError included: one line naming the environment and setting
        raise UserError(str(error)) from None
    document = yaml.safe_load(text)
    problems = validate_bundle(document)
    if problems:
        # The generator or the declaration produced something `databricks bundle validate` would refuse.
        raise UserError(f"the bundle generated from {_shown(declaration)} is not valid: {'; '.join(problems)}")
    targets = ", ".join(document["targets"])
    if args.check:
        if out.is_dir():
            raise UserError(f"{'--out' if args.out else 'the bundle file'} {out} is a folder; name a file")
        try:
            differences = check_bundle(out, text)
        except (OSError, UnicodeDecodeError) as error:  # a file that cannot be read, or is not text
            reason = "it is not UTF-8 text" if isinstance(error, UnicodeDecodeError) else error.strerror or str(error)
            raise UserError(f"{out} cannot be read: {reason}") from None
        if differences:
            print(f"{_shown(out)} differs from the bundle generated from {_shown(declaration)}:")
            for line in differences:
                print(f"  {line}")
            print("regenerate it with `llmops bundle` and commit it")
            return EXIT_DIFFERS
        print(f"{_shown(out)} is up to date with {_shown(declaration)} (targets: {targets})")
        return 0
    _write(writable_file(out, "--out" if args.out else "the bundle file"), text)
    print(f"wrote {_shown(out)} from {_shown(declaration)} (targets: {targets}); `databricks bundle validate -t ENV` checks it against a workspace")
    return 0
