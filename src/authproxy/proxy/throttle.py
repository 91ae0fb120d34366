"""Credential-guessing throttle: count failed sign-ins per client address and per user name, lock out, Retry-After.

Pure logic: the clock is passed in (``now``, seconds, monotonic), nothing here does IO. Defends against online
password guessing (spec-checklist, "Classes of attack": credential guessing; CWE-307) from one address and
spread over many, without handing an attacker a way to lock a victim out for good (CWE-645).

What counts as a failure is the caller's business: call ``record_failure`` for the refused-credentials outcomes
(``authproxy.auth.outcomes.Outcome.failed``: unknown-user, bad-password, replay, bad-nonce, wrong-realm,
no-digest-secret, no-basic-secret) and NEVER for ``missing``. A request that carries no credentials at all is
the normal first step of the 407 exchange (RFC 9110 section 11.7.1): every browser sends one per connection,
and counting them bans legitimate users (the fail2ban "ban on every 407" mistake). A stale nonce is not a
failure either: the client proved it knew the password.

How it works, per key:

* **Client** (the address; IPv6 clients aggregated by /64, since one subscriber gets a whole /64 and can
  rotate through it; IPv4-mapped IPv6 is the IPv4 address): ``max_failures`` failures within ``window``
  seconds lock the client out for ``lockout`` seconds, whatever user name it tries next. While locked its
  attempts are not evaluated, so they neither count nor extend the lockout.
* **User name** (case-folded, so an attacker cannot dodge the count with ``Alice``/``ALICE`` against a
  case-insensitive store such as LDAP): ``max_failures`` failures within ``window`` from any clients lock the
  name out for ``min(lockout, max_user_lockout)`` seconds. The lock does NOT apply to client keys from which
  that user signed in successfully within ``trust_period`` ("known addresses", as in OWASP's guidance on
  lockout): the victim at their usual address is not locked out by an attacker elsewhere, and from a new address
  is locked out for at most ``max_user_lockout`` per lockout episode. To lock the name out again an attacker must
  produce ``max_failures`` new failures, each address of theirs being limited by its own client lockout.

``record_success`` forgives only what the same person plausibly did: the failures recorded for that (client, user)
pair. It does not reset the counters of other users at that address (an attacker holding one valid account
cannot launder guesses against other names), nor the user's failures from other addresses (a success from one
address does not reset a counter that an attacker on another address is running up), nor an active lockout.
Caveat: clients behind one NAT share an address; a success by the victim there forgives the failures recorded
against the victim's name from that address, which an attacker sharing the NAT could exploit at the pace of the
victim's sign-ins.

Memory: at most ``max_entries`` client keys and ``max_entries`` user keys, each holding at most ``max_failures``
events and ``_MAX_TRUSTED`` known addresses. When full, the entry with the oldest last activity (failure, or for a
user name also success) is dropped: for a locked entry that is the one whose lockout ends first, so an attacker must
create ``max_entries`` fresh keys within one lockout period to free a locked entry early. ``purge`` drops entries
with nothing left to remember.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

_MAX_TRUSTED = 8  # known addresses remembered per user name
_REFRESH = 60.0  # a known address's trust is refreshed at most this often by successes


@functools.lru_cache(maxsize=4096)
def client_key(client: str) -> str:
    """The throttle's key for a client address: IPv4 as is, IPv6 by its /64, IPv4-mapped IPv6 as IPv4.

    Anything that is not an address (``"-"``, a Unix socket path) is used as it stands.
    """
    text = client.split("%", 1)[0]  # a zone index (fe80::1%eth0) names an interface, not a host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def user_key(user: str) -> str:
    return user.casefold()


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` value (RFC 9110 section 10.2.3, whole seconds) for a ``check`` result: rounded up."""
    return str(max(1, math.ceil(seconds)))


@dataclass
class _ClientState:
    failures: deque[tuple[float, str | None]]  # (time, user key)
    locked_until: float = 0.0


@dataclass
class _UserState:
    failures: deque[tuple[float, str | None]]  # (time, client key)
    locked_until: float = 0.0
    trusted: dict[str, float] = field(default_factory=dict)  # client key -> time of the last success


_S = TypeVar("_S", _ClientState, _UserState)


