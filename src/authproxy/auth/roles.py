"""The two roles of HTTP authentication as data (RFC 9110 section 11), and SIP's use of the same two.

A role names the status of a challenge and the three fields of its exchange. The same verifier and the same
responder serve every hop by taking a role instead of naming fields:

- an origin server (RFC 9110 sections 11.6.1-11.6.3): 401, ``WWW-Authenticate``, ``Authorization``,
  ``Authentication-Info``;
- a proxy (RFC 9110 sections 11.7.1-11.7.3): 407, ``Proxy-Authenticate``, ``Proxy-Authorization``,
  ``Proxy-Authentication-Info``. A proxy's fields are hop-by-hop in effect: each proxy consumes the
  credentials meant for it and removes what an origin sends in them (section 11.7).

SIP (RFC 3261 sections 22.2 and 22.3) uses the same two roles with the same field names: a registrar or user
agent server answers 401, a proxy answers 407.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Role:
    """Who is asking for credentials: the status it answers with and the names of its three fields."""

    name: str
    status: int
    reason: str
    challenge_field: str
    credentials_field: str
    info_field: str

    @property
    def fields(self) -> frozenset[str]:
        """The role's three field names, lower-cased (for stripping what another hop sent in them)."""
        return frozenset(f.lower() for f in (self.challenge_field, self.credentials_field, self.info_field))


#: RFC 9110 section 11.6: the origin server asks (401).
ORIGIN = Role("origin", 401, "Unauthorized", "WWW-Authenticate", "Authorization", "Authentication-Info")
#: RFC 9110 section 11.7: a proxy asks (407).
PROXY = Role("proxy", 407, "Proxy Authentication Required", "Proxy-Authenticate", "Proxy-Authorization",
             "Proxy-Authentication-Info")

ROLES: dict[str, Role] = {ORIGIN.name: ORIGIN, PROXY.name: PROXY}


def role_for_status(status: int) -> Role | None:
    """The role whose challenge ``status`` is (401 or 407), or None for any other status."""
    for role in ROLES.values():
        if role.status == status:
            return role
    return None
