"""Which kind of user store a configuration value names, judged by the value's form alone.

- a path (absolute or relative) is a users file; inside it, the file's own format (authproxy's, htpasswd,
  htdigest) is told by its content, since all three are "a path";
- ``ldap://...`` / ``ldaps://...`` will be a directory, ``helper:...`` a Squid-style helper process: both are
  reserved, and refused with a ConfigError saying so, rather than taken for a file of that name;
- any other ``scheme://`` is refused as unknown (``file://`` too: write the path itself).

Nothing here touches the file system: the kind is decided before anything is opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from authproxy.auth.errors import ConfigError

#: Forms reserved for stores to come, and what they will be.
RESERVED: dict[str, str] = {
    "ldap://": "an LDAP directory",
    "ldaps://": "an LDAP directory",
    "helper:": "a helper process (Squid's helper protocol)",
}

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class StoreLocation:
    """Where the users are: today always a file at ``path``."""

    kind: Literal["file"]
    path: str


def parse_store_location(value: str, *, key: str = "users") -> StoreLocation:
    """The store ``value`` names; ConfigError naming ``key`` for an empty, reserved or unknown form."""
    if not value:
        raise ConfigError(f"{key}: must name a users file")
    lowered = value.lower()
    for prefix, what in RESERVED.items():
        if lowered.startswith(prefix):
            raise ConfigError(f"{key}: {prefix} ({what}) is not supported yet; give the path of a users file")
    match = _URL.match(value)
    if match:
        raise ConfigError(f"{key}: {match.group(0)} is not a kind of user store; give the path of a users file")
    return StoreLocation("file", value)
