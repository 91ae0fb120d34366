"""The proxy's memory of recent transactions (RFC 3261 sections 17.2.3 and 16.11): a retransmission is matched
here and gets what the first copy got, and a response finds the source its request came from by the branch this
proxy gave it. ``Transactions`` is the base of the chain of classes :class:`authproxy.sip.proxy.SipProxy` is split
into (``Transactions`` <- ``Routing`` <- ``Answers`` <- ``Forwarding`` <- ``SipProxy``).

Kept 64*T1 = 32 s (section 17.2.3's Timer J, Timer F for the requests forwarded), in arrival order, bounded in all
(the oldest forgotten first) and per source address (past it, a 503).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from authproxy.sip.log import Address

#: Section 17.1.1.1 T1, and 64*T1: how long a transaction is remembered (Timer F / Timer J).
T1 = 0.5
TRANSACTION_LIFETIME = 64 * T1


@dataclass(slots=True)
class Transaction:
    """One remembered transaction."""

    fingerprint: bytes  # the request's bytes, hashed: a retransmission is the same bytes again
    source: Address
    transport: str
    expires: float
    response: bytes | None  # what the proxy answered itself; None when the request was forwarded
    branch: str | None  # the Via branch the forwarded request carries


class Transactions:
    """The transaction table: by key (top Via branch and sent-by, Call-ID, CSeq), by the branch a forwarded
    request carries, and a count per source address."""

    # Set by SipProxy; declared here for the type checker.
    max_transactions: int
    max_per_source: int
    _transactions: OrderedDict[tuple[str, ...], Transaction]
    _by_branch: dict[str, tuple[str, ...]]
    _per_source: dict[str, int]

    def __len__(self) -> int:
        """How many transactions are remembered."""
        return len(self._transactions)

    def expire(self, now: float) -> None:
        """Forget transactions older than 64*T1 (the table is in arrival order, all with the same lifetime)."""
        while self._transactions:
            key, entry = next(iter(self._transactions.items()))
            if entry.expires > now:
                return
            self._forget(key)

    def _remember(self, record: tuple[tuple[str, ...], bytes], entry: Transaction) -> None:
        key = record[0]
        while len(self._transactions) >= self.max_transactions:
            self._forget(next(iter(self._transactions)))
        self._transactions[key] = entry
        self._per_source[entry.source[0]] = self._per_source.get(entry.source[0], 0) + 1
        if entry.branch is not None:
            self._by_branch[entry.branch] = key

    def _forget(self, key: tuple[str, ...]) -> None:
        entry = self._transactions.pop(key)
        host = entry.source[0]
        left = self._per_source[host] - 1
        if left:
            self._per_source[host] = left
        else:
            del self._per_source[host]
        if entry.branch is not None and self._by_branch.get(entry.branch) == key:
            del self._by_branch[entry.branch]
