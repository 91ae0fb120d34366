"""The SIP row's processes: kamailio answering 200 as the next hop, kamailio authenticating (as shipped, and
with nonce_count on), and ``authproxy sip serve``; all on 127.0.0.1 over UDP, each config in the run's folder.

Both proxies do the same work per request: check the MD5 Digest answer in ``Proxy-Authorization`` (qop=auth)
against the one user, remove it (kamailio's ``consume_credentials``), forward the request to the same next hop
and relay its 200 back. kamailio "as shipped" is its auth module with its defaults (a nonce is accepted again
and again for its whole life, with any nc: no replay check); "nonce_count" turns on the module's nc check,
which needs a transaction (``t_newtran``, tm) and so forwards statefully (``t_relay``).
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import LOOPBACK, BenchError, ProcessSet, Started, cpu_jiffies, group_cpu_seconds, pinned
from peers import PROJECT_BIN, Setup
from sipload import SipLoadError, run_load, status_of

KAMAILIO_VARIANTS = {
    "kamailio": "kamailio 5.6 (auth, as shipped: no nc check)",
    "kamailio-nc": "kamailio 5.6 (auth with nonce_count on)",
}
SIP_PEERS = ("authproxy", *KAMAILIO_VARIANTS)
SIP_TRANSACTIONS = 100_000

_UAS_CFG = """#!KAMAILIO
debug=-1
log_stderror=yes
children=1
listen=udp:{host}:{port}
mpath="{modules}"
loadmodule "sl.so"
request_route {{
    if (method == "ACK") {{ exit; }}
    sl_send_reply("200", "OK");
}}
"""

_AUTH_CFG = """#!KAMAILIO
debug=-1
log_stderror=yes
children=1
listen=udp:{host}:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "auth.so"
modparam("auth", "qop", "auth")
modparam("auth", "secret", "{secret}")
{nonce_count}
request_route {{
    $du = "sip:{host}:{hop}";
    if (method == "ACK" || method == "CANCEL") {{ forward(); exit; }}
{newtran}
    if (!pv_proxy_authenticate("{realm}", "{password}", "0") || $au != "{user}") {{
        proxy_challenge("{realm}", "1");
        exit;
    }}
    consume_credentials();
{relay}
}}
"""


def _modules() -> Path:
    found = next(Path("/usr/lib").glob("*/kamailio/modules/auth.so"), None)
    if found is None:
        raise BenchError("kamailio's auth module is missing (apt-get install kamailio)")
    return found.parent


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _kamailio(procs: ProcessSet, name: str, d: Path, cfg: str, cpu: int | None) -> Started:
    exe = shutil.which("kamailio") or ("/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)
    if exe is None:
        raise BenchError("kamailio is not installed (scripts/install-system-tools)")
    d.mkdir(parents=True, exist_ok=True)
    (d / "kamailio.cfg").write_text(cfg)
    return procs.start(name, pinned(cpu, [exe, "-DD", "-E", "-f", str(d / "kamailio.cfg"), "-Y", str(d),
                                          "-P", str(d / "kamailio.pid"), "-m", "256", "-M", "256"]))


def start_uas(setup: Setup, procs: ProcessSet) -> tuple[Started, int]:
    """kamailio answering 200 to every request (the next hop of both proxies), on the load CPU."""
    port = free_udp_port()
    cfg = _UAS_CFG.format(host=LOOPBACK, port=port, modules=_modules())
    started = _kamailio(procs, "sip-uas", setup.workdir / "sip-uas", cfg, setup.load_cpu)
    _wait_answering(started, port, 200)
    return started, port


def start_sip_peer(name: str, setup: Setup, procs: ProcessSet, hop: int) -> tuple[Started, int]:
    """``name`` (one of SIP_PEERS) on a free UDP port of the proxy CPU, forwarding to ``hop``; ready when an
    OPTIONS without credentials gets its 407."""
    port = free_udp_port()
    if name == "authproxy":
        d = setup.workdir / "sip-authproxy"
        d.mkdir(parents=True, exist_ok=True)
        users = d / "users"
        command = [str(PROJECT_BIN / "authproxy")]
        subprocess.run([*command, "users", "add", setup.user, "--users", str(users), "--realm", setup.realm,
                        "--password-stdin"], input=f"{setup.password}\n".encode(), capture_output=True,
                       check=True, timeout=60)
        argv = [*command, "sip", "serve", "--listen", f"udp:{LOOPBACK}:{port}", "--next-hop",
                f"sip:{LOOPBACK}:{hop};transport=udp", "--users", str(users), "--realm", setup.realm,
                "--digest-algorithms", "MD5", "--access-log", "", "--config", str(d / "sip.toml")]
        # One client address sends everything: the per-source share of the transaction table (2,000 of 20,000
        # by default, each kept 32 s) would answer 503 past 62 requests/s. The whole table still bounds memory.
        # And its answers to one address are not bounded (udp_answer_rate): every call's 407 goes to the load.
        (d / "sip.toml").write_text(f"[sip]\nmax_transactions = {SIP_TRANSACTIONS}\n"
                                    f"max_transactions_per_source = {SIP_TRANSACTIONS + 1}\nudp_answer_rate = 0\n")
        started = procs.start("sip-authproxy", pinned(setup.proxy_cpu, argv))
    elif name in KAMAILIO_VARIANTS:
        nc = name == "kamailio-nc"
        cfg = _AUTH_CFG.format(
            host=LOOPBACK, port=port, hop=hop, modules=_modules(), realm=setup.realm, user=setup.user,
            password=setup.password, secret=setup.password + "k",
            nonce_count='modparam("auth", "nonce_count", 1)' if nc else "",
            newtran="    if (!t_newtran()) { sl_reply_error(); exit; }" if nc else "",
            relay="    t_relay();" if nc else "    forward();")
        started = _kamailio(procs, f"sip-{name}", setup.workdir / f"sip-{name}", cfg, setup.proxy_cpu)
    else:
        raise ValueError(name)
    _wait_answering(started, port, 407)
    return started, port


def _wait_answering(started: Started, port: int, status: int, timeout: float = 30.0) -> None:
    probe = (f"OPTIONS sip:probe@{LOOPBACK}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {LOOPBACK}:9;rport;branch="
             "z9hG4bKprobe{n}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@bench>;tag=p\r\nTo: <sip:probe@bench>\r\n"
             "Call-ID: probe{n}@bench\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n")
    deadline = time.monotonic() + timeout
    got = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.connect((LOOPBACK, port))
        s.settimeout(0.3)
        n = 0
        while time.monotonic() < deadline:
            if started.proc.poll() is not None:
                raise BenchError(f"{started.name} exited with status {started.proc.returncode}: "
                                 f"{started.log_tail()}")
            n += 1
            try:
                s.send(probe.format(n=n).encode())
                got = status_of(s.recv(65535))
            except OSError:  # a timeout, or refused while it starts
                continue
            if got == status:
                return
    raise BenchError(f"{started.name} on udp port {port}: no {status} after {timeout:.0f} s (last {got}): "
                     f"{started.log_tail()}")


# ---------------------------------------------------------------------------------------------- the row

class SipRow:
    """The SIP scenario of one run: the next hop and the three proxies started, the load run against each in
    turn (interleaved, ``repeats`` times), samples with the proxy's CPU share, then everything stopped."""

    def __init__(self, setup: Setup, procs: ProcessSet, *, duration: float, repeats: int,
                 log: Callable[[str], None]) -> None:
        self.setup, self.procs, self.duration, self.repeats, self.log = setup, procs, duration, repeats, log
        self.status: dict[str, str] = {}
        self.running: dict[str, tuple[Started, int]] = {}
        self.samples: dict[str, list[dict[str, Any]]] = {name: [] for name in SIP_PEERS}
        # The same with a 407 per call (sipload's fresh mode): the request unsigned, its 407, signed, its 200.
        self.fresh: dict[str, list[dict[str, Any]]] = {name: [] for name in SIP_PEERS}
        self.failures: dict[str, list[str]] = {name: [] for name in SIP_PEERS}

    def run(self) -> None:
        try:
            self._start()
            for repeat in range(self.repeats):
                names = [n for n in SIP_PEERS if n in self.running]
                k = repeat % max(1, len(names))
                for fresh in (False, True):
                    for name in names[k:] + names[:k]:
                        self._sample(name, repeat, fresh)
        finally:
            for started, _ in self.running.values():
                self.procs.stop(started)
            self.running.clear()
            for started in [s for s in self.procs.started if s.name == "sip-uas"]:
                self.procs.stop(started)

    def _start(self) -> None:
        try:
            _, hop = start_uas(self.setup, self.procs)
        except BenchError as exc:
            for name in SIP_PEERS:
                self.status[name] = f"not run: the next hop (kamailio answering 200) did not start: {exc}"
            self.log(f"!!! SIP: {exc}")
            return
        for name in SIP_PEERS:
            try:
                started, port = start_sip_peer(name, self.setup, self.procs, hop)
            except Exception as exc:  # whatever went wrong, the other peers still run
                self.status[name] = f"not run: {exc}" if isinstance(exc, BenchError) else \
                    f"not run: {type(exc).__name__}: {exc}"
                self.log(f"!!! SIP {name}: NOT RUN: {exc}")
                for s in [s for s in self.procs.started if s.name.startswith(f"sip-{name}")]:
                    self.procs.stop(s)
                continue
            self.status[name] = "ok"
            self.running[name] = (started, port)
            self.log(f"SIP {name}: pid {started.pid}, udp port {port}")

    def _sample(self, name: str, repeat: int, fresh: bool = False) -> None:
        started, port = self.running[name]
        if started.proc.poll() is not None:
            self.status[name] = f"not run: exited with status {started.proc.returncode}: {started.log_tail()}"
            return
        cpus = [c for c in (self.setup.proxy_cpu, self.setup.load_cpu) if c is not None]
        before = {c: cpu_jiffies(c) for c in cpus}
        cpu0, wall0 = group_cpu_seconds(started.pid), time.monotonic()
        try:
            result = run_load(port, user=self.setup.user, password=self.setup.password, duration=self.duration,
                              fresh=fresh)
        except (SipLoadError, OSError) as exc:
            self.failures[name].append(str(exc))
            self.log(f"!!! SIP {name} (repeat {repeat + 1}): {exc}")
            return
        sample: dict[str, Any] = result.as_dict()
        sample["cpu_pct"] = 100 * (group_cpu_seconds(started.pid) - cpu0) / (time.monotonic() - wall0)
        for c in cpus:
            busy0, total0 = before[c]
            busy1, total1 = cpu_jiffies(c)
            sample[f"cpu{c}_busy_pct"] = 100 * (busy1 - busy0) / max(1, total1 - total0)
        (self.fresh if fresh else self.samples)[name].append(sample)
        self.log(f"sip{' 407' if fresh else '    '}   {name:11} repeat {repeat + 1}/{self.repeats}: "
                 + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in sample.items()))
        time.sleep(0.5)

    def data(self) -> dict[str, Any]:
        """What results.json keeps: status, samples, failures and medians per proxy, and the ratios; the same under
        ``fresh`` for the 407-per-call load."""
        return {"labels": {"authproxy": "authproxy sip serve", **KAMAILIO_VARIANTS},
                "status": {n: self.status.get(n, "not run: not started") for n in SIP_PEERS},
                "failures": self.failures, **_summarised(self.samples),
                "fresh": _summarised(self.fresh)}


