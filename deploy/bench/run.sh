#!/usr/bin/env bash
# sitesync's measured speed on the local stack, in one command:
#
#   deploy/bench/run.sh
#
# capture (backlog catch-up and steady state), apply, end-to-end lag at fixed offered loads,
# snapshot, verify, peak RSS and CPU per 100,000 rows, memory while apply is stalled; each figure beside
# the machine's own limit (mariadb-binlog, Kafka's ProducerPerformance, plain SQL, SELECT).
# Prints a table and writes .stack/bench/<run>/results.json (and .stack/bench/latest.json).
# Sizes and phases come from BENCH_* variables (deploy/bench/README.md), e.g. a quick run:
#
#   BENCH_ROWS=100000 BENCH_STEADY_ROWS=50000 BENCH_LAG_SECONDS=5 deploy/bench/run.sh
#
# Everything it creates is its own (databases bench_<run>_*, benchctl_<run>_*, topics
# bench.<run>.*) and is dropped at the end unless BENCH_KEEP=1. It changes no server setting and
# stops no server: the stack is shared with tests that may be running.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PATH=$PATH:/usr/sbin:/sbin

"$REPO/deploy/local/stack.sh" status >/dev/null 2>&1 || "$REPO/deploy/local/stack.sh" up
eval "$("$REPO/deploy/local/stack.sh" env)"

if ! command -v sysbench >/dev/null; then
    echo "bench: installing sysbench (apt-get)" >&2
    apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q sysbench >/dev/null
fi
for tool in mariadb mariadb-binlog java python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (deploy/local/stack.sh up installs it)" >&2; exit 1; }
done

if [[ -z ${BENCH_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --locked)
fi
if [[ ${BENCH_PERF:-0} == 1 ]] && ! command -v perf >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q linux-perf >/dev/null
fi

exec python3 "$HERE/bench.py" "$@"
