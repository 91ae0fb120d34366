"""`authproxy sip serve`'s options: the [sip] table of the shared TOML file and the flags, validated once in
authproxy.config (one ConfigError naming the key), and `authproxy serve` accepting a file with a [sip] table."""

from __future__ import annotations

from pathlib import Path

import pytest

from authproxy.auth.errors import ConfigError
from authproxy.config import SipConfig, load_config, load_sip_config

HOP = "sip:127.0.0.1:5080"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "authproxy.toml"
    path.write_text(text)
    return path


def test_sip_table_over_shared_options_under_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'realm = "corp"\ndigest_algorithms = ["SHA-256"]\nlisten = "127.0.0.1:3128"\n'
                           f'[sip]\nnext_hop = "{HOP};transport=tcp"\nlisten = ["udp:127.0.0.1:5060", '
                           '"tcp:127.0.0.1:5060"]\ndigest_algorithms = ["MD5", "SHA-256"]\n')
    config = load_sip_config(path, {})
    assert config.realm == "corp" and config.digest_algorithms == ("MD5", "SHA-256")
    assert config.listeners == (("udp", "127.0.0.1", 5060), ("tcp", "127.0.0.1", 5060))
    assert load_sip_config(path, {"realm": "flag", "listen": ("tcp:127.0.0.1:0",)}).realm == "flag"
    http = load_config(path, {})  # the HTTP proxy reads the same file, its own keys only
    assert http.listen == "127.0.0.1:3128" and http.digest_algorithms == ("SHA-256",)
    assert SipConfig(next_hop=HOP).listen == ("udp:127.0.0.1:5060",)  # safe default: loopback


def test_throttle_keys_shared_from_the_top_and_overridden_in_sip(tmp_path: Path) -> None:
    path = write(tmp_path, f'throttle_max_failures = 4\nthrottle_lockout = 30\n[sip]\nnext_hop = "{HOP}"\n'
                           'throttle_lockout = 90\n')
    config = load_sip_config(path, {})
    assert (config.throttle_max_failures, config.throttle_lockout, config.throttle_window) == (4, 90.0, 60.0)
    assert load_config(path, {}).throttle_lockout == 30.0


@pytest.mark.parametrize(("table", "key"), [
    ('next_hop = "127.0.0.1:5080"', "next_hop"),
    (f'next_hop = "{HOP}"\nlisten = ["sctp:127.0.0.1:5060"]', "listen"),
    (f'next_hop = "{HOP}"\nlisten = "udp:127.0.0.1:5060"', "sip.listen"),
    (f'next_hop = "{HOP}"\nmax_transactions = 0', "max_transactions"),
    (f'next_hop = "{HOP}"\nworkers = -1', "workers"),
    (f'next_hop = "{HOP}"\nudp_answer_rate = -1', "udp_answer_rate"),
    (f'next_hop = "{HOP}"\nudp_answer_rate = inf', "udp_answer_rate"),
    (f'next_hop = "{HOP}"\nudp_answer_burst = 0', "udp_answer_burst"),
    (f'next_hop = "{HOP}"\nconnect_timeout = 0', "connect_timeout"),
    (f'next_hop = "{HOP};transport=tls"', "next_hop"),
    (f'next_hop = "{HOP};transport=sctp"', "next_hop"),
    (f'next_hop = "{HOP}"\nthrottle_window = 0', "throttle_*"),
    (f'next_hop = "{HOP}"\nidle_timeout = 0', "idle_timeout"),
    (f'next_hop = "{HOP}"\nmessage_timeout = -1', "message_timeout"),
    (f'next_hop = "{HOP}"\ndigest_algorithms = ["MD4"]', "digest_algorithms"),
    (f'next_hop = "{HOP}"\nlisten = ["udp:0.0.0.0:5060"]', "via_host"),
    (f'next_hop = "{HOP}"\nlisten = ["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"]', "listen"),
    (f'next_hop = "{HOP};transport=tcp"', "next_hop"),
    (f'next_hop = "{HOP}"\nbogus = 1', "sip.bogus"),
    ('listen = ["udp:127.0.0.1:5060"]', "next_hop"),
])
def test_a_bad_value_is_one_error_naming_the_key(tmp_path: Path, table: str, key: str) -> None:
    path = write(tmp_path, f"[sip]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load_sip_config(path, {})
    assert info.value.message.startswith(f"{key}:")
    with pytest.raises(ConfigError) as same:  # `authproxy serve` validates the whole file, [sip] included
        load_config(path, {})
    assert same.value.message == info.value.message


def test_sip_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sip: expected a table"):
        load_config(write(tmp_path, 'sip = "yes"\n'), {})
