#!/usr/bin/env bash
# The whole test suite: brings up the local stack (installing what is missing), then runs every
# test against it. Tests never skip: a missing server fails them.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/stack.sh up
eval "$(deploy/local/stack.sh env)"
export SITESYNC_MYSQL_A SITESYNC_MYSQL_B SITESYNC_MYSQL_C SITESYNC_KAFKA
# tests/observability.rs runs promtool and a Prometheus server (Debian package `prometheus`).
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    as_root=(); [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus ||
        { "${as_root[@]}" apt-get update -q && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; }
    # The package may start its own server; the tests run their own.
    "${as_root[@]}" systemctl stop prometheus prometheus-node-exporter >/dev/null 2>&1 || true
fi
# tests/console.rs drives the operator console in headless Chromium through chromedriver
# (tests/browser/console.mjs; Debian packages `chromium` and `chromium-driver`; a CJK font so
# that the Chinese screenshots show characters, not boxes).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1 || [ ! -d /usr/share/fonts/truetype/wqy ]; then
    as_root=(); [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver fonts-wqy-microhei ||
        { "${as_root[@]}" apt-get update -q && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver fonts-wqy-microhei; }
fi
# Building rdkafka with TLS links Debian's OpenSSL.
if ! pkg-config --exists openssl 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libssl-dev pkg-config ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libssl-dev pkg-config; }
fi
cargo test --locked --all-targets -- --test-threads="${SITESYNC_TEST_THREADS:-4}" "$@"
# Formatting (rustfmt.toml), where the toolchain has rustfmt.
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --check
else
    echo "tests/run.sh: cargo fmt is not installed; formatting not checked" >&2
fi
# Lints, where the toolchain has clippy (rustup's default profile does).
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --locked --all-targets -- -D warnings
else
    echo "tests/run.sh: cargo clippy is not installed; lints not checked" >&2
fi
