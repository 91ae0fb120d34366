"""The nginx origin and the proxies under test: their configs, command lines and how each one authenticates.

Every proxy gets the same user and password, listens on 127.0.0.1 only, and checks Basic credentials (Squid
and authproxy also Digest). Each config leaves out anything that would refuse the benchmark's traffic (Squid's
shipped CONNECT-port and to_localhost rules) and anything that would write outside the run's own folder.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import LOOPBACK, BenchError, ProcessSet, Started, free_port, pinned, port_open, wait_until

ROOT = Path(__file__).resolve().parent.parent
PROJECT_BIN = ROOT / ".venv" / "bin"
PEERS_BIN = ROOT / "bench" / ".venv-peers" / "bin"

SMALL_SIZE = 100
BIG_SIZE = 100 * 1024 * 1024


@dataclass(frozen=True)
class Setup:
    """What every peer shares in one run."""

    workdir: Path
    user: str
    password: str
    realm: str
    origin_port: int
    proxy_cpu: int | None
    load_cpu: int | None
    max_fds: int


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    digest: bool  # offers Digest, so the Digest scenario runs against it
    auth_note: str
    binary: str
    start: Callable[[Setup, ProcessSet, int], Started]
    version: Callable[[], str]


def _version_of(argv: list[str], line: int = 0) -> Callable[[], str]:
    def get() -> str:
        try:
            out = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        lines = (out.stdout + out.stderr).decode(errors="replace").strip().splitlines()
        return lines[line].strip() if len(lines) > line else "?"
    return get


def _chmod_tree(path: Path, owner: str | None = None, group: str | None = None) -> None:
    """Readable by the unprivileged users Squid, tinyproxy and nginx's workers switch to."""
    path.chmod(0o755)
    if owner is not None and os.geteuid() == 0:
        shutil.chown(path, owner, group or owner)


# ---------------------------------------------------------------------------------------------- the origin

def write_origin_files(workdir: Path) -> Path:
    www = workdir / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "small").write_bytes(b"x" * (SMALL_SIZE - 1) + b"\n")
    block = os.urandom(1024 * 1024)
    with (www / "big").open("wb") as f:
        for _ in range(BIG_SIZE // len(block)):
            f.write(block)
    for p in (workdir, www):
        _chmod_tree(p)
    for p in www.iterdir():
        p.chmod(0o644)
    return www


def start_origin(setup: Setup, procs: ProcessSet, *, name: str = "nginx", port: int | None = None,
                 cpu: int | None = None) -> Started:
    """nginx serving www/ on ``port`` (default: the origin port) pinned to ``cpu`` (default: the load CPU)."""
    port = port or setup.origin_port
    cpu = setup.load_cpu if cpu is None else cpu
    d = setup.workdir / name
    (d / "temp").mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {setup.max_fds};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {max(1024, setup.max_fds - 64)}; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {d}/temp/body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        root {setup.workdir}/www;
    }}
}}
""")
    started = procs.start(name, pinned(cpu, ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")]))
    wait_until(lambda: port_open(port), 15, f"{name} on port {port}", alive=started)
    return started


# ---------------------------------------------------------------------------------------------- the peers

def _start_squid(setup: Setup, procs: ProcessSet, port: int) -> Started:
    d = setup.workdir / "squid"
    d.mkdir(parents=True, exist_ok=True)
    _chmod_tree(d, "proxy")
    apr1 = subprocess.run(["openssl", "passwd", "-apr1", "-stdin"], input=f"{setup.password}\n".encode(),
                          capture_output=True, check=True, timeout=30).stdout.decode().strip()
    (d / "htpasswd").write_text(f"{setup.user}:{apr1}\n")
    (d / "digest").write_text(f"{setup.user}:{setup.password}\n")
    conf = d / "squid.conf"
    conf.write_text(f"""\
