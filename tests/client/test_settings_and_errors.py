"""Proxy URLs (userinfo decoded exactly once), NO_PROXY, the hop named from Proxy-Status and Via, and the
responder's fuzz invariant: any 407 is answered or refused with ProxyAuthError, never anything else."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authproxy.auth.errors import ProxyAuthError
from authproxy.auth.messages import ProxyRequest, ProxyResponse, Send
from authproxy.auth.responder import Responder
from authproxy.client.errors import connect_failure, judge_failure, parse_proxy_status
from authproxy.client.settings import ProxyOptions, ProxyURLError, no_proxy_matches, parse_proxy_url


def test_userinfo_is_decoded_exactly_once() -> None:
    ep = parse_proxy_url("http://j%C3%B6s%C3%A9:p%2541%3Ab@proxy.test:3128")
    assert (ep.username, ep.password, ep.host, ep.port) == ("jösé", "p%41:b", "proxy.test", 3128)
    assert "p%41" not in repr(ep)  # the password never shows
    assert parse_proxy_url("proxy.test").url == "http://proxy.test:80"
    assert parse_proxy_url("https://u@[::1]").url == "https://[::1]:443"
    assert parse_proxy_url("https://u@[::1]").password == ""


@pytest.mark.parametrize("url, words", [
    ("http://u:%zz@p", "password has a '%' that is not followed by two hex digits"),
    ("http://%4@p", "user name has a '%'"),
    ("http://u:%FF@p", "not UTF-8"),
    ("socks5://p", "scheme must be http or https"),
    ("http://p:99999", "port"),
    ("http://p/path", "no path"),
])
def test_bad_proxy_urls(url: str, words: str) -> None:
    with pytest.raises(ProxyURLError, match=words):
        parse_proxy_url(url)


def test_no_proxy() -> None:
    assert no_proxy_matches("localhost,.internal.test, 10.0.0.1:8080", "a.internal.test", 443)
    assert no_proxy_matches("internal.test", "internal.test", 80)
    assert not no_proxy_matches("internal.test", "notinternal.test", 80)
    assert no_proxy_matches("10.0.0.1:8080", "10.0.0.1", 8080)
    assert not no_proxy_matches("10.0.0.1:8080", "10.0.0.1", 80)
    assert no_proxy_matches("*", "anything", 1)
    with pytest.raises(ProxyURLError, match="give a proxy URL, or trust_env=True"):
        ProxyOptions(None)


def test_hop_from_proxy_status() -> None:
    own = judge_failure(502, [("Proxy-Status", 'edge; error=connection_refused; details="origin said no"')], "",
                        "o.test:443")
    assert own.hop == "origin" and own.reporter == "edge" and "the proxy edge could not get through" in own.cause
    parent = judge_failure(502, [("Proxy-Status", "parent; error=dns_error, edge")], "", "o.test:443")
    assert parent.hop == "origin" and "the parent proxy parent could not get through" in parent.cause
    denied = judge_failure(403, [("Proxy-Status", "parent; error=http_request_denied"), ("Proxy-Status", "edge")],
                           "", "o.test:25")
    assert denied.hop == "parent proxy" and "refused" in denied.cause
    bare = judge_failure(504, [], "gateway timeout from upstream\n", "o.test:443")
    assert bare.hop == "origin" and "gateway timeout from upstream" in bare.cause
    err = connect_failure(502, [("Proxy-Status", "edge; error=connection_timeout"), ("Via", "1.1 edge")], "", "o:1")
    assert err.hop == "origin" and err.reason == "connection_timeout" and "(Via: 1.1 edge)" in str(err)
    assert parse_proxy_status(['a; details="x, y; z"; error=dns_error'])[0].params["details"] == "x, y; z"


_field = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
_token_soup = st.lists(st.sampled_from(['Digest', 'Basic', 'NTLM', 'realm="r"', 'nonce="n"', 'algorithm=SHA-256',
                                        'algorithm=MD5-sess', 'qop="auth-int"', 'qop="x"', 'stale=true', ',', ' ',
                                        'userhash=true', 'opaque=o', 'charset=UTF-8', '"', '=', 'abc=']),
                       max_size=14).map("".join)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.one_of(_field, _token_soup), max_size=4), connect=st.booleans(),
       status=st.sampled_from([407, 407, 401, 200, 502]))
def test_any_answer_is_answered_or_refused_in_words(values: list[str], connect: bool, status: int) -> None:
    r = Responder("alice", "pw", random=secrets.token_bytes)
    request = ProxyRequest("CONNECT", "o.test:443") if connect else ProxyRequest("GET", "http://o.test/")
    flow = r.flow(request)
    assert next(flow) == Send(None)
    for _ in range(6):
        try:
            step = flow.send(ProxyResponse(status, tuple(("Proxy-Authenticate", v) for v in values), b"x"))
        except StopIteration:
            return
        except ProxyAuthError as exc:
            assert str(exc)
            return
        assert step.authorization is not None
    pytest.fail("the flow did not stop within its rounds")


def test_errors_live_in_the_errors_modules() -> None:
    """Every exception class of the client and the responder is defined in client/errors.py or
    auth/errors.py, and the import paths users had before still name the same classes."""
    import importlib
    import inspect
    import pkgutil

    import authproxy.auth.errors as auth_errors
    import authproxy.auth.responder as responder
    import authproxy.client as client
    import authproxy.client.errors as client_errors
    import authproxy.client.settings as settings

    names = ["authproxy.auth.responder"] + [f"authproxy.client.{m.name}" for m in pkgutil.iter_modules(client.__path__)]
    homes = {"authproxy.auth.errors", "authproxy.client.errors"}
    for name in names:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                assert obj.__module__ in homes, f"{obj.__qualname__} is defined in {obj.__module__}"
    assert responder.ProxyError is client.ProxyError is client_errors.ProxyError is auth_errors.ProxyError
    assert responder.ProxyAuthError is client.ProxyAuthError is auth_errors.ProxyAuthError
    assert settings.ProxyURLError is client.ProxyURLError is client_errors.ProxyURLError


def test_one_options_type_for_the_three_clients() -> None:
    """The transports and the adapter take ProxyOptions: their keywords are its fields, checked once there."""
    import dataclasses
    import inspect

    from authproxy.client import AsyncProxyTransport, ProxyAdapter, ProxyOptions, ProxyTransport

    names = [f.name for f in dataclasses.fields(ProxyOptions)]
    assert names[:2] == ["proxy_url", "auth"] and "keepalive_expiry" in names
    for client in (ProxyTransport, AsyncProxyTransport, ProxyAdapter):
        assert list(inspect.signature(client).parameters) == names
        made = client("http://alice:pw@proxy.test:3128", ("bob", "secret"), max_connections=7, userhash=False)
        assert made.options == ProxyOptions("http://alice:pw@proxy.test:3128", ("bob", "secret"),
                                            max_connections=7, userhash=False)
        again = client.from_options(made.options)
        assert type(again) is client and again.options == made.options
        with pytest.raises(TypeError, match="verfy"):
            client("http://proxy.test", verfy=False)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="takes verify and cert from requests"):
        ProxyAdapter("http://proxy.test", verify=False)
    assert ProxyOptions("http://p", ["u", "pw"]).auth == ("u", "pw")  # type: ignore[arg-type]
    shown = repr(ProxyOptions("http://alice:hunter2@p:3128", ("bob", "s3cret")))
    assert "hunter2" not in shown and "s3cret" not in shown and "alice" in shown and "bob" in shown


@pytest.mark.parametrize("kwargs, error, words", [
    ({"proxy_url": None}, ProxyURLError, "give a proxy URL"),
    ({"proxy_url": "ftp://p"}, ProxyURLError, "scheme must be http or https"),
    ({"proxy_url": "http://p", "auth": ("only-a-name",)}, TypeError, "tuple of two strings"),
    ({"proxy_url": "http://p", "max_connections": 0}, ValueError, "max_connections must be at least 1"),
    ({"proxy_url": "http://p", "keepalive_expiry": -1.0}, ValueError, "keepalive_expiry must be 0 or more"),
])
def test_options_are_validated_when_the_client_is_made(kwargs: dict[str, object], error: type[Exception],
                                                       words: str) -> None:
    from authproxy.client import ProxyAdapter, ProxyTransport

    for client in (ProxyTransport, ProxyAdapter):
        with pytest.raises(error, match=words):
            client(**kwargs)  # type: ignore[arg-type]
