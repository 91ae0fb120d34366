"""Process plumbing for the benchmark: free ports, pinned process groups, bounded waits, memory readings.

Every process the benchmark starts runs in its own session (so its process group id is its PID), is recorded
in a :class:`ProcessSet`, and is stopped by that PID's group: SIGTERM, a bounded wait, then SIGKILL. Nothing
here ever signals a process it did not start.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why, in one line."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c CPU`` (taskset execs the command, so the PID stays the command's own)."""
    if cpu is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's open-files limit (children inherit it); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])


@dataclass
class ProcessSet:
    """The processes this run started, stopped by PID (process group) in reverse order."""

    logs: Path
    started: list[Started] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> Started:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=None if env is None else dict(env), cwd=cwd,
            )
        started = Started(name, proc, log)
        self.started.append(started)
        return started

    def stop(self, started: Started, timeout: float = 10.0) -> None:
        proc = started.proc
        # Children that moved to groups of their own (Squid's auth helpers do): noted now, swept below.
        strays = descendants(proc.pid)
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        # Children that outlived their parent (helpers, workers) are still in the group.
        if group_pids(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_same_process(p) for p in strays):
            time.sleep(0.1)  # helpers leave by themselves once their parent has closed their stdin
        for pid, _ in strays:
            if _same_process((pid, _)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if started in self.started:
            self.started.remove(started)

    def stop_all(self) -> None:
        for started in reversed(list(self.started)):
            with contextlib.suppress(Exception):
                self.stop(started)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1,
               alive: Started | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and alive.proc.poll() is not None:
            raise BenchError(f"{what}: the process exited with status {alive.proc.returncode}: {alive.log_tail()}")
        time.sleep(interval)
    raise BenchError(f"{what}: not ready after {timeout:.0f} s")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()  # after the command name: state ppid pgrp ... starttime


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live descendant of ``pid``; the start time tells a reused PID apart."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None and len(fields) > 19:
            children.setdefault(int(fields[1]), []).append(int(entry))
            starts[int(entry)] = fields[19]
    found: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append((child, starts[child]))
            todo.append(child)
    return found


def _same_process(entry: tuple[int, str]) -> bool:
    fields = _stat_fields(entry[0])
    return fields is not None and len(fields) > 19 and fields[19] == entry[1] and fields[0] != "Z"


def group_pids(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` (the group a :class:`ProcessSet` process leads)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time consumed so far by the live processes of the group."""
    ticks = 0
    for pid in group_pids(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_jiffies(cpu: int) -> tuple[int, int]:
    """(busy, total) clock ticks CPU ``cpu`` has spent since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle, iowait
            return sum(values[:8]) - idle, sum(values[:8])
    return 0, 0


def group_rss_mib(pgid: int) -> float:
    """Resident memory of every process in the group (workers and auth helpers included), MiB."""
    return sum(_status_kib(pid, "VmRSS") for pid in group_pids(pgid)) / 1024


def settled_rss_mib(pgid: int, timeout: float = 8.0) -> float:
    """The group's RSS once it stops moving (two readings 0.5 s apart within 0.25 MiB), or at the timeout."""
    deadline = time.monotonic() + timeout
    last = group_rss_mib(pgid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = group_rss_mib(pgid)
        if abs(now - last) < 0.25:
            return now
        last = now
    return last


def run_bounded(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> str:
    """Run a command to completion within ``timeout`` seconds; its stdout, or BenchError naming the failure."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False,
                              env=None if env is None else dict(env), start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{argv[0]} did not finish within {timeout:.0f} s") from exc
    except OSError as exc:
        raise BenchError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        err = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise BenchError(f"{' '.join(argv[:3])}... exited {done.returncode}: {' | '.join(err[-3:])}")
    return done.stdout.decode(errors="replace")
