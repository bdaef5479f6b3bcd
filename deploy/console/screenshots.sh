#!/usr/bin/env bash
# Screenshots of a running site's console for the README: the overview, a dead letter's detail
# and the overview in Chinese, by headless Chromium (Debian's `chromium`; no driver needed).
#
#   deploy/console/screenshots.sh http://127.0.0.1:9465/console/ LETTER_ID [OUTDIR]
#
# OUTDIR defaults to deploy/console (the README's images).
set -euo pipefail
url=${1:?usage: $0 CONSOLE_URL LETTER_ID [OUTDIR]}
letter=${2:?usage: $0 CONSOLE_URL LETTER_ID [OUTDIR]}
out=${3:-$(dirname "$0")}
command -v chromium >/dev/null || { echo "screenshots.sh: chromium is not installed (apt-get install chromium)" >&2; exit 1; }
shot() { # FILE LANG URL: a fresh profile each, so the language comes from the browser
    local profile
    profile=$(mktemp -d)
    # virtual time lets the page's API calls finish before the picture is taken
    chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
        --user-data-dir="$profile" --lang="$2" --accept-lang="$2" --window-size=1280,900 \
        --virtual-time-budget=8000 --screenshot="$1" "$3" >/dev/null 2>&1
    rm -rf "$profile"
    [[ -s $1 ]] || { echo "screenshots.sh: no screenshot for $3" >&2; exit 1; }
    echo "screenshots.sh: $1"
}
shot "$out/overview.png" en-US "$url#/"
shot "$out/dead-letter.png" en-US "$url#/dead-letters/$letter"
shot "$out/overview-zh.png" zh-CN "$url#/"
