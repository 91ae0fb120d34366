"""The bounded atheris run of CI: fuzz/run.sh with FUZZ_SECONDS=15 per target; a crash fails the test.

When atheris is not installed this test FAILS (it never skips): a fuzz step that silently does nothing is worse
than none. Install the test extra (atheris is in it) or `pip install atheris`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN_SH = Path(__file__).resolve().parents[2] / "fuzz" / "run.sh"
SECONDS = int(os.environ.get("FUZZ_SECONDS", "15"))


@pytest.mark.timeout(6 * SECONDS + 120)
def test_bounded_atheris_run_finds_no_crash() -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.fail("atheris is not installed, so the bounded fuzz run cannot happen: pip install atheris "
                    "(it belongs in the 'test' extra of pyproject.toml)", pytrace=False)
    env = {**os.environ, "FUZZ_SECONDS": str(SECONDS), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(RUN_SH)], capture_output=True, text=True, env=env,
                            timeout=6 * SECONDS + 100)
    print(result.stdout)
    assert result.returncode == 0, f"fuzz/run.sh exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.count("   ok: Done ") == 3, result.stdout  # request_parser, credentials, sip
