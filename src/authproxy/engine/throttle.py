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

Memory and floods. An attacker controls the keys (junk user names, many addresses), so the tables are bounded,
and what they drop is chosen so that no flood can buy back a lockout or a victim's safety:

* at most ``max_entries`` client keys, each holding at most ``max_failures`` events, and ``max_entries`` user
  names in all: names with failures or a lockout (at most ``max_failures`` events each) and signed-in names with
  their known addresses (``_MAX_TRUSTED`` each). Known addresses live in a table of their own that only a
  successful sign-in writes, and failures never take room from it: no amount of failures, junk names included,
  pushes a user's known addresses out. A new signed-in name takes the room of an unlocked failure entry first,
  and only when there is none (every other name is signed in or locked) that of the least recently signed-in
  user;
* an active lockout is never dropped to make room. When a table is full, the entry dropped is an unlocked one
  with the fewest failures, the least recently failing first: the one-failure junk a flood brings, not the
  count an attacker has run up against a victim (to drop that, the whole table must first hold entries with
  as many failures). When every entry is locked, a new key is simply not tracked (a junk name is not counted;
  its address's own lockout still holds);
* client keys are grouped by prefix (IPv4 /24, IPv6 /48, a subscriber's allocation): at most
  ``max_per_prefix`` keys of one prefix get their own entry. Past that, the prefix's other addresses share one
  entry, counted and locked like a single client, so rotating through the /64s of a /48 neither fills the
  table nor escapes the count. The default (256) never groups IPv4 addresses (a /24 has 256).

Every operation is O(1) amortised, ``purge`` included: locks expire in the order they were set (one lockout
length per table) and unlocked entries sit in least-recently-failing order per failure count, so a purge only
looks at entries it drops, plus one per failure count.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

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


@functools.lru_cache(maxsize=4096)
def prefix_key(ckey: str) -> str | None:
    """The prefix a client key is grouped under (IPv4 /24, IPv6 /48), None for a key that is not an address
    or is itself a prefix's shared entry."""
    try:
        if ckey.endswith("/64"):
            net = ipaddress.IPv6Network(ckey)
            return str(net.supernet(new_prefix=48))
        return str(ipaddress.IPv4Network((int(ipaddress.IPv4Address(ckey)) >> 8 << 8, 24)))
    except ValueError:
        return None


# One failure, packed in one int to keep a flood's cost down (a tuple of a float and a string costs three times as
# much): the time in microseconds above 32 bits of the hash of the other key of the pair (the user name for a
# client entry, the client key for a user entry), which is all ``record_success`` needs to forgive that pair's
# failures. str hashes are salted per process (PYTHONHASHSEED), so a collision cannot be aimed.
Event = int


def _event(now: float, other: str | None) -> Event:
    return (int(now * 1_000_000) << 32) | (hash(other) & 0xFFFFFFFF)


def _when(event: Event) -> float:
    return (event >> 32) / 1_000_000


def _pair(other: str | None) -> int:
    return hash(other) & 0xFFFFFFFF


@dataclass(slots=True)
class _Entry:
    failures: list[Event] = field(default_factory=list)  # at most max_failures, oldest first
    locked_until: float = 0.0  # 0.0: not locked (nor waiting to be purged from the lock queue)


class _Table:
    """Failure counts for one kind of key, bounded, with O(1) eviction and purge (see the module docstring).

    Unlocked entries are in ``levels[len(failures)]``, least recently failing first; locked ones are in
    ``locks`` in the order their lockouts end (one lockout length per table, so the order they were set).
    """

    def __init__(self, max_failures: int, window: float, lockout: float, max_entries: int,
                 on_drop: Callable[[str], None] | None = None) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_entries = max_entries
        self.on_drop = on_drop
        self.entries: dict[str, _Entry] = {}
        self.levels: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(max_failures + 1)]
        self.locks: deque[tuple[float, str]] = deque()

    def locked(self, key: str, now: float) -> float:
        """Seconds ``key`` is still locked out for, 0.0 if it is not."""
        entry = self.entries.get(key)
        return 0.0 if entry is None or entry.locked_until <= now else entry.locked_until - now

    def fail(self, key: str, event: Event, now: float) -> bool | None:
        """Count a failure for ``key``; True if it locks ``key``, None if it cannot be tracked."""
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.max_entries and not self.evict():
                return None  # every entry is an active lockout: those are never given up for a newcomer
            entry = self.entries[key] = _Entry()
        elif entry.locked_until > now:
            # Still locked (a user name tried from a known address, which its lockout does not stop): the lockout
            # neither ends nor grows.
            return False
        elif entry.locked_until:
            entry.locked_until = 0.0  # a lockout that ended (its failures were cleared when it was set)
        else:
            del self.levels[len(entry.failures)][key]
        failures = entry.failures
        failures.append(event)
        if len(failures) > self.max_failures:
            del failures[0]
        if len(failures) >= self.max_failures and now - _when(failures[0]) < self.window:
            failures.clear()
            entry.locked_until = now + self.lockout
            self.locks.append((entry.locked_until, key))
            return True
        self.levels[len(failures)][key] = None
        return False

    def forgive(self, key: str, other: str) -> bool:
        """Forget ``key``'s failures paired with ``other``; False if ``key`` has no failures at all."""
        entry = self.entries.get(key)
        if entry is None or not entry.failures:
            return False
        pair = _pair(other)
        kept = [event for event in entry.failures if event & 0xFFFFFFFF != pair]
        if len(kept) != len(entry.failures):
            del self.levels[len(entry.failures)][key]
            entry.failures = kept
            if kept:
                self.levels[len(kept)][key] = None
            else:
                self._drop(key)
        return True

    def evict(self) -> bool:
        """Drop the unlocked entry with the fewest failures, least recently failing first; False if none."""
        for level in self.levels[1:]:
            if level:
                key, _ = level.popitem(last=False)
                self._drop(key)
                return True
        return False

    def _drop(self, key: str) -> None:
        del self.entries[key]
        if self.on_drop is not None:
            self.on_drop(key)

    def purge(self, now: float) -> int:
        dropped = 0
        locks = self.locks
        while locks and locks[0][0] <= now:
            until, key = locks.popleft()
            entry = self.entries.get(key)
            if entry is not None and entry.locked_until == until:  # else it failed again since, or re-locked
                self._drop(key)
                dropped += 1
        for level in self.levels[1:]:
            while level:
                key = next(iter(level))
                if now - _when(self.entries[key].failures[-1]) < self.window:
                    break
                del level[key]
                self._drop(key)
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self.entries)


