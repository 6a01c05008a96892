"""The in-process engine against Spark ``local[2]`` and Spark Connect, on a generated 2,000-page PDF corpus, in one run.

    .venv/bin/python bench/spark.py [--pages 2000] [--pages-per-file 10] [--quick]

Generates PDFs (bench/ingest.py's generator), parses and chunks them once in process (every engine
does that in process), then embeds every chunk with ``pipeline.embed_chunks`` through each engine's
``ComputeEngineResource.encoder()``: in process, on Spark ``local[2]``, and on a Spark Connect server
(``local[2]`` behind it) started on loopback as tests/test_spark_connect.py starts one. Each engine
runs in a process of its own (one process cannot hold a classic and a Connect session) on its own
copy of the chunked store.

Start-up is timed apart from the steady run: the engine's ``encoder()`` (for Spark, the session) and
a first small batch, in which each Python worker loads the model. The driver's own model load (the
``embeddings`` asset makes it on every engine) and the Connect server's launch are printed
separately. The steady run embeds every chunk; the table shows its chunks/s and pages/s, and how far
each engine's vectors are from the in-process ones. The last line, ``ratio: X.XX``, is Spark
``local[2]``'s steady throughput over the in-process engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ingest import write_pdf  # noqa: E402
from llmops_dagster.core import pipeline, store  # noqa: E402
from llmops_dagster.core.chunking import ChunkConfig, Chunker, index_fingerprint  # noqa: E402
from llmops_dagster.core.embedding import EmbedderConfig, load_embedder, load_tokenizer, model_fingerprint, resolve_model_path  # noqa: E402
from llmops_dagster.core.store import LanceStore  # noqa: E402

ENGINES = ("in process", "spark local[2]", "spark connect")
MASTER = "local[2]"
WARM_UP_TEXTS = 64  # two partitions of 32: each Python worker loads the model once


def build_corpus(work: Path, pages: int, pages_per_file: int) -> dict:
    """PDFs in ``work/landing``, parsed and chunked into ``work/chunked``."""
    landing = work / "landing"
    landing.mkdir()
    started = time.perf_counter()
    files = max(pages // pages_per_file, 1)
    for number in range(files):
        write_pdf(landing / f"doc-{number:03d}.pdf", pages_per_file, seed=number)
    generated = time.perf_counter() - started

    model_path = str(resolve_model_path(EmbedderConfig().model))
    tokenizer, window = load_tokenizer(model_path)
    config = ChunkConfig()
    lance = LanceStore(str(work / "chunked"))
    started = time.perf_counter()
    pipeline.ingest(landing, lance, 1 << 30)
    chunked = pipeline.chunk_documents(lance, Chunker(tokenizer, config, window), config.fingerprint(model_fingerprint(model_path)))
    return {
        "files": files,
        "pages": files * pages_per_file,
        "chunks": chunked.chunks,
        "generate_s": generated,
        "chunk_s": time.perf_counter() - started,
    }


def measure(engine: str, lance_dir: str, remote: str | None) -> dict:
    """One engine in this process: driver model load, start-up, then every chunk embedded."""
    from llmops_dagster.resources import ComputeEngineResource, EmbedderResource, SettingsSection

    config = EmbedderConfig()
    started = time.perf_counter()
    embedder = load_embedder(config)  # the embeddings asset loads it on every engine (dimension, fingerprint)
    driver_load = time.perf_counter() - started

    resource = ComputeEngineResource(
        engine="local" if engine == "in process" else "spark",
        spark_master=MASTER,
        spark_remote=remote if engine == "spark connect" else None,
        embedder=EmbedderResource(embedding=SettingsSection.of(config)),
    )
    started = time.perf_counter()
    encode = resource.encoder()
    session = time.perf_counter() - started
    encode([f"warm-up sentence {i} about the {['index', 'sensor'][i % 2]}" for i in range(WARM_UP_TEXTS)])
    startup = time.perf_counter() - started

    lance = LanceStore(lance_dir)
    chunk_config = ChunkConfig()
    fingerprint = index_fingerprint(embedder.fingerprint, chunk_config)
    started = time.perf_counter()
    result = pipeline.embed_chunks(lance, embedder, fingerprint, encode=encode)
    steady = time.perf_counter() - started
    return {"driver_load_s": driver_load, "session_s": session, "startup_s": startup, "steady_s": steady, "embedded": result.embedded}


def start_connect_server(work: Path) -> tuple[str, dict[str, str], float]:
    """A Spark Connect server on loopback over ``local[2]``: its URL, its environment and its launch time."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOG_DIR": str(work / "spark-logs"),
        "SPARK_PID_DIR": str(work / "spark-pids"),
    }
    started = time.perf_counter()
    command = [
        str(spark_home / "sbin" / "start-connect-server.sh"),
        "--master", MASTER,
        "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf", f"spark.connect.grpc.binding.port={port}",
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return f"sc://127.0.0.1:{port}", env, time.perf_counter() - started
        time.sleep(0.5)
    raise SystemExit(f"Spark Connect server did not listen on {port}; logs in {env['SPARK_LOG_DIR']}")


def stop_connect_server(env: dict[str, str]) -> None:
    spark_home = Path(env["SPARK_HOME"])
    subprocess.run([str(spark_home / "sbin" / "stop-connect-server.sh")], env=env, capture_output=True, timeout=120)


def run_engine(engine: str, work: Path, remote: str | None) -> dict:
    """``measure`` in a child process, on its own copy of the chunked store."""
    lance_dir = work / engine.replace(" ", "-").replace("[", "").replace("]", "")
    shutil.copytree(work / "chunked", lance_dir)
    command = [sys.executable, __file__, "--measure", engine, "--store", str(lance_dir)] + (["--remote", remote] if remote else [])
    log = work / f"{lance_dir.name}.log"
    with log.open("w") as stderr:
        child = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    if child.returncode != 0:
        raise SystemExit(f"{engine} failed ({child.returncode}):\n{log.read_text()[-3000:]}")
    return {**json.loads(child.stdout.strip().splitlines()[-1]), "store": str(lance_dir)}


def vectors_by_id(lance_dir: str) -> dict[str, list[float]]:
    table = LanceStore(lance_dir).open(store.EMBEDDINGS)
    rows = table.search().select(["id", "vector"]).limit(None).to_arrow()
    return dict(zip(rows.column("id").to_pylist(), rows.column("vector").to_pylist(), strict=True))


def min_cosine(reference: dict[str, list[float]], other: dict[str, list[float]]) -> float:
    import numpy as np

    ids = sorted(reference)
    if sorted(other) != ids:
        return float("nan")
    a = np.asarray([reference[i] for i in ids], dtype=np.float32)
    b = np.asarray([other[i] for i in ids], dtype=np.float32)
    return float((a * b).sum(1).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--pages-per-file", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 pages")
    parser.add_argument("--measure", choices=ENGINES, help=argparse.SUPPRESS)  # the child: one engine
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--remote", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.store, args.remote)))
        return
    pages = 40 if args.quick else args.pages

    load_before = os.getloadavg()[0]  # shared machines: how busy the cores were explains a lot of the spread
    work = Path(tempfile.mkdtemp(prefix="llmops-bench-spark-"))
    corpus = build_corpus(work, pages, args.pages_per_file)
    results = {engine: run_engine(engine, work, None) for engine in ENGINES[:2]}
    url, server_env, server_start = start_connect_server(work)
    try:
        results["spark connect"] = run_engine("spark connect", work, url)
    finally:
        stop_connect_server(server_env)

    reference = vectors_by_id(results["in process"]["store"])
    base = results["in process"]["embedded"] / results["in process"]["steady_s"]
    print(
        f"corpus: {corpus['files']} PDFs, {corpus['pages']} pages, {corpus['chunks']} chunks "
        f"(generated in {corpus['generate_s']:.1f} s; parsed and chunked in process in {corpus['chunk_s']:.1f} s, once for every engine)"
    )
    print(f"Spark Connect server launch ({MASTER} behind it): {server_start:.1f} s, before its session")
    print(f"load average: {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs")
    header = f"{'engine':<16}{'driver load s':>14}{'session s':>10}{'start-up s':>11}{'steady s':>10}{'chunks/s':>10}{'pages/s':>9}"
    print(header + f"{'vs in process':>14}{'min cosine':>11}")
    for engine, result in results.items():
        rate = result["embedded"] / result["steady_s"]
        cosine = 1.0 if engine == "in process" else min_cosine(reference, vectors_by_id(result["store"]))
        print(
            f"{engine:<16}{result['driver_load_s']:>14.2f}{result['session_s']:>10.2f}{result['startup_s']:>11.2f}{result['steady_s']:>10.2f}"
            f"{rate:>10.1f}{corpus['pages'] / result['steady_s']:>9.1f}{rate / base:>14.2f}{cosine:>11.6f}"
        )
    local, spark = results["in process"], results["spark local[2]"]
    extra = spark["startup_s"] + spark["steady_s"] - local["startup_s"] - local["steady_s"]
    print(
        f"Spark {MASTER} takes {extra:+.1f} s more than in process from session to last vector, "
        f"of which {spark['startup_s'] - local['startup_s']:.1f} s is its start-up"
    )
    shutil.rmtree(work, ignore_errors=True)
    print(f"ratio: {spark['embedded'] / spark['steady_s'] / base:.2f}")


if __name__ == "__main__":
    main()
