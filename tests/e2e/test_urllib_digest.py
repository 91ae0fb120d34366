"""Python's urllib against the proxy's Digest (issue 8; README "Interoperability notes").

urllib's ``ProxyDigestAuthHandler`` reads only the first ``Proxy-Authenticate`` field and knows MD5 and SHA-1
only, so the default challenge list (SHA-256 first, as RFC 7616 section 3.7 asks) makes it raise; with
``--digest-algorithms MD5,SHA-256`` the MD5 challenge comes first and it signs in. Both as the README says.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import REALM, USERS, OriginServer, ProxyProcess, start_proxy


def opener(proxy_port: int, site: str) -> urllib.request.OpenerDirector:
    """As the README shows it: urllib's proxy Digest handler looks the password up by the URL being fetched
    (``req.full_url``), not by the proxy's address, so it is registered for the site."""
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(REALM, site, "alice", USERS["alice"])
    return urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy_url, "https": proxy_url}),
                                       urllib.request.ProxyDigestAuthHandler(passwords))


def test_urllib_digest_signs_in_with_md5_first(session_tmp: Path, users_file: Path, origin: OriginServer) -> None:
    proxy = start_proxy(session_tmp, users_file, "--digest-algorithms", "MD5,SHA-256")
    try:
        seen = len(origin.seen)
        site = f"http://127.0.0.1:{origin.port}/"
        with opener(proxy.port, site).open(site + "through-urllib", timeout=10) as response:
            assert response.status == 200
            assert json.loads(response.read())["path"] == "/through-urllib"
        assert len(origin.seen) == seen + 1
        assert "auth=ok" in proxy.access_log()
    finally:
        proxy.stop()


def test_urllib_digest_fails_on_the_default_challenges(proxy: ProxyProcess, origin: OriginServer) -> None:
    site = f"http://127.0.0.1:{origin.port}/"
    with pytest.raises(ValueError, match="Unsupported digest authentication algorithm 'SHA-256'"):
        opener(proxy.port, site).open(site, timeout=10)


def test_urllib_does_not_answer_a_407_to_connect(session_tmp: Path, users_file: Path,
                                                 tls_origin: tuple[OriginServer, Path]) -> None:
    """An https:// URL goes through CONNECT, whose 407 urllib does not answer: the README sends such programs
    to authproxy.client."""
    server, _ = tls_origin
    proxy = start_proxy(session_tmp, users_file, "--digest-algorithms", "MD5,SHA-256")
    try:
        site = f"https://127.0.0.1:{server.port}/"
        with pytest.raises(urllib.error.URLError, match="Tunnel connection failed: 407"):
            opener(proxy.port, site).open(site, timeout=10)
    finally:
        proxy.stop()