class FailureThrottle:
    """Counts failed sign-ins and says how long a client must wait; see the module docstring for the rules.

    ``check`` before evaluating credentials: None means go ahead, a number is the seconds to wait (answer 429
    with ``Retry-After: retry_after(seconds)`` and do not evaluate the credentials). Then ``record_failure`` or
    ``record_success`` with the outcome; nothing for a request without credentials.
    """

    def __init__(self, max_failures: int = 10, window: float = 60.0, lockout: float = 300.0,
                 max_user_lockout: float = 300.0, max_entries: int = 100_000,
                 trust_period: float = 30 * 86400.0) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if window <= 0 or lockout < 0 or max_user_lockout < 0 or trust_period < 0:
            raise ValueError("window must be positive; lockout, max_user_lockout and trust_period not negative")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.user_lockout = min(lockout, max_user_lockout)
        self.max_entries = max_entries
        self.trust_period = trust_period
        # Ordered by last activity (a failure; for users also a success), oldest first: the eviction order.
        self._clients: OrderedDict[str, _ClientState] = OrderedDict()
        self._users: OrderedDict[str, _UserState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients) + len(self._users)

    # == asking ========================================================================================================
    def check(self, client: str, user: str | None, now: float) -> float | None:
        """None if ``client`` may try ``user``'s credentials now, else the seconds until it may."""
        wait = 0.0
        state = self._clients.get(client_key(client))
        if state is not None and state.locked_until > now:
            wait = state.locked_until - now
        if user is not None:
            wait = max(wait, self._user_wait(client_key(client), user_key(user), now))
        return wait if wait > 0 else None

    def _user_wait(self, ckey: str, ukey: str, now: float) -> float:
        state = self._users.get(ukey)
        if state is None or state.locked_until <= now:
            return 0.0
        if self._is_trusted(state, ckey, now):
            return 0.0
        return state.locked_until - now

    def _is_trusted(self, state: _UserState, ckey: str, now: float) -> bool:
        last = state.trusted.get(ckey)
        return last is not None and now - last <= self.trust_period

    # == telling =======================================================================================================
    def record_failure(self, client: str, user: str | None, now: float) -> None:
        """``client`` presented credentials for ``user`` and they were refused (never for missing credentials)."""
        ckey = client_key(client)
        ukey = None if user is None else user_key(user)
        cstate = self._clients.get(ckey)
        if cstate is not None and cstate.locked_until > now:
            return  # attempts during a lockout are not evaluated, so they neither count nor extend it
        if ukey is not None and self._user_wait(ckey, ukey, now) > 0:
            return
        cstate = self._touch(self._clients, ckey, _ClientState)
        if self._add(cstate.failures, (now, ukey), now):
            cstate.locked_until = now + self.lockout
            cstate.failures.clear()
        if ukey is None:
            return
        ustate = self._touch(self._users, ukey, _UserState)
        if self._add(ustate.failures, (now, ckey), now):
            ustate.locked_until = now + self.user_lockout
            ustate.failures.clear()

    def _add(self, failures: deque[tuple[float, str | None]], event: tuple[float, str | None], now: float) -> bool:
        """Append ``event``; True if that makes ``max_failures`` failures within the window."""
        failures.append(event)
        return len(failures) >= self.max_failures and now - failures[0][0] < self.window

    def record_success(self, client: str, user: str, now: float) -> None:
        """``client`` signed in as ``user``: forgive that pair's failures, remember the address as known."""
        ckey, ukey = client_key(client), user_key(user)
        cstate = self._clients.get(ckey)
        ustate = self._users.get(ukey)
        if (ustate is not None and not ustate.failures and (cstate is None or not cstate.failures)
                and now - ustate.trusted.get(ckey, -_REFRESH) < _REFRESH):
            return  # the steady state of a signed-in client: nothing to forgive, trust recently refreshed
        if cstate is not None:
            kept = [event for event in cstate.failures if event[1] != ukey]
            if len(kept) != len(cstate.failures):
                cstate.failures = deque(kept, maxlen=self.max_failures)
        ustate = self._touch(self._users, ukey, _UserState)
        kept_u = [event for event in ustate.failures if event[1] != ckey]
        if len(kept_u) != len(ustate.failures):
            ustate.failures = deque(kept_u, maxlen=self.max_failures)
        ustate.trusted.pop(ckey, None)
        ustate.trusted[ckey] = now
        while len(ustate.trusted) > _MAX_TRUSTED:
            del ustate.trusted[next(iter(ustate.trusted))]

    def _touch(self, table: OrderedDict[str, _S], key: str,
               make: Callable[[deque[tuple[float, str | None]]], _S]) -> _S:
        """The entry for ``key``, made if new, and moved to the recent end of ``table`` (the eviction order)."""
        state = table.get(key)
        if state is None:
            state = table[key] = make(deque(maxlen=self.max_failures))
            self._bound(table)
        else:
            table.move_to_end(key)
        return state

    # == housekeeping ==================================================================================================
    def _bound(self, table: OrderedDict[str, _ClientState] | OrderedDict[str, _UserState]) -> None:
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def purge(self, now: float) -> int:
        """Drop entries with nothing left to remember (call from a housekeeping timer); returns how many."""
        dropped = 0
        for key in [k for k, s in self._clients.items() if self._client_idle(s, now)]:
            del self._clients[key]
            dropped += 1
        for key in [k for k, s in self._users.items() if self._user_idle(s, now)]:
            del self._users[key]
            dropped += 1
        return dropped

    def _client_idle(self, state: _ClientState, now: float) -> bool:
        return state.locked_until <= now and (not state.failures or now - state.failures[-1][0] >= self.window)

    def _user_idle(self, state: _UserState, now: float) -> bool:
        for ckey in [c for c, t in state.trusted.items() if now - t > self.trust_period]:
            del state.trusted[ckey]
        return (state.locked_until <= now and not state.trusted
                and (not state.failures or now - state.failures[-1][0] >= self.window))
