"""Route, Record-Route, loop detection and trusted peers in the SIP proxy (RFC 3261 sections 16.3 step 4, 16.4,
16.6 steps 4-7, 16.12; RFC 5658), as playbooks in memory like tests/sip/test_sip_proxy.py: a client signs in,
the far side (the next hop) sends its in-dialog requests back, and each send is checked."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from test_sip_proxy import CLIENT, HOP, NOW, USERS, Client, make_proxy, only_send, options, records, sends

from authproxy.auth.errors import ConfigError
from authproxy.auth.outcomes import Outcome
from authproxy.config import SipConfig, load_sip_config, parse_sip_alias
from authproxy.sip.client import SipAuthenticator, drive
from authproxy.sip.log import ANSWERED, FORWARDED
from authproxy.sip.message import SipRequest, SipResponse, response_to
from authproxy.sip.parse import parse_datagram
from authproxy.sip.proxy import SipProxy
from authproxy.sip.route import Addresses, Flow, FlowTokens, SipUri

OWN = "sip:127.0.0.1:5060;transport=udp;lr"  # what this proxy's Record-Route names (make_proxy's address)


def signed_in(proxy: SipProxy, request: SipRequest) -> SipRequest:
    """``request`` sent by alice through ``proxy`` (answering its 407): what reached the next hop."""
    client = Client(proxy)
    auth = SipAuthenticator("alice", USERS["alice"], random=os.urandom, userhash=False)
    assert drive(auth.exchange(request), client.send).status == 200
    assert [(r.action, r.outcome) for r in client.log] == [(ANSWERED, Outcome.MISSING), (FORWARDED, Outcome.OK)]
    return client.reached[-1]


def with_fields(request: SipRequest, *extra: tuple[str, str], uri: str | None = None) -> SipRequest:
    headers = [*request.headers[:-1], *extra, request.headers[-1]]  # Content-Length stays last
    return SipRequest(method=request.method, uri=uri or request.uri, headers=tuple(headers))


def from_far_side(method: str, uri: str, routes: list[str], *, branch: str = "z9hG4bKfar1") -> SipRequest:
    """An in-dialog request of the callee, as the next hop sends it: its route set is the Record-Route of the
    dialog's INVITE, in order (section 12.1.1)."""
    headers = [("Via", f"SIP/2.0/UDP {HOP.host}:{HOP.port};branch={branch}"), ("Max-Forwards", "70"),
               ("From", "<sip:bob@example.org>;tag=callee"), ("To", "<sip:alice@example.org>;tag=f1"),
               ("Call-ID", "call-1@10.0.0.1"), ("CSeq", f"7 {method}"),
               *[("Route", value) for value in routes], ("Content-Length", "0")]
    return SipRequest(method=method, uri=uri, headers=tuple(headers))


# --- 1. Route pre-processing (section 16.4) -----------------------------------------------------------------


@pytest.mark.parametrize("own", [
    "<sip:127.0.0.1:5060;lr>", "<sip:127.0.0.1;lr>", "<sip:127.0.0.1:5060;transport=tcp;lr>",
    "<sip:alice@127.0.0.1:5060;transport=udp;lr>", "<sip:[::ffff:127.0.0.1]:5060;lr>"])
def test_a_top_route_naming_this_proxy_is_removed(own: str) -> None:
    """baresip's and linphone's outbound proxy Route: any spelling of this proxy's host and port (section
    19.1.4: the port defaults to 5060, the transport is not part of the address) is removed; the rest stays
    for the next hop."""
    if "ffff" in own:  # an IPv4-mapped spelling is another address, not this proxy
        reached = signed_in(make_proxy(), with_fields(options(), ("Route", own)))
        assert reached.get_all("Route") == [own]
        return
    reached = signed_in(make_proxy(), with_fields(options(), ("Route", f"{own}, <sip:10.0.0.7:5070;lr>")))
    assert reached.get_all("Route") == ["<sip:10.0.0.7:5070;lr>"] and reached.uri == "sip:bob@example.org"
    alone = signed_in(make_proxy(), with_fields(options(), ("Route", own)))
    assert alone.get_all("Route") == []


