"""`authproxy serve` and the realm (issue 8): an HA1 is bound to its realm (RFC 7616 section 3.4.2), so serving a
realm none of the users file's users are in would answer 407 to every right password.

- without --realm (and no `realm` in the config file), serve the realm the users file's users are in;
- a realm no user can sign in to is a start-up error naming the command that fixes it, and a refused SIGHUP;
- an htpasswd file (no realm) serves Basic in any realm; an empty store starts and says nobody can sign in.

Every proxy here is the real CLI in a subprocess, as a user runs it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from authproxy.auth.digest import compute_ha1
from authproxy.auth.passwords import md5_crypt

from helpers import (
    OriginServer,
    ProxyProcess,
    basic_authorization,
    challenges_of,
    digest_authorization,
    raw_exchange,
    status_of,
)


def cli(*args: str, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authproxy", *args], input=stdin.decode(), capture_output=True,
                          cwd=cwd, timeout=30, text=True)


def add(cwd: Path, name: str, password: str, *args: str) -> None:
    done = cli("users", "add", name, "--password-stdin", *args, cwd=cwd, stdin=password.encode() + b"\n")
    assert done.returncode == 0, done.stderr


@contextmanager
def serving(cwd: Path, *args: str) -> Iterator[ProxyProcess]:
    """`authproxy serve` in ``cwd`` on a free port, with ``args`` only (no --realm unless given)."""
    proc = subprocess.Popen([sys.executable, "-m", "authproxy", "serve", "--listen", "127.0.0.1:0",
                             "--allow-private", *args], cwd=cwd, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while not lines or "listening on" not in lines[-1]:
            line = proc.stderr.readline().decode()
            assert line, "authproxy did not start:\n" + "".join(lines)
            lines.append(line)
        port = int(re.search(r"listening on 127.0.0.1:(\d+)", lines[-1]).group(1))  # type: ignore[union-attr]
        yield ProxyProcess(proc, port, cwd / "unused.log", lines)
    finally:
        proc.terminate()
        proc.wait(10)


def stderr_until(proxy: ProxyProcess, text: str) -> str:
    """The proxy's stderr lines, read on until one holds ``text`` (the proxy's words come in order)."""
    assert proxy.proc.stderr is not None
    while not any(text in line for line in proxy.stderr_lines):
        line = proxy.proc.stderr.readline().decode()
        assert line, "".join(proxy.stderr_lines)
        proxy.stderr_lines.append(line)
    return "".join(proxy.stderr_lines)


def get(origin: OriginServer, auth: str | None = None) -> bytes:
    lines = [f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1", "Host: x"]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def signs_in(proxy: ProxyProcess, origin: OriginServer, name: str, password: str) -> bool:
    """Digest (the first challenge the proxy offers) with the right password gets through."""
    challenge = challenges_of(raw_exchange(proxy.port, get(origin)))[0]
    auth = digest_authorization(challenge, name, password, "GET", f"http://127.0.0.1:{origin.port}/")
    return status_of(raw_exchange(proxy.port, get(origin, auth))) == 200


def test_the_issue_case_is_an_error_that_names_the_fix(tmp_path: Path) -> None:
    add(tmp_path, "alice", "secret")  # the default file and realm
    done = cli("serve", "--listen", "127.0.0.1:0", "--realm", "ACME", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "authproxy: error: no user in authproxy.users can sign in to realm 'ACME' (their realm is 'authproxy'); "
        "set the passwords again with `authproxy users passwd NAME --realm ACME`, or serve with --realm authproxy")
    # With workers, the supervisor says it once and exits, instead of restarting workers that cannot start.
    done = cli("serve", "--listen", "127.0.0.1:0", "--realm", "ACME", "--workers", "2", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("no user in authproxy.users") == 1, done.stderr


def test_following_either_fix_works(tmp_path: Path, origin: OriginServer) -> None:
    add(tmp_path, "alice", "secret")
    with serving(tmp_path, "--realm", "authproxy") as proxy:
        assert signs_in(proxy, origin, "alice", "secret")
    done = cli("users", "passwd", "alice", "--realm", "ACME", "--password-stdin", cwd=tmp_path, stdin=b"secret\n")
    assert done.returncode == 0, done.stderr
    with serving(tmp_path, "--realm", "ACME") as proxy:
        assert 'realm="ACME"' in challenges_of(raw_exchange(proxy.port, get(origin)))[0]
        assert signs_in(proxy, origin, "alice", "secret")


def test_without_realm_serve_uses_the_users_file_realm(tmp_path: Path, origin: OriginServer) -> None:
    users = tmp_path / "team.users"
    for name in ("alice", "bob"):
        add(tmp_path, name, f"{name}-pw", "--users", str(users), "--realm", "ACME Corp")
    add(tmp_path, "carol", "carol-pw", "--users", str(users), "--realm", "old")  # a straggler: the most win
    with serving(tmp_path, "--users", str(users)) as proxy:
        text = stderr_until(proxy, "carol: cannot sign in")
        assert "listening on" in text and "realm 'ACME Corp', users from" in text
        assert 'realm="ACME Corp"' in challenges_of(raw_exchange(proxy.port, get(origin)))[0]
        assert signs_in(proxy, origin, "alice", "alice-pw")
        assert status_of(raw_exchange(proxy.port, get(origin, basic_authorization("bob", "bob-pw")))) == 200
    # A realm in the config file is a choice like --realm: checked, not replaced.
    config = tmp_path / "proxy.toml"
    config.write_text('realm = "elsewhere"\n')
    done = cli("serve", "--config", str(config), "--users", str(users), cwd=tmp_path)
    assert done.returncode == 2
    assert ("no user in " + str(users) + " can sign in to realm 'elsewhere' (their realms are 'ACME Corp', 'old'); "
            f"set the passwords again with `authproxy users passwd NAME --users {users} --realm elsewhere`, "
            "or serve with --realm 'ACME Corp'") in done.stderr


def test_htdigest_file_realm(tmp_path: Path, origin: OriginServer) -> None:
    users = tmp_path / "htdigest"
    users.write_text(f"dora:explorers:{compute_ha1('MD5', 'dora', 'explorers', 'map')}\n")
    done = cli("serve", "--users", str(users), "--realm", "ACME", cwd=tmp_path)
    assert done.returncode == 2
    assert (f"no user in {users} can sign in to realm 'ACME' (their realm is 'explorers'); add them to that "
            f"realm with `htdigest {users} ACME NAME`, or serve with --realm explorers") in done.stderr
    with serving(tmp_path, "--users", str(users), "--digest-algorithms", "MD5") as proxy:
        assert signs_in(proxy, origin, "dora", "map")


def test_htpasswd_serves_basic_in_any_realm(tmp_path: Path, origin: OriginServer) -> None:
    users = tmp_path / "htpasswd"
    users.write_text(f"pat:{md5_crypt(b'pat-pw', b'saltsalt')}\n")
    with serving(tmp_path, "--users", str(users), "--realm", "ACME") as proxy:
        assert status_of(raw_exchange(proxy.port, get(origin, basic_authorization("pat", "pat-pw")))) == 200


def test_a_store_emptied_while_running_reloads_as_before(tmp_path: Path, origin: OriginServer) -> None:
    """No user at all is not a realm problem: the reload is taken and everyone gets 407, as before."""
    add(tmp_path, "alice", "secret", "--realm", "ACME")
    with serving(tmp_path, "--realm", "ACME") as proxy:
        assert signs_in(proxy, origin, "alice", "secret")
        assert cli("users", "remove", "alice", cwd=tmp_path).returncode == 0
        proxy.proc.send_signal(signal.SIGHUP)
        assert "reload refused" not in stderr_until(proxy, "reloaded config and users")
        assert status_of(raw_exchange(proxy.port, get(origin, basic_authorization("alice", "secret")))) == 407


def test_sighup_refuses_a_realm_nobody_can_sign_in_to(tmp_path: Path, origin: OriginServer) -> None:
    add(tmp_path, "alice", "secret")
    config = tmp_path / "proxy.toml"
    config.write_text('realm = "authproxy"\n')
    with serving(tmp_path, "--config", "proxy.toml") as proxy:
        config.write_text('realm = "ACME"\n')
        proxy.proc.send_signal(signal.SIGHUP)
        assert ("authproxy: reload refused, still running with the previous config: no user in authproxy.users can "
                "sign in to realm 'ACME' (their realm is 'authproxy'); set the passwords again with `authproxy users "
                "passwd NAME --realm ACME`, or serve with --realm authproxy\n") in stderr_until(proxy, "reload")
        assert signs_in(proxy, origin, "alice", "secret")  # still the old realm
        config.write_text('realm = "authproxy"\nschemes = ["basic"]\n')
        proxy.proc.send_signal(signal.SIGHUP)
        stderr_until(proxy, "reloaded config and users")
        assert challenges_of(raw_exchange(proxy.port, get(origin))) == ['Basic realm="authproxy", charset="UTF-8"']
