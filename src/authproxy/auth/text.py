"""The character rules for text that crosses the auth exchange: one control-character check, one realm rule.

Two kinds of text are checked, and the difference is deliberate:

- a *field value* as received (RFC 9110 section 5.5): CTL (RFC 5234 appendix B.1: %x00-1F / %x7F) is refused
  except HTAB, which is whitespace there; bytes %x80-FF are obs-text and stay allowed;
- a *name* once decoded (a user name, a password, a realm; RFC 7617 section 2 forbids control characters in
  user-id and password): C0, DEL and the C1 controls %x80-9F, which are just as unprintable once decoded, and
  HTAB. A CR or LF in a name would be a header injection the moment anything logs or forwards it.
"""

from __future__ import annotations

import re

# A name: every C0 control (HTAB included), DEL and C1.
_NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A field value: CTL but HTAB.
_FIELD_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def has_control(text: str, *, field_value: bool = False) -> bool:
    """Whether ``text`` holds a control character: in a decoded name (the default) any of C0, DEL and C1; in a
    field value as received (``field_value=True``) CTL other than HTAB (RFC 9110 section 5.5)."""
    return (_FIELD_CONTROL if field_value else _NAME_CONTROL).search(text) is not None


def realm_problem(realm: str) -> str | None:
    """Why ``realm`` cannot be served, or None. The one rule for the config, the verifier and the users files.

    The realm travels as a quoted-string (RFC 9110 sections 11.5 and 5.6.4): qdtext is HTAB, SP, VCHAR except
    ``"`` and ``\\``, and obs-text; those two may appear only as a quoted-pair. A client must unescape the
    quoted-pair before the realm enters H(name:realm:password) (RFC 7616 section 3.4.2), and the same realm is
    written unescaped into the users files and the 407 text, so ``"`` and ``\\`` are refused rather than left
    to every client to unescape alike. Control characters (HTAB too: it is not a VCHAR, and a realm is a name
    shown to people) are refused for the reasons in the module docstring.
    """
    if not realm:
        return "empty realm"
    if has_control(realm):
        return "a realm cannot contain control characters"
    if '"' in realm or "\\" in realm:
        return "a realm cannot contain '\"' or '\\' (RFC 9110 section 5.6.4: they would need escaping)"
    return None
