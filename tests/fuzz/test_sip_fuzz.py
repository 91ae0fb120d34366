"""The SIP fuzz harness (fuzz/sip_harness.py) under hypothesis, in-process and bounded: its seeds pass, the
authenticating seeds really authenticate (so the fuzzers reach the verifier), and mutated seeds keep the invariant
(parsed or our own error, built back to themselves, challenged and verified or refused with our error). The same
check runs under atheris in fuzz/fuzz_sip.py for longer campaigns."""

from __future__ import annotations

import sip_harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authproxy.auth.flow import Allow
from authproxy.sip.message import SipRequest
from authproxy.sip.parse import parse_datagram
from authproxy.sip.verify import authenticate
from authproxy.state import MemoryNonceCounterStore

SEEDS = sip_harness.seed_messages()


def test_every_seed_passes_and_the_answers_authenticate() -> None:
    allowed = 0
    for seed in SEEDS:
        sip_harness.check_sip(seed)
        message = parse_datagram(seed)
        if isinstance(message, SipRequest) and message.get_all("Proxy-Authorization") + message.get_all(
                "Authorization"):
            results = [authenticate(v, message, sip_harness._STORE, MemoryNonceCounterStore(), sip_harness.NOW,
                                    transport="udp") for v in sip_harness._VERIFIERS]
            allowed += sum(isinstance(r, Allow) for r in results)
    assert allowed == 4  # two algorithms, two roles


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 1200), st.binary(max_size=6), st.integers(0, 6)),
                                        min_size=1, max_size=5))
def test_mutated_seeds_keep_the_invariant(seed: bytes, edits: list[tuple[int, bytes, int]]) -> None:
    data = bytearray(seed)
    for position, insert, delete in edits:
        at = position % (len(data) + 1)
        data[at : at + delete] = insert
    sip_harness.check_sip(bytes(data))
