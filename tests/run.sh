#!/usr/bin/env bash
# The whole test suite: brings up the local stack (installing what is missing), then runs every
# test against it. Tests never skip: a missing server fails them.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/stack.sh up
eval "$(deploy/local/stack.sh env)"
export SITESYNC_MYSQL_A SITESYNC_MYSQL_B SITESYNC_MYSQL_C SITESYNC_KAFKA
cargo test --locked --all-targets -- --test-threads="${SITESYNC_TEST_THREADS:-4}" "$@"
