"""One control-character check and one realm rule, and every path that validates a realm agrees."""

from __future__ import annotations

import pytest

from authproxy.auth.errors import ConfigError
from authproxy.auth.text import has_control, realm_problem
from authproxy.auth.verifier import AuthPolicy
from authproxy.config import Config
from authproxy.users.native import make_entry

REALMS = ["proxy", "Proxy Realm 1", "ünïcødé 名前", "a:b", "a@b.example", "'single'", "",
          'say "hi"', "back\\slash", "tab\there", "new\nline", "nul\x00", "del\x7f", "c1\x85", "c1\x9f"]


@pytest.mark.parametrize("realm", REALMS)
def test_the_config_the_verifier_and_the_users_file_agree_on_a_realm(realm: str) -> None:
    """RFC 9110 sections 11.5 and 5.6.4: the realm is a quoted-string; '"' and '\\' would need a quoted-pair."""
    answers = []
    for check in (lambda: Config(realm=realm), lambda: AuthPolicy(realm=realm),
                  lambda: make_entry("alice", "pw", realm)):
        try:
            check()
            answers.append(True)
        except (ConfigError, ValueError):
            answers.append(False)
    expected = realm_problem(realm) is None
    assert answers == [expected] * 3
    assert expected == (realm in REALMS[:6])


@pytest.mark.parametrize(("text", "name", "field"), [
    ("plain", False, False),
    ("tab\there", True, False),
    ("cr\r", True, True),
    ("lf\n", True, True),
    ("nul\x00", True, True),
    ("del\x7f", True, True),
    ("c1\x85", True, False),  # obs-text in a field value, a control once decoded into a name
    ("ünï", False, False),
])
def test_one_control_check_for_names_and_field_values(text: str, name: bool, field: bool) -> None:
    assert has_control(text) is name
    assert has_control(text, field_value=True) is field