def test_routes_not_naming_this_proxy_are_left_for_the_next_hop() -> None:
    routes = ("<sip:127.0.0.1:5062;lr>", "<sip:proxy.example.org;lr>", "<sip:127.0.0.1:5060;lr>")
    reached = signed_in(make_proxy(), with_fields(options(), *(("Route", r) for r in routes)))
    assert reached.get_all("Route") == list(routes)  # only a TOP Route naming this proxy goes


def test_an_alias_names_this_proxy() -> None:
    proxy = make_proxy(aliases=[("Proxy.Example.ORG", 5060), ("sbc.example.net", None)])
    reached = signed_in(proxy, with_fields(options(), ("Route", "<sip:proxy.example.org;lr>")))
    assert reached.get_all("Route") == []
    reached = signed_in(proxy, with_fields(options("z9hG4bKany"), ("Route", "<sip:sbc.example.net:5099;lr>")))
    assert reached.get_all("Route") == []  # an alias without a port names this proxy at any port
    with pytest.raises(ConfigError, match="next_hop: names this proxy"):
        make_proxy(aliases=[(HOP.host, None)])


def test_a_strict_router_put_this_proxy_in_the_request_uri() -> None:
    """Section 16.4: the Request-URI is this proxy's Record-Route URI; the last Route value is the real target."""
    request = with_fields(options(), ("Route", "<sip:10.0.0.7:5070;lr>"), ("Route", "<sip:bob@10.0.0.9:5090>"),
                          uri=OWN)
    reached = signed_in(make_proxy(), request)
    assert reached.uri == "sip:bob@10.0.0.9:5090" and reached.get_all("Route") == ["<sip:10.0.0.7:5070;lr>"]
    # A Request-URI that only names the address (sipsak's sip:alice@proxy) is a target like any other.
    plain = signed_in(make_proxy(), with_fields(options(), ("Route", "<sip:10.0.0.7;lr>"),
                                                uri="sip:alice@127.0.0.1:5060"))
    assert plain.uri == "sip:alice@127.0.0.1:5060" and plain.get_all("Route") == ["<sip:10.0.0.7;lr>"]


def test_a_malformed_route_is_400() -> None:
    _send, response = only_send(make_proxy().datagram(
        with_fields(options(), ("Route", "<sip:127.0.0.1;lr")).to_bytes(), CLIENT, "udp", NOW))
    assert isinstance(response, SipResponse) and response.status == 400


# --- loop detection (section 16.3 step 4) -----------------------------------------------------------------


def test_a_request_that_comes_back_unchanged_is_a_loop_and_a_changed_one_a_spiral() -> None:
    proxy = make_proxy()
    reached = signed_in(proxy, with_fields(options(), ("Route", f"<{OWN}>")))
    # The next hop sends it back (its own Via on top, as a next hop following a Route back here would).
    back = SipRequest(method=reached.method, uri=reached.uri, headers=(
        ("Via", "SIP/2.0/UDP 127.0.0.9:5080;branch=z9hG4bKhop1"), *reached.headers))
    for source in (HOP.address, ("10.9.9.9", 5060)):  # before authentication: 482, not 407
        actions = proxy.datagram(back.to_bytes(), source, "udp", NOW)
        _send, response = only_send(actions)
        assert isinstance(response, SipResponse) and (response.status, response.reason) == (482, "Loop Detected")
    spiral = SipRequest(method=back.method, uri="sip:bob@10.0.0.9:5090", headers=back.headers)
    send, forwarded = only_send(proxy.datagram(spiral.to_bytes(), HOP.address, "udp", NOW))
    assert send.to == ("10.0.0.9", 5090) and isinstance(forwarded, SipRequest)  # a new target: it goes on
    assert len(forwarded.vias) == 4


