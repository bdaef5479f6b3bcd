#!/usr/bin/env bash
# The local stack for sitesync's tests, demo and benchmarks, without Docker:
#   three MariaDB servers on 127.0.0.1:3307/3308/3309 (ROW binlog, full row image and
#   metadata, GTID domains 1/2/3) and one Apache Kafka 4.x node in KRaft combined mode on
#   127.0.0.1:9092 (controller on :9093). A second listener, SASL_SSL on 127.0.0.1:9094 (SCRAM-SHA-512,
#   certificate of a CA made here: <state>/kafka/tls/ca.pem), has Kafka's StandardAuthorizer: users
#   made there (kafka.admin.ConfigCommand) get only what ACLs grant them. Clients of the PLAINTEXT
#   listener are User:ANONYMOUS, a super user: the tests administer users and ACLs through it.
#
#   deploy/local/stack.sh up              install what is missing, start, wait until all answer
#   deploy/local/stack.sh down [--purge]  stop what this script started (data kept unless --purge)
#   deploy/local/stack.sh purge           same as down --purge
#   deploy/local/stack.sh status          one line per server; exit 1 if anything is down
#   deploy/local/stack.sh env             `export` lines with the addresses
#
#   Kafka CLI, e.g.: eval "$(deploy/local/stack.sh env)"
#     java -Dlog4j2.configurationFile=$SITESYNC_STACK_DIR/kafka/config/tools-log4j2.xml \
#       -cp "$SITESYNC_KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand --bootstrap-server $SITESYNC_KAFKA --list
#   (also org.apache.kafka.tools.ConsoleProducer, org.apache.kafka.tools.consumer.ConsoleConsumer,
#   org.apache.kafka.tools.ProducerPerformance, kafka.tools.StorageTool)
#
# State (datadirs, binlogs, Kafka logs and jars, pid files, server logs) lives in
# $SITESYNC_STACK_DIR, default <repo>/.stack (git-ignored). MariaDB comes from Debian's packages,
# Kafka's jars from Maven Central through deploy/local/kafka/pom.xml (~/.m2 is the cache).
# On this local stack only, root connects from 127.0.0.1 with no password.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
STATE=$(realpath -m "${SITESYNC_STACK_DIR:-$REPO/.stack}")

KAFKA_POM=$SCRIPT_DIR/kafka/pom.xml
KDIR=$STATE/kafka
KLIBS=$KDIR/libs
KCONF=$KDIR/config
KDATA=$KDIR/data
KLOGS=$KDIR/logs
KPID=$KDIR/kafka.pid
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
KAFKA_SASL_PORT=9094
KTLS=$KDIR/tls
# The broker's keystore password (a local stack's own certificate; not a secret anywhere else).
KTLS_PASS=sitesync-local-stack

MARIADBS=(a b c)
declare -A MPORT=([a]=3307 [b]=3308 [c]=3309)
declare -A MID=([a]=1 [b]=2 [c]=3)

TIMEOUT=${SITESYNC_STACK_TIMEOUT:-120}

export PATH=$PATH:/usr/sbin:/sbin

log() { echo "stack: $*" >&2; }
die() { echo "stack: ERROR: $*" >&2; exit 1; }