http_port {LOOPBACK}:{port}
visible_hostname bench
workers 1
max_filedescriptors {setup.max_fds}
pid_filename {d}/squid.pid
cache_log {d}/cache.log
coredump_dir {d}
netdb_filename none
access_log none
cache deny all
cache_mem 0 MB
pinger_enable off
shutdown_lifetime 0 seconds
auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/htpasswd
auth_param basic realm {setup.realm}
auth_param digest program /usr/lib/squid/digest_file_auth {d}/digest
auth_param digest realm {setup.realm}
auth_param digest nonce_max_count 100000000
auth_param digest nonce_max_duration 30 minutes
# With the count check on, Squid 5.7 drops a nonce as stale once requests on parallel connections arrive out of
# nc order (nc 5, 4, 6: the 6 is refused), which any client with more than one connection does.
auth_param digest check_nonce_count off
acl authed proxy_auth REQUIRED
http_access deny !authed
http_access allow authed
http_access deny all
""")
    for f in d.iterdir():
        f.chmod(0o644)
    return procs.start("squid", pinned(setup.proxy_cpu, ["squid", "-N", "-f", str(conf)]))


def _start_tinyproxy(setup: Setup, procs: ProcessSet, port: int) -> Started:
    d = setup.workdir / "tinyproxy"
    d.mkdir(parents=True, exist_ok=True)
    _chmod_tree(d, "nobody", "nogroup")
    conf = d / "tinyproxy.conf"
    conf.write_text(f"""\
