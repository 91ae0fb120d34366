"""The Digest ``uri`` is tied to the request-target (issue 9 low item; RFC 7616 section 3.4.6), over sockets.

An absolute-form uri must be the target itself (scheme, host, port, path, query); an origin-form uri must be
the target's path and query, and is kept because curl sends it (shown here with the real curl)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers import (
    OriginServer,
    ProxyProcess,
    challenges_of,
    digest_authorization,
    raw_exchange,
    status_of,
)


def get(target: str, auth: str | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: x"]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(proxy: ProxyProcess, target: str, uri: str) -> int:
    challenge = challenges_of(raw_exchange(proxy.port, get(target)))[0]
    auth = digest_authorization(challenge, "alice", "wonderland", "GET", uri)
    return status_of(raw_exchange(proxy.port, get(target, auth)))


@pytest.mark.parametrize(("uri", "status"), [
    ("{target}", 200),  # the absolute URI itself
    ("/p?q=1", 200),  # its origin-form
    ("http://127.0.0.1:{other}/p?q=1", 400),  # the same path on another port
    ("http://localhost:{port}/p?q=1", 400),  # another spelling of the host is another URI
    ("https://127.0.0.1:{port}/p?q=1", 400),  # another scheme
    ("/p?q=2", 400),  # another query
    ("/other", 400),  # another path
])
def test_the_uri_must_name_the_target(proxy: ProxyProcess, origin: OriginServer, uri: str, status: int) -> None:
    target = f"http://127.0.0.1:{origin.port}/p?q=1"
    uri = uri.format(target=target, port=origin.port, other=origin.port + 1)
    assert answer(proxy, target, uri) == status


def test_curl_sends_the_origin_form_and_gets_through(proxy: ProxyProcess, origin: OriginServer) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is not installed: run `make test` as root on Debian"
    done = subprocess.run([curl, "-sS", "-v", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}",
                           "-x", proxy.url, "--proxy-digest", "--proxy-user", "alice:wonderland",
                           f"http://127.0.0.1:{origin.port}/p?q=1"], capture_output=True, timeout=30)
    assert done.stdout == b"200"
    assert b'uri="/p?q=1"' in done.stderr  # curl's answer to a proxy: the origin-form, not the absolute URI
