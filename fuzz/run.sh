#!/usr/bin/env bash
# Bounded atheris run of every fuzz target: FUZZ_SECONDS each (default 20). Exits non-zero on a crash.
#
#   fuzz/run.sh                          # 20 s per target, as in CI
#   FUZZ_SECONDS=600 fuzz/run.sh         # longer
#   FUZZ_CORPUS=~/authproxy-corpus fuzz/run.sh   # keep the corpus between runs (default: a temporary one)
#   FUZZ_TARGETS="credentials" fuzz/run.sh       # only some targets (request_parser, credentials, sip)
#   PYTHON=.venv/bin/python fuzz/run.sh          # which interpreter (default: .venv/bin/python, else python3)
#   FUZZ_SEED=0 fuzz/run.sh                      # a new random seed each run (default 1: the same inputs, in the
#                                                # same order, every run: CI passes or fails on the code, not luck;
#                                                # the long exploratory runs are the ones with FUZZ_SEED=0)
#
# Crash inputs are written to $FUZZ_ARTIFACTS (default fuzz/artifacts/); reproduce one with
#   python fuzz/fuzz_request_parser.py fuzz/artifacts/crash-<hash>
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
seconds="${FUZZ_SECONDS:-20}"
seed="${FUZZ_SEED:-1}"
targets="${FUZZ_TARGETS:-request_parser credentials sip}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
artifacts="${FUZZ_ARTIFACTS:-$here/artifacts}"
mkdir -p "$artifacts"

if ! "$PYTHON" -c "import atheris" 2>/dev/null; then
    echo "fuzz/run.sh: atheris is not installed for $PYTHON (pip install atheris)" >&2
    exit 3
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
corpus="${FUZZ_CORPUS:-$scratch/corpus}"
(cd "$here" && "$PYTHON" write_seeds.py "$corpus/request_parser" "$corpus/credentials" "$corpus/sip") || exit 4

status=0
for target in $targets; do
    log="$scratch/$target.log"
    echo "== fuzz_$target: ${seconds}s, seed $seed"
    dict="$here/http.dict"
    [[ -f "$here/$target.dict" ]] && dict="$here/$target.dict"  # sip.dict for fuzz_sip.py
    (cd "$here" && "$PYTHON" "fuzz_$target.py" -max_total_time="$seconds" -seed="$seed" -timeout=10 -rss_limit_mb=2048 \
        -dict="$dict" -artifact_prefix="$artifacts/${target}-" -print_final_stats=1 \
        "$corpus/$target") >"$log" 2>&1
    rc=$?
    runs="$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)"
    cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1)"
    if [[ $rc -ne 0 ]]; then
        status=1
        echo "!! fuzz_$target CRASHED (exit $rc); last lines of its log:"
        tail -40 "$log"
        ls -1 "$artifacts"/"$target"-* 2>/dev/null | sed 's/^/   crash input: /'
    else
        echo "   ok: ${runs:-?} (${cov:-no coverage line})"
    fi
done
exit $status
