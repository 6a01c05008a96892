"""``llmops serve``: checks what it can before opening the port, then runs uvicorn.

The champion is loaded and warmed before the port opens, so the first request never waits for a
load and ``/health`` is ready as soon as anything answers. SIGTERM or SIGINT stops accepting
connections, lets in-flight requests finish, writes the queued inference-log rows and exits 0.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Callable

from llmops_dagster.settings import EnvSettings

LOOPBACK_NAMES = ("localhost",)


class ServeError(Exception):
    """Why the server cannot start, in one line."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def next_step(client, settings: EnvSettings) -> str:  # noqa: ANN001
    """What stands between the environment's registered model and a champion, as the command that moves it on."""
    from llmops_dagster.core.promotion import champion_decision
    from llmops_dagster.core.registry import CHALLENGER, version_by_alias

    env, name = settings.name, settings.mlflow.registered_model
    if version_by_alias(client, name, CHALLENGER) is None:
        return f"run `llmops run --env {env}` and `llmops tick --env {env}` first"
    decision = champion_decision(client, name, settings.promotion.requires_approval)
    waiting = decision.awaiting_approval
    if waiting:
        return f"v{waiting} awaits approval: `llmops approve --env {env} --version {waiting}`, then `llmops tick --env {env}`"
    if decision.version:
        return f"challenger v{decision.version} passed its checks: `llmops tick --env {env}` promotes it"
    return f"{decision.reason} (`llmops status --env {env}` shows why)"


def build_state(settings: EnvSettings, client, warn: Callable[[str], None]):  # noqa: ANN001, ANN201
    """Everything a server holds: the champion (loaded), the micro-batcher, the log writer and metrics."""
    from llmops_dagster.core.rag import IndexMismatchError
    from llmops_dagster.serving.app import ServerState
    from llmops_dagster.serving.batching import MicroBatcher
    from llmops_dagster.serving.inference_log import InferenceLog
    from llmops_dagster.serving.metrics import Metrics
    from llmops_dagster.serving.models import ChampionFollower, NoChampionError
    from llmops_dagster.serving.protocol import Limits

    serving, name = settings.serving, settings.mlflow.registered_model
    metrics = Metrics()
    batcher = MicroBatcher(serving.batch_window_ms / 1000, serving.max_batch, on_batch=metrics.batch_texts.observe)

    def swapped(served) -> None:  # noqa: ANN001
        metrics.swaps.inc()
        metrics.model_version.labels(name).set(float(served.version))
        warn(f"serving {name} v{served.version} (champion)")

    follower = ChampionFollower(client, name, settings.lancedb_uri, batcher.wrap, serving.poll_seconds, swapped, warn)
    try:
        follower.load_champion()
    except NoChampionError:
        batcher.close()
        raise ServeError(f"{name} has no champion yet; {next_step(client, settings)}") from None
    except (IndexMismatchError, FileNotFoundError) as error:
        batcher.close()
        raise ServeError(str(error)) from None
    log = InferenceLog(
        settings.lancedb_uri, serving.log_flush_rows, serving.log_flush_seconds, serving.log_queue_rows,
        on_write=lambda outcome, rows: metrics.log_rows.labels(outcome).inc(rows), warn=warn,
    )
    metrics.watch(name, lambda: log.snapshot().pending, lambda: follower.failed_loads)
    token = os.environ.get(serving.token_env) or None
    limits = Limits(serving.max_question_chars, serving.max_k, serving.max_batch)
    state = ServerState(follower, log, metrics, limits, token, serving.max_body_kb * 1024, serving.log_field_chars, serving.max_concurrent)
    return state, batcher


def serve(settings: EnvSettings, client, host: str | None = None, port: int | None = None) -> int:  # noqa: ANN001
    import torch
    import uvicorn
    from threadpoolctl import threadpool_limits

    from llmops_dagster.serving.app import create_app

    def say(line: str) -> None:
        print(f"llmops serve [{settings.name}]: {line}", file=sys.stderr, flush=True)

    serving = settings.serving
    host, port = host or serving.host, port or serving.port
    if not os.environ.get(serving.token_env) and not is_loopback(host):
        raise ServeError(f"refusing to listen on {host} without a token: set {serving.token_env}, or listen on 127.0.0.1")
    check_port(host, port)
    # Request threads do small NumPy products (MaxSim, fusion) side by side while the model thread
    # runs torch; OpenBLAS's own threads would spin against both on the same cores (on 2 cores a
    # warm request went from ~50 ms to ~1 s). One BLAS thread per caller is faster at these sizes.
    threadpool_limits(limits=1, user_api="blas")
    # The model runs on one thread of its own, in batches. With a team of OpenMP threads as wide as
    # the machine, every kernel waited at a barrier for a thread that a retrieval or HTTP thread had
    # preempted: on 2 cores, 16 concurrent clients got 3.5 requests/s with two torch threads and 29
    # with one. Batching, not intra-op threads, is what uses the cores under load.
    torch.set_num_threads(serving.model_threads)
    state, batcher = build_state(settings, client, say)

    def shutdown() -> None:
        state.follower.stop()
        counts = state.log.close()
        batcher.close()
        say(f"stopped; inference_log rows written {counts.written}, dropped {counts.dropped}, failed {counts.failed}")

    app = create_app(state, shutdown)
    state.follower.start()
    guarded = "bearer token required" if state.token else "no token: loopback only"
    say(f"listening on http://{host}:{port} ({guarded}); following the champion every {serving.poll_seconds:g} s")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again for the handler it
    # found. Finding this no-op, the process ends with 0 after the drain instead of dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.Server(config).run()
    return 0