class FailureThrottle:
    """Counts failed sign-ins and says how long a client must wait; see the module docstring for the rules.

    ``check`` before evaluating credentials: None means go ahead, a number is the seconds to wait (answer 429
    with ``Retry-After: retry_after(seconds)`` and do not evaluate the credentials). Then ``record_failure`` or
    ``record_success`` with the outcome; nothing for a request without credentials.
    """

    def __init__(self, max_failures: int = 10, window: float = 60.0, lockout: float = 300.0,
                 max_user_lockout: float = 300.0, max_entries: int = 100_000,
                 trust_period: float = 30 * 86400.0, max_per_prefix: int = 256) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if window <= 0 or lockout < 0 or max_user_lockout < 0 or trust_period < 0:
            raise ValueError("window must be positive; lockout, max_user_lockout and trust_period not negative")
        if max_entries < 1 or max_per_prefix < 1:
            raise ValueError("max_entries and max_per_prefix must be at least 1")
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.user_lockout = min(lockout, max_user_lockout)
        self.max_entries = max_entries
        self.max_per_prefix = max_per_prefix
        self.trust_period = trust_period
        self._clients = _Table(max_failures, window, lockout, max_entries, self._client_dropped)
        self._users = _Table(max_failures, window, self.user_lockout, max_entries)
        self._per_prefix: dict[str, int] = {}  # client keys with an entry of their own, per prefix
        # User key -> {client key: time of the last success there}, least recently signed-in user first.
        self._trusted: OrderedDict[str, dict[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients) + len(self._users) + len(self._trusted)

    # == asking ========================================================================================================
    def check(self, client: str, user: str | None, now: float) -> float | None:
        """None if ``client`` may try ``user``'s credentials now, else the seconds until it may."""
        if not self._clients.entries and not self._users.entries:
            return None  # nobody has failed lately (the usual case, asked twice per request): nothing can lock
        ckey = client_key(client)
        wait = self._clients.locked(self._client_entry(ckey), now)
        if user is not None:
            wait = max(wait, self._user_wait(ckey, user_key(user), now))
        return wait if wait > 0 else None

    def _client_entry(self, ckey: str) -> str:
        """The key of the entry that counts ``ckey``: its own, or its prefix's shared one once the prefix has
        ``max_per_prefix`` entries of its own (module docstring), and as long as that shared one lasts (so that
        an entry of the prefix dropped later cannot lift the shared lockout)."""
        entries = self._clients.entries
        if not entries or ckey in entries:
            return ckey
        prefix = prefix_key(ckey)
        if prefix is not None and (prefix in entries or self._per_prefix.get(prefix, 0) >= self.max_per_prefix):
            return prefix
        return ckey

    def _user_wait(self, ckey: str, ukey: str, now: float) -> float:
        wait = self._users.locked(ukey, now)
        if wait and self._is_trusted(ukey, ckey, now):
            return 0.0
        return wait

    def _is_trusted(self, ukey: str, ckey: str, now: float) -> bool:
        known = self._trusted.get(ukey)
        last = None if known is None else known.get(ckey)
        return last is not None and now - last <= self.trust_period

    # == telling =======================================================================================================
    def record_failure(self, client: str, user: str | None, now: float) -> None:
        """``client`` presented credentials for ``user`` and they were refused (never for missing credentials)."""
        ckey = client_key(client)
        ukey = None if user is None else user_key(user)
        centry = self._client_entry(ckey)
        if self._clients.locked(centry, now):
            return  # attempts during a lockout are not evaluated, so they neither count nor extend it
        if ukey is not None and self._user_wait(ckey, ukey, now) > 0:
            return
        is_new = centry not in self._clients.entries
        if self._clients.fail(centry, _event(now, ukey), now) is not None and is_new:
            prefix = prefix_key(centry)
            if prefix is not None:
                self._per_prefix[prefix] = self._per_prefix.get(prefix, 0) + 1
        if ukey is not None:
            self._users.fail(ukey, _event(now, ckey), now)

    def _client_dropped(self, ckey: str) -> None:
        prefix = prefix_key(ckey)
        if prefix is not None:
            left = self._per_prefix[prefix] - 1
            if left:
                self._per_prefix[prefix] = left
            else:
                del self._per_prefix[prefix]

    def record_success(self, client: str, user: str, now: float) -> None:
        """``client`` signed in as ``user``: forgive that pair's failures, remember the address as known."""
        ckey, ukey = client_key(client), user_key(user)
        # (Empty tables, the usual case, cost nothing: this runs on every signed-in request.)
        forgave = bool(self._clients.entries) and self._clients.forgive(ckey, ukey)
        forgave = (bool(self._users.entries) and self._users.forgive(ukey, ckey)) or forgave
        known = self._trusted.get(ukey)
        if known is not None and not forgave and now - known.get(ckey, -_REFRESH) < _REFRESH:
            return  # the steady state of a signed-in client: nothing to forgive, trust recently refreshed
        if known is None:
            if len(self._users) + len(self._trusted) >= self.max_entries and not self._users.evict():
                if not self._trusted:
                    return  # every name is locked out: no room, and a lockout is never given up
                self._trusted.popitem(last=False)  # every other name is signed in or locked: the least recent
            known = self._trusted[ukey] = {}
            self._users.max_entries = self.max_entries - len(self._trusted)  # failures get the rest
        else:
            self._trusted.move_to_end(ukey)
        known.pop(ckey, None)
        known[ckey] = now
        while len(known) > _MAX_TRUSTED:
            del known[next(iter(known))]

    # == housekeeping ==================================================================================================
    def purge(self, now: float) -> int:
        """Drop entries with nothing left to remember (call from a housekeeping timer); returns how many.

        Costs what it drops, plus one look per failure count: no scan of the tables."""
        dropped = self._clients.purge(now) + self._users.purge(now)
        trusted = self._trusted
        while trusted:
            ukey, known = next(iter(trusted.items()))
            if now - next(reversed(known.values())) <= self.trust_period:
                break  # the least recently signed-in user still has a known address: so do all the others
            del trusted[ukey]
            dropped += 1
        self._users.max_entries = self.max_entries - len(trusted)
        return dropped