def test_never_sent_to_itself() -> None:
    with pytest.raises(ConfigError, match="next_hop: names this proxy"):
        make_proxy(local=(HOP.host, HOP.port))
    proxy = make_proxy()
    for uri in ("sip:127.0.0.1:5060", "sip:bob@127.0.0.1"):  # a trusted peer's request naming this proxy
        _send, response = only_send(proxy.datagram(from_far_side("OPTIONS", uri, []).to_bytes(), HOP.address,
                                                   "udp", NOW))
        assert isinstance(response, SipResponse) and response.status == 404


# --- 3. Record-Route (section 16.6 step 4) ----------------------------------------------------------------


def invite(branch: str = "z9hG4bKinv") -> SipRequest:
    return options(branch, method="INVITE", extra=(("Contact", "<sip:alice@10.0.0.1:5070>"),))


def test_dialog_creating_requests_are_record_routed_with_the_clients_flow() -> None:
    proxy = make_proxy()
    reached = signed_in(proxy, invite())
    (value,) = reached.get_all("Record-Route")
    uri = SipUri.parse(value.strip("<>"))
    assert uri is not None and uri.address == ("127.0.0.1", 5060) and uri.lr and uri.transport == "udp"
    assert FlowTokens(proxy._key).read(uri.user) == ("udp", CLIENT, None)  # where the callee's requests go back
    # Existing Record-Route values stay below this proxy's (section 16.6 step 4: it goes on top).
    reached = signed_in(proxy, with_fields(invite("z9hG4bKinv2"), ("Record-Route", "<sip:10.0.0.7;lr>")))
    assert reached.values("Record-Route")[1:] == ["<sip:10.0.0.7;lr>"]
    for request in (options(), with_fields(options(method="INVITE"), uri="sip:bob@example.org")):
        if request.method == "INVITE":  # in a dialog already (To tag): the route set is fixed (section 12.2)
            request = SipRequest(method="INVITE", uri=request.uri, headers=tuple(
                (n, "<sip:bob@example.org>;tag=b" if n == "To" else v) for n, v in request.headers))
        assert signed_in(proxy, request).get_all("Record-Route") == []
    assert signed_in(make_proxy(record_route=False), invite()).get_all("Record-Route") == []


def test_two_record_route_values_when_the_client_side_is_another_transport() -> None:
    """RFC 5658: a client over TCP, the next hop over UDP: the top value for the far side (UDP), the second for
    the client's side (TCP); both are removed when the dialog's requests come back."""
    proxy = make_proxy(public={"udp": ("127.0.0.1", 5060), "tcp": ("127.0.0.1", 5061)})
    actions = proxy.datagram(invite().to_bytes(), ("127.0.0.1", 40000), "tcp", NOW)
    assert only_send(actions)[0].to == ("127.0.0.1", 40000)  # the 407, on the connection
    client = Client(proxy)
    auth = SipAuthenticator("alice", USERS["alice"], random=os.urandom, userhash=False)
    answer = drive(auth.exchange(invite("z9hG4bKtcp")), lambda r: client.send(r) if r.get("Proxy-Authorization")
                   is None else _over_tcp(proxy, r))
    assert answer.status == 200


