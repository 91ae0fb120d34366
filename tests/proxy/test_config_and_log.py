"""Config loading (TOML, flags, one clear error per bad key) and the access log formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from authproxy.auth.errors import ConfigError
from authproxy.auth.outcomes import Outcome
from authproxy.auth.policy import AuthPolicy
from authproxy.config import Config, load_config, parse_hostport
from authproxy.observe.accesslog import AccessLog, AccessRecord


def test_defaults_are_safe() -> None:
    config = Config()
    assert config.listen_address == ("127.0.0.1", 3128)
    assert config.schemes == ("digest", "basic")
    assert config.digest_algorithms == ("SHA-256", "MD5")
    assert config.connect_ports == (443,)


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('realm = "file"\nlisten = "0.0.0.0:8080"\nconnect_ports = [443, 8443]\n'
                    "nonce_lifetime = 60\n")
    config = load_config(path, {"realm": "flag", "listen": None})
    assert config.realm == "flag" and config.listen_address == ("0.0.0.0", 8080)
    assert config.connect_ports == (443, 8443) and config.nonce_lifetime == 60.0
    path.write_text('connect_ports = "any"\n')
    assert load_config(path, {}).connect_ports is None


@pytest.mark.parametrize(
    "text, key",
    [
        ("bogus = 1", "bogus"),
        ('realm = 5', "realm"),
        ('realm = "has \\"quote"', "realm"),
        ("userhash = 1", "userhash"),
        ("max_header_size = 10", "max_header_size"),
        ('connect_ports = ["x"]', "connect_ports"),
        ('qop = ["auth-conf"]', "qop"),
        ('access_log_format = "xml"', "access_log_format"),
        ('listen = "nohost"', "listen"),
        ('via_pseudonym = "two words"', "via_pseudonym"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.message.startswith(key)


def test_hostport_forms() -> None:
    assert parse_hostport("[::1]:3128") == ("::1", 3128)
    assert parse_hostport(":3128") == ("127.0.0.1", 3128)


RECORD = AccessRecord(started=1700000000.5, duration=0.0123, client="127.0.0.1", user="jö sé",
                      method="GET", target="http://h/p?token=secret", status=407, sent_bytes=321,
                      outcome=Outcome.BAD_PASSWORD, peer=None)


def test_squid_format() -> None:
    out = io.StringIO()
    log = AccessLog(out, "squid")
    log.write(RECORD)
    assert out.getvalue() == ""  # written by flush (the housekeeping timer), not per line
    log.flush()
    line = out.getvalue()
    assert line == ("1700000000.500     12 127.0.0.1 TCP_DENIED/407 321 GET http://h/p? j%C3%B6%20s%C3%A9 "
                    "HIER_NONE/- - auth=bad-password\n")
    assert "secret" not in line and len(line.split()) == 11


def test_json_format() -> None:
    out = io.StringIO()
    log = AccessLog(out, "json")
    log.write(RECORD)
    log.flush()
    record = json.loads(out.getvalue())
    assert record["auth"] == "bad-password" and record["auth_failed"] is True
    assert record["target"] == "http://h/p?" and record["user"] == "jö sé"


def test_file_log_lines_stay_whole_across_writers(tmp_path: Path) -> None:
    """Two logs on one file (two workers): every flush appends whole lines."""
    path = tmp_path / "access.log"
    first, second = AccessLog.open(str(path), "json"), AccessLog.open(str(path), "json")
    for i in range(2000):
        (first if i % 2 else second).write(RECORD)
    first.close()
    second.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2000 and all(json.loads(line)["status"] == 407 for line in lines)


@pytest.mark.parametrize("bad", [
    {"schemes": ("ntlm",)}, {"schemes": ()}, {"schemes": ("basic", "Basic")}, {"qop": ("auth-conf",)},
    {"digest_algorithms": ("SHA-1",)}, {"digest_algorithms": ()}, {"nonce_lifetime": 0.0},
    {"realm": 'say "hi"'}, {"realm": "tab\there"}, {"realm": ""},
])
def test_the_auth_options_are_validated_once_by_the_auth_policy(bad: dict[str, object]) -> None:
    """Config builds its AuthPolicy and refuses with its words: the config and the verifier cannot disagree."""
    with pytest.raises(ConfigError) as from_config:
        Config(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as from_policy:
        AuthPolicy(**{"realm": "authproxy", **bad})  # type: ignore[arg-type]
    assert from_config.value.message == from_policy.value.message


def test_a_good_config_carries_its_auth_policy() -> None:
    config = Config(realm="r", schemes=("Basic",), digest_algorithms=("md5",))
    assert config.auth_policy == AuthPolicy(realm="r", schemes=("basic",), digest_algorithms=("MD5",))