def _summarised(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary = {}
    for name, taken in samples.items():
        if taken:
            summary[name] = {key: statistics.median(s[key] for s in taken)
                             for key in ("rps", "cpu_pct", "challenged", "other", "refills")}
            summary[name]["runs"] = len(taken)
    a = summary.get("authproxy", {}).get("rps")
    ratios = {f"authproxy/{k}": (a / summary[k]["rps"] if a is not None and summary.get(k, {}).get("rps")
                                 else None) for k in KAMAILIO_VARIANTS}
    return {"samples": samples, "summary": summary, "ratios": ratios}


def sip_markdown(sip: dict[str, Any], duration: float) -> list[str]:
    """The SIP tables of results.md: one nonce for the whole run (nc 1, 2, 3...), then a 407 per call."""
    lines = ["", f"SIP: authenticated OPTIONS over UDP, one proxy on one CPU, the same load on the other CPU "
             f"(bench/sipload.py: one socket, 32 in flight, MD5 Digest with qop=auth on one nonce, nc 1, 2, 3..., "
             f"a new transaction each), {duration:g} s per run, both proxies forwarding to the same next hop (a "
             "kamailio answering 200, on the load CPU) and relaying its 200. Ratio: authproxy ÷ that row.", "",
             *_sip_table(sip, "OPTIONS/s", "407s (stale nonce)")]
    if sip.get("fresh", {}).get("summary"):
        lines += ["", "A 407 per call (`sipload.py --fresh`, as a user agent that keeps no nonce goes): each call "
                  "is the OPTIONS without credentials, the proxy's 407, the same OPTIONS signed with that 407's "
                  "nonce (nc 1), the 200. Calls/s counts the 200s.", "",
                  *_sip_table({**sip, **sip["fresh"]}, "calls/s", "407s to a signed request")]
    lines += ["", "CPU % under 100 means the proxy was not what set the pace (the load CPU, shared with the next hop, "
              "was); 407s and other statuses are counts per run (medians): kamailio with nonce_count answers some "
              "requests 500 \"No error (2/SL)\" (its t_newtran failing), not counted as served."]
    return lines


def _sip_table(sip: dict[str, Any], rate: str, challenged: str) -> list[str]:
    lines = [f"| proxy | replays refused | {rate} | authproxy ÷ this | {challenged} | other statuses | CPU % |",
             "|---|---|---|---|---|---|---|"]
    replays = {"authproxy": "(nonce, nc) once, qop required, uri = Request-URI",
               "kamailio": "no (a nonce is taken again with any nc for 300 s)",
               "kamailio-nc": "(nonce, nc) once; nc above 255 gets a stale 407"}
    for name in SIP_PEERS:
        label, status = sip["labels"][name], sip["status"][name]
        if status != "ok":
            lines.append(f"| {label} | {replays[name]} | **{status[:160]}** | | | | |")
            continue
        s = sip["summary"].get(name)
        if s is None:
            fails = sip["failures"].get(name) or ["no sample"]
            lines.append(f"| {label} | {replays[name]} | failed: {fails[0][:80]} | | | | |")
            continue
        ratio = sip["ratios"].get(f"authproxy/{name}")
        lines.append(f"| {label} | {replays[name]} | {s['rps']:,.0f} | "
                     f"{'—' if ratio is None else f'{ratio:.2f}×'} | {s['challenged']:,.0f} | {s['other']:,.0f} | "
                     f"{s['cpu_pct']:.0f} |")
    return lines