def _over_tcp(proxy: SipProxy, request: SipRequest) -> SipResponse:
    send, forwarded = only_send(proxy.datagram(request.to_bytes(), ("127.0.0.1", 40000), "tcp", NOW))
    assert send.to == HOP.address and isinstance(forwarded, SipRequest)
    top, second = [SipUri.parse(value.strip("<>")) for value in forwarded.values("Record-Route")]
    assert top is not None and second is not None
    assert (top.transport, top.address, second.transport, second.address) == (
        "udp", ("127.0.0.1", 5060), "tcp", ("127.0.0.1", 5061))
    flow = FlowTokens(proxy._key).read(top.user)
    assert flow == ("tcp", ("127.0.0.1", 40000), None) and FlowTokens(proxy._key).read(second.user) == flow
    # The callee's BYE, both values in its Route: both go, and it goes to alice's TCP connection.
    bye = from_far_side("BYE", "sip:alice@10.0.0.1:5070", forwarded.values("Record-Route"))
    send, onward = only_send(proxy.datagram(bye.to_bytes(), HOP.address, "udp", NOW))
    assert (send.to, send.transport) == (("127.0.0.1", 40000), "tcp")
    assert isinstance(onward, SipRequest) and onward.get_all("Route") == [] and onward.vias[0].transport == "TCP"
    assert (onward.vias[0].host, onward.vias[0].port) == ("127.0.0.1", 5061)
    ok = response_to(forwarded, 200, "OK", to_tag="uas").to_bytes()
    back, _ = only_send(proxy.datagram(ok, HOP.address, "udp", NOW))
    response = parse_datagram(back.data)
    assert isinstance(response, SipResponse)
    return response


# --- 4. trusted peers -------------------------------------------------------------------------------------


def test_the_callees_bye_goes_to_the_callers_flow_unchallenged() -> None:
    proxy = make_proxy()
    reached = signed_in(proxy, invite())
    bye = from_far_side("BYE", "sip:alice@10.0.0.1:5070", reached.values("Record-Route"))
    actions = proxy.datagram(bye.to_bytes(), HOP.address, "udp", NOW)
    send, onward = only_send(actions)
    assert send.to == CLIENT and isinstance(onward, SipRequest)  # the flow, not the Contact's 10.0.0.1
    assert onward.get_all("Route") == [] and onward.uri == "sip:alice@10.0.0.1:5070"
    (record,) = records(actions)
    assert (record.action, record.user, record.outcome, record.peer) == (FORWARDED, None, Outcome.NONE, CLIENT)
    # Alice answers: the response goes back to the next hop; from anyone else it is dropped.
    ok = response_to(onward, 200, "OK", to_tag="f1").to_bytes()
    back, response = only_send(proxy.datagram(ok, CLIENT, "udp", NOW))
    assert back.to == HOP.address and isinstance(response, SipResponse) and len(response.vias) == 1
    dropped = proxy.datagram(ok, ("127.0.0.66", 5070), "udp", NOW)
    assert sends(dropped) == [] and "not the next hop" in (records(dropped)[0].reason or "")


def test_a_trusted_peers_request_goes_by_route_or_request_uri() -> None:
    proxy = make_proxy(trusted=("10.1.0.0/16",), public={"udp": ("127.0.0.1", 5060), "tcp": ("127.0.0.1", 5061)})
    send, onward = only_send(proxy.datagram(
        from_far_side("NOTIFY", "sip:alice@10.0.0.1:5070;transport=tcp", []).to_bytes(), ("10.1.2.3", 5060),
        "udp", NOW))
    assert (send.to, send.transport) == (("10.0.0.1", 5070), "tcp") and isinstance(onward, SipRequest)
    assert str(onward.vias[0]).startswith("SIP/2.0/TCP 127.0.0.1:5061;branch=")
    _send, response = only_send(make_proxy().datagram(  # no TCP listener: nothing to send it from
        from_far_side("NOTIFY", "sip:alice@10.0.0.1:5070;transport=tcp", []).to_bytes(), HOP.address, "udp", NOW))
    assert isinstance(response, SipResponse) and response.status == 503
    send, onward = only_send(proxy.datagram(
        from_far_side("NOTIFY", "sip:alice@10.0.0.1:5070", ["<sip:127.0.0.1;lr>", "<sip:10.0.0.7:5090;lr>"],
                      branch="z9hG4bKfar2").to_bytes(), HOP.address, "udp", NOW))
    assert send.to == ("10.0.0.7", 5090) and isinstance(onward, SipRequest)  # a loose router next
    assert onward.uri == "sip:alice@10.0.0.1:5070" and onward.get_all("Route") == ["<sip:10.0.0.7:5090;lr>"]
    # Section 16.6 step 6: a strict router next gets the Request-URI, and the Request-URI goes last in Route.
    send, onward = only_send(proxy.datagram(
        from_far_side("NOTIFY", "sip:alice@10.0.0.1:5070", ["<sip:10.0.0.7:5090>", "<sip:10.0.0.8;lr>"],
                      branch="z9hG4bKfar3").to_bytes(), HOP.address, "udp", NOW))
    assert send.to == ("10.0.0.7", 5090) and isinstance(onward, SipRequest) and onward.uri == "sip:10.0.0.7:5090"
    assert onward.values("Route") == ["<sip:10.0.0.8;lr>", "<sip:alice@10.0.0.1:5070>"]
    _send, response = only_send(proxy.datagram(
        from_far_side("NOTIFY", "sip:alice@example.org", [], branch="z9hG4bKfar4").to_bytes(), HOP.address,
        "udp", NOW))
    assert isinstance(response, SipResponse) and response.status == 404  # no name lookups here
    _send, response = only_send(proxy.datagram(
        from_far_side("NOTIFY", "tel:+15551234", [], branch="z9hG4bKfar5").to_bytes(), HOP.address, "udp", NOW))
    assert isinstance(response, SipResponse) and response.status == 416


