"""The command line: ``authproxy serve``, ``authproxy sip serve``, ``authproxy users ...``, ``diagnose``.

The spellings here are a contract other tools drive; keep them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from authproxy import __version__
from authproxy.auth.errors import AuthProxyError
from authproxy.config import Config, load_config, load_sip_config, parse_connect_ports, replace
from authproxy.users.commands import add_users_parser, run_users_command

DEFAULT_CONFIG = Config()


def _serve_parser(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the proxy",
                                  description="Run the authenticating forward proxy.")
    serve.add_argument("--config", metavar="FILE", help="TOML file holding any option below (flags win)")
    serve.add_argument("--listen", metavar="HOST:PORT", help=f"default {DEFAULT_CONFIG.listen}")
    serve.add_argument("--users", metavar="FILE",
                       help=f"authproxy users file, htpasswd or htdigest file (default {DEFAULT_CONFIG.users})")
    serve.add_argument("--realm", metavar="REALM",
                       help=f"default: the realm of the users file's users, else {DEFAULT_CONFIG.realm!r}")
    serve.add_argument("--schemes", metavar="LIST", help="offered schemes, strongest first (digest,basic)")
    serve.add_argument("--digest-algorithms", metavar="LIST",
                       help="offered Digest algorithms, most preferred first (default SHA-256,MD5; MD5,SHA-256 "
                            "for clients that read only the first challenge, such as Python's urllib)")
    serve.add_argument("--connect-ports", metavar="LIST|any", help="ports CONNECT may reach (default 443)")
    serve.add_argument("--allow-private", action="store_true", default=None,
                       help="let requests reach loopback, private and link-local addresses (refused by default)")
    serve.add_argument("--access-log", metavar="FILE", help="access log path, '-' for stdout, '' for none")
    serve.add_argument("--access-log-format", choices=("squid", "json"))
    serve.add_argument("--workers", type=int, metavar="N",
                       help="processes sharing the port (default 1; 0: one per CPU)")
    serve.add_argument("--tls-cert", metavar="PEM", help="serve clients over TLS with this certificate chain")
    serve.add_argument("--tls-key", metavar="PEM", help="the private key for --tls-cert")


#: What ``authproxy diagnose`` reaches through the proxy unless told.
DEFAULT_TARGET = "https://example.com/"


def _diagnose_parser(subparsers: Any) -> None:
    """``authproxy diagnose`` (authproxy.client.diagnose, imported when it runs: the proxy does not load the
    client and its HTTP libraries)."""
    p = subparsers.add_parser(
        "diagnose", help="probe a proxy and explain in words why a request through it fails",
        description="Probe an HTTP proxy (any proxy, not only authproxy): whether it answers, what it challenges "
                    "with, which challenges the credentials satisfy, whether plain HTTP and CONNECT work, and "
                    "which hop fails and why. Exit 0 when the target was reached.")
    p.add_argument("--proxy", required=True, metavar="URL", help="http[s]://[user[:password]@]host:port")
    p.add_argument("--user", metavar="NAME", help="proxy user (else the URL's userinfo)")
    p.add_argument("--password-stdin", action="store_true", help="read the proxy password from standard input")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--cacert", metavar="FILE", help="CA file for the target's TLS certificate")
    p.add_argument("--proxy-cacert", metavar="FILE", help="CA file for an https:// proxy's certificate")
    p.add_argument("--insecure", action="store_true", help="do not verify the target's certificate")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per step (default 10)")
    p.add_argument("target", nargs="?", default=DEFAULT_TARGET, metavar="TARGET_URL",
                   help=f"what to reach through the proxy (default {DEFAULT_TARGET})")


def _sip_parser(subparsers: Any) -> None:
    sip = subparsers.add_parser("sip", help="the authenticating SIP proxy",
                                description="SIP (RFC 3261) on the same users and auth core.")
    commands = sip.add_subparsers(dest="sip_command", required=True)
    serve = commands.add_parser("serve", help="run the authenticating SIP proxy",
                                description="A stateless SIP proxy that answers 407 (Digest) and forwards "
                                            "authenticated requests to the next hop.")
    serve.add_argument("--config", metavar="FILE", help="TOML file: its [sip] table and shared options (flags win)")
    serve.add_argument("--listen", metavar="udp|tcp|tls:HOST:PORT", action="append",
                       help="where to listen, repeatable (default udp:127.0.0.1:5060)")
    serve.add_argument("--next-hop", metavar="sip:HOST:PORT;transport=udp|tcp|tls",
                       help="where authenticated requests go")
    serve.add_argument("--next-hop-ca", metavar="PEM",
                       help="CA certificates verifying a TLS next hop (default: the system's)")
    serve.add_argument("--users", metavar="FILE", help="authproxy users file or htdigest file")
    serve.add_argument("--realm", metavar="REALM", help="default: the realm of the users file's users")
    serve.add_argument("--digest-algorithms", metavar="LIST",
                       help="offered Digest algorithms, most preferred first (default SHA-256,MD5; MD5,SHA-256 "
                            "for user agents that read only the first challenge, such as sipsak)")
    serve.add_argument("--access-log", metavar="FILE", help="access log path, '-' for stdout, '' for none")
    serve.add_argument("--access-log-format", choices=("squid", "json"))
    serve.add_argument("--tls-cert", metavar="PEM", help="certificate chain for tls: listeners")
    serve.add_argument("--tls-key", metavar="PEM", help="the private key for --tls-cert")
    serve.add_argument("--via-host", metavar="HOST", help="the host in this proxy's Via (default: the listen host)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="processes sharing the listeners (default 1; 0: one per CPU)")
    serve.add_argument("--record-route", action=argparse.BooleanOptionalAction, default=None,
                       help="add Record-Route to INVITE, SUBSCRIBE and REFER (default on)")
    serve.add_argument("--path", action=argparse.BooleanOptionalAction, default=None,
                       help="add Path to a client's REGISTER (RFC 3327; default on)")
    serve.add_argument("--trusted", metavar="ADDRESS|NETWORK", action="append",
                       help="a peer not challenged, besides the next hop (repeatable)")
    serve.add_argument("--alias", metavar="HOST[:PORT]", action="append", dest="aliases",
                       help="another name of this proxy in a Route, e.g. its domain (repeatable)")


def _run_sip(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        "listen": tuple(args.listen) if args.listen else None,
        "next_hop": args.next_hop,
        "users": args.users,
        "realm": args.realm,
        "digest_algorithms": _split(args.digest_algorithms),
        "access_log": args.access_log,
        "access_log_format": args.access_log_format,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "next_hop_ca": args.next_hop_ca,
        "via_host": args.via_host,
        "workers": args.workers,
        "record_route": args.record_route,
        "path": args.path,
        "trusted": tuple(args.trusted) if args.trusted else None,
        "aliases": tuple(args.aliases) if args.aliases else None,
    }
    config = load_sip_config(args.config, overrides)
    from authproxy.sip.serve import run

    run(config, reload=lambda: load_sip_config(args.config, overrides))
    return 0


def _split(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def _run_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        "listen": args.listen,
        "users": args.users,
        "realm": args.realm,
        "schemes": _split(args.schemes),
        "digest_algorithms": _split(args.digest_algorithms),
        "access_log": args.access_log,
        "access_log_format": args.access_log_format,
        "tls_cert": args.tls_cert,
        "allow_private": args.allow_private,
        "workers": args.workers,
        "tls_key": args.tls_key,
    }

    def load() -> Config:
        config = load_config(args.config, overrides, realm_from_users=True)
        if args.connect_ports is not None:  # after load_config: None ("any") must win over the file too
            ports = parse_connect_ports(args.connect_ports, key="--connect-ports")
            config = replace(config, connect_ports=ports)
        return config

    config = load()
    _ensure_users(config)
    from authproxy.proxy.workers import run

    run(config, reload=load)  # SIGHUP reads the file again, with the same flags on top
    return 0


def _ensure_users(config: Config) -> None:
    """The embedded default: a users file with one user, created (and its password shown) on first run."""
    from authproxy.users import detect_format
    from authproxy.users.native import ensure_default_user

    path = config.users
    if os.path.exists(path) and detect_format(path) != "native":
        return
    created = ensure_default_user(path, config.realm)
    if created is not None:
        name, password = created
        # Shown once, on the terminal of the person who started the proxy; never logged anywhere else.
        print(f"authproxy: created user {name!r} with password {password!r} in {path}\n"
              f"authproxy: (shown once; change it with `authproxy users passwd {name}`)",
              file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authproxy", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"authproxy {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _serve_parser(subparsers)
    _sip_parser(subparsers)
    add_users_parser(subparsers)
    _diagnose_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _run_serve(args)
        if args.command == "sip":
            return _run_sip(args)
        if args.command == "diagnose":
            from authproxy.client.diagnose import run_diagnose

            return run_diagnose(args)
        return run_users_command(args)
    except AuthProxyError as exc:
        print(f"authproxy: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
