"""llmops search, ask and predict: questions against the index and the serving model."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llmops_dagster.cli.common import UserError, existing_file, registry_client, resources_for, settings_for, writable_file
from llmops_dagster.core.questions import not_text
from llmops_dagster.serving.client import ServerError, running_server
from llmops_dagster.settings import EnvSettings


def checked_text(text: str, what: str) -> None:
    """A query or question from the command line: not blank, and text a tokenizer takes."""
    if not text.strip():
        raise UserError(f"the {what} is empty")
    if problem := not_text(text):
        raise UserError(f"the {what} is not valid text: {problem}")


def cmd_search(args: argparse.Namespace) -> int:
    from llmops_dagster.core import store
    from llmops_dagster.core.index import search
    from llmops_dagster.core.rag import index_models, index_problem

    settings = settings_for(args)
    checked_text(args.query, "query")
    server = _server(args, settings, "search")
    if server is not None:
        try:
            found = server.search(args.query, args.k, args.mode)
        except ServerError as error:
            raise UserError(str(error)) from None
        print(f"ranked by {server.base_url} (the champion's query encoder)", file=sys.stderr)
        return show_passages(args, found["passages"])
    resources = resources_for(settings)
    lance = store.open_existing(settings.lancedb_uri)
    table = lance.open(store.EMBEDDINGS) if lance is not None else None
    if table is None or table.count_rows() == 0:
        raise UserError(f"no index for environment '{settings.name}' at {settings.lancedb_uri}; run `llmops run --env {settings.name}` first")
    embedder = None
    if args.mode != "text":
        problem = index_problem(index_models(table), resources["chunker"].index_fingerprint())
        if problem:
            raise UserError(f"{problem}, as '{settings.name}' is configured; run `llmops run --env {settings.name}` to re-embed")
        embedder = resources["embedder"].load()
    fusion = resources["rag"].config().fusion_config()
    passages = search(table, args.query, args.k, args.mode, resources["vector_index"].params(), embedder, fusion)
    return show_passages(args, [passage.as_json() for passage in passages])


def _server(args: argparse.Namespace, settings: EnvSettings, doing: str):  # noqa: ANN202
    """The environment's running server unless --local; a --k it would refuse is refused here, with the way round it."""
    server = None if args.local else running_server(settings)
    if server is not None and args.k and args.k > settings.serving.max_k:
        raise UserError(
            f"--k {args.k} is above the {server.base_url} server's limit of {settings.serving.max_k} (serving.max_k); "
            f"pass --local to {doing} in process"
        )
    return server


def show_passages(args: argparse.Namespace, passages: list[dict]) -> int:
    if args.json:
        print(json.dumps({"query": args.query, "mode": args.mode, "passages": passages}, ensure_ascii=False, indent=2))
        return 0
    if not passages:
        print("no passages found")
    for rank, p in enumerate(passages, 1):
        where = p["source"] + (f", page {p['page']}" if p["page"] else "")
        where += f" — {p['heading']}" if p["heading"] else ""
        text = p["text"] if len(p["text"]) <= 400 else p["text"][:400] + "…"
        print(f"{rank}. [{p['score']:.3f}] {where}\n   {text}\n")
    return 0


def serving_model(settings: EnvSettings):
    """The environment's champion, or its challenger while there is none: (alias, version, pyfunc)."""
    from llmops_dagster.core import registry
    from llmops_dagster.core.rag import IndexMismatchError
    from llmops_dagster.core.rag_model import load_version

    name = settings.mlflow.registered_model
    serving = registry.serving_version(registry_client(settings), name)
    if serving is None:
        raise UserError(f"no model registered as {name}; run `llmops run --env {settings.name}` first")
    alias, version = serving
    print(f"answering with {name} v{version.version} ({alias})", file=sys.stderr)
    try:
        return alias, str(version.version), load_version(name, str(version.version), settings.lancedb_uri)
    except (IndexMismatchError, FileNotFoundError) as error:
        raise UserError(str(error)) from None


def cmd_ask(args: argparse.Namespace) -> int:
    import pandas as pd

    settings = settings_for(args)
    checked_text(args.question, "question")
    server = _server(args, settings, "answer")
    if server is not None:
        alias = "champion"
        try:
            row, version = server.ask(args.question, args.k)
        except ServerError as error:
            raise UserError(str(error)) from None
        print(f"answered by {server.base_url} ({settings.mlflow.registered_model} v{version}, {alias})", file=sys.stderr)
    else:
        alias, version, model = serving_model(settings)
        params = {"k": args.k} if args.k else None
        row = model.predict(pd.DataFrame({"question": [args.question]}), params=params).iloc[0]
    if args.json:
        payload = {
            "question": args.question,
            "answer": row["answer"],
            "found": bool(row["found"]),
            "passages": list(row["passages"]),
            "sources": list(row["sources"]),
            "scores": [float(s) for s in row["scores"]],
            "model": settings.mlflow.registered_model,
            "model_version": version,
            "model_alias": alias,
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return 0
    print(row["answer"])
    print("\nSources:")
    for rank, (source, passage) in enumerate(zip(row["sources"], row["passages"], strict=True), 1):
        text = passage if len(passage) <= 300 else passage[:300] + "…"
        print(f"  {rank}. {source}\n     {text}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from llmops_dagster.core.questions import read_questions

    settings = settings_for(args)
    source = existing_file(Path(args.questions).expanduser(), "questions file")
    out = writable_file(Path(args.out).expanduser(), "--out")
    if out.exists() and out.resolve() == source.resolve():
        raise UserError(f"--out {out} is the questions file; the answers would replace the questions (name another file)")
    questions, rejected = read_questions(source)
    for problem in rejected:
        print(f"llmops: skipped {problem}", file=sys.stderr)
    if not questions:
        raise UserError(f"{source} has no valid question lines")
    _, version, model = serving_model(settings)
    answers = model.predict(pd.DataFrame({"question": [q.question for q in questions]}))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: a killed run leaves the old file or the new, never half of one.
    partial = out.with_name(f".{out.name}.partial")
    with partial.open("w", encoding="utf-8") as handle:
        for question, (_, row) in zip(questions, answers.iterrows(), strict=True):
            line = {
                "question": question.question,
                "answer": row["answer"],
                "passages": list(row["passages"]),
                "sources": list(row["sources"]),
                "model_version": version,
            }
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(partial, out)
    print(f"wrote {len(questions)} answer(s) to {out}; {len(rejected)} line(s) rejected", file=sys.stderr)
    return 1 if rejected else 0
