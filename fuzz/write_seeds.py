"""Write the seed corpora (requests that authenticate, credentials of every shape, SIP messages) into their
directories."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import harness
import sip_harness


def main(request_dir: str, credentials_dir: str, sip_dir: str | None = None) -> None:
    corpora = [(request_dir, _request_inputs()), (credentials_dir, harness.seed_credentials())]
    if sip_dir is not None:
        corpora.append((sip_dir, sip_harness.seed_messages()))
    for directory, seeds in corpora:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (path / ("seed-" + hashlib.sha256(seed).hexdigest()[:16])).write_bytes(seed)


def _request_inputs() -> list[bytes]:
    # The request target's first two bytes choose the origin's behaviour and the read size (harness.py).
    return [bytes([mode, chunk]) + seed for seed in harness.seed_requests()
            for mode in range(harness.ORIGIN_MODES) for chunk in (0, 7)]


if __name__ == "__main__":
    main(*sys.argv[1:4])
