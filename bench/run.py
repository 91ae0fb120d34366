#!/usr/bin/env python3
"""The benchmark: authproxy against Squid, tinyproxy, proxy.py and mitmproxy, with nginx direct as the ceiling.

Starts an nginx origin (a 100-byte and a 100 MiB file) and each proxy with the same user, pins the proxies to
CPU 0 and wrk, the CONNECT client and nginx to CPU 1, runs the scenarios interleaved and repeated, and writes
``results.md``, ``results.json`` and ``chart.png`` into bench/results/. Every process it starts is stopped by
its PID (process group), also on failure and Ctrl-C. A peer that cannot be installed or started is reported as
"not run: <reason>" in the table.

    .venv/bin/python bench/run.py            # the full run (make bench)
    .venv/bin/python bench/run.py --quick    # smoke test: 1 repeat, 3 s runs, Squid and authproxy only
    .venv/bin/python bench/run.py --quick --scenarios sip   # the SIP row alone

The SIP row (bench/sippeers.py, bench/sipload.py): authenticated OPTIONS over UDP through ``authproxy sip
serve`` and through kamailio (as shipped, and with nonce_count on), the same load on the load CPU.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from harness import (
    BenchError,
    ProcessSet,
    Started,
    cpu_count,
    cpu_jiffies,
    free_port,
    group_cpu_seconds,
    group_pids,
    pinned,
    raise_fd_limit,
    run_bounded,
    settled_rss_mib,
)
from loads import (
    basic_header,
    connect_download,
    hold_idle,
    prepare_digest,
    release,
    run_wrk,
    still_held,
)
from peers import (
    BASELINE,
    PEERS,
    PEERS_BIN,
    ROOT,
    Setup,
    add_baseline,
    nginx_version,
    start_origin,
    start_peer,
    write_origin_files,
)
from sippeers import SIP_PEERS, SipRow, sip_markdown

RESULTS = ROOT / "bench" / "results"
DIRECT = "direct"
SCENARIOS = ("keepalive", "digest", "close", "connect")
SIP = "sip"
SCENARIO_TITLES = {
    "keepalive": "keep-alive GET, Basic",
    "digest": "keep-alive GET, Digest",
    "close": "Connection: close GET, Basic",
    "connect": "CONNECT 100 MiB download",
}
QUICK_PEERS = ("squid", "authproxy")
USER = "bench"
# Fresh for every run; hex digits only, so every peer's config and command-line syntax takes it as is.
PASSWORD = secrets.token_hex(12)
REALM = "bench"
AUTH_SHORT = {
    DIRECT: "—",
    "squid": "every request",
    "tinyproxy": "every request (closes after each)",
    "proxy.py": "first request only",
    "mitmproxy": "first request only",
    "authproxy": "every request",
    BASELINE: "every request",
}

Samples = dict[str, dict[str, list[dict[str, Any]]]]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="1 repeat, 3 s runs, Squid and authproxy only, no profile")
    p.add_argument("--repeats", type=int, help="repetitions of every scenario (default 3; medians)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--downloads", type=int,
                   help="least 100 MiB downloads per CONNECT run, which also lasts half the wrk duration (default 3)")
    p.add_argument("--peers", help=f"comma-separated subset of {','.join(PEERS)}")
    p.add_argument("--scenarios", default=",".join((*SCENARIOS, SIP)),
                   help=f"comma-separated subset of {','.join((*SCENARIOS, SIP))} (default all); the SIP row runs "
                        f"{', '.join(SIP_PEERS)} whatever --peers says")
    p.add_argument("--idle", default="1000,10000", help="idle-connection counts to hold (default 1000,10000)")
    p.add_argument("--profile", dest="profile", action="store_true", default=None,
                   help="py-spy profile of authproxy under keep-alive Basic load (default on unless --quick)")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--baseline", metavar="REV",
                   help="also run authproxy at this git revision (e.g. HEAD~3, a tag) as a row of its own, with the "
                        "same interpreter and flags, and report this tree's ratios to it")
    p.add_argument("--out", type=Path,
                   help="results folder (default bench/results; with --quick bench/results/quick, not committed)")
    args = p.parse_args(argv)
    args.out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.downloads = args.downloads or (2 if args.quick else 3)
    if args.profile is None:
        args.profile = not args.quick
    names = args.peers.split(",") if args.peers else list(QUICK_PEERS if args.quick else PEERS)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        p.error(f"unknown peers: {', '.join(unknown)}")
    args.peer_names = names
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in (*SCENARIOS, SIP)]
    if unknown:
        p.error(f"unknown scenarios: {', '.join(unknown)}")
    if not any(s in SCENARIOS for s in args.scenarios):
        args.peer_names, args.profile = [], False  # the SIP row alone: no HTTP proxy to start or profile
    args.idle_counts = [int(x) for x in args.idle.split(",") if x.strip()]
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, setup: Setup, procs: ProcessSet) -> None:
        self.args = args
        self.setup = setup
        self.procs = procs
        self.basic = basic_header(USER, PASSWORD)
        self.status: dict[str, str] = {}
        self.running: dict[str, tuple[Started, int | None]] = {}
        self.samples: Samples = collections.defaultdict(lambda: collections.defaultdict(list))
        self.failures: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        self.memory: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self.digest_algorithm: dict[str, str] = {}
        self.profile: dict[str, Any] = {}
        self.direct_port = 0

    # ------------------------------------------------------------------------------------------ starting

    def start_all(self) -> None:
        # The ceiling: a second nginx in the proxy's place, on the proxy's CPU, serving the same files.
        self.direct_port = free_port()
        direct = start_origin(self.setup, self.procs, name="nginx-direct", port=self.direct_port,
                              cpu=self.setup.proxy_cpu)
        self.status[DIRECT] = "ok"
        self.running[DIRECT] = (direct, None)
        for name in self.args.peer_names:
            peer = PEERS[name]
            try:
                started, port = start_peer(peer, self.setup, self.procs, self.basic)
            except Exception as exc:  # whatever went wrong, the other peers still run
                self.status[name] = f"not run: {exc}" if isinstance(exc, BenchError) else \
                    f"not run: {type(exc).__name__}: {exc}"
                log(f"!!! {peer.label}: NOT RUN: {exc}")
                for s in [s for s in self.procs.started if s.name == name]:
                    self.procs.stop(s)
                continue
            self.status[name] = "ok"
            self.running[name] = (started, port)
            log(f"{peer.label}: pid {started.pid}, port {port}")

    def alive(self, name: str) -> bool:
        if self.status.get(name) != "ok":
            return False
        started, _ = self.running[name]
        if started.proc.poll() is not None:
            self.status[name] = f"not run: exited with status {started.proc.returncode}: {started.log_tail()}"
            log(f"!!! {name}: {self.status[name]}")
            return False
        return True

    # ------------------------------------------------------------------------------------------ memory

    def measure_memory(self) -> None:
        for name in list(self.running):
            if not self.alive(name):
                continue
            started, port = self.running[name]
            listen = port or self.direct_port
            mem = self.memory[name]
            mem["idle"] = settled_rss_mib(started.pid)
            for count in self.args.idle_counts:
                socks, failed = hold_idle(listen, count)
                try:
                    time.sleep(1.0)
                    mem[f"idle_{count}"] = settled_rss_mib(started.pid)
                    mem[f"idle_{count}_held"] = still_held(socks)
                    mem[f"idle_{count}_failed"] = failed
                finally:
                    release(socks)
                time.sleep(1.0)
            log(f"memory {name}: " + ", ".join(f"{k}={v:.1f}" for k, v in mem.items()))

    # ------------------------------------------------------------------------------------------ scenarios

    def order(self, repeat: int) -> list[str]:
        names = [n for n in self.running if n != DIRECT]
        k = repeat % (len(names) + 1)
        names = [DIRECT, *names]
        return names[k:] + names[:k]

    def run_matrix(self) -> None:
        for repeat in range(self.args.repeats):
            for scenario in [s for s in SCENARIOS if s in self.args.scenarios]:
                for name in self.order(repeat):
                    if scenario == "digest" and (name == DIRECT or not PEERS[name].digest):
                        continue
                    if not self.alive(name):
                        continue
                    try:
                        sample = self.run_one(name, scenario)
                    except BenchError as exc:
                        self.failures[name][scenario].append(str(exc))
                        log(f"!!! {name} {scenario} (repeat {repeat + 1}): {exc}")
                        continue
                    self.samples[name][scenario].append(sample)
                    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in sample.items())
                    log(f"{scenario:9} {name:10} repeat {repeat + 1}/{self.args.repeats}: {shown}")
                    time.sleep(0.5)

    def run_one(self, name: str, scenario: str) -> dict[str, Any]:
        started, _ = self.running[name]
        cpus = [c for c in (self.setup.proxy_cpu, self.setup.load_cpu) if c is not None]
        before = {c: cpu_jiffies(c) for c in cpus}
        cpu0, wall0 = group_cpu_seconds(started.pid), time.monotonic()
        sample = self._run_one(name, scenario)
        # How busy the proxy was: well under 100% means the load side (or another tenant), not the proxy, set
        # the pace. The CPUs' own busy shares show the rest: the proxy CPU's minus the proxy's is other work.
        sample["cpu_pct"] = 100 * (group_cpu_seconds(started.pid) - cpu0) / (time.monotonic() - wall0)
        for c in cpus:
            busy0, total0 = before[c]
            busy1, total1 = cpu_jiffies(c)
            sample[f"cpu{c}_busy_pct"] = 100 * (busy1 - busy0) / max(1, total1 - total0)
        return sample

    def _run_one(self, name: str, scenario: str, duration: float | None = None) -> dict[str, Any]:
        _, port = self.running[name]
        a = self.args
        duration = duration or a.duration
        origin_port = self.setup.origin_port if port else self.direct_port
        common = {"proxy_port": port, "origin_port": origin_port, "duration": duration,
                  "connections": a.connections, "cpu": self.setup.load_cpu}
        if scenario == "keepalive":
            return run_wrk(auth=self.basic if port else "", close=False, **common).as_dict()
        if scenario == "close":
            return run_wrk(auth=self.basic if port else "", close=True, **common).as_dict()
        if scenario == "digest":
            assert port is not None
            basic_runs = self.samples[name]["keepalive"]
            expected = basic_runs[-1]["rps"] if basic_runs else 20_000
            count = int(min(3_000_000, max(20_000, expected * 2 * duration + 10_000)))
            path = self.setup.workdir / f"digest-{name}.txt"
            want = "SHA-256" if name in ("authproxy", BASELINE) else "MD5"
            self.digest_algorithm[name] = prepare_digest(
                proxy_port=port, origin_port=self.setup.origin_port, user=USER, password=PASSWORD, count=count,
                path=path, want_algorithm=want)
            try:
                result = run_wrk(auth="", close=False, digest_file=path, **common)
            finally:
                path.unlink(missing_ok=True)
            if result.requests >= count:
                raise BenchError(f"wrk ran past the {count} prepared Digest requests")
            return result.as_dict()
        if scenario == "connect":
            mbps = connect_download(proxy_port=port, origin_port=origin_port, user=USER, password=PASSWORD,
                                    seconds=a.duration / 2, min_downloads=a.downloads)
            return {"mbps": mbps}
        raise ValueError(scenario)

    def after_load(self) -> None:
        for name in list(self.running):
            if self.alive(name):
                started, _ = self.running[name]
                self.memory[name]["after_load"] = settled_rss_mib(started.pid)

    # ------------------------------------------------------------------------------------------ profile

    def run_profile(self, out: Path) -> None:
        """py-spy on authproxy under the keep-alive Basic load and under the Digest load: a flame graph
        (profile*.svg) and a table of the hottest functions (profile-top.md) for each."""
        if not self.alive("authproxy"):
            self.profile = {"status": "not run: authproxy is not running"}
            return
        spy = PEERS_BIN / "py-spy"
        if not spy.exists():
            self.profile = {"status": "not run: py-spy is not installed in bench/.venv-peers"}
            log(f"!!! {self.profile['status']}")
            return
        started, _ = self.running["authproxy"]
        duration = max(3, int(self.args.duration))
        rate = 100
        self.profile = {"status": "ok", "rate": rate, "duration": duration}
        markdown = ["# authproxy under load: py-spy", ""]
        for scenario, svg in (("keepalive", "profile.svg"), ("digest", "profile-digest.svg")):
            raw = self.setup.workdir / f"profile-{scenario}.raw"
            for fmt, dest in (("raw", raw), ("flamegraph", out / svg)):
                rec = self.procs.start(f"py-spy-{scenario}-{fmt}", pinned(self.setup.load_cpu, [
                    str(spy), "record", "--pid", str(started.pid), "--duration", str(duration), "--rate",
                    str(rate), "--native", "--format", fmt, "-o", str(dest)]))
                time.sleep(1.0)  # py-spy attaches
                try:
                    sample = self._run_one("authproxy", scenario, duration=duration + 1)
                    log(f"profile {scenario} ({fmt}): {sample['rps']:.0f} req/s under py-spy")
                except BenchError as exc:
                    log(f"!!! profile {scenario}: {exc}")
                try:
                    rec.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    log("!!! py-spy did not finish in time")
                self.procs.stop(rec)
            if not raw.exists():
                self.profile[scenario] = {"status": f"not run: py-spy wrote nothing (see {self.procs.logs})"}
                continue
            summary = summarise_profile(raw, rate * duration)
            self.profile[scenario] = summary
            markdown += profile_markdown(SCENARIO_TITLES[scenario], svg, summary)
        (out / "profile-top.md").write_text("\n".join(markdown) + "\n")


# ---------------------------------------------------------------------------------------------- profile


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "handle (authproxy/proxy/connection.py:123)"; keep function and file.
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    marker = "site-packages/"
    if marker in path:
        path = path.split(marker, 1)[1]
    elif "/src/" in path:
        path = path.split("/src/", 1)[1]
    return f"{func} ({path})"


def summarise_profile(raw: Path, possible: int) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        by_file[frames[-1].rpartition(" (")[2].rstrip(")")] += count
        for f in set(frames):
            inclusive[f] += count
    return {
        "status": "ok",
        "samples": total,
        "busy_fraction": total / possible if possible else 0.0,
        "self": [(f, n / total) for f, n in own.most_common(25)] if total else [],
        "self_by_file": [(f, n / total) for f, n in by_file.most_common(15)] if total else [],
        "inclusive": [(f, n / total) for f, n in inclusive.most_common(200)] if total else [],
    }


def profile_markdown(title: str, svg: str, profile: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", "",
             f"{profile['samples']} samples (py-spy --native: Python, C extensions and libc frames); authproxy was "
             f"on CPU or in a system call (not idle) in {profile['busy_fraction']:.0%} of the sampling slots. "
             f"Flame graph: [{svg}]({svg}). libc `write`/`writev`/`read` are the kernel's side of the socket IO "
             "(on loopback the sender's CPU also delivers the bytes).", "",
             "Self time by file:", "", "| share | file |", "|---:|---|"]
    lines += [f"| {share:.1%} | `{f}` |" for f, share in profile.get("self_by_file", [])]
    lines += ["",
             "Self time (the function on top of the stack):", "", "| share | function (file) |", "|---:|---|"]
    lines += [f"| {share:.1%} | `{f}` |" for f, share in profile["self"][:20]]
    lines += ["", "Inclusive time (the function anywhere on the stack; Python functions under the event loop):", "",
              "| share | function (file) |", "|---:|---|"]
    under_loop = [(f, share) for f, share in profile["inclusive"] if share < 0.98 and ".py)" in f]
    lines += [f"| {share:.1%} | `{f}` |" for f, share in under_loop[:30]]
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------- results


def median_of(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if key in s]
    return statistics.median(values) if values else None


def summarise(bench: Bench) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, per in bench.samples.items():
        out[name] = {}
        for scenario, samples in per.items():
            keys = {k for s in samples for k in s}
            out[name][scenario] = {k: m for k in sorted(keys) if (m := median_of(samples, k)) is not None}
            out[name][scenario]["runs"] = len(samples)
    return out


def _metric(summary: dict[str, dict[str, dict[str, float]]], name: str, scenario: str, key: str) -> float | None:
    return summary.get(name, {}).get(scenario, {}).get(key)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(summary: dict[str, dict[str, dict[str, float]]], memory: dict[str, dict[str, float]],
            sip: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    def m(name: str, scenario: str, key: str) -> float | None:
        return _metric(summary, name, scenario, key)

    a_ka, s_ka = m("authproxy", "keepalive", "rps"), m("squid", "keepalive", "rps")
    rows: list[tuple[str, float | None, float, str]] = [
        ("keep-alive req/s ≥ Squid (×Squid)", _ratio(a_ka, s_ka), 1.0, ">="),
        ("keep-alive stretch: ≥ 1.3× Squid", _ratio(a_ka, s_ka), 1.3, ">="),
        ("Connection: close req/s ≥ Squid (×Squid)",
         _ratio(m("authproxy", "close", "rps"), m("squid", "close", "rps")), 1.0, ">="),
        ("keep-alive p99 ≤ Squid's (×Squid)",
         _ratio(m("authproxy", "keepalive", "p99_ms"), m("squid", "keepalive", "p99_ms")), 1.0, "<="),
        ("Connection: close p99 ≤ Squid's (×Squid)",
         _ratio(m("authproxy", "close", "p99_ms"), m("squid", "close", "p99_ms")), 1.0, "<="),
        ("CONNECT ≥ 1.2× Squid (×Squid)",
         _ratio(m("authproxy", "connect", "mbps"), m("squid", "connect", "mbps")), 1.2, ">="),
        ("CONNECT ≥ 60% of direct (×direct)",
         _ratio(m("authproxy", "connect", "mbps"), m(DIRECT, "connect", "mbps")), 0.6, ">="),
        ("Digest ≥ 0.9× own Basic (×Basic)", _ratio(m("authproxy", "digest", "rps"), a_ka), 0.9, ">="),
        ("idle RSS ≤ 30 MiB (MiB)", memory.get("authproxy", {}).get("idle"), 30.0, "<="),
        ("10k idle connections < 200 MiB (MiB)", memory.get("authproxy", {}).get("idle_10000"), 200.0, "<"),
    ]
    if sip is not None:
        rows.append(("SIP OPTIONS/s ≥ 0.5× kamailio as shipped (×kamailio)", sip["ratios"].get("authproxy/kamailio"),
                     0.5, ">="))
    if BASELINE in summary:
        # The same code at an earlier revision (--baseline): what this tree's changes cost or bought.
        def base(scenario: str, key: str) -> float | None:
            return _ratio(m("authproxy", scenario, key), m(BASELINE, scenario, key))
        rows += [
            ("keep-alive ≥ 0.97× baseline (×baseline)", base("keepalive", "rps"), 0.97, ">="),
            ("Digest ≥ 0.95× baseline (×baseline)", base("digest", "rps"), 0.95, ">="),
            ("Connection: close ≥ 0.95× baseline (×baseline)", base("close", "rps"), 0.95, ">="),
            ("CONNECT ≥ 0.95× baseline (×baseline)", base("connect", "mbps"), 0.95, ">="),
        ]
    out = []
    for label, value, goal, op in rows:
        met = None
        if value is not None:
            met = value >= goal if op == ">=" else value <= goal if op == "<=" else value < goal
        out.append({"target": label, "value": value, "goal": goal, "op": op, "met": met})
    return out


def _n(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def render_markdown(data: dict[str, Any]) -> str:
    summary = data["summary"]
    memory = data["memory"]
    peers = data["peers"]
    meta = data["meta"]
    names = [DIRECT, *[n for n in PEERS if n in peers]]
    if not peers:  # the SIP row alone (--scenarios sip)
        lines = [f"Run of {meta['date']} on {meta['cpus']} CPUs ({meta['pinning']}); {meta['repeats']} repeat(s), "
                 "medians; the SIP row alone.", *sip_markdown(data["sip"], meta["duration"]), ""]
        met = {None: "—", True: "met", False: "**not met**"}
        lines += [f"- {t['target']}: {_n(t['value'], 2)} ({met[t['met']]})" for t in data["targets"]
                  if t["target"].startswith("SIP")]
        lines.append(f"- Versions: {'; '.join(f'{k}: {v}' for k, v in meta['versions'].items())}.")
        return "\n".join(lines) + "\n"

    def cell(name: str, scenario: str, key: str, digits: int, ratios: bool) -> str:
        v = _metric(summary, name, scenario, key)
        fails = data["failures"].get(name, {}).get(scenario)
        if v is None:
            return f"failed: {fails[0][:80]}" if fails else "—"
        text = _n(v, digits)
        if ratios:
            text += (f" ({_x(_ratio(v, _metric(summary, 'squid', scenario, key)))}, "
                     f"{_x(_ratio(v, _metric(summary, DIRECT, scenario, key)))})")
        errors = sum(int(s.get("errors", 0)) for s in data["samples"].get(name, {}).get(scenario, []))
        requests = sum(s.get("requests", 0) for s in data["samples"].get(name, {}).get(scenario, []))
        if requests and errors > 0.01 * requests:
            text += f" ⚠ {errors / requests:.0%} errors"
        if fails:
            text += f" ⚠ {len(fails)} run(s) failed"
        return text

    def lat(name: str, scenario: str) -> str:
        p50, p99 = _metric(summary, name, scenario, "p50_ms"), _metric(summary, name, scenario, "p99_ms")
        return "—" if p50 is None or p99 is None else f"{p50:.2f} / {p99:.2f}"

    def label(name: str) -> str:
        if name == DIRECT:
            return "nginx direct, on the proxy's CPU (ceiling)"
        return str(peers[name]["label"])

    lines = [
        f"Run of {meta['date']} on {meta['cpus']} CPUs ({meta['pinning']}); {meta['repeats']} repeat(s), "
        f"medians; wrk {meta['connections']} connections, {meta['duration']:g} s per run; CONNECT: 100 MiB "
        f"downloads one after another in one tunnel for {meta['duration'] / 2:g} s per run. "
        "Ratios in brackets: (×Squid, ×direct) in the same run.",
        "",
        "| proxy | auth checked | keep-alive req/s | p50 / p99 ms | Digest req/s (×own Basic) | "
        "Connection: close req/s | p50 / p99 ms | CONNECT MB/s | CPU % keep-alive / close / CONNECT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        status = peers[name]["status"] if name != DIRECT else "ok"
        if status != "ok":
            lines.append(f"| {label(name)} | **{status[:160]}** | | | | | | | |")
            continue
        digest = "n/a (no Digest)"
        if name == DIRECT:
            digest = "—"
        elif peers[name]["digest"]:
            dv = _metric(summary, name, "digest", "rps")
            alg = data["digest_algorithm"].get(name, "")
            digest = cell(name, "digest", "rps", 0, False)
            if dv is not None:
                digest = f"{digest} ({_x(_ratio(dv, _metric(summary, name, 'keepalive', 'rps')))}) {alg}"
        lines.append(
            f"| {label(name)} | {AUTH_SHORT.get(name, '')} | {cell(name, 'keepalive', 'rps', 0, True)} | "
            f"{lat(name, 'keepalive')} | {digest} | {cell(name, 'close', 'rps', 0, True)} | {lat(name, 'close')} | "
            f"{cell(name, 'connect', 'mbps', 0, True)} | "
            + " / ".join(_n(_metric(summary, name, sc, "cpu_pct")) for sc in ("keepalive", "close", "connect"))
            + " |")
    if data.get("sip") is not None:
        lines += sip_markdown(data["sip"], meta["duration"])
    counts = meta["idle_counts"]
    lines += ["", "| proxy | idle RSS MiB | " + " | ".join(f"{c:,} idle connections MiB (held)" for c in counts)
              + " | RSS after the load MiB |", "|---|---|" + "---|" * len(counts) + "---|"]
    for name in names:
        if name != DIRECT and peers[name]["status"] != "ok":
            continue
        mem = memory.get(name, {})
        cells = []
        for c in counts:
            held = mem.get(f"idle_{c}_held")
            held_text = "" if held is None else f" ({int(held):,})" if held < c else ""
            cells.append(_n(mem.get(f"idle_{c}"), 1) + held_text)
        lines.append(f"| {label(name)} | {_n(mem.get('idle'), 1)} | " + " | ".join(cells)
                     + f" | {_n(mem.get('after_load'), 1)} |")
    lines += ["", "Targets for authproxy (issue 4), from this run:", "", "| target | measured | met |", "|---|---|---|"]
    for t in data["targets"]:
        met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_n(t['value'], 2)} | {met} |")
    lines += ["", "Notes:", ""]
    lines += [f"- {label(n)}: authenticates {peers[n]['auth_note']}." for n in names if n != DIRECT]
    lines += [
        "- Memory is the resident set of the proxy's whole process group (Squid's auth helpers, proxy.py's "
        "acceptor and worker processes included); \"held\" is shown when the proxy closed some idle connections "
        "before the reading.",
        "- CONNECT: the client (this harness, on the load CPU) splices each body into /dev/null, so it costs "
        "almost nothing; the tunnel goes to the origin's plain-HTTP port: the proxies relay the bytes "
        "opaquely, except mitmproxy, "
        "which sees HTTP inside the tunnel and proxies it as HTTP. MB = 10^6 bytes.",
        "- CPU % is the proxy's (or the direct nginx's) CPU time over the run's wall time, all its processes: "
        "well under 100 means the load side on the other CPU set the pace.",
        noise_note(data),
        spread_note(data),
        "- Digest: authproxy with SHA-256, Squid with MD5 (the only algorithm it offers); qop=auth, one nonce "
        "per run taken from a 407, requests prepared in advance with nc = 1, 2, 3, ... Squid runs with "
        "`check_nonce_count off`: with it on, Squid 5.7 drops the nonce as stale as soon as requests on parallel "
        "connections arrive out of nc order.",
        f"- Versions: {'; '.join(f'{k}: {v}' for k, v in meta['versions'].items())}.",
    ]
    return "\n".join(lines) + "\n"


def noise_note(data: dict[str, Any]) -> str:
    """How much else ran on the proxy's CPU: the machine is shared, and this is what the ratios absorb."""
    others = [max(0.0, s["cpu0_busy_pct"] - s["cpu_pct"]) for per in data["samples"].values()
              for samples in per.values() for s in samples if "cpu0_busy_pct" in s and "cpu_pct" in s]
    if not others:
        return "- No CPU readings (one CPU: nothing pinned)."
    return (f"- Other work on the proxy's CPU during the runs (the machine is shared): median "
            f"{statistics.median(others):.0f}%, max {max(others):.0f}% of the CPU; per-run readings in results.json.")


