"""Write the seed corpora (requests that authenticate, credentials of every shape) into two directories."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import harness


def main(request_dir: str, credentials_dir: str) -> None:
    for directory, seeds in ((request_dir, _request_inputs()), (credentials_dir, harness.seed_credentials())):
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (path / ("seed-" + hashlib.sha256(seed).hexdigest()[:16])).write_bytes(seed)


def _request_inputs() -> list[bytes]:
    # The request target's first two bytes choose the origin's behaviour and the read size (harness.py).
    return [bytes([mode, chunk]) + seed for seed in harness.seed_requests()
            for mode in range(harness.ORIGIN_MODES) for chunk in (0, 7)]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
