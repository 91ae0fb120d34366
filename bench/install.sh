#!/usr/bin/env bash
# What `make bench` needs, installed when missing:
#   - wrk, nginx-light, squid, tinyproxy, openssl, taskset: apt-get (as root, on Debian);
#   - proxy.py, mitmproxy, py-spy, matplotlib: pip, into bench/.venv-peers, never the project's .venv.
# A failure here is reported loudly and never stops the benchmark: bench/run.py then lists that peer as
# "not run: <reason>" (or, for wrk, nginx or openssl, says what is missing and stops).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PEERS_VENV=bench/.venv-peers

missing=()
for pair in wrk:wrk nginx:nginx-light squid:squid tinyproxy:tinyproxy openssl:openssl taskset:util-linux; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench/install: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq || echo "bench/install: WARNING: apt-get update failed" >&2
    for pkg in "${missing[@]}"; do
      timeout 600 apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null ||
        echo "bench/install: WARNING: could not install $pkg; the benchmark will say what it could not run" >&2
    done
  else
    echo "bench/install: WARNING: missing ${missing[*]} and not root with apt-get; install them by hand" >&2
  fi
fi

if [ ! -x "$PEERS_VENV/bin/python" ]; then
  "$PYTHON" -m venv "$PEERS_VENV" || { echo "bench/install: WARNING: cannot create $PEERS_VENV" >&2; exit 0; }
  "$PEERS_VENV/bin/pip" install --quiet --upgrade pip 2>/dev/null
fi
# One at a time, so that one that fails to install does not keep the others out.
for spec in "proxy.py==2.4.10" "mitmproxy>=11,<12" "py-spy" "matplotlib"; do
  name=${spec%%[=<>]*}
  marker="$PEERS_VENV/.installed-$name"
  [ -f "$marker" ] && continue
  if timeout 900 "$PEERS_VENV/bin/pip" install --quiet "$spec" 2>"$PEERS_VENV/pip-$name.log"; then
    touch "$marker"
  else
    echo "bench/install: WARNING: pip install $spec failed (see $PEERS_VENV/pip-$name.log)" >&2
  fi
done
exit 0
