#!/usr/bin/env bash
# Resolves Kafka Connect and the sinks of deploy/connect/pom.xml into <stack>/connect/libs once
# (a marker records the pom it came from) and prints that directory.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=$(realpath -m "${SITESYNC_STACK_DIR:-$repo/.stack}")
libs=$state/connect/libs
sum=$(sha256sum "$here/pom.xml" | cut -d' ' -f1)
if [[ ! -f $libs/.resolved || $(<"$libs/.resolved") != "$sum" ]]; then
    rm -rf "$libs.new"
    mkdir -p "$libs.new"
    echo "connect: resolving Kafka Connect and the sinks (deploy/connect/pom.xml)" >&2
    mvn -q -B -s "$here/settings.xml" -f "$here/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$libs.new" >&2
    echo "$sum" >"$libs.new/.resolved"
    rm -rf "$libs"
    mv "$libs.new" "$libs"
fi
echo "$libs"
