#!/usr/bin/env bash
# The demo: three campuses of Shandong University (config/shandong.toml) on the local stack,
# each with its own LIMS database and history, kept in step by sitesync. It creates a
# least-privilege `sitesync` user at each server, runs `check` and `init`, starts `sitesync run`
# per campus, then writes people at rotating campuses and shows every campus's table.
#
#   deploy/local/demo.sh          set up, start, and watch for ~20 s (sitesync keeps running)
#   deploy/local/demo.sh stop     stop the three sitesync processes
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
STATE=${SITESYNC_STACK_DIR:-$REPO/.stack}
DEMO=$STATE/demo
SITES=(jinan qingdao weihai)
declare -A PORT=([jinan]=3307 [qingdao]=3308 [weihai]=3309)
export SITESYNC_CONFIG=$REPO/config/shandong.toml

stop() {
    for site in "${SITES[@]}"; do
        if [[ -f $DEMO/$site.pid ]] && kill -0 "$(cat "$DEMO/$site.pid")" 2>/dev/null; then
            kill -TERM "$(cat "$DEMO/$site.pid")" && echo "demo: stopping sitesync at $site"
        fi
        rm -f "$DEMO/$site.pid"
    done
}
if [[ ${1:-} == stop ]]; then stop; exit 0; fi

deploy/local/stack.sh up
echo "demo: building sitesync (release)"
cargo build --release --locked -q
BIN=$REPO/target/release/sitesync
mkdir -p "$DEMO"
stop

sql() { mariadb -h127.0.0.1 -P"${PORT[$1]}" -uroot --default-character-set=utf8mb4 "${@:2}"; }

# A fresh start: the previous demo's topics would otherwise replay into the new databases.
eval "$(deploy/local/stack.sh env)"
topics() {
    java -Dlog4j2.configurationFile="$SITESYNC_STACK_DIR/kafka/config/tools-log4j2.xml" -cp "$SITESYNC_KAFKA_LIBS/*" \
        org.apache.kafka.tools.TopicCommand --bootstrap-server "$SITESYNC_KAFKA" "$@" 2>/dev/null
}
if topics --list | grep -q '^sitesync\.sdu\.'; then
    echo "demo: deleting the previous demo's topics"
    topics --delete --topic 'sitesync\.sdu\..*' || true
    for _ in $(seq 1 30); do
        topics --list | grep -q '^sitesync\.sdu\.' || break
        sleep 1
    done
fi
for site in "${SITES[@]}"; do
    password="demo-$site-$RANDOM$RANDOM"
    export "SITESYNC_${site^^}_PASSWORD=$password"
    # Least privilege: read the binlog, write the LIMS tables, own the control database.
    sql "$site" <<SQL
DROP DATABASE IF EXISTS lims; DROP DATABASE IF EXISTS sitesync;
CREATE DATABASE lims CHARACTER SET utf8mb4;
CREATE USER IF NOT EXISTS 'sitesync'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER 'sitesync'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR ON *.* TO 'sitesync'@'127.0.0.1';
GRANT SELECT, INSERT, UPDATE, DELETE ON lims.* TO 'sitesync'@'127.0.0.1';
GRANT ALL ON sitesync.* TO 'sitesync'@'127.0.0.1';
SQL
    sql "$site" lims < tests/fixtures/lims.sql
    # Each campus's own history: the same admin under different ids.
    for n in $(seq 1 $(( ${PORT[$site]} - 3305 ))); do
        sql "$site" lims -e "INSERT INTO user (token, name) VALUES ('$site-staff-$n', '$site staff $n')"
    done
    sql "$site" lims -e "INSERT INTO user (token, name) VALUES ('admin', 'Administrator')"
done

for site in "${SITES[@]}"; do
    echo "demo: sitesync init --site $site"
    "$BIN" --site "$site" init | sed 's/^/    /'
    echo "demo: sitesync check --site $site"
    "$BIN" --site "$site" check | sed 's/^/    /' || true
done
for site in "${SITES[@]}"; do
    nohup "$BIN" --site "$site" run >"$DEMO/$site.log" 2>&1 &
    echo $! >"$DEMO/$site.pid"
    echo "demo: sitesync run --site $site (pid $!, log $DEMO/$site.log)"
done
sleep 2

show() {
    printf '\n%-8s %s\n' "campus" "people (id token name active)"
    for site in "${SITES[@]}"; do
        rows=$(sql "$site" lims -N -e "SELECT CONCAT(id, ' ', token, ' ', name, ' ', IF(atime > 0, 'yes', 'no')) FROM user WHERE token LIKE 'demo-%' ORDER BY token" | paste -sd '|' -)
        printf '%-8s %s\n' "$site" "${rows//|/;  }"
    done
}
for i in $(seq 1 6); do
    site=${SITES[$(( (i - 1) % 3 ))]}
    echo; echo "demo: at $site: INSERT user demo-$i (creator: admin)"
    sql "$site" lims -e "INSERT INTO user (token, name, creator_id) SELECT 'demo-$i', 'Person $i', id FROM user WHERE token = 'admin'"
    sleep 1; show
done
echo; echo "demo: at qingdao: activate demo-1; at weihai: delete demo-2 (people are only deactivated elsewhere)"
sql qingdao lims -e "UPDATE user SET atime = UNIX_TIMESTAMP(), mtime = 2 WHERE token = 'demo-1'"
sql weihai lims -e "DELETE FROM user WHERE token = 'demo-2'"
sleep 2; show
echo
echo "demo: metrics of jinan (http://127.0.0.1:9464/metrics):"
curl -s http://127.0.0.1:9464/metrics | grep -E '^sitesync_(capture_events|apply_records|apply_lag)' | head -12 | sed 's/^/    /'
echo
echo "demo: each campus's operator console (read-only here: the demo sets no [console] operator_token):"
for site in "${SITES[@]}"; do
    echo "    $site  http://$(grep -A4 "^\[sites.$site\]" config/shandong.toml | sed -n 's/^listen = "\(.*\)".*/\1/p')/console/"
done
echo
echo "demo: sitesync keeps running. Try: mariadb -h127.0.0.1 -P3307 -uroot lims -e \"UPDATE user SET name='X' WHERE token='demo-3'\""
echo "      then look at 3308/3309; \`$BIN --site qingdao status\`; stop with deploy/local/demo.sh stop"