User nobody
Group nogroup
Port {port}
Listen {LOOPBACK}
Timeout 600
MaxClients {setup.max_fds}
LogLevel Critical
PidFile "{d}/tinyproxy.pid"
Allow 127.0.0.1
BasicAuth {setup.user} {setup.password}
""")
    conf.chmod(0o644)
    return procs.start("tinyproxy", pinned(setup.proxy_cpu, ["tinyproxy", "-d", "-c", str(conf)]))


def _start_proxy_py(setup: Setup, procs: ProcessSet, port: int) -> Started:
    argv = [str(PEERS_BIN / "proxy"), "--hostname", LOOPBACK, "--port", str(port),
            "--basic-auth", f"{setup.user}:{setup.password}", "--num-workers", "1", "--num-acceptors", "1",
            "--log-level", "WARNING"]
    env = {**os.environ, "HOME": str(setup.workdir / "proxy.py-home")}
    return procs.start("proxy.py", pinned(setup.proxy_cpu, argv), env=env)


def _start_mitmproxy(setup: Setup, procs: ProcessSet, port: int) -> Started:
    confdir = setup.workdir / "mitmproxy"
    confdir.mkdir(parents=True, exist_ok=True)
    argv = [str(PEERS_BIN / "mitmdump"), "--listen-host", LOOPBACK, "--listen-port", str(port),
            "--proxyauth", f"{setup.user}:{setup.password}", "-q", "--set", f"confdir={confdir}"]
    return procs.start("mitmproxy", pinned(setup.proxy_cpu, argv))


def _start_authproxy(setup: Setup, procs: ProcessSet, port: int, source: Path | None = None,
                     name: str = "authproxy") -> Started:
    """authproxy as installed in the project's venv, or (``source``) the ``src`` folder of another revision run
    by the same interpreter, so two revisions are measured side by side in one run (``--baseline``)."""
    command, env = _authproxy_command(source)
    users = setup.workdir / f"{name}.users"
    if not users.exists():
        subprocess.run([*command, "users", "add", setup.user, "--users", str(users),
                        "--realm", setup.realm, "--password-stdin"],
                       input=f"{setup.password}\n".encode(), capture_output=True, check=True, timeout=60, env=env)
    argv = [*command, "serve", "--listen", f"{LOOPBACK}:{port}", "--users", str(users),
            "--realm", setup.realm, "--connect-ports", "any", "--access-log", ""]
    # The benchmark's origin is on loopback and every connection comes from 127.0.0.1: let authproxy reach
    # private addresses and lift its per-client connection cap (the other proxies have neither rule). Only the
    # options this authproxy knows, so the harness works across versions.
    wanted = {"allow_private": "true", "max_connections_per_client": "0"}
    known = _authproxy_options(source)
    lines = [f"{key} = {value}" for key, value in wanted.items() if key in known]
    if lines:
        config = setup.workdir / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        argv += ["--config", str(config)]
    return procs.start(name, pinned(setup.proxy_cpu, argv), env=env)


def _authproxy_command(source: Path | None) -> tuple[list[str], dict[str, str] | None]:
    if source is None:
        return [str(PROJECT_BIN / "authproxy")], None
    return [str(PROJECT_BIN / "python"), "-m", "authproxy"], {**os.environ, "PYTHONPATH": str(source)}


def _authproxy_options(source: Path | None = None) -> set[str]:
    """The option names (TOML keys) of the installed authproxy (or of the one in ``source``)."""
    probe = "import dataclasses, authproxy.config as c; print(' '.join(f.name for f in dataclasses.fields(c.Config)))"
    env = _authproxy_command(source)[1]
    out = subprocess.run([str(PROJECT_BIN / "python"), "-c", probe], capture_output=True, timeout=60, check=False,
                         env=env)
    return set(out.stdout.decode().split())


BASELINE = "authproxy-base"


def add_baseline(revision: str, workdir: Path) -> Peer:
    """Register ``authproxy-base``: the project's ``src`` at git ``revision``, extracted under ``workdir``.

    Same interpreter, same dependencies, same flags: the only difference between the two rows is the code, which
    is how a change's cost is read (issue 8 and 9: "at least 0.95x / within 3% of today's authproxy").
    """
    dest = workdir / "baseline"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", revision], capture_output=True,
                                check=True, timeout=60).stdout.decode().strip()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], capture_output=True,
                                 check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"--baseline {revision}: cannot extract that revision's src: {exc}") from exc
    source = dest / "src"

    def start(setup: Setup, procs: ProcessSet, port: int) -> Started:
        return _start_authproxy(setup, procs, port, source=source, name=BASELINE)

    peer = Peer(BASELINE, f"authproxy at {commit} (baseline)", True,
                "every request (the same code at an earlier revision)", str(PROJECT_BIN / "python"), start,
                lambda: f"git {commit}")
    PEERS[BASELINE] = peer
    return peer


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("squid", "Squid", True, "every request (credentials cached by the helper, checked per request)",
             "squid", _start_squid, _version_of(["squid", "-v"])),
        Peer("tinyproxy", "tinyproxy", False,
             "every request, but it closes the connection after every response (no keep-alive)",
             "tinyproxy", _start_tinyproxy, _version_of(["tinyproxy", "-v"])),
        Peer("proxy.py", "proxy.py, 1 worker", False,
             "first request of a connection only; the rest of the connection is relayed unchecked",
             str(PEERS_BIN / "proxy"), _start_proxy_py, _version_of([str(PEERS_BIN / "proxy"), "--version"])),
        Peer("mitmproxy", "mitmproxy (mitmdump)", False, "first request of a connection only",
             str(PEERS_BIN / "mitmdump"), _start_mitmproxy,
             _version_of([str(PEERS_BIN / "mitmdump"), "--version"])),
        Peer("authproxy", "authproxy", True, "every request (Basic with a verified-credentials cache; Digest nc)",
             str(PROJECT_BIN / "authproxy"), _start_authproxy,
             _version_of([str(PROJECT_BIN / "authproxy"), "--version"])),
    )
}


def nginx_version() -> str:
    return _version_of(["nginx", "-v"])()


def probe(proxy_port: int | None, origin_port: int, headers: dict[str, str], path: str = "/small",
          timeout: float = 10.0) -> tuple[int, list[str], bytes]:
    """One GET through the proxy (or straight to the origin): status, Proxy-Authenticate values, body."""
    conn = http.client.HTTPConnection(LOOPBACK, proxy_port or origin_port, timeout=timeout)
    try:
        target = f"http://{LOOPBACK}:{origin_port}{path}" if proxy_port else path
        conn.request("GET", target, headers={"Host": f"{LOOPBACK}:{origin_port}", **headers})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.msg.get_all("Proxy-Authenticate") or [], body
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"request through port {proxy_port}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


def start_peer(peer: Peer, setup: Setup, procs: ProcessSet, basic: str) -> tuple[Started, int]:
    """Start ``peer`` on a free port and check that one authenticated GET comes back 200 with the body."""
    if shutil.which(peer.binary) is None:
        raise BenchError(f"{peer.binary} is not installed")
    port = free_port()
    started = peer.start(setup, procs, port)
    wait_until(lambda: port_open(port), 60, f"{peer.name} listening on {port}", interval=0.2, alive=started)

    status = 0
    body = b""

    def served() -> bool:
        nonlocal status, body
        try:
            status, _, body = probe(port, setup.origin_port, {"Proxy-Authorization": basic})
        except BenchError:
            return False
        return status == 200 and len(body) == SMALL_SIZE

    try:
        wait_until(served, 30, f"{peer.name} answering", interval=0.5, alive=started)
    except BenchError as exc:
        raise BenchError(f"{exc} (last status {status}): {started.log_tail()}") from exc
    return started, port