def spread_note(data: dict[str, Any]) -> str:
    """The lowest and highest run behind each keep-alive median: how far one run can be from another here."""
    parts = []
    for name in [DIRECT, *PEERS]:
        values = [s["rps"] for s in data["samples"].get(name, {}).get("keepalive", []) if "rps" in s]
        if len(values) > 1:
            parts.append(f"{name} {min(values):,.0f}–{max(values):,.0f}")
    if not parts:
        return "- One run per figure (no spread to show)."
    return ("- Lowest–highest keep-alive run behind each median (req/s): " + "; ".join(parts)
            + ". A run far below the others coincides with other work on the machine (see cpu*_busy_pct).")


def make_chart(out: Path) -> str:
    python = PEERS_BIN / "python"
    script = Path(__file__).resolve().parent / "chart.py"
    if not python.exists():
        return "not made: bench/.venv-peers is missing (matplotlib lives there)"
    try:
        run_bounded([str(python), str(script), str(out / "results.json"), str(out / "chart.png")], timeout=120)
    except BenchError as exc:
        return f"not made: {exc}"
    return "ok"


def versions(names: list[str], sip: bool = False) -> dict[str, str]:
    found = {"nginx": nginx_version(), "wrk": _first_line(["wrk", "-v"])} if names else {}
    if sip:
        found["kamailio"] = _first_line(["kamailio", "-v"])
        found["authproxy"] = _first_line([str(PEERS["authproxy"].binary), "--version"])
    for name in names:
        if shutil.which(PEERS[name].binary):
            found[name] = PEERS[name].version()
    return found


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).decode(errors="replace").strip().splitlines()
    return text[0] if text else "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Explicit handlers: a shell starts background jobs with SIGINT ignored, and Python keeps it that way.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    missing = [t for t in ("wrk", "nginx", "openssl", "taskset") if shutil.which(t) is None]
    if missing:
        print(f"bench: missing {', '.join(missing)} (run `make bench`, which installs them)", file=sys.stderr)
        return 2
    fds = raise_fd_limit()
    need = max(args.idle_counts, default=0) + 1024
    if fds < need:
        log(f"!!! open-files limit {fds} is below {need}: the idle-connection counts will fall short")
    cpus = cpu_count()
    proxy_cpu, load_cpu = (0, 1) if cpus >= 2 else (None, None)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # this process is the CONNECT client: it stays off the proxy's CPU
    pinning = "proxy on CPU 0; wrk, the CONNECT client and the origin on CPU 1" if cpus >= 2 else "one CPU: no pinning"
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="authproxy-bench-"))
    procs = ProcessSet(logs=out / "logs")
    started_at = time.monotonic()
    sip: dict[str, Any] | None = None
    try:
        setup = Setup(workdir=workdir, user=USER, password=PASSWORD, realm=REALM, origin_port=free_port(),
                      proxy_cpu=proxy_cpu, load_cpu=load_cpu, max_fds=fds)
        log(f"workdir {workdir}; {pinning}; open-files limit {fds}")
        if args.baseline:
            add_baseline(args.baseline, workdir)
            args.peer_names.append(BASELINE)
        if args.peer_names:
            write_origin_files(workdir)
            start_origin(setup, procs)
        bench = Bench(args, setup, procs)
        if args.peer_names:
            bench.start_all()
            bench.measure_memory()
            bench.run_matrix()
            bench.after_load()
        if SIP in args.scenarios:
            sip_row = SipRow(setup, procs, duration=args.duration, repeats=args.repeats, log=log)
            sip_row.run()
            sip = sip_row.data()
        if args.profile:
            bench.run_profile(out)
    finally:
        procs.stop_all()
        leftovers = [s.pid for s in procs.started if group_pids(s.pid)]
        if leftovers:
            log(f"!!! process groups still alive: {leftovers}")
        shutil.rmtree(workdir, ignore_errors=True)

    summary = summarise(bench)
    data: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(), "kernel": platform.release(), "cpus": cpus, "pinning": pinning,
            "repeats": args.repeats, "duration": args.duration, "connections": args.connections,
            "downloads": args.downloads, "scenarios": args.scenarios, "idle_counts": args.idle_counts,
            "quick": args.quick,
            "elapsed_s": round(time.monotonic() - started_at),
            "versions": versions(args.peer_names, SIP in args.scenarios),
        },
        "peers": {n: {"label": PEERS[n].label, "status": bench.status.get(n, "not run: not selected"),
                      "digest": PEERS[n].digest, "auth_note": PEERS[n].auth_note} for n in args.peer_names},
        "samples": bench.samples,
        "failures": bench.failures,
        "summary": summary,
        "memory": bench.memory,
        "digest_algorithm": bench.digest_algorithm,
        "sip": sip,
        "targets": targets(summary, bench.memory, sip),
        "profile": bench.profile,
    }
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    markdown = render_markdown(data)
    chart = make_chart(out)
    if chart == "ok":
        markdown += "\n![authproxy against its peers](chart.png)\n"
    else:
        log(f"!!! chart {chart}")
    (out / "results.md").write_text(markdown)
    print(markdown)
    log(f"wrote {out}/results.md, results.json{', chart.png' if chart == 'ok' else ''} "
        f"in {data['meta']['elapsed_s']} s")
    not_run = [n for n in args.peer_names if bench.status.get(n) != "ok"]
    if not_run:
        log(f"!!! NOT RUN: {', '.join(not_run)} (see the table)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