now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$t"; }
since() { # seconds since a now_us value, one decimal
    local d=$(( $(now_us) - $1 ))
    printf '%d.%d' $((d / 1000000)) $(( (d % 1000000) / 100000 ))
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# is PID alive and running executable EXE with MARKER somewhere in its command line?
pid_matches() {
    local pid=$1 exe=$2 marker=$3 a
    local -a argv=()
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    mapfile -d '' argv 2>/dev/null <"/proc/$pid/cmdline" || return 1 # builtin: no fork
    (( ${#argv[@]} > 0 )) || return 1
    [[ ${argv[0]##*/} == "$exe" ]] || return 1
    for a in "${argv[@]:1}"; do
        [[ $a == "$marker" ]] && return 0
    done
    return 1
}

# pid of a process of ours (by executable and marker), from PIDFILE or, failing that, /proc
find_ours() {
    local pidfile=$1 exe=$2 marker=$3 pid p
    if [[ -f $pidfile ]]; then
        pid=$(<"$pidfile")
        if pid_matches "$pid" "$exe" "$marker"; then echo "$pid"; return 0; fi
    fi
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        if pid_matches "$pid" "$exe" "$marker"; then echo "$pid"; return 0; fi
    done
    return 1
}

tail_log() { # FILE...: print the last lines of the logs that exist
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 30 "$f" >&2
    done
}

# ------------------------------------------------------------------ installation

apt_busy() { pgrep -x apt-get >/dev/null || pgrep -x apt >/dev/null || pgrep -x dpkg >/dev/null; }

wait_for_apt() {
    apt_busy || return 0
    log "apt-get/dpkg is running (see /tmp/apt.log); waiting for it to finish"
    local t0=$SECONDS
    while apt_busy; do
        (( SECONDS - t0 < 900 )) || die "apt-get/dpkg still running after 900 s"
        sleep 2
    done
}

apt_install() {
    wait_for_apt
    log "installing $* (apt-get)"
    apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null ||
        die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@" >/dev/null ||
        die "apt-get install $* failed"
}

ensure_packages() {
    local need_mariadb=0
    for bin in mariadbd mariadb mariadb-install-db; do
        command -v "$bin" >/dev/null || need_mariadb=1
    done
    if (( need_mariadb )) && apt_busy; then
        wait_for_apt   # maybe that apt run is installing MariaDB right now
        need_mariadb=0
        for bin in mariadbd mariadb mariadb-install-db; do
            command -v "$bin" >/dev/null || need_mariadb=1
        done
    fi
    if (( need_mariadb )); then
        apt_install mariadb-server mariadb-client
    fi
    command -v openssl >/dev/null || apt_install openssl # certificates of the TLS listener and tests
    command -v java >/dev/null || apt_install openjdk-17-jre-headless
    command -v mvn >/dev/null || apt_install maven
    # the Debian package may run a system MariaDB (3306, /run/mysqld): not ours, left alone
    local sys
    local -a argv
    for sys in $(pgrep -x mariadbd || true); do
        argv=()
        mapfile -d '' argv 2>/dev/null <"/proc/$sys/cmdline" || continue
        (( ${#argv[@]} > 0 )) || continue # exiting, or a zombie not yet reaped
        [[ " ${argv[*]} " == *" --datadir=$STATE/"* ]] ||
            log "note: a MariaDB not started by this script runs (pid $sys); left alone"
    done
}

ensure_kafka_libs() {
    local want have=""
    want=$(sha256sum <"$KAFKA_POM" | cut -d' ' -f1)
    [[ -f $KLIBS/.pom.sha256 ]] && have=$(<"$KLIBS/.pom.sha256")
    if [[ $want == "$have" ]]; then return 0; fi
    log "fetching Kafka jars (maven, deploy/local/kafka/pom.xml)"
    local t0 out
    t0=$(now_us)
    rm -rf "$KLIBS.tmp"
    if ! out=$(mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies \
        -DoutputDirectory="$KLIBS.tmp" 2>&1); then
        echo "$out" | tail -n 40 >&2
        die "maven could not fetch Kafka's jars"
    fi
    echo "$want" >"$KLIBS.tmp/.pom.sha256"
    rm -rf "$KLIBS"
    mv "$KLIBS.tmp" "$KLIBS"
    log "Kafka jars in $KLIBS ($(since "$t0") s)"
}

# ------------------------------------------------------------------ MariaDB

mdir() { echo "$STATE/mariadb-$1"; }
msock() {
    local s
    s="$(mdir "$1")/mariadbd.sock"
    if (( ${#s} > 100 )); then # unix socket paths are limited to 108 bytes
        s=/tmp/sitesync-$(printf %s "$STATE" | md5sum | cut -c1-10)-$1.sock
    fi
    echo "$s"
}
mmarker() { echo "--datadir=$(mdir "$1")/data"; }

mariadb_install() { # NAME: a fresh datadir if there is none
    local n=$1 d
    d=$(mdir "$n")
    [[ -d $d/data/mysql ]] && return 0
    mkdir -p "$d"
    log "mariadb :${MPORT[$n]}: new datadir $d/data"
    rm -rf "$d/data" "$d/.users-ok"
    mkdir -p "$d/tmp" # own tmpdir: parallel bootstraps sharing /tmp collide on temp table names
    if ! TMPDIR=$d/tmp mariadb-install-db --no-defaults --user=root --datadir="$d/data" --tmpdir="$d/tmp" \
        --auth-root-authentication-method=normal --skip-test-db >"$d/install-db.log" 2>&1; then
        tail_log "$d/install-db.log"
        rm -rf "$d/data"
        die "mariadb-install-db failed for $d/data"
    fi
}

mariadb_start() { # NAME; prints nothing, sets up datadir if needed and starts mariadbd
    local n=$1 d port pid
    d=$(mdir "$n")
    port=${MPORT[$n]}
    if pid=$(find_ours "$d/mariadbd.pid.stack" mariadbd "$(mmarker "$n")"); then
        echo "$pid" >"$d/mariadbd.pid.stack"
        log "mariadb :$port already running (pid $pid)"
        return 0
    fi
    rm -f "$d/mariadbd.pid.stack"
    if port_open "$port"; then
        die "port $port is in use by a process this script did not start:
$(ss -ltnp "sport = :$port" 2>/dev/null | tail -n +2)"
    fi
    mariadb_install "$n"
    mkdir -p "$d/tmp"
    rm -f "$(msock "$n")" "$d/mariadbd.pid"
    # own session (setsid) and no inherited descriptors (stdio, lock fd 9): survives the caller,
    # never holds its pipes or the stack lock
    setsid mariadbd --no-defaults \
        --user=root \
        --datadir="$d/data" \
        --tmpdir="$d/tmp" \
        --port="$port" --bind-address=127.0.0.1 \
        --socket="$(msock "$n")" \
        --pid-file="$d/mariadbd.pid" \
        --log-error="$d/error.log" \
        --server-id="${MID[$n]}" \
        --gtid-domain-id="${MID[$n]}" \
        --log-bin="$d/data/mysql-bin" \
        --binlog-format=ROW \
        --binlog-row-image=FULL \
        --binlog-row-metadata=FULL \
        --log-bin-compress=OFF \
        --binlog-expire-logs-seconds=172800 \
        --max-allowed-packet=256M \
        --max-connections=500 \
        --character-set-server=utf8mb4 \
        --collation-server=utf8mb4_unicode_ci \
        </dev/null >>"$d/mariadbd.out" 2>&1 9>&- &
    echo $! >"$d/mariadbd.pid.stack"
    MSTART[$n]=$(now_us)
}

mariadb_wait() { # NAME
    local n=$1 d port pid t0 deadline sock
    d=$(mdir "$n")
    port=${MPORT[$n]}
    sock=$(msock "$n")
    t0=${MSTART[$n]:-$(now_us)}
    deadline=$((SECONDS + TIMEOUT))
    pid=$(<"$d/mariadbd.pid.stack")
    until mariadb --no-defaults -S "$sock" -uroot --connect-timeout=2 -Nse 'select 1' >/dev/null 2>&1; do
        if ! pid_matches "$pid" mariadbd "$(mmarker "$n")"; then
            rm -f "$d/mariadbd.pid.stack"
            tail_log "$d/error.log" "$d/mariadbd.out"
            die "mariadb :$port (datadir $d/data) exited during startup"
        fi
        if (( SECONDS > deadline )); then
            tail_log "$d/error.log" "$d/mariadbd.out"
            die "mariadb :$port did not answer within ${TIMEOUT} s (pid $pid)"
        fi
        sleep 0.05
    done
    if [[ ! -f $d/.users-ok ]]; then
        # root without password from 127.0.0.1 over TCP (whatever host name the server resolves
        # it to); kept out of the binlog so the tests start from clean binlogs
        mariadb --no-defaults -S "$sock" -uroot -e "
            SET SESSION sql_log_bin = 0;
            CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
            CREATE USER IF NOT EXISTS 'root'@'::1';
            CREATE USER IF NOT EXISTS 'root'@'%';
            GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
            GRANT ALL PRIVILEGES ON *.* TO 'root'@'::1' WITH GRANT OPTION;
            GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
            FLUSH PRIVILEGES;" || die "mariadb :$port: could not set up root@127.0.0.1"
        touch "$d/.users-ok"
    fi
    mariadb --no-defaults -h127.0.0.1 -P"$port" -uroot --connect-timeout=5 -Nse 'select 1' >/dev/null ||
        die "mariadb :$port answers on its socket but not as root over TCP from 127.0.0.1"
    log "mariadb :$port up, pid $pid ($(since "$t0") s)"
}

# ------------------------------------------------------------------ Kafka

kmarker() { echo "$KCONF/server.properties"; }

kafka_tls() { # a CA and the broker's certificate for the SASL_SSL listener, made once
    [[ -f $KTLS/broker.p12 ]] && return 0
    mkdir -p "$KTLS"
    local o=(openssl)
    (
        cd "$KTLS"
        "${o[@]}" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
        "${o[@]}" req -x509 -new -key ca.key -days 3650 -subj "/CN=sitesync local stack CA" -out ca.pem
        "${o[@]}" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out broker.key
        "${o[@]}" req -new -key broker.key -subj "/CN=localhost" -out broker.csr
        printf 'subjectAltName = IP:127.0.0.1, DNS:localhost\n' >broker.ext
        "${o[@]}" x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile broker.ext -out broker.pem
        "${o[@]}" pkcs12 -export -in broker.pem -inkey broker.key -name broker \
            -passout "pass:$KTLS_PASS" -out broker.p12.new
        mv broker.p12.new broker.p12
    ) >"$KDIR/tls.log" 2>&1 || { tail_log "$KDIR/tls.log"; die "making the broker's certificate failed"; }
    log "kafka: made a CA and the broker's certificate in $KTLS"
}

kafka_config() {
    mkdir -p "$KCONF" "$KDATA" "$KLOGS"
    kafka_tls
    cat >"$KCONF/server.properties.new" <<EOF
# generated by deploy/local/stack.sh -- edits are overwritten
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$KTLS/broker.p12
ssl.keystore.password=$KTLS_PASS
ssl.key.password=$KTLS_PASS
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
log.dirs=$KDATA
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
    mv "$KCONF/server.properties.new" "$KCONF/server.properties"
    cat >"$KCONF/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by deploy/local/stack.sh: Kafka logs to <state>/kafka/logs/server.log;
     root level from SITESYNC_KAFKA_LOG_LEVEL at \`stack.sh up\` (default WARN) -->
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName="\${sys:kafka.logs.dir}/server.log"
                 filePattern="\${sys:kafka.logs.dir}/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="${SITESYNC_KAFKA_LOG_LEVEL:-WARN}"><AppenderRef ref="server"/></Root>
    <!-- the "Kafka Server started" line, which stack.sh waits for -->
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Logger name="kafka.Kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
  </Loggers>
</Configuration>
EOF
    # quiet logging for the CLI classes (java -Dlog4j2.configurationFile=... -cp "$libs/*" ...)
    cat >"$KCONF/tools-log4j2.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" shutdownHook="disable">
  <Appenders><Console name="stderr" target="SYSTEM_ERR"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="stderr"/></Root></Loggers>
</Configuration>
EOF
}

kafka_format() {
    [[ -f $KDATA/meta.properties ]] && return 0
    local cid t0 out
    if [[ -f $KDIR/cluster-id ]]; then
        cid=$(<"$KDIR/cluster-id")
    else
        cid=-
        while [[ $cid == -* ]]; do # a Kafka Uuid: 16 bytes, base64url, no padding
            cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
        done
        echo "$cid" >"$KDIR/cluster-id"
    fi
    log "kafka: formatting $KDATA (cluster id $cid)"
    t0=$(now_us)
    if ! out=$(java -Xmx256m -Dlog4j2.configurationFile="$KCONF/tools-log4j2.xml" -cp "$KLIBS/*" \
        kafka.tools.StorageTool format --ignore-formatted --standalone \
        -t "$cid" -c "$KCONF/server.properties" 2>&1); then
        echo "$out" >&2
        die "kafka storage format failed"
    fi
    log "kafka: formatted ($(since "$t0") s)"
}

kafka_start() {
    local pid
    if pid=$(find_ours "$KPID" java "$(kmarker)"); then
        echo "$pid" >"$KPID"
        log "kafka :$KAFKA_PORT already running (pid $pid)"
        KSTART=
        return 0
    fi
    rm -f "$KPID"
    local p
    for p in $KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_SASL_PORT; do
        if port_open "$p"; then
            die "port $p is in use by a process this script did not start:
$(ss -ltnp "sport = :$p" 2>/dev/null | tail -n +2)"
        fi
    done
    kafka_format
    KLOG_OFFSET=$(stat -c %s "$KLOGS/server.log" 2>/dev/null || echo 0)
    setsid java -Xms256m -Xmx768m \
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KCONF/log4j2.xml" -Dkafka.logs.dir="$KLOGS" \
        -cp "$KLIBS/*" kafka.Kafka "$KCONF/server.properties" \
        </dev/null >"$KDIR/kafka.out" 2>&1 9>&- &
    echo $! >"$KPID"
    KSTART=$(now_us)
}

kafka_wait() {
    local pid t0 deadline
    pid=$(<"$KPID")
    t0=${KSTART:-$(now_us)}
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        if [[ -n $KSTART ]]; then # started now: wait for the broker's own "started" line
            if tail -c +$((KLOG_OFFSET + 1)) "$KLOGS/server.log" 2>/dev/null | grep -q 'Kafka Server started' &&
                port_open "$KAFKA_PORT"; then break; fi
        else
            port_open "$KAFKA_PORT" && break
        fi
        if ! pid_matches "$pid" java "$(kmarker)"; then
            rm -f "$KPID"
            tail_log "$KDIR/kafka.out" "$KLOGS/server.log"
            die "kafka exited during startup"
        fi
        if (( SECONDS > deadline )); then
            tail_log "$KDIR/kafka.out" "$KLOGS/server.log"
            die "kafka did not start within ${TIMEOUT} s (pid $pid)"
        fi
        sleep 0.1
    done
    log "kafka :$KAFKA_PORT up, pid $pid ($(since "$t0") s)"
}

# ------------------------------------------------------------------ commands

declare -A MSTART=()
KSTART=
KLOG_OFFSET=0

cmd_up() {
    local t0 n
    t0=$(now_us)
    ensure_packages
    ensure_kafka_libs
    kafka_config
    # first run: the three datadirs and Kafka's storage are prepared in parallel (~1 s each)
    local -a prep=()
    for n in "${MARIADBS[@]}"; do
        [[ -d $(mdir "$n")/data/mysql ]] || { mariadb_install "$n" & prep+=($!); }
    done
    [[ -f $KDATA/meta.properties ]] || { kafka_format & prep+=($!); }
    for n in "${prep[@]}"; do wait "$n" || exit 1; done
    for n in "${MARIADBS[@]}"; do mariadb_start "$n"; done
    kafka_start
    for n in "${MARIADBS[@]}"; do mariadb_wait "$n"; done
    kafka_wait
    log "all up ($(since "$t0") s); state in $STATE"
}

stop_pid() { # LABEL PIDFILE EXE MARKER: SIGTERM now; the caller waits with wait_stopped
    local label=$1 pidfile=$2 exe=$3 marker=$4 pid
    if pid=$(find_ours "$pidfile" "$exe" "$marker"); then
        kill -TERM "$pid" 2>/dev/null || true
        echo "$pid"
    else
        rm -f "$pidfile"
        log "$label not running"
    fi
}

wait_stopped() { # LABEL PIDFILE EXE MARKER PID
    local label=$1 pidfile=$2 exe=$3 marker=$4 pid=$5 t0 deadline
    t0=$(now_us)
    deadline=$((SECONDS + 15))
    while pid_matches "$pid" "$exe" "$marker"; do
        if (( SECONDS >= deadline )); then
            log "$label (pid $pid) still running after 15 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.05
    done
    rm -f "$pidfile"
    log "$label stopped ($(since "$t0") s)"
}

cmd_down() {
    local purge=${1:-} n d
    local -A pids=()
    for n in "${MARIADBS[@]}"; do
        d=$(mdir "$n")
        pids[$n]=$(stop_pid "mariadb :${MPORT[$n]}" "$d/mariadbd.pid.stack" mariadbd "$(mmarker "$n")")
    done
    pids[kafka]=$(stop_pid "kafka :$KAFKA_PORT" "$KPID" java "$(kmarker)")
    for n in "${MARIADBS[@]}"; do
        d=$(mdir "$n")
        [[ -n ${pids[$n]} ]] &&
            wait_stopped "mariadb :${MPORT[$n]}" "$d/mariadbd.pid.stack" mariadbd "$(mmarker "$n")" "${pids[$n]}"
    done
    [[ -n ${pids[kafka]} ]] && wait_stopped "kafka :$KAFKA_PORT" "$KPID" java "$(kmarker)" "${pids[kafka]}"
    if [[ $purge == --purge ]]; then
        case $STATE in
        "" | / | "$REPO" | "$HOME") die "refusing to delete state dir '$STATE'" ;;
        esac
        rm -rf "$STATE"
        log "deleted $STATE"
    fi
    return 0
}

cmd_status() {
    local rc=0 n d pid state
    for n in "${MARIADBS[@]}"; do
        d=$(mdir "$n")
        if pid=$(find_ours "$d/mariadbd.pid.stack" mariadbd "$(mmarker "$n")") && port_open "${MPORT[$n]}"; then
            state=up
        else
            state=down rc=1
            [[ -n ${pid:-} ]] || pid=-
        fi
        printf 'mariadb-%s  %-4s  pid %-7s  127.0.0.1:%s\n' "$n" "$state" "$pid" "${MPORT[$n]}"
    done
    if pid=$(find_ours "$KPID" java "$(kmarker)") && port_open "$KAFKA_PORT"; then
        state=up
    else
        state=down rc=1
        [[ -n ${pid:-} ]] || pid=-
    fi
    printf 'kafka      %-4s  pid %-7s  127.0.0.1:%s\n' "$state" "$pid" "$KAFKA_PORT"
    return $rc
}

cmd_env() {
    cat <<EOF
export SITESYNC_KAFKA=127.0.0.1:$KAFKA_PORT
export SITESYNC_MYSQL_A=mysql://root@127.0.0.1:${MPORT[a]}
export SITESYNC_MYSQL_B=mysql://root@127.0.0.1:${MPORT[b]}
export SITESYNC_MYSQL_C=mysql://root@127.0.0.1:${MPORT[c]}
export SITESYNC_STACK_DIR=$STATE
export SITESYNC_KAFKA_LIBS=$KLIBS
export SITESYNC_KAFKA_SASL=127.0.0.1:$KAFKA_SASL_PORT
export SITESYNC_KAFKA_CA=$KTLS/ca.pem
EOF
}

usage() {
    echo "usage: $0 up | down [--purge] | purge | status | env" >&2
    exit 2
}

main() {
    local cmd=${1:-}
    [[ -n $cmd ]] || usage
    shift
    case $cmd in
    up | down | purge)
        mkdir -p "$STATE"
        exec 9>"$STATE/.lock"
        flock -w 300 9 || die "another stack.sh holds $STATE/.lock"
        ;;
    esac
    case $cmd in
    up) cmd_up ;;
    down)
        [[ -z ${1:-} || $1 == --purge ]] || usage
        cmd_down "${1:-}"
        ;;
    purge) cmd_down --purge ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) usage ;;
    esac
}

main "$@"
