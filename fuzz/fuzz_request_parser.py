"""atheris target: the proxy's ClientConnection fed arbitrary bytes (see harness.py for the invariants).

    python fuzz/fuzz_request_parser.py [libFuzzer flags] [corpus dirs]

Byte 0 of an input picks the fake origin's behaviour, byte 1 the size of each read, the rest is what the client
sends. Any uncaught exception (an InvariantError from the harness included) is a crash.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["authproxy", "harness"]):
    import harness

_HARNESS: harness.ProtocolHarness | None = None


def test_one_input(data: bytes) -> None:
    global _HARNESS
    if _HARNESS is None:
        _HARNESS = harness.ProtocolHarness()
    _HARNESS.run_fuzz_input(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
