"""atheris target: SIP messages (authproxy.sip) are parsed or refused with SipError, never anything else, and a
parsed request is challenged and verified or refused with our own error (see sip_harness.check_sip).

    python fuzz/fuzz_sip.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["authproxy", "sip_harness"]):
    import sip_harness


def test_one_input(data: bytes) -> None:
    sip_harness.check_sip(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
