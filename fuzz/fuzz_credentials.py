"""atheris target: the credentials parsers accept any Proxy-Authorization value or raise AuthHeaderError.

    python fuzz/fuzz_credentials.py [libFuzzer flags] [corpus dirs]

Covers authproxy.auth.headers.parse_credentials, DigestCredentials.from_credentials and
authproxy.auth.basic.decode_basic, on field bytes decoded the way the proxy decodes them (UTF-8, else latin-1).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["authproxy", "harness"]):
    import harness


def test_one_input(data: bytes) -> None:
    harness.check_credentials(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