def test_never_an_open_relay() -> None:
    """An untrusted source is challenged and its request goes to the next hop, whatever its Route or token
    says; the next hop's address at another port is not the next hop; a forged token names no flow."""
    proxy = make_proxy()
    token_route = signed_in(proxy, invite()).values("Record-Route")
    far = from_far_side("BYE", "sip:carol@10.0.0.66:5060", token_route)
    for source in (("10.9.9.9", 5060), (HOP.host, HOP.port + 1)):
        _send, response = only_send(proxy.datagram(far.to_bytes(), source, "udp", NOW))
        assert isinstance(response, SipResponse) and response.status == 407
    signed = signed_in(proxy, with_fields(options("z9hG4bKrelay"), ("Route", "<sip:10.0.0.66;lr>")))
    assert signed.get_all("Route") == ["<sip:10.0.0.66;lr>"]  # reached the next hop (signed_in checks)
    forged = token_route[0].replace("@", "A@", 1)
    send, _ = only_send(proxy.datagram(from_far_side("BYE", "sip:carol@10.0.0.66:5060", [forged],
                                                     branch="z9hG4bKforged").to_bytes(), HOP.address, "udp", NOW))
    assert send.to == ("10.0.0.66", 5060)  # a trusted peer's request, by its Request-URI: no flow of alice's


