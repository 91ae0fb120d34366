"""Running the proxy: one process, or a supervisor and ``workers`` processes sharing the port (SO_REUSEPORT).

Workers share one nonce key and a shared-memory nonce-count table, so a nonce issued by one is accepted by all
and a replayed nc is refused by all; a worker that dies is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable

from authproxy.auth.errors import ConfigError
from authproxy.config import Config, replace
from authproxy.observe.notices import stderr
from authproxy.proxy.server import WorkerSetup, open_users, serve


def _run_loop(config: Config, reload: Callable[[], Config] | None, worker: WorkerSetup | None) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we run on
        asyncio.run(serve(config, reload=reload, worker=worker))
    else:
        uvloop.run(serve(config, reload=reload, worker=worker))


def run(config: Config, reload: Callable[[], Config] | None = None) -> None:
    """Blocking entry point: one process, or a supervisor and ``workers`` processes sharing the port."""
    count = config.workers or len(os.sched_getaffinity(0))
    if count == 1:
        _run_loop(config, reload, None)
        return
    open_users(config)  # a users file that cannot serve the realm stops us here, not in every worker
    config = replace(config, workers=count)
    # A bound socket that never listens reserves the port (and learns it, for port 0) without taking any
    # connection: with SO_REUSEPORT the kernel spreads connections over the workers' listening sockets only.
    host, port = config.listen_address
    reserve = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserve.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"listen: cannot bind {config.listen}: {exc.strerror}") from None
    shown = f"[{host}]" if ":" in host else host
    config = replace(config, listen=f"{shown}:{reserve.getsockname()[1]}")
    # Shared by every worker: a nonce from one is accepted by all, a replayed nc is refused by all.
    nonce_key = secrets.token_bytes(32)
    from authproxy.state.shared import SharedNonceCounterStore  # multiprocessing: only with workers

    counters = SharedNonceCounterStore()
    supervise(count, lambda index: _run_loop(config, reload, WorkerSetup(index, nonce_key, counters)))
    reserve.close()


def supervise(count: int, work: Callable[[int], None]) -> None:
    """Fork ``count`` workers running ``work(index)``; pass SIGTERM/SIGINT/SIGHUP on; restart a worker that
    dies on its own; return when all have exited after a stop signal."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            code = 0
            try:
                work(index)
            except BaseException:  # report and leave; the supervisor restarts us
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig != signal.SIGHUP:
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for index in range(count):
        spawn(index)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait; kept for clarity
            continue
        index = children.pop(pid, -1)
        if index >= 0 and not stopping:
            stderr(f"authproxy: worker {index} exited ({os.waitstatus_to_exitcode(status)}); restarting it")
            time.sleep(0.5)  # do not spin if a worker cannot start at all
            spawn(index)
