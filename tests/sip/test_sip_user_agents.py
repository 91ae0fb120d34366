"""Real SIP user agents from Debian answering `authproxy sip serve`'s 407 (RFC 3261 section 22.2), headless, over
real sockets on 127.0.0.1, to the tests' own UAS (tests/sip/sip_uas.py, answering 200), each on its own SIP stack:

- baresip 1.0.0 (libre 1.1.0): REGISTER and OPTIONS. MD5 only, and only when MD5 is the ONLY challenge: libre
  refuses the whole 407 ("Register: Function not implemented", ENOSYS) if any challenge in it names another
  algorithm, so it needs ``--digest-algorithms MD5``.
- linphone 5.1 (liblinphone, belle-sip), as linphone-daemon: REGISTER and MESSAGE over UDP and TCP with SHA-256
  (``--digest-algorithms SHA-256`` alone), and it answers the first challenge it supports when several are offered.
  Its ``register`` command keeps only an MD5 HA1 of the password unless ``[sip] store_ha1_passwd=0``.
- SIPp 3.6.1: REGISTER, and INVITE/ACK/BYE (the ACK of a 407 ends at the proxy; ACK is never challenged). MD5
  only, first challenge only ("authentication must use MD5 or AKAv1-MD5"), and its digest uri is
  ``remote_ip:remote_port`` unless ``-auth_uri`` names the Request-URI (authproxy answers that mismatch 400).

Every UA runs in its own process group, killed in a ``finally``; every wait is bounded. The proof of each sign-in
is the proxy's access log (``auth=ok`` for alice) and the request reaching the UAS without the proxy's
credentials; a wrong password must end in 407s logged ``auth=bad-password`` and the UA's own failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sip_uas import Uas

from authproxy.sip.log import parse_sip_line
from authproxy.sip.message import SipRequest

from helpers import USERS, SipProxyProcess, make_users_file, start_sip_proxy

REALM = "sip-test"
PASSWORD = USERS["alice"]
SIPP_SCENARIOS = Path(__file__).parent / "sipp"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def need(command: str, package: str) -> str:
    """The path of a UA's binary; a missing one fails the test loudly (never a skip)."""
    exe = shutil.which(command)
    if exe is None:
        pytest.fail(f"{command} is missing: run scripts/install-system-tools (Debian package {package})")
    return exe


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Agent:
    """A user agent's process in a process group of its own, stdout and stderr read into lines by a thread;
    ``wait_for`` waits on a condition for a line (no sleeps), ``stop`` ends the whole group."""

    def __init__(self, cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, name: str = "") -> None:
        self.name = name or Path(cmd[0]).name
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.changed:
                self.lines.append(ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def output(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first output line matching ``pattern``; fails with the whole output if none comes in time or the
        process ends first."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    if (match := re.search(pattern, line)) is not None:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (not self.reader.is_alive() and self.proc.poll() is not None):
                    pytest.fail(f"no line matching {pattern!r} from {self.name}:\n" + "\n".join(self.lines))
                self.changed.wait(left)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not end in {timeout} s:\n{self.output}")
        self.reader.join(5)
        return code

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL if it has not ended in 5 s (a UA may first unregister)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.reader.join(5)


Logged = tuple[str | None, str, int | None, str | None, str]  # (method, action, status, user, outcome)


def logged(proxy: SipProxyProcess, until: Callable[[list[Logged]], bool]) -> list[Logged]:
    """The access log as (method, action, status, user, outcome) once ``until`` holds (or after 10 s)."""
    def parse(lines: list[str]) -> list[Logged]:
        parsed = [parse_sip_line(line) for line in lines]
        return [(p.method, p.action, p.status, p.user, p.outcome) for p in parsed]

    return parse(proxy.log_lines(lambda lines: until(parse(lines))))


def signed_in(method: str) -> Callable[[list[Logged]], bool]:
    return lambda lines: (method, "FORWARDED", None, "alice", "ok") in lines


def refused(lines: list[Logged]) -> bool:
    return any(outcome == "bad-password" for *_, outcome in lines)


@pytest.fixture(scope="module")
def uas() -> Iterator[Uas]:
    with Uas({}, roles=()) as server:  # no hop of its own: answers 200 to every request
        yield server


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_users_file(tmp_path_factory.mktemp("sip-ua") / "sip.users", REALM)


@pytest.fixture
def sip_proxy(tmp_path: Path, users: Path, uas: Uas) -> Iterator[Callable[[str], SipProxyProcess]]:
    """``start(algorithms)``: an `authproxy sip serve` on UDP and TCP offering those Digest algorithms, in that
    order, forwarding to the UAS; stopped at the end of the test."""
    started: list[SipProxyProcess] = []

    def start(algorithms: str) -> SipProxyProcess:
        proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", algorithms)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def reached(uas: Uas, since: int, method: str) -> list[str]:
    """The Proxy-Authorization lines of the ``method`` requests the UAS got since ``since``: the proxy removes its
    own, so each must be an empty list."""
    requests = [seen.request for seen in uas.seen[since:] if seen.request.method == method]
    assert requests, f"no {method} reached the UAS"
    return [line for request in requests for line in request.get_all("Proxy-Authorization")]


def routes_reaching(uas: Uas, since: int, method: str) -> list[str]:
    """The Route values of the ``method`` requests the UAS got since ``since``: a UA with an outbound proxy sends
    ``Route: <sip:PROXY;lr>``, which the proxy removes (RFC 3261 section 16.4), so each must be empty."""
    return [value for seen in uas.seen[since:] if seen.request.method == method
            for value in seen.request.values("Route")]


# --- baresip (libre) -------------------------------------------------------------------------------------


BARESIP_CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:0
module_path\t\t{modules}
module_app\t\taccount.so
module_app\t\tmenu.so
audio_player\t\taubridge,nil
audio_source\t\taubridge,nil
audio_alert\t\taubridge,nil
"""


def baresip(tmp: Path, port: int, password: str, *commands: str, transport: str = "udp") -> Agent:
    """baresip with a config directory of its own (``-f``): one account registering through the proxy (its
    ``outbound``), no audio device, ``-e`` commands run by the menu module at start."""
    exe = need("baresip", "baresip-core")
    modules = Path("/usr/lib/baresip/modules")
    if not (modules / "menu.so").exists():
        pytest.fail(f"baresip's modules are not in {modules}")
    home = tmp / "baresip"
    home.mkdir()
    (home / "config").write_text(BARESIP_CONFIG.format(modules=modules))
    (home / "accounts").write_text(f'<sip:alice@example.org>;auth_pass={password};'
                                   f'outbound="sip:127.0.0.1:{port};transport={transport}";regint=600\n')
    return Agent([exe, "-f", str(home), *(a for command in commands for a in ("-e", command))], cwd=tmp)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_registers_and_sends_options_with_md5(tmp_path: Path, sip_proxy: Callable[[str], SipProxyProcess],
                                                      uas: Uas, transport: str) -> None:
    proxy = sip_proxy("MD5")  # MD5 alone: see test_baresip_refuses_any_challenge_but_md5
    before = len(uas.seen)
    agent = baresip(tmp_path, proxy.ports[transport], PASSWORD, "/options sip:bob@example.org", transport=transport)
    try:
        agent.wait_for(rf"alice@example.org: \{{0/{transport.upper()}/v4\}} 200 OK .*\[1 binding\]")
        agent.wait_for(r"----- OPTIONS of sip:bob@example.org -----")
        agent.wait_for(r"^SIP/2.0 200 OK")
        lines = logged(proxy, lambda ls: signed_in("REGISTER")(ls) and signed_in("OPTIONS")(ls))
    finally:
        agent.stop()
    for method in ("REGISTER", "OPTIONS"):
        mine = [line[1:] for line in lines if line[0] == method]
        assert mine[:2] == [("ANSWERED", 407, None, "missing"), ("FORWARDED", None, "alice", "ok")], lines
        assert reached(uas, before, method) == []
        assert routes_reaching(uas, before, method) == []  # baresip's Route: <sip:proxy;transport=...;lr>


@pytest.mark.parametrize("algorithms", ["SHA-256", "MD5,SHA-256", "SHA-256,MD5"])
def test_baresip_refuses_any_challenge_but_md5(tmp_path: Path, sip_proxy: Callable[[str], SipProxyProcess],
                                               algorithms: str) -> None:
    """baresip 1.0.0 does not answer SHA-256, and a SHA-256 challenge next to an MD5 one makes it give up too
    (libre 1.1.0's sip_auth_authenticate stops at the first challenge it cannot answer, whatever the order)."""
    proxy = sip_proxy(algorithms)
    agent = baresip(tmp_path, proxy.ports["udp"], PASSWORD)
    try:
        agent.wait_for(r"reg: sip:alice@example.org: Register: Function not implemented")
        lines = logged(proxy, lambda ls: len(ls) >= 1)
    finally:
        agent.stop()
    assert lines == [("REGISTER", "ANSWERED", 407, None, "missing")]


def test_baresip_with_a_wrong_password_is_refused(tmp_path: Path, sip_proxy: Callable[[str], SipProxyProcess],
                                                  uas: Uas) -> None:
    proxy = sip_proxy("MD5")
    before = len(uas.seen)
    agent = baresip(tmp_path, proxy.ports["udp"], "not-" + PASSWORD)
    try:
        # Each 407 carries a fresh nonce, so libre tries again a bounded number of times, then gives up: at a
        # 407, or at the sign-in throttle's 503 once it has failed throttle_max_failures (10) times.
        agent.wait_for(r"reg: sip:alice@example.org: (407 Proxy Authentication Required|503 Service Unavailable)")
        lines = logged(proxy, refused)
    finally:
        agent.stop()
    assert lines[0] == ("REGISTER", "ANSWERED", 407, None, "missing")
    failed = [line for line in lines[1:] if line == ("REGISTER", "ANSWERED", 407, "alice", "bad-password")]
    throttled = [line for line in lines[1:] if line == ("REGISTER", "ANSWERED", 503, None, "throttled")]
    assert len(failed) + len(throttled) == len(lines) - 1 and failed, lines
    assert len(failed) == 10 if throttled else len(failed) <= 10, lines
    assert len(uas.seen) == before  # nothing got through


# --- linphone (liblinphone, belle-sip) -------------------------------------------------------------------


LINPHONE_RC = """\
[sip]
sip_port={udp}
sip_tcp_port={tcp}
sip_tls_port=0
default_proxy=0
store_ha1_passwd={store_ha1}

[sound]
echocancellation=0

{account}"""

LINPHONE_ACCOUNT = """\
[proxy_0]
reg_proxy=<sip:127.0.0.1:{port};transport={transport}>
reg_route=<sip:127.0.0.1:{port};transport={transport};lr>
reg_identity=sip:alice@example.org
reg_expires=600
reg_sendregister=1

[auth_info_0]
username=alice
passwd={password}
realm={realm}
"""


class LinphoneDaemon:
    """linphone-daemon with a linphonerc of its own (``--config``) and HOME in the test's directory, driven over
    its ``--pipe`` (a Unix socket in /tmp: reading stdin, the daemon does not run its SIP stack between
    commands). Each command's answer comes in one write ("Status: Ok" and a body)."""

    def __init__(self, tmp: Path, rc: str) -> None:
        exe = need("linphone-daemon", "linphone-cli")
        (tmp / ".local" / "share" / "linphone").mkdir(parents=True)
        (tmp / "linphonerc").write_text(rc)
        self.log = tmp / "linphone.log"
        self.pipe = f"authproxy-test-{os.getpid()}-{time.monotonic_ns()}"
        # stdbuf: its stdout is a pipe here, block-buffered, and the line saying the socket is ready must come now.
        self.agent = Agent(["stdbuf", "-oL", exe, "--config", str(tmp / "linphonerc"), "--log", str(self.log),
                            "--pipe", self.pipe], cwd=tmp, env={**os.environ, "HOME": str(tmp)}, name="linphone-daemon")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        try:
            self.agent.wait_for(rf"Server unix socket created, name={self.pipe}")
            self.sock.connect(f"/tmp/{self.pipe}")
        except BaseException:
            self.close()
            raise

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        answer = self.sock.recv(65536).decode()
        assert answer.startswith("Status: Ok"), f"{line!r}: {answer!r}"
        return answer

    def registration(self, account: int = 1, timeout: float = 20.0) -> str:
        """The account's registration state once it is settled (not None or Progress)."""
        deadline = time.monotonic() + timeout
        while True:
            state = re.search(r"State: (\w+)", self.command(f"register-status {account}"))
            assert state is not None
            if state.group(1) not in ("LinphoneRegistrationNone", "LinphoneRegistrationProgress"):
                return state.group(1)
            assert time.monotonic() < deadline, f"still {state.group(1)}"
            time.sleep(0.1)  # the daemon reports state on request only (no event pushed on the pipe)

    def sent_algorithms(self) -> list[str]:
        """The algorithm of every Proxy-Authorization linphone sent (from its log, complete once it has quit)."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return re.findall(r"Proxy-Authorization: +Digest .*?algorithm=([\w-]+)", text)

    def quit(self) -> None:
        self.sock.sendall(b"quit\n")
        self.agent.wait_exit(30)

    def close(self) -> None:
        self.sock.close()
        self.agent.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/tmp/{self.pipe}")


def linphone_rc(proxy: SipProxyProcess, transport: str = "udp", password: str = PASSWORD, *,
                account: bool = True, store_ha1: int = 1) -> str:
    ports = {"udp": -1, "tcp": 0} if transport == "udp" else {"udp": 0, "tcp": -1}  # -1: a random port
    text = LINPHONE_ACCOUNT.format(port=proxy.ports[transport], transport=transport, password=password,
                                   realm=REALM) if account else ""
    return LINPHONE_RC.format(**ports, store_ha1=store_ha1, account=text)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_linphone_registers_and_sends_message_with_sha256(tmp_path: Path, uas: Uas, transport: str,
                                                          sip_proxy: Callable[[str], SipProxyProcess]) -> None:
    proxy = sip_proxy("SHA-256")  # SHA-256 alone: an MD5 answer cannot pass
    before = len(uas.seen)
    daemon = LinphoneDaemon(tmp_path, linphone_rc(proxy, transport))
    try:
        assert daemon.registration() == "LinphoneRegistrationOk"
        daemon.command("message sip:bob@example.org hello-through-authproxy")
        lines = logged(proxy, lambda ls: signed_in("REGISTER")(ls) and signed_in("MESSAGE")(ls))
        daemon.quit()
    finally:
        daemon.close()
    for method in ("REGISTER", "MESSAGE"):
        mine = [line[1:] for line in lines if line[0] == method]
        assert mine[:2] == [("ANSWERED", 407, None, "missing"), ("FORWARDED", None, "alice", "ok")], lines
        assert reached(uas, before, method) == []
        assert routes_reaching(uas, before, method) == []  # linphone's reg_route
    (message,) = [seen.request for seen in uas.seen[before:] if seen.request.method == "MESSAGE"]
    assert message.body == b"hello-through-authproxy" and message.vias[1].transport == transport.upper()
    assert set(daemon.sent_algorithms()) == {"SHA-256"}


@pytest.mark.parametrize(("algorithms", "answered"), [("MD5,SHA-256", "MD5"), ("SHA-256,MD5", "SHA-256")])
def test_linphone_answers_the_first_challenge_it_supports(tmp_path: Path, algorithms: str, answered: str,
                                                          sip_proxy: Callable[[str], SipProxyProcess]) -> None:
    """With both offered (one Proxy-Authenticate line each, RFC 8760), linphone answers the first: the order of
    --digest-algorithms decides, so SHA-256 first makes it sign in with SHA-256."""
    proxy = sip_proxy(algorithms)
    daemon = LinphoneDaemon(tmp_path, linphone_rc(proxy))
    try:
        assert daemon.registration() == "LinphoneRegistrationOk"
        logged(proxy, signed_in("REGISTER"))
        daemon.quit()
    finally:
        daemon.close()
    assert set(daemon.sent_algorithms()) == {answered}


@pytest.mark.parametrize(("store_ha1", "state"), [(1, "LinphoneRegistrationFailed"), (0, "LinphoneRegistrationOk")])
def test_linphone_register_command_needs_the_password_kept_for_sha256(
        tmp_path: Path, sip_proxy: Callable[[str], SipProxyProcess], store_ha1: int, state: str) -> None:
    """linphone-daemon's ``register`` command (account made at run time, not in the linphonerc): by default
    liblinphone stores an MD5 HA1 of the password in place of the password (``store_ha1_passwd=1``) and then
    finds no credentials for a SHA-256 challenge ("No auth info found"); ``store_ha1_passwd=0`` keeps it."""
    proxy = sip_proxy("SHA-256")
    daemon = LinphoneDaemon(tmp_path, linphone_rc(proxy, account=False, store_ha1=store_ha1))
    try:
        daemon.command(f"register sip:alice@example.org sip:127.0.0.1:{proxy.ports['udp']} {PASSWORD} alice {REALM}")
        assert daemon.registration() == state
        lines = logged(proxy, signed_in("REGISTER") if store_ha1 == 0 else lambda ls: len(ls) >= 1)
    finally:
        daemon.close()
    assert lines[0] == ("REGISTER", "ANSWERED", 407, None, "missing")
    if store_ha1:
        assert len(lines) == 1  # it never answered
    else:
        assert lines[1] == ("REGISTER", "FORWARDED", None, "alice", "ok")


def test_linphone_with_a_wrong_password_is_refused(tmp_path: Path, uas: Uas,
                                                   sip_proxy: Callable[[str], SipProxyProcess]) -> None:
    proxy = sip_proxy("SHA-256")
    before = len(uas.seen)
    daemon = LinphoneDaemon(tmp_path, linphone_rc(proxy, password="not-" + PASSWORD))
    try:
        assert daemon.registration() == "LinphoneRegistrationFailed"
        lines = logged(proxy, refused)
    finally:
        daemon.close()
    assert lines == [("REGISTER", "ANSWERED", 407, None, "missing"),
                     ("REGISTER", "ANSWERED", 407, "alice", "bad-password")]
    assert len(uas.seen) == before


# --- SIPp ------------------------------------------------------------------------------------------------


def start_sipp(tmp: Path, proxy: SipProxyProcess, scenario: str, *args: str, password: str = PASSWORD) -> Agent:
    """SIPp running one call of ``scenario`` (tests/sip/sipp/) to the proxy over UDP."""
    exe = need("sipp", "sip-tester")
    return Agent([exe, "-sf", str(SIPP_SCENARIOS / scenario), "-m", "1", "-i", "127.0.0.1",
                  "-p", str(free_udp_port()), "-s", "alice", "-au", "alice", "-ap", password, "-nostdin",
                  "-timeout", "20", "-trace_err", "-error_file", str(tmp / "sipp-errors.log"), *args,
                  f"127.0.0.1:{proxy.ports['udp']}"], cwd=tmp)


def sipp_output(tmp: Path, agent: Agent) -> str:
    errors = tmp / "sipp-errors.log"
    return agent.output + (errors.read_text(errors="replace") if errors.exists() else "")


def sipp(tmp: Path, proxy: SipProxyProcess, scenario: str, *args: str, password: str = PASSWORD) -> tuple[int, str]:
    """One SIPp call of ``scenario`` to the proxy over UDP: its exit status (0: the call succeeded; 1: it
    failed; 255: SIPp gave up) and its screen and error log. On an unexpected response SIPp aborts the call
    and, by default, sends a BYE for it (challenged like any request)."""
    agent = start_sipp(tmp, proxy, scenario, *args, password=password)
    try:
        code = agent.wait_exit(30)
    finally:
        agent.stop()
    return code, sipp_output(tmp, agent)


def registers(lines: list[Logged]) -> list[tuple[str, int | None, str | None, str]]:
    """The REGISTER lines (SIPp's BYE for an aborted call, challenged in turn, is left out)."""
    return [line[1:] for line in lines if line[0] == "REGISTER"]


def test_sipp_registers_and_calls_with_md5(tmp_path: Path, uas: Uas,
                                          sip_proxy: Callable[[str], SipProxyProcess]) -> None:
    proxy = sip_proxy("MD5,SHA-256")  # SIPp reads the first challenge only, like sipsak
    before = len(uas.seen)
    code, output = sipp(tmp_path, proxy, "register.xml", "-auth_uri", "example.org")
    assert code == 0, output
    code, output = sipp(tmp_path, proxy, "invite.xml", "-auth_uri", "bob@example.org")
    assert code == 0, output
    lines = logged(proxy, signed_in("BYE"))
    assert lines == [("REGISTER", "ANSWERED", 407, None, "missing"),
                     ("REGISTER", "FORWARDED", None, "alice", "ok"),
                     ("INVITE", "ANSWERED", 407, None, "missing"),  # its ACK ends at the proxy: no line
                     ("INVITE", "FORWARDED", None, "alice", "ok"),
                     ("ACK", "FORWARDED", None, None, "none"),  # the 200's ACK: never challenged
                     ("BYE", "ANSWERED", 407, None, "missing"),
                     ("BYE", "FORWARDED", None, "alice", "ok")]
    assert [seen.request.method for seen in uas.seen[before:]] == ["REGISTER", "INVITE", "BYE"]  # ACKs unrecorded
    assert reached(uas, before, "INVITE") == reached(uas, before, "BYE") == []


@pytest.mark.parametrize("algorithms", ["SHA-256", "SHA-256,MD5"])
def test_sipp_answers_md5_only(tmp_path: Path, sip_proxy: Callable[[str], SipProxyProcess], algorithms: str) -> None:
    proxy = sip_proxy(algorithms)
    code, output = sipp(tmp_path, proxy, "register.xml", "-auth_uri", "example.org")
    assert code != 0 and "authentication must use MD5 or AKAv1-MD5" in output, output
    assert logged(proxy, lambda ls: len(ls) >= 1) == [("REGISTER", "ANSWERED", 407, None, "missing")]


def test_sipp_default_digest_uri_is_refused(tmp_path: Path, sip_proxy: Callable[[str], SipProxyProcess]) -> None:
    """Without -auth_uri SIPp signs "sip:remote_ip:remote_port", not the Request-URI: a uri mismatch, 400."""
    proxy = sip_proxy("MD5")
    code, output = sipp(tmp_path, proxy, "register.xml")
    assert code != 0 and "Digest uri does not match the request-target" in output, output
    assert registers(logged(proxy, lambda ls: len(ls) >= 2)) == [("ANSWERED", 407, None, "missing"),
                                                                 ("ANSWERED", 400, None, "bad-request")]


def test_sipp_with_a_wrong_password_is_refused(tmp_path: Path, uas: Uas,
                                               sip_proxy: Callable[[str], SipProxyProcess]) -> None:
    proxy = sip_proxy("MD5")
    before = len(uas.seen)
    code, output = sipp(tmp_path, proxy, "register.xml", "-auth_uri", "example.org", password="not-" + PASSWORD)
    assert code == 1 and "while expecting '200'" in output, output
    assert registers(logged(proxy, refused)) == [("ANSWERED", 407, None, "missing"),
                                                 ("ANSWERED", 407, "alice", "bad-password")]
    assert len(uas.seen) == before


# --- SIPp in a record-routed dialog (RFC 3261 sections 12, 16.4, 16.6 step 4) ------------------------------


def test_sipp_call_is_record_routed_and_its_route_stops_at_the_proxy(
        tmp_path: Path, uas: Uas, sip_proxy: Callable[[str], SipProxyProcess]) -> None:
    """SIPp keeps the 200's Record-Route (the proxy's, with its flow token) as the dialog's route set and sends
    its ACK and BYE with ``Route:`` naming the proxy: the proxy removes it and forwards to the next hop."""
    proxy = sip_proxy("MD5")
    before, acks = len(uas.seen), len(uas.acks)
    target = f"uas@127.0.0.1:{uas.port}"  # the UAS's Contact: the Request-URI of the INVITE and of the BYE
    code, output = sipp(tmp_path, proxy, "invite-rr.xml", "-key", "target", target, "-auth_uri", target)
    assert code == 0, output
    invite, bye = [seen.request for seen in uas.seen[before:]]
    assert (invite.method, bye.method, bye.uri) == ("INVITE", "BYE", f"sip:{target}")
    (record_route,) = invite.values("Record-Route")
    assert record_route.endswith(f"@127.0.0.1:{proxy.ports['udp']};transport=udp;lr>")
    (ack,) = [ack for ack in uas.acks[acks:] if ack.call_id == invite.call_id]
    for request in (ack, bye):  # SIPp sent them with Route: <the proxy's Record-Route>
        assert request.get_all("Route") == [] and request.get_all("Proxy-Authorization") == []
    lines = logged(proxy, signed_in("BYE"))
    assert lines == [("INVITE", "ANSWERED", 407, None, "missing"), ("INVITE", "FORWARDED", None, "alice", "ok"),
                     ("ACK", "FORWARDED", None, None, "none"), ("BYE", "ANSWERED", 407, None, "missing"),
                     ("BYE", "FORWARDED", None, "alice", "ok")]


def test_sipp_gets_the_callees_bye_through_the_proxy(tmp_path: Path, uas: Uas,
                                                     sip_proxy: Callable[[str], SipProxyProcess]) -> None:
    """The callee (the UAS, the proxy's next hop) hangs up: its BYE follows the route set to the proxy, which
    does not challenge its next hop and sends it to SIPp's own address (the flow token in the Route); SIPp's
    200 goes back to the UAS."""
    proxy = sip_proxy("MD5")
    before, acks = len(uas.seen), len(uas.acks)
    target = f"uas@127.0.0.1:{uas.port}"
    agent = start_sipp(tmp_path, proxy, "invite-callee-bye.xml", "-key", "target", target, "-auth_uri", target)
    try:
        uas.wait(lambda: any(seen.request.method == "INVITE" for seen in uas.seen[before:])
                 and len(uas.acks) > acks, timeout=20)
        (invite,) = [seen.request for seen in uas.seen[before:]]
        (ack,) = [ack for ack in uas.acks[acks:] if ack.call_id == invite.call_id]
        bye = SipRequest(method="BYE", uri=(invite.get("Contact") or "").strip("<>"), headers=(
            ("Via", f"SIP/2.0/UDP 127.0.0.1:{uas.port};branch=z9hG4bK{os.urandom(6).hex()}"),
            ("Max-Forwards", "70"), *[("Route", value) for value in invite.values("Record-Route")],
            ("From", ack.get("To") or ""), ("To", ack.get("From") or ""), ("Call-ID", invite.call_id),
            ("CSeq", "1 BYE"), ("Content-Length", "0")))
        uas.send(bye.to_bytes(), ("127.0.0.1", proxy.ports["udp"]))
        code = agent.wait_exit(30)
    finally:
        agent.stop()
    assert code == 0, sipp_output(tmp_path, agent)
    uas.wait(lambda: any(r.call_id == invite.call_id and r.cseq.method == "BYE" for r in uas.responses))
    (answer,) = [r for r in uas.responses if r.call_id == invite.call_id]
    assert answer.status == 200 and len(answer.vias) == 1
    assert logged(proxy, lambda ls: len(ls) >= 4)[2:] == [("ACK", "FORWARDED", None, None, "none"),
                                                          ("BYE", "FORWARDED", None, None, "none")]
