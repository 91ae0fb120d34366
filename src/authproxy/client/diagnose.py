"""``authproxy diagnose``: probe any HTTP proxy the way a person debugging a 407 would, and say what is wrong.

Steps: can we connect to the proxy at all (TCP, and TLS for an ``https://`` proxy); what does it challenge
with when asked without credentials (every scheme, algorithm, qop and realm, RFC 9110 section 11.7.1 and RFC
7616 section 3.3); which of those challenges the given credentials satisfy, each tried on its own; whether
plain HTTP forwarding (absolute-form, RFC 9112 section 3.2.2) and CONNECT tunnels (RFC 9110 section 9.3.6)
both work; and whether the target was reached. When something fails it names the hop (the proxy, a parent
proxy, the origin: from ``Proxy-Status``, RFC 9209, and ``Via``) and the likeliest cause with what to try.

Exit status: 0 when the target was reached, 1 when it was not, 2 for a usage error. The heavy imports
(httpcore, the client machinery) happen inside :func:`run_diagnose`, so ``authproxy serve`` never needs them.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import ssl
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

from authproxy.auth.describe import describe_challenge
from authproxy.auth.digest import DigestChallenge
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.headers import Challenge
from authproxy.auth.responder import Responder
from authproxy.client.errors import ProxyAuthError, ProxyError, ProxyURLError
from authproxy.client.settings import ProxyEndpoint, make_ssl_context, parse_proxy_url

# --- findings -----------------------------------------------------------------------------------------------


@dataclass
class ChallengeFinding:
    description: str
    scheme: str
    algorithm: str | None
    qop: str | None
    realm: str | None
    answerable: bool
    satisfied: bool | None = None  # None: not tried
    note: str = ""


@dataclass
class Probe:
    """One request through the proxy and what became of it."""

    what: str  # "plain HTTP" / "CONNECT"
    url: str
    ok: bool = False  # the proxy accepted the request (and, for CONNECT, opened the tunnel)
    reached: bool = False  # an answer came from the origin
    status: int | None = None
    scheme_used: str | None = None
    error_reason: str | None = None
    hop: str | None = None
    message: str = ""


@dataclass
class Findings:
    proxy: str
    target: str
    user: str | None
    reachable: bool = False
    connect_ms: float | None = None
    needs_auth: bool | None = None
    challenges: list[ChallengeFinding] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    reached: bool = False
    failed_hop: str | None = None
    cause: str = ""
    advice: str = ""
    verdict: str = ""


# --- probing ------------------------------------------------------------------------------------------------


class _Prober:
    def __init__(self, endpoint: ProxyEndpoint, args: argparse.Namespace) -> None:
        self.endpoint = endpoint
        self.timeout = args.timeout
        self.origin_ssl = make_ssl_context(False if args.insecure else (args.cacert or True))
        self.proxy_ssl = make_ssl_context(args.proxy_cacert or True)

    def reach_proxy(self) -> tuple[bool, float | None, str]:
        """TCP (and TLS) to the proxy: (ok, milliseconds, what went wrong in words)."""
        ep = self.endpoint
        start = time.perf_counter()
        try:
            with socket.create_connection((ep.host, ep.port), timeout=self.timeout) as sock:
                if ep.scheme == "https":
                    with self.proxy_ssl.wrap_socket(sock, server_hostname=ep.host):
                        pass
        except socket.gaierror:
            return False, None, f"the proxy's host name {ep.host} does not resolve"
        except ConnectionRefusedError:
            return False, None, f"nothing listens at {ep.host}:{ep.port} (connection refused)"
        except TimeoutError:
            return False, None, f"{ep.host}:{ep.port} did not answer within {self.timeout:g} s"
        except ssl.SSLCertVerificationError as exc:
            return False, None, f"the proxy's TLS certificate was refused ({exc.verify_message})"
        except (ssl.SSLError, OSError) as exc:
            return False, None, f"could not connect to the proxy: {exc}"
        return True, (time.perf_counter() - start) * 1000, ""

    def probe(self, what: str, url: str, user: str | None, password: str | None,
              accept: Any = None) -> tuple[Probe, ProxyError | None]:
        import httpcore

        from authproxy.client import _shared, _sync
        from authproxy.client.errors import judge_failure

        responder = Responder(user, password, random=secrets.token_bytes, accept=accept)
        route = _shared.ProxyRoute(self.endpoint, responder, self.proxy_ssl, self.origin_ssl, None)
        pool = _sync.ProxyPool(route, 2, None)
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.encode()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = (parts.hostname or "").encode("idna")
        request = httpcore.Request(
            b"GET", httpcore.URL(scheme=scheme, host=host, port=port, target=(parts.path or "/").encode()),
            headers=[(b"Host", parts.netloc.rpartition("@")[2].encode("idna")),
                     (b"User-Agent", b"authproxy-diagnose")],
            extensions={"timeout": {k: self.timeout for k in ("connect", "read", "write", "pool")},
                        _shared.BODY_EXTENSION: b""},
        )
        result = Probe(what, url)
        error: ProxyError | None = None
        try:
            response = pool.handle_request(request)
            body = response.read().decode("utf-8", "replace")
            response.close()
            result.status = response.status
            result.ok = True
            headers = _shared.decode_headers(response.headers)
            made_up = any(k.lower() == "proxy-status" and "error=" in v for k, v in headers)
            if made_up:
                verdict = judge_failure(response.status, headers, body, f"{parts.hostname}:{port}")
                result.hop, result.message = verdict.hop, f"{verdict.cause}; try: {verdict.advice}"
                result.error_reason = verdict.error
            else:
                result.reached = True
                result.message = f"the origin answered {response.status}"
        except ProxyError as exc:
            error = exc
            result.status = exc.status or None
            result.error_reason, result.hop, result.message = exc.reason, exc.hop, exc.message
            # A CONNECT refused after the credentials were taken still means the proxy accepted them.
            result.ok = not isinstance(exc, ProxyAuthError) and exc.status not in (407, 0)
        except httpcore.ConnectError as exc:
            result.ok = what == "CONNECT"  # the tunnel opened; TLS with the origin failed inside it
            result.hop = "origin" if result.ok else "proxy"
            result.error_reason = "tls" if "SSL" in str(exc) or "certificate" in str(exc) else "connect"
            result.message = f"TLS with the origin inside the tunnel failed: {exc}; try --cacert FILE " \
                             "(or --insecure to look past it)" if result.ok else f"could not connect: {exc}"
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            result.hop = "proxy"
            result.error_reason = type(exc).__name__
            result.message = f"the exchange failed: {type(exc).__name__} {exc}".rstrip()
        finally:
            pool.close()
        result.scheme_used = responder.in_use
        return result, error


_SHORT = {
    "wrong-credentials": "password rejected",
    "stale-loop": "the proxy keeps calling the nonce stale",
    "rspauth-mismatch": "the proxy's rspauth does not match",
    "untrusted-auth-info": "the proxy's Proxy-Authentication-Info cannot be trusted",
    "answered-401": "the proxy answered 401",
    "too-many-rounds": "still 407 after several rounds",
}


def _challenge_finding(challenge: Challenge, endpoint: ProxyEndpoint) -> ChallengeFinding:
    realm = challenge.param("realm")
    finding = ChallengeFinding(describe_challenge(challenge), challenge.scheme, None, None, realm, False)
    if challenge.scheme_key == "digest":
        finding.algorithm = challenge.param("algorithm") or "MD5"
        finding.qop = challenge.param("qop")
        try:
            dc = DigestChallenge.from_challenge(challenge)
        except AuthHeaderError as exc:
            finding.note = f"malformed: {exc.message}"
            return finding
        if dc is None:
            finding.note = "unknown algorithm"
        elif dc.qop and not any(q in ("auth", "auth-int") for q in dc.qop):
            finding.note = "unknown qop"
        else:
            finding.answerable = True
    elif challenge.scheme_key == "basic":
        finding.answerable = True
        if endpoint.scheme == "http":
            finding.note = "sends the password in clear text to an http:// proxy"
    else:
        finding.note = "a scheme this client does not speak"
    return finding


def _same_challenge(a: Challenge, b: Challenge) -> bool:
    return a.scheme_key == b.scheme_key and (a.param("algorithm") or "").upper() == (
        b.param("algorithm") or "").upper()


def diagnose(endpoint: ProxyEndpoint, target: str, args: argparse.Namespace) -> Findings:
    """Run every probe and return the findings, verdict included."""
    user, password = endpoint.username, endpoint.password
    shown = endpoint.url
    f = Findings(shown, target, user)
    prober = _Prober(endpoint, args)
    f.reachable, f.connect_ms, why = prober.reach_proxy()
    if not f.reachable:
        f.failed_hop = "proxy"
        f.cause = why
        f.advice = ("check the proxy's host and port (and scheme: http:// or https://), and that it is running "
                    "and reachable from here")
        f.verdict = (f"The proxy at {shown} could not be reached: {why}. Failed hop: the proxy itself (nothing "
                     f"was sent through it). Try: {f.advice}.")
        return f

    parts = urllib.parse.urlsplit(target)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme == "https":
        connect_url, plain_url = target, f"http://{host}/"
    else:
        connect_url, plain_url = f"https://{host}:{port}/", target

    # 1. Without credentials: what does the proxy ask for?
    anon, anon_error = prober.probe("CONNECT" if parts.scheme == "https" else "plain HTTP", target, None, None)
    offered: list[Challenge] = []
    if isinstance(anon_error, ProxyAuthError):
        f.needs_auth = True
        offered = list(anon_error.challenges)
    elif anon.ok:
        f.needs_auth = False
    f.challenges = [_challenge_finding(c, endpoint) for c in offered]

    # 2. Each answerable challenge on its own, with the credentials.
    if user is not None and password is not None:
        for challenge, finding in zip(offered, f.challenges, strict=True):
            if not finding.answerable:
                continue
            only = challenge

            def accept(c: Challenge, only: Challenge = only) -> bool:
                return _same_challenge(c, only)

            _, err = prober.probe("CONNECT", connect_url, user, password, accept)
            finding.satisfied = not isinstance(err, ProxyAuthError)
            if isinstance(err, ProxyAuthError):
                why = _SHORT.get(err.reason, err.reason)
                finding.note = (finding.note + "; " if finding.note else "") + why

    # 3. Plain HTTP and CONNECT with the credentials (the strongest challenge, as a client would).
    plain, plain_err = prober.probe("plain HTTP", plain_url, user, password)
    tunnel, tunnel_err = prober.probe("CONNECT", connect_url, user, password)
    f.probes = [plain, tunnel]
    main, main_err = (tunnel, tunnel_err) if parts.scheme == "https" else (plain, plain_err)
    f.reached = main.reached
    _verdict(f, main, main_err, endpoint)
    return f


def _verdict(f: Findings, main: Probe, err: ProxyError | None, endpoint: ProxyEndpoint) -> None:
    shown = f.proxy
    offered = ", ".join(c.description for c in f.challenges) or "nothing"
    who = f"{f.user}" if f.user else "no user"
    if f.reached:
        how = f" with {main.scheme_used}" if main.scheme_used else " (it asked for no credentials)"
        f.verdict = (f"The target {f.target} was reached through {shown}{how}: {main.message}. "
                     + ("Both plain HTTP and CONNECT work." if all(p.ok for p in f.probes) else
                        "Note: " + "; ".join(f"{p.what} did not work ({p.message})" for p in f.probes if not p.ok)
                        + "."))
        return
    if isinstance(err, ProxyAuthError):
        f.failed_hop = "proxy"
        reason = err.reason
        if reason == "wrong-credentials":
            realm = next((c.realm for c in f.challenges if c.realm), None)
            realm_text = f' in realm "{realm}"' if realm else ""
            f.cause = f"the proxy rejected the password for {f.user}{realm_text}"
            f.advice = ("check the password (with --password-stdin no shell quoting gets in the way) and the user "
                        "name's spelling and case, and ask the proxy's administrator whether the user exists in "
                        "that realm")
            f.verdict = (f"The proxy {shown} answers and asks for {offered}, but it rejected the password for "
                         f"{f.user}{realm_text}: each answer came back with a fresh challenge, not a stale one, so "
                         f"the credentials themselves are wrong. Failed hop: the proxy (authentication). Likeliest "
                         f"cause: a wrong password, or no such user in that realm. Try: {f.advice}.")
        elif reason in ("no-usable-challenge", "basic-refused", "malformed-challenge"):
            f.cause = err.message
            unknown = [c.scheme for c in f.challenges if not c.answerable]
            if any(s.lower() in ("negotiate", "ntlm", "kerberos") for s in unknown):
                f.advice = ("this proxy wants Windows sign-in (Negotiate/NTLM): use a client that speaks it (curl "
                            "--proxy-negotiate or --proxy-ntlm), or ask for a Basic or Digest login on the proxy")
            else:
                f.advice = ("ask the proxy's administrator to offer Digest (SHA-256 or MD5) or Basic, or use a "
                            "client that speaks what it offers")
            f.verdict = (f"The proxy {shown} answers, but asks only for {offered}, none of which this client can "
                         f"answer with {who}'s credentials (it speaks Digest SHA-512-256, SHA-256 and MD5, each "
                         f"also -sess, and Basic). Failed hop: the proxy (authentication scheme mismatch). "
                         f"Likeliest cause: the proxy and the client share no authentication scheme. "
                         f"Try: {f.advice}.")
        elif reason == "no-credentials":
            f.cause = "the proxy requires credentials and none were given"
            f.advice = "give --user NAME and --password-stdin (or user:password@ in the proxy URL)"
            f.verdict = (f"The proxy {shown} answers and asks for {offered}, but no credentials were given. "
                         f"Failed hop: the proxy (authentication). Try: {f.advice}.")
        else:
            f.cause = err.message
            f.advice = "see the message above; retry, and compare with curl --proxy-anyauth -v"
            f.verdict = (f"The proxy {shown} refused {who}: {err.message}. Failed hop: the proxy "
                         f"(authentication). Try: {f.advice}.")
        return
    f.failed_hop = main.hop or "proxy"
    auth_ok = (f" The proxy accepted the credentials for {f.user} ({main.scheme_used})." if main.scheme_used
               else "")
    f.cause = main.message
    hop_words = {"origin": "the origin (the target's server, as seen from the proxy)",
                 "parent proxy": "a parent proxy behind the proxy", "proxy": "the proxy"}
    what, _, advice = main.message.partition("; try: ")
    f.advice = advice or "see the message above"
    f.verdict = (f"The target {f.target} was not reached through {shown}.{auth_ok} Then: {what}"
                 f". Failed hop: {hop_words.get(f.failed_hop, f.failed_hop)}. Try: {f.advice}.")


# --- output -------------------------------------------------------------------------------------------------


def _text(f: Findings) -> str:
    lines = [f"Proxy {f.proxy}: " + (f"answered (connected in {f.connect_ms:.1f} ms)" if f.reachable
                                      else "did not answer")]
    if f.reachable:
        if f.needs_auth is False:
            lines.append("It asks for no credentials.")
        elif f.challenges:
            lines.append(f"It challenges with {len(f.challenges)} option(s):")
            for c in f.challenges:
                state = {True: "the credentials work", False: "the credentials fail",
                         None: "not tried" if c.answerable else "cannot be answered"}[c.satisfied]
                note = f" ({c.note})" if c.note else ""
                lines.append(f"  - {c.description}: {state}{note}")
        for p in f.probes:
            if p.ok:
                used = f" ({p.scheme_used})" if p.scheme_used else " (no credentials needed)"
                state = f"the proxy accepted it{used}; " + ("" if p.reached else "but ")
            else:
                state = "the proxy refused it: "
            lines.append(f"{p.what} to {p.url}: {state}{p.message}")
    lines.append("")
    lines.append(("Reached. " if f.reached else "Not reached. ") + f.verdict)
    return "\n".join(lines)


def run_diagnose(args: argparse.Namespace) -> int:
    """The ``authproxy diagnose`` command; see the module docstring for the exit status."""
    try:
        endpoint = parse_proxy_url(args.proxy)
    except ProxyURLError as exc:
        print(f"authproxy diagnose: {exc.message}", file=sys.stderr)
        return 2
    user, password = endpoint.username, endpoint.password
    if args.user is not None:
        user = args.user
        password = None
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    if user is not None and password is None:
        print("authproxy diagnose: --user needs --password-stdin (or user:password@ in the proxy URL)",
              file=sys.stderr)
        return 2
    target = args.target
    if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
        print("authproxy diagnose: TARGET_URL must be an http:// or https:// URL", file=sys.stderr)
        return 2
    endpoint = ProxyEndpoint(endpoint.scheme, endpoint.host, endpoint.port, user, password)
    findings = diagnose(endpoint, target, args)
    if args.json:
        print(json.dumps(asdict(findings), indent=2, ensure_ascii=False))
    else:
        print(_text(findings))
    return 0 if findings.reached else 1
