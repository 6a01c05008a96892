"""Serving throughput and latency: ``llmops serve`` against ``mlflow models serve``, same model, same load.

    .venv/bin/python bench/serve.py [--home DIR] [--requests 300] [--concurrency 1 4 16]

Without ``--home`` it builds a throw-away environment from the sample corpus (``llmops run`` and
``llmops tick``, a few minutes). It then serves the test environment's champion with
``llmops serve`` and, one after the other so they never share the CPU, the same registered version
with ``mlflow models serve --env-manager local``. Each gets the same bounded load: ``--requests``
``/invocations`` calls of one gold question each, at each concurrency. Prints cold start (process
start to a 200 from ``/health``), requests/s and p50/p95/p99 latency, and the throughput ratio at
each concurrency. The last line, ``ratio: X.XX``, is that ratio at the highest concurrency.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "test.llmops.rag_model"
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_home(home: Path, env: dict[str, str]) -> None:
    landing = home / "landing" / "test"
    shutil.copytree(REPO / "sample_corpus", landing)
    for args in (["run", "--env", "test"], ["tick", "--env", "test"]):
        print(f"$ llmops {' '.join(args)}", flush=True)
        subprocess.run([str(BIN / "llmops"), *args], env=env, check=True, stdout=subprocess.DEVNULL)


def champion(home: Path) -> str:
    from llmops_dagster.core import registry

    client = registry.configure(f"sqlite:///{home}/mlflow.db", None)
    version = registry.version_by_alias(client, NAME, registry.CHAMPION)
    if version is None:
        raise SystemExit(f"{NAME} has no champion in {home}; run llmops run and llmops tick first")
    return str(version.version)


def start(command: list[str], env: dict[str, str], port: int) -> tuple[subprocess.Popen, float]:
    """The server and its cold start: seconds from launch to a 200 from /health."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = started + 300
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{command[0]} exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{command[0]} did not become healthy in 300 s")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def drive(port: int, questions: list[str], concurrency: int) -> dict[str, float]:
    """Every question once, ``concurrency`` at a time: requests/s, latency percentiles and failures."""
    latencies: list[float] = []
    failures = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=httpx.Limits(max_connections=concurrency)) as http:

        def one(question: str) -> tuple[float, bool]:
            began = time.perf_counter()
            response = http.post("/invocations", json={"dataframe_records": [{"question": question}]})
            return time.perf_counter() - began, response.status_code == 200

        for question in questions[:concurrency]:  # warm the connections and the answer caches alike for both
            one(question)
        began = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for seconds, ok in pool.map(one, questions):
                latencies.append(seconds)
                failures += not ok
        wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"rps": len(questions) / wall, "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99),
            "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="an LLMOPS_HOME whose test environment has a champion")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    from llmops_dagster.core.questions import read_questions

    home = args.home or Path(tempfile.mkdtemp(prefix="llmops-bench-serve-"))
    env = {**os.environ, "LLMOPS_HOME": str(home), "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # mlflow models serve runs `uvicorn` from PATH
    if args.home is None:
        build_home(home, env)
    version = champion(home)
    gold, _ = read_questions(REPO / "sample_corpus" / "questions" / "sample.jsonl")
    questions = [gold[i % len(gold)].question for i in range(args.requests)]

    port = free_port()
    servers = {
        "llmops serve": [str(BIN / "llmops"), "serve", "--env", "test", "--port", str(port)],
        "mlflow models serve": [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/{version}", "--env-manager", "local",
                                "-h", "127.0.0.1", "-p", str(port)],
    }
    results: dict[str, dict] = {}
    for name, command in servers.items():
        process, cold = start(command, env, port)
        try:
            results[name] = {"cold": cold, **{c: drive(port, questions, c) for c in args.concurrency}}
        finally:
            stop(process)

    print(f"\n{NAME} v{version}, {args.requests} requests of one question each; {os.cpu_count()} CPUs")
    print(f"{'server':<22}{'conc.':>6}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'failed':>8}{'cold start s':>14}")
    for name, result in results.items():
        for c in args.concurrency:
            row = result[c]
            print(f"{name:<22}{c:>6}{row['rps']:>9.1f}{row['p50']:>9.1f}{row['p95']:>9.1f}{row['p99']:>9.1f}"
                  f"{row['failures']:>8}{result['cold']:>14.1f}")
    ours, theirs = results["llmops serve"], results["mlflow models serve"]
    for c in args.concurrency:
        print(f"throughput at concurrency {c}: {ours[c]['rps'] / theirs[c]['rps']:.2f}x mlflow models serve")
    print(f"ratio: {ours[args.concurrency[-1]]['rps'] / theirs[args.concurrency[-1]]['rps']:.2f}")


if __name__ == "__main__":
    main()