def test_addresses_and_flow_tokens() -> None:
    own = Addresses([("127.0.0.1", 5060), ("::1", 5060), ("Proxy.Example.org", 5070)])
    for text, names in (("sip:127.0.0.1", True), ("sip:[0:0::1]:5060;transport=tcp", True),
                        ("sips:127.0.0.1", False), ("sip:PROXY.example.org:5070;lr", True),
                        ("sip:proxy.example.org", False), ("tel:+1555", False)):
        assert own.names(SipUri.parse(text)) is names, text
    tokens, worker_tokens = FlowTokens(b"k" * 32), FlowTokens(b"k" * 32, owner=7)
    for transport, address in (("udp", ("192.0.2.7", 5070)), ("tls", ("2001:db8::7", 40001))):
        token = tokens.make(transport, address)
        assert tokens.read(token) == Flow(transport, address) and SipUri.parse(f"sip:{token}@h;lr") is not None
        assert FlowTokens(b"x" * 32).read(token) is None
        assert tokens.read(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        # With --workers: the worker holding the flow is in the token, under the MAC; every worker reads it.
        owned = worker_tokens.make(transport, address)
        assert tokens.read(owned) == worker_tokens.read(owned) == Flow(transport, address, 7)
        raw = bytearray(base64.urlsafe_b64decode(owned + "=" * (-len(owned) % 4)))
        raw[-11] ^= 1  # the owner byte, just before the MAC: another worker cannot be named
        assert tokens.read(base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")) is None
    assert tokens.read("not-a-token-at-all") is None and tokens.read(None) is None
    with pytest.raises(ValueError):
        FlowTokens(b"k" * 32, owner=256)


def test_record_route_and_trusted_options(tmp_path: Path) -> None:
    path = tmp_path / "authproxy.toml"
    path.write_text('[sip]\nnext_hop = "sip:127.0.0.1:5080"\nrecord_route = false\n'
                    'trusted = ["10.0.0.0/8", "2001:db8::1"]\n')
    config = load_sip_config(path, {})
    assert config.record_route is False and config.trusted == ("10.0.0.0/8", "2001:db8::1")
    assert load_sip_config(path, {"record_route": True}).record_route is True
    assert SipConfig(next_hop="sip:127.0.0.1:5080").record_route is True  # kamailio's default config does
    assert SipConfig(next_hop="sip:127.0.0.1:5080").path is True and not load_sip_config(path, {"path": False}).path
    assert [parse_sip_alias(a) for a in ("sip.example.com", "sip.example.com:5070", "::1", "[::1]:5070")] == [
        ("sip.example.com", None), ("sip.example.com", 5070), ("::1", None), ("::1", 5070)]
    for text, key in (('trusted = ["10.0.0.0/33"]', "trusted"), ('trusted = "10.0.0.1"', "trusted"),
                      ('record_route = "yes"', "record_route"), ('aliases = ["a b"]', "aliases"),
                      ('aliases = ["h:0"]', "aliases")):
        path.write_text(f'[sip]\nnext_hop = "sip:127.0.0.1:5080"\n{text}\n')
        with pytest.raises(ConfigError, match=f"^sip.{key}|^{key}"):
            load_sip_config(path, {})


def test_path_on_a_clients_register_brings_the_registrars_calls_to_its_flow() -> None:
    """RFC 3327: a client's REGISTER gets this proxy's Path (its flow token); the registrar's INVITE to that
    contact, with the Path as its Route, comes from the next hop and goes to the client's flow."""
    proxy = make_proxy()
    register = options("z9hG4bKreg", method="REGISTER", extra=(("Contact", "<sip:alice@10.0.0.1:5070>"),))
    reached = signed_in(proxy, register)
    (path,) = reached.values("Path")
    uri = SipUri.parse(path.strip("<>"))
    assert uri is not None and uri.lr and uri.address == ("127.0.0.1", 5060)
    assert FlowTokens(proxy._key).read(uri.user) == ("udp", CLIENT, None)
    assert reached.get_all("Record-Route") == []
    incoming = SipRequest(method="INVITE", uri="sip:alice@10.0.0.1:5070", headers=(
        ("Via", f"SIP/2.0/UDP {HOP.host}:{HOP.port};branch=z9hG4bKcall"), ("Max-Forwards", "69"),
        ("Route", path), ("From", "<sip:carol@example.org>;tag=c1"), ("To", "<sip:alice@example.org>"),
        ("Call-ID", "incoming@example.org"), ("CSeq", "1 INVITE"), ("Content-Length", "0")))
    send, onward = only_send(proxy.datagram(incoming.to_bytes(), HOP.address, "udp", NOW))
    assert send.to == CLIENT and isinstance(onward, SipRequest) and onward.get_all("Route") == []
    assert onward.values("Record-Route") == ["<sip:127.0.0.1:5060;transport=udp;lr>"]  # the caller's side, a peer
    assert signed_in(make_proxy(path=False), register).get_all("Path") == []
    assert signed_in(proxy, options("z9hG4bKopt")).get_all("Path") == []  # REGISTER only
