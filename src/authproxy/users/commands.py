"""``authproxy users add|remove|list|passwd``: managing authproxy's own users file from the command line.

This is argparse glue for the main CLI to mount (:func:`add_users_parser`) and run
(:func:`run_users_command`). Changes are made only to the native format; for an htpasswd or htdigest file the
commands point to Apache's tools, which own those formats. No message ever shows a password.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from authproxy.auth.digest import BASE_ALGORITHMS
from authproxy.auth.errors import UserStoreError
from authproxy.users import HtdigestFile, describe_capabilities, detect_format, open_user_store
from authproxy.users.native import DEFAULT_PATH, add_user, password_problem, remove_user, set_password

DEFAULT_REALM = "authproxy"

_APACHE_TOOL = {"htpasswd": "htpasswd", "htdigest": "htdigest"}


class _CommandError(Exception):
    """A failure to report on stderr with exit status 1."""


def add_users_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``users`` command, with its ``add``, ``remove``, ``list`` and ``passwd`` subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--users", metavar="FILE", default=DEFAULT_PATH, help=f"the users file (default: {DEFAULT_PATH})"
    )
    common.add_argument(
        "--realm", default=DEFAULT_REALM, help=f"the realm the proxy serves (default: {DEFAULT_REALM!r})"
    )
    stdin_option = argparse.ArgumentParser(add_help=False)
    stdin_option.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )

    users = subparsers.add_parser(
        "users",
        help="manage the users file",
        description="Add, remove, list users and set passwords in authproxy's own users file. htpasswd and"
        " htdigest files can be listed; change them with Apache's htpasswd and htdigest tools.",
    )
    commands = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    add = commands.add_parser("add", parents=[common, stdin_option], help="add a user")
    add.add_argument("name", metavar="NAME")
    remove = commands.add_parser("remove", parents=[common], help="remove a user")
    remove.add_argument("name", metavar="NAME")
    commands.add_parser("list", parents=[common], help="list the users and what each can sign in with")
    passwd = commands.add_parser(
        "passwd", parents=[common, stdin_option], help="set a user's password (and realm)"
    )
    passwd.add_argument("name", metavar="NAME")


def run_users_command(args: argparse.Namespace) -> int:
    """Run the parsed ``users`` subcommand; the exit status (0 success, 1 failure, messages on stderr)."""
    try:
        if args.users_command == "list":
            _list(args)
        elif args.users_command == "add":
            _require_native(args.users, must_exist=False)
            add_user(args.users, args.name, _read_password(args), args.realm)
            print(f"added user {args.name!r} (realm {args.realm!r}) to {args.users}")
        elif args.users_command == "passwd":
            _require_native(args.users, must_exist=True)
            set_password(args.users, args.name, _read_password(args), args.realm)
            print(f"changed the password of user {args.name!r} (realm {args.realm!r}) in {args.users}")
        elif args.users_command == "remove":
            _require_native(args.users, must_exist=True)
            remove_user(args.users, args.name)
            print(f"removed user {args.name!r} from {args.users}")
        else:
            raise _CommandError(f"unknown users command {args.users_command!r}")
    except (_CommandError, UserStoreError, ValueError) as exc:
        print(f"authproxy users {args.users_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _require_native(path: str, *, must_exist: bool) -> None:
    try:
        kind = detect_format(path)
    except UserStoreError:
        if must_exist:
            raise
        return  # add creates the file
    if kind != "native":
        raise _CommandError(
            f"{path} is an {kind} file; authproxy changes only its own users files,"
            f" so use Apache's {_APACHE_TOOL[kind]} tool to change it"
        )


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise _CommandError("--password-stdin: standard input is empty")
        # Only the line ending goes: a password may start or end with spaces.
        password = line.removesuffix("\n").removesuffix("\r")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            raise _CommandError("the two passwords differ; nothing changed")
    else:
        raise _CommandError("standard input is not a terminal, so no prompt: pass --password-stdin")
    problem = password_problem(password)
    if problem:
        raise _CommandError(problem)
    return password


def _list(args: argparse.Namespace) -> None:
    store = open_user_store(args.users, args.realm)
    entries = list(store)
    print(f"{store.description}: {len(entries)} user(s)")
    for entry in entries:
        print("  " + describe_capabilities(entry, args.realm, BASE_ALGORITHMS))
    if isinstance(store, HtdigestFile):
        others = [realm for realm in store.realms() if realm != args.realm]
        if others:
            listed = ", ".join(repr(realm) for realm in others)
            print(f"  (users of other realms are not served: {listed})")
