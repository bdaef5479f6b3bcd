#!/usr/bin/env python3
"""sitesync's speed on the local stack: capture, apply, lag, snapshot, memory; each figure beside
the machine's own limit. Started by deploy/bench/run.sh (see README.md beside this file).

Only the standard library, the `mariadb` client tools, sysbench and Kafka's Java tools. Every
database, control database, Kafka topic, consumer group and binlog client id is this run's own
(`bench_<run>_*`, `bench.<run>.*`), so tests running at the same time are not disturbed; no
global server setting is changed, and no server is stopped.
"""

import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
STACK = os.environ.get("SITESYNC_STACK_DIR", os.path.join(REPO, ".stack"))
KAFKA_LIBS = os.environ.get("SITESYNC_KAFKA_LIBS", os.path.join(STACK, "kafka", "libs"))
KAFKA = os.environ.get("SITESYNC_KAFKA", "127.0.0.1:9092")
PORT_A, PORT_B = 3307, 3308
HOST = "127.0.0.1"


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_list(name, default):
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


# ----------------------------------------------------------------------------- sizes (env)
ROWS = env_int("BENCH_ROWS", 1_000_000)              # backlog rows (capture + apply)
TXN_ROWS = env_int("BENCH_TXN_ROWS", 1000)           # rows per backlog transaction
STEADY_ROWS = env_int("BENCH_STEADY_ROWS", 300_000)  # rows written while capture runs
SNAPSHOT_ROWS = env_int("BENCH_SNAPSHOT_ROWS", 200_000)
VERIFY_ROWS = env_int("BENCH_VERIFY_ROWS", 1_000_000)    # rows of the table verify compares
VERIFY_LAG_RATE = env_int("BENCH_VERIFY_LAG_RATE", 2000)  # offered rows/s while verify runs
EXPORT_ROWS = env_int("BENCH_EXPORT_ROWS", 300_000)     # backlog rows capture reads with and without [export]
LAG_RATES = [int(x) for x in env_list("BENCH_LAG_RATES", "500,2000,10000")]
LAG_TXN = [int(x) for x in env_list("BENCH_LAG_TXN", "1,10")]
LAG_LOADS = env_list("BENCH_LAG_LOADS", "sysbench,lims")
LAG_SECONDS = env_int("BENCH_LAG_SECONDS", 15)
LAG_WARMUP = float(os.environ.get("BENCH_LAG_WARMUP", "1"))
DRAIN_SECONDS = env_int("BENCH_DRAIN_SECONDS", 120)
STALL_SECONDS = env_int("BENCH_STALL_SECONDS", 20)
STALL_RATE = env_int("BENCH_STALL_RATE", 5000)
STALL_TXN = env_int("BENCH_STALL_TXN", 10)
PHASES = env_list("BENCH_PHASES", "bulk,lag,snapshot,stall,verify,export")
KEEP = os.environ.get("BENCH_KEEP", "0") == "1"
PERF = os.environ.get("BENCH_PERF", "0") == "1"
PERF_FREQ = env_int("BENCH_PERF_FREQ", 199)
HEAPTRACK = os.environ.get("BENCH_HEAPTRACK", "0") == "1"
# Extra tuning for every federation file of the run, e.g. to try librdkafka settings:
#   BENCH_KAFKA_PROPERTIES="queued.max.messages.kbytes=16384,queue.buffering.max.kbytes=16384"
#   BENCH_TOML=$'[apply]\nbatch_records = 5000'
KAFKA_PROPERTIES = [kv.split("=", 1) for kv in env_list("BENCH_KAFKA_PROPERTIES", "")]
EXTRA_TOML = os.environ.get("BENCH_TOML", "")
BIN = os.environ.get("BENCH_BIN", os.path.join(REPO, "target", "release", "sitesync"))
RUN = os.environ.get("BENCH_RUN") or datetime.now().strftime("%m%d%H%M%S")
OUT = os.path.join(os.environ.get("BENCH_OUT", os.path.join(STACK, "bench")), RUN)
TARGETS = {
    "capture_rows_per_s": 100_000,
    "capture_vs_kafka": 0.5,
    "apply_vs_plain_sql": 0.6,
    "lag_p99_ms_at_2000": 200,
    "lag_p99_ms_at_10000": 1000,
    "peak_rss_mb": 100,
}

CLK_TCK = os.sysconf("SC_CLK_TCK")
T0 = time.time()


def log(msg):
    print(f"[bench {time.time() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- MariaDB
def sql(port, query, db=None, timeout=600):
    """Runs `query` with the mariadb client; rows as lists of strings."""
    args = ["mariadb", f"-h{HOST}", f"-P{port}", "-uroot", "-N", "-B", "--local-infile=0"]
    if db:
        args.append(db)
    p = subprocess.run(args + ["-e", query], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"mariadb :{port} {db or ''}: {query[:200]}: {p.stderr.strip()}")
    return [line.split("\t") for line in p.stdout.splitlines()]


def scalar(port, query, db=None):
    rows = sql(port, query, db)
    return rows[0][0] if rows else None


def sql_script(port, path, db):
    """Feeds a file of statements to one mariadb client; returns the seconds it took."""
    t = time.time()
    with open(path, "rb") as f:
        p = subprocess.run(["mariadb", f"-h{HOST}", f"-P{port}", "-uroot", db], stdin=f, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"mariadb :{port} {db} < {path}: {p.stderr.decode()[:500]}")
    return time.time() - t


STATUS_VARS = ("Questions", "Com_insert", "Com_update", "Com_delete", "Com_select", "Com_savepoint",
               "Com_rollback_to_savepoint", "Com_begin", "Com_commit", "Com_stmt_execute", "Com_stmt_prepare")


def server_status(port):
    """Global statement counters (the server is shared: other tests add a little noise)."""
    names = ",".join(f"'{v}'" for v in STATUS_VARS)
    return {k: int(v) for k, v in sql(port, f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})")}


def per_1000_rows(before, after, rows):
    return {k: round(1000 * (after[k] - before[k]) / rows, 1) for k in STATUS_VARS if rows}


def service_pids():
    """mariadbd A, mariadbd B and Kafka, from the stack's pid files."""
    out = {}
    for name, path in (("mariadbd_a", "mariadb-a/mariadbd.pid"), ("mariadbd_b", "mariadb-b/mariadbd.pid"), ("kafka", "kafka/kafka.pid")):
        try:
            out[name] = int(open(os.path.join(STACK, path)).read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


class CpuMeter:
    """CPU seconds of the stack's servers and the whole machine over an interval."""

    def __init__(self):
        self.pids = service_pids()
        self.t = time.time()
        self.cpu = {k: (proc_stat(p) or (0,))[0] for k, p in self.pids.items()}
        self.mark = machine_cpu()

    def result(self):
        dt = time.time() - self.t
        out = {f"{k}_cpu_pct": round(100 * ((proc_stat(p) or (0,))[0] - self.cpu[k]) / dt, 1) for k, p in self.pids.items()}
        out["machine_busy_pct"] = busy_since(self.mark)
        return out


def top_now(seconds=2.0, n=8):
    """The processes using the CPU right now (other agents share the machine)."""
    def snap():
        d = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        head, rest = f.read().rsplit(")", 1)
                    fields = rest.split()
                    d[pid] = (head.split("(", 1)[1], int(fields[11]) + int(fields[12]))
                except (OSError, IndexError):
                    pass
        return d
    a = snap()
    time.sleep(seconds)
    b = snap()
    use = sorted(((b[p][1] - a[p][1], b[p][0]) for p in b if p in a), reverse=True)[:n]
    return [f"{100 * t / CLK_TCK / seconds:.0f}% {name}" for t, name in use if t > 0]


def master_status(port):
    r = sql(port, "SHOW MASTER STATUS")[0]
    return r[0], int(r[1])


# ----------------------------------------------------------------------------- Kafka
def _kstr(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def high_watermark(topic, partition=0):
    """Kafka ListOffsets (v1, latest) for one partition: the number of records it ever held.
    A few lines of the wire protocol instead of a JVM per poll (2 cores)."""
    host, port = KAFKA.split(",")[0].rsplit(":", 1)
    body = struct.pack(">ii", -1, 1) + _kstr(topic) + struct.pack(">i", 1) + struct.pack(">iq", partition, -1)
    msg = struct.pack(">hhi", 2, 1, 1) + _kstr("sitesync-bench") + body
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(struct.pack(">i", len(msg)) + msg)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">i", buf[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise IOError("kafka closed the connection")
            buf += chunk
    r = buf[4:]
    off = 4 + 4  # correlation id, topic count
    off += 2 + struct.unpack_from(">h", r, off)[0] + 4
    _, err, _, offset = struct.unpack_from(">ihqq", r, off)
    if err == 3:
        return 0
    if err != 0:
        raise IOError(f"ListOffsets {topic}: error {err}")
    return offset


def java_tool(cls, args, timeout=900, out=None):
    log4j = os.path.join(STACK, "kafka", "config", "tools-log4j2.xml")
    cmd = ["java", "-Xmx768m", f"-Dlog4j2.configurationFile={log4j}", "-cp", os.path.join(KAFKA_LIBS, "*"), cls] + args
    p = subprocess.run(cmd, stdout=out if out is not None else subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{cls} failed: {p.stderr[-2000:]}")
    return p.stdout if out is None else None


def create_topic(topic):
    java_tool("org.apache.kafka.tools.TopicCommand", ["--bootstrap-server", KAFKA, "--create", "--if-not-exists", "--topic", topic,
                                                       "--partitions", "1", "--replication-factor", "1",
                                                       "--config", "max.message.bytes=67108864"])


# ----------------------------------------------------------------------------- processes
def proc_stat(pid):
    """(cpu seconds, VmRSS MB, VmHWM MB) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        rss = hwm = 0.0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
        return cpu, rss, hwm
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def machine_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v), idle


def busy_since(mark):
    total, idle = machine_cpu()
    dt = total - mark[0]
    return round(100.0 * (1 - (idle - mark[1]) / dt), 1) if dt > 0 else None


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


class Sitesync:
    """One sitesync process of this run, with its log, metrics and /proc figures."""

    def __init__(self, fed, site, command, extra=()):
        self.fed, self.site, self.command = fed, site, command
        self.log_path = os.path.join(OUT, f"{fed.name}-{site}-{command}.log")
        n = 1
        while os.path.exists(self.log_path):
            n += 1
            self.log_path = os.path.join(OUT, f"{fed.name}-{site}-{command}-{n}.log")
        args = [BIN, "--config", fed.path, "--site", site, command, *extra]
        if PERF and command in ("capture", "apply", "run"):
            self.perf_data = os.path.join(OUT, f"perf-{fed.name}-{site}-{command}.data")
            args = ["perf", "record", "-e", "cpu-clock", "-F", str(PERF_FREQ), "--call-graph", "dwarf,16384", "-o", self.perf_data, "--"] + args
        elif HEAPTRACK and command in ("capture", "apply", "run"):
            # Heap profile (heaptrack_print -f <file>.zst): who holds the memory at the peak.
            args = ["heaptrack", "-o", os.path.join(OUT, f"heaptrack-{fed.name}-{site}-{command}")] + args
        self.started = time.time()
        self.p = subprocess.Popen(args, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.p.pid
        if (PERF or HEAPTRACK) and command in ("capture", "apply", "run"):
            self.pid = self._child_of(self.p.pid)
        self.listen = fed.listen[site]

    @staticmethod
    def _child_of(pid):
        """The sitesync process under a wrapper (perf, heaptrack): the descendant running BIN."""
        for _ in range(200):
            todo = [pid]
            while todo:
                p = todo.pop()
                try:
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        if f.read().split(b"\0")[0] == BIN.encode() and p != pid:
                            return p
                    for task in os.listdir(f"/proc/{p}/task"):
                        with open(f"/proc/{p}/task/{task}/children") as f:
                            todo.extend(int(k) for k in f.read().split())
                except (FileNotFoundError, ProcessLookupError):
                    pass
            time.sleep(0.05)
        raise RuntimeError("the wrapper did not start sitesync")

    def alive(self):
        return self.p.poll() is None

    def check(self):
        if not self.alive():
            raise RuntimeError(f"sitesync {self.command} at {self.site} exited ({self.p.returncode}); log {self.log_path}:\n" + tail(self.log_path))

    def stat(self):
        return proc_stat(self.pid)

    def metrics(self):
        with urllib.request.urlopen(f"http://{self.listen}/metrics", timeout=3) as r:
            return r.read().decode()

    def metric_sum(self, name, **labels):
        try:
            text = self.metrics()
        except OSError:
            return None
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})?\s+(\S+)", line)
            if not m or m.group(1) != name:
                continue
            lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(lab.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def histograms(self):
        """name -> (sum, count) of every histogram, all labels added up (None if unreachable)."""
        try:
            text = self.metrics()
        except OSError:
            return None
        out = {}
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:]+)_(sum|count)(\{[^}]*\})?\s+(\S+)", line)
            if m:
                s, c = out.get(m.group(1), (0.0, 0.0))
                out[m.group(1)] = (s + float(m.group(4)), c) if m.group(2) == "sum" else (s, c + float(m.group(4)))
        return out

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check()
            try:
                with urllib.request.urlopen(f"http://{self.listen}/metrics", timeout=2) as r:
                    text = r.read().decode()
                comp = "capture" if self.command in ("capture", "run") else "apply"
                if re.search(rf'sitesync_component_running\{{[^}}]*component="{comp}"[^}}]*\}} 1', text):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sitesync {self.command} at {self.site} not running after {timeout} s; log {self.log_path}:\n" + tail(self.log_path))

    def stop(self):
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)  # sitesync itself (under perf: perf's child)
            try:
                self.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        try:
            os.killpg(self.p.pid, signal.SIGTERM)  # a wrapper's helpers (heaptrack_interpret), if any
        except ProcessLookupError:
            pass


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- federations
SERVER_ID_BASE = 700_000 + (os.getpid() % 5000) * 20


class Fed:
    """A federation of this run: own databases, control databases, topics, ids, ports."""

    count = 0

    def __init__(self, name, sites, entities_and_routes, extra=""):
        Fed.count += 1
        self.name = f"bench_{RUN}_{name}"
        self.db = self.name
        self.control_db = f"benchctl_{RUN}_{name}"
        self.prefix = f"bench.{RUN}.{name}"
        self.sites = sites  # site id -> port
        self.listen = {s: f"{HOST}:{free_port()}" for s in sites}
        self.path = os.path.join(OUT, f"{name}.toml")
        lines = [
            "[federation]", f'name = "{self.name}"', f'topic_prefix = "{self.prefix}"',
            f'database = "{self.db}"', f'control_database = "{self.control_db}"', "",
            "[kafka]", f'bootstrap_servers = "{KAFKA}"', "",
        ]
        if KAFKA_PROPERTIES:
            lines += ["[kafka.properties]"] + [f'"{k}" = "{v}"' for k, v in KAFKA_PROPERTIES] + [""]
        lines += [extra, EXTRA_TOML, ""]
        for i, (site, port) in enumerate(sites.items()):
            lines += [f"[sites.{site}]", f'mysql = "mysql://root@{HOST}:{port}/{self.db}"',
                      f"server_id = {SERVER_ID_BASE + Fed.count * 3 + i}", f'listen = "{self.listen[site]}"', ""]
        with open(self.path, "w") as f:
            f.write("\n".join(lines) + "\n" + entities_and_routes)
        for port in set(sites.values()):
            sql(port, f"CREATE DATABASE IF NOT EXISTS `{self.db}` CHARACTER SET utf8mb4")

    def topic(self, site):
        return f"{self.prefix}.{site}"

    def cli(self, site, *args, timeout=600):
        p = subprocess.run([BIN, "--config", self.path, "--site", site, *args], capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"sitesync {' '.join(args)} at {site}: {p.stdout}{p.stderr}")
        return p.stdout

    def init(self):
        for site in self.sites:
            self.cli(site, "init")

    def start(self, site, command):
        return Sitesync(self, site, command)

    def drop(self):
        for port in set(self.sites.values()):
            for db in (self.db, self.control_db):
                try:
                    sql(port, f"DROP DATABASE IF EXISTS `{db}`")
                except Exception as e:  # noqa: BLE001
                    log(f"cleanup: {e}")


def wait_until(what, cond, timeout, procs=(), poll=0.1):
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        for p in procs:
            p.check()
        if time.time() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


# ----------------------------------------------------------------------------- rows
ROWS_DDL = """CREATE TABLE `{t}` (
  id BIGINT NOT NULL PRIMARY KEY,
  k INT NOT NULL,
  c VARCHAR(120) NOT NULL,
  pad VARCHAR(60) NOT NULL,
  ts DATETIME(6) NOT NULL
) ENGINE=InnoDB"""

# Row i, the same on the server (INSERT ... SELECT FROM seq) and here (plain SQL): ~200 bytes.
ROW_SELECT = ("SELECT seq, (seq * 7919) % 1000003, CONCAT(MD5(seq), MD5(seq + 1), MD5(seq + 2), LEFT(MD5(seq + 3), 24)), "
              "CONCAT(MD5(-seq), LEFT(MD5(seq * 5), 28)), TIMESTAMP'2025-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_{a}_to_{b}")


def md5(x):
    return hashlib.md5(str(x).encode()).hexdigest()


def row_values(i):
    ts = datetime.fromtimestamp(1735689600 + i, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    c = md5(i) + md5(i + 1) + md5(i + 2) + md5(i + 3)[:24]
    pad = md5(-i) + md5(i * 5)[:28]
    return f"({i},{(i * 7919) % 1000003},'{c}','{pad}','{ts}')"


def write_rows_script(path, table, first, count, per_txn):
    """INSERT ... SELECT FROM the sequence engine, one transaction per `per_txn` rows."""
    with open(path, "w") as f:
        for a in range(first, first + count, per_txn):
            b = min(a + per_txn - 1, first + count - 1)
            f.write(f"INSERT INTO `{table}` {ROW_SELECT.format(a=a, b=b)};\n")


def plain_sql_script(path, table, first, count, per_stmt):
    with open(path, "w") as f:
        for a in range(first, first + count, per_stmt):
            b = min(a + per_stmt - 1, first + count - 1)
            f.write(f"INSERT INTO `{table}` VALUES " + ",".join(row_values(i) for i in range(a, b + 1)) + ";\n")


def rate(n, seconds):
    return round(n / seconds, 1) if seconds > 0 else None


def ratio(a, b):
    return round(a / b, 3) if a and b else None


# ----------------------------------------------------------------------------- phases
RESULTS = {}


def want(part):
    return part in PHASES or "bulk" in PHASES


def phase_bulk():
    """Capture catch-up of a backlog, capture at steady state, their machine limits; apply of
    the topic at B, and plain SQL at B."""
    res = RESULTS.setdefault("bulk", {})
    fed = Fed("bulk", {"a": PORT_A, "b": PORT_B},
              '[entities.row]\ntable = "bench_rows"\n\n[[routes]]\nfrom = ["a"]\nto = ["b"]\nentities = ["row"]\n')
    FEDS.append(fed)
    for port in (PORT_A, PORT_B):
        sql(port, ROWS_DDL.format(t="bench_rows"), fed.db)
    sql(PORT_B, ROWS_DDL.format(t="plain_rows"), fed.db)
    fed.init()  # records capture's start position: the backlog comes after it
    topic = fed.topic("a")

    # -- the backlog, capture stopped
    script = os.path.join(OUT, "backlog.sql")
    write_rows_script(script, "bench_rows", 1, ROWS, TXN_ROWS)
    file0, pos0 = master_status(PORT_A)
    log(f"writing the backlog: {ROWS} rows in {TXN_ROWS}-row transactions at A")
    secs = sql_script(PORT_A, script, fed.db)
    os.remove(script)
    file1, pos1 = master_status(PORT_A)
    res["backlog"] = {"rows": ROWS, "rows_per_txn": TXN_ROWS, "write_seconds": round(secs, 2),
                      "write_rows_per_s": rate(ROWS, secs), "binlog_from": [file0, pos0], "binlog_to": [file1, pos1]}

    # -- capture catches up
    log("capture catch-up")
    meter = CpuMeter()
    cap = fed.start("a", "capture")
    t0 = cap.started
    first = None
    samples, next_sample = [], t0
    while True:
        hw = high_watermark(topic)
        now = time.time()
        if hw > 0 and first is None:
            first = now
        if now >= next_sample:
            st = cap.stat()
            if st:
                samples.append((round(now - t0, 1), hw, round(st[1], 1)))
            next_sample = now + 1.0
        if hw >= ROWS:
            break
        cap.check()
        if now - t0 > 3600:
            raise RuntimeError("capture catch-up took over an hour")
        time.sleep(0.05)
    t1 = time.time()
    cpu, _, hwm = cap.stat()
    res["capture_catchup"] = {
        "rows": ROWS, "seconds": round(t1 - t0, 2), "rows_per_s": rate(ROWS, t1 - t0),
        "rows_per_s_from_first_record": rate(ROWS, t1 - first), "startup_seconds": round(first - t0, 2),
        "cpu_seconds": round(cpu, 2), "cpu_s_per_100k_rows": round(cpu / (ROWS / 1e5), 3), "peak_rss_mb": round(hwm, 1),
        "sitesync_cpu_pct": round(100 * cpu / (t1 - t0), 1), **meter.result(),
        "rss_samples_t_records_mb": samples,
    }
    log(f"capture catch-up: { {k: v for k, v in res['capture_catchup'].items() if k != 'rss_samples_t_records_mb'} }")

    # -- capture at steady state: the server is written as fast as it takes 1000-row transactions
    if STEADY_ROWS > 0 and want("steady"):
        script2 = os.path.join(OUT, "steady.sql")
        write_rows_script(script2, "bench_rows", ROWS + 1, STEADY_ROWS, TXN_ROWS)
        cpu0 = cap.stat()[0]
        mark = machine_cpu()
        log(f"capture at steady state: {STEADY_ROWS} rows written while capture runs")
        hw0 = high_watermark(topic)
        tw0 = time.time()
        writer = subprocess.Popen(["mariadb", f"-h{HOST}", f"-P{PORT_A}", "-uroot", fed.db], stdin=open(script2), stderr=subprocess.PIPE)
        samples = []
        while writer.poll() is None:
            samples.append((time.time(), high_watermark(topic)))
            cap.check()
            time.sleep(0.1)
        tw1 = time.time()
        if writer.returncode != 0:
            raise RuntimeError(f"steady writer failed: {writer.stderr.read().decode()[:500]}")
        os.remove(script2)
        hw_end_writer = high_watermark(topic)
        total = ROWS + STEADY_ROWS
        wait_until("capture to publish the steady-state rows", lambda: high_watermark(topic) >= total, 600, [cap], 0.05)
        t2 = time.time()
        cpu1 = cap.stat()[0]
        # delay: how far the topic trailed the writer, sampled
        res["capture_steady"] = {
            "rows": STEADY_ROWS, "writer_seconds": round(tw1 - tw0, 2), "offered_rows_per_s": rate(STEADY_ROWS, tw1 - tw0),
            "captured_rows_per_s_while_writing": rate(hw_end_writer - hw0, tw1 - tw0),
            "caught_up_seconds_after_writer": round(t2 - tw1, 2),
            "rows_per_s_overall": rate(STEADY_ROWS, t2 - tw0),
            "cpu_s_per_100k_rows": round((cpu1 - cpu0) / (STEADY_ROWS / 1e5), 3),
            "capture_cpu_pct_while_writing": round(100 * (cpu1 - cpu0) / (t2 - tw0), 1),
            "machine_busy_pct": busy_since(mark),
        }
        log(f"capture steady: {res['capture_steady']}")
    cpu, _, hwm = cap.stat()
    res["capture_catchup"]["peak_rss_mb_after_steady"] = round(hwm, 1)
    cap.stop()

    # -- machine limits: binlog decoding, Kafka producer
    files = [r[0] for r in sql(PORT_A, "SHOW BINARY LOGS")]
    span = files[files.index(file0): files.index(file1) + 1]
    for mode in ("remote", "local") if want("limits") else ():
        if mode == "remote":
            args = ["mariadb-binlog", "--read-from-remote-server", f"--host={HOST}", f"--port={PORT_A}", "--user=root"]
            names = span
        else:
            datadir = os.path.join(STACK, "mariadb-a", "data")
            args = ["mariadb-binlog"]
            names = [os.path.join(datadir, f) for f in span]
        args += ["-v", "--base64-output=decode-rows", f"--start-position={pos0}", f"--stop-position={pos1}"] + names
        t = time.time()
        p = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        secs = time.time() - t
        if p.returncode != 0:
            res[f"binlog_decode_{mode}"] = {"error": p.stderr.decode()[-500:]}
            continue
        res[f"binlog_decode_{mode}"] = {"rows": ROWS, "seconds": round(secs, 2), "rows_per_s": rate(ROWS, secs)}
        log(f"mariadb-binlog {mode}: {res[f'binlog_decode_{mode}']}")

    if want("limits"):
        kafka_limit(res, topic)
    if want("apply"):
        bulk_apply(res, fed, topic)


def kafka_limit(res, topic):
    sample = os.path.join(OUT, "records.jsonl")
    with open(sample, "w") as f:
        java_tool("org.apache.kafka.tools.consumer.ConsoleConsumer",
                  ["--bootstrap-server", KAFKA, "--topic", topic, "--from-beginning", "--max-messages", "1000",
                   "--timeout-ms", "30000", "--group", f"bench.{RUN}.sample"], out=f)
    with open(sample, "rb") as f:
        lines = [x for x in f.read().split(b"\n") if x]
    avg = sum(len(x) for x in lines) / max(len(lines), 1)
    res["record_bytes_avg"] = round(avg)
    pp_topic = f"bench.{RUN}.producer-perf"
    create_topic(pp_topic)
    log(f"Kafka ProducerPerformance: {ROWS} records of sitesync's own values (avg {avg:.0f} B)")
    out = java_tool("org.apache.kafka.tools.ProducerPerformance",
                    ["--topic", pp_topic, "--num-records", str(ROWS), "--throughput", "-1", "--payload-file", sample,
                     "--producer-props", f"bootstrap.servers={KAFKA}", "acks=all", "enable.idempotence=true",
                     "linger.ms=5", "compression.type=lz4", "batch.size=1000000", "max.in.flight.requests.per.connection=5"])
    m = re.findall(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency", out)
    n, rps, mbps, lat = m[-1]
    res["kafka_producer_perf"] = {"records": int(n), "records_per_s": float(rps), "mb_per_s": float(mbps), "avg_latency_ms": float(lat),
                                  "settings": "acks=all enable.idempotence=true linger.ms=5 compression.type=lz4 batch.size=1000000"}
    log(f"ProducerPerformance: {res['kafka_producer_perf']}")


def bulk_apply(res, fed, topic):
    # -- apply at B, the topic already full
    total = high_watermark(topic)
    log(f"apply of {total} records at B")
    meter = CpuMeter()
    status0 = server_status(PORT_B)
    app = fed.start("b", "apply")
    t0 = app.started

    samples = []

    def applied():
        v = app.metric_sum("sitesync_apply_records_total", outcome="applied")
        st = app.stat()
        if st and (not samples or time.time() - t0 - samples[-1][0] >= 2):
            samples.append((round(time.time() - t0, 1), int(v or 0), round(st[1], 1)))
        return v is not None and v >= total
    wait_until("apply to commit every record", applied, 7200, [app], 0.1)
    t1 = time.time()
    cpu, _, hwm = app.stat()
    count = int(scalar(PORT_B, "SELECT COUNT(*) FROM bench_rows", fed.db))
    res["apply"] = {"rows": total, "rows_in_table": count, "seconds": round(t1 - t0, 2), "rows_per_s": rate(total, t1 - t0),
                    "cpu_seconds": round(cpu, 2), "cpu_s_per_100k_rows": round(cpu / (total / 1e5), 3), "peak_rss_mb": round(hwm, 1),
                    "sitesync_cpu_pct": round(100 * cpu / (t1 - t0), 1), **meter.result(),
                    "server_b_statements_per_1000_rows": per_1000_rows(status0, server_status(PORT_B), total),
                    "rss_samples_t_records_mb": samples}
    log(f"apply: { {k: v for k, v in res['apply'].items() if k != 'rss_samples_t_records_mb'} }")
    app.stop()
    if not want("plain"):
        return

    # -- plain SQL: the mariadb client, 1000-row INSERTs of the same rows
    plain = os.path.join(OUT, "plain.sql")
    plain_sql_script(plain, "plain_rows", 1, total, 1000)
    log(f"plain SQL: {total} rows in 1000-row INSERTs at B")
    meter = CpuMeter()
    secs = sql_script(PORT_B, plain, fed.db)
    res["plain_sql"] = {"rows": total, "rows_per_stmt": 1000, "seconds": round(secs, 2), "rows_per_s": rate(total, secs), **meter.result()}
    log(f"plain SQL: {res['plain_sql']}")
    os.remove(plain)


ARRIVALS_DDL = """CREATE TABLE bench_arrivals (
  n BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  src_us BIGINT NOT NULL,
  arrived_us BIGINT NOT NULL
) ENGINE=InnoDB"""


def arrival_triggers(table, src_expr):
    # SYSDATE(6): the moment the applied row is written (NOW(6) would be its statement's start).
    out = []
    for when in ("INSERT", "UPDATE"):
        out.append(f"CREATE TRIGGER bench_{table}_{when.lower()} AFTER {when} ON `{table}` FOR EACH ROW "
                   f"INSERT INTO bench_arrivals (src_us, arrived_us) VALUES ({src_expr}, CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED))")
    return out


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values), max(1, math.ceil(q / 100.0 * len(sorted_values)))) - 1  # nearest rank
    return sorted_values[i]


def sysbench_base(port, db):
    return ["sysbench", f"--mysql-host={HOST}", f"--mysql-port={port}", "--mysql-user=root", f"--mysql-db={db}",
            "--mysql-ignore-errors=1213,1205,1020,1062", "--db-ps-mode=disable"]


def parse_sysbench(out):
    m = re.search(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec", out)
    q = re.search(r"queries:\s+(\d+)\s+\(([\d.]+) per sec", out)
    return {"txns": int(m.group(1)), "tps": float(m.group(2)), "queries": int(q.group(1)) if q else None}


class LagLoad:
    """A federation, its writer, and the apply-side arrival log, for the lag scenarios."""

    def __init__(self, kind, verify_rows=0):
        self.kind = kind
        if kind == "sysbench":
            # With verify_rows: a second entity whose table holds the same rows at both sites
            # (history both had), for the verify phase; read unpaced until phase_verify says.
            config = '[entities.sbtest]\ntable = "sbtest1"\n\n[[routes]]\nfrom = ["a"]\nto = ["b"]\nentities = ["sbtest"]\n'
            extra = ""
            if verify_rows:
                config = config.replace('["sbtest"]', '["sbtest", "ver"]') + '\n[entities.ver]\ntable = "verify_rows"\n'
                extra = "[verify]\nrows_per_second = 100000000\n"
            self.fed = Fed("ver" if verify_rows else "sb", {"a": PORT_A, "b": PORT_B}, config, extra)
            FEDS.append(self.fed)
            db = self.fed.db
            if verify_rows:
                script = os.path.join(OUT, "verify_rows.sql")
                write_rows_script(script, "verify_rows", 1, verify_rows, 10_000)
                for port in (PORT_A, PORT_B):
                    sql(port, ROWS_DDL.format(t="verify_rows"), db)
                    sql_script(port, script, db)
                os.remove(script)
            run = subprocess.run(sysbench_base(PORT_A, db) + ["oltp_write_only", "--tables=1", "--table-size=100000", "prepare"],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"sysbench prepare: {run.stdout[-500:]}{run.stderr[-500:]}")
            sql(PORT_A, "ALTER TABLE sbtest1 ADD COLUMN ts DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)", db)
            sql(PORT_B, "CREATE TABLE sbtest1 (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL DEFAULT 0, "
                        "c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', ts DATETIME(6) NULL, KEY k_1 (k)) ENGINE=InnoDB", db)
            sql(PORT_B, ARRIVALS_DDL, db)
            for t in arrival_triggers("sbtest1", "CAST(UNIX_TIMESTAMP(NEW.ts) * 1000000 AS SIGNED)"):
                sql(PORT_B, t, db)
            self.fed.init()
            self.a_site, self.b_site = "a", "b"
            self.procs = [self.fed.start("a", "capture"), self.fed.start("b", "apply")]
            self.capture, self.apply = self.procs
        else:
            text = open(os.path.join(REPO, "config", "zhejiang.toml")).read()
            entities = text[text.index("[entities."):]
            self.fed = Fed("lims", {"zijingang": PORT_A, "yuquan": PORT_B}, entities)
            FEDS.append(self.fed)
            db = self.fed.db
            schema = open(os.path.join(REPO, "tests", "fixtures", "lims.sql")).read()
            for port in (PORT_A, PORT_B):
                sql(port, schema, db)
                sql(port, "INSERT INTO `user` (id, token, name, mtime) VALUES (1, 'admin', 'Administrator', 1)", db)
            sql(PORT_B, ARRIVALS_DDL, db)
            for t in arrival_triggers("user", "NEW.mtime"):
                sql(PORT_B, t, db)
            self.fed.init()
            self.a_site, self.b_site = "zijingang", "yuquan"
            self.procs = [self.fed.start("zijingang", "run"), self.fed.start("yuquan", "run")]
            self.capture, self.apply = self.procs
        for p in self.procs:
            p.wait_ready()
        self.topic = self.fed.topic(self.a_site)
        self.n = 0
        self.consumed_base = 0

    def consumed(self):
        """Records of the origin's topic the applier has dealt with (its counter starts at 0 with
        each process: `consumed_base` is what earlier processes did)."""
        v = self.apply.metric_sum("sitesync_apply_records_total", origin=self.a_site)
        return self.consumed_base + (v or 0)

    def restart_apply(self):
        if not self.drain(DRAIN_SECONDS):
            raise RuntimeError("apply did not catch up before its restart")
        self.apply.stop()
        self.consumed_base = high_watermark(self.topic)
        self.apply = self.fed.start(self.b_site, self.apply.command)
        self.procs[1] = self.apply
        self.apply.wait_ready()

    def writer(self, rows_per_s, rows_per_txn, seconds, threads):
        db = self.fed.db
        tps = rows_per_s / rows_per_txn
        if self.kind == "sysbench":
            if rows_per_txn == 1:
                mix = ["--index_updates=0", "--non_index_updates=1", "--delete_inserts=0"]
            else:  # 2 + 4 + 2 x (delete + insert) = 10 row changes
                mix = ["--index_updates=2", "--non_index_updates=4", "--delete_inserts=2"]
            args = sysbench_base(PORT_A, db) + ["oltp_write_only", "--tables=1", "--table-size=100000", *mix]
        else:
            self.n += 1
            args = sysbench_base(PORT_A, db) + [os.path.join(HERE, "lims_writer.lua"), f"--prefix=r{RUN}s{self.n}", f"--rows={rows_per_txn}"]
        args += [f"--rate={tps:g}", f"--time={seconds}", f"--threads={threads}", "--report-interval=0", "run"]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=OUT)

    def reset(self):
        sql(PORT_B, "TRUNCATE TABLE bench_arrivals", self.fed.db)

    def drain(self, timeout):
        """Waits until apply consumed every record in the topic; False if it did not in time."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.procs:
                p.check()
            if self.consumed() >= high_watermark(self.topic):
                return True
            time.sleep(0.1)
        return False

    def stop(self):
        for p in self.procs:
            p.stop()


def threads_for(tps):
    return 4 if tps <= 300 else 8 if tps <= 1500 else 16


def lag_scenario(load, rows_per_s, rows_per_txn):
    load.reset()
    time.sleep(0.5)
    meter = CpuMeter()
    status0 = server_status(PORT_B)
    cap0, app0 = load.capture.stat(), load.apply.stat()
    hist0 = (load.capture.histograms(), load.apply.histograms())
    hw0 = high_watermark(load.topic)
    start = time.time()
    w = load.writer(rows_per_s, rows_per_txn, LAG_SECONDS, threads_for(rows_per_s / rows_per_txn))
    out, _ = w.communicate(timeout=LAG_SECONDS + 120)
    end = time.time()
    if w.returncode != 0:
        raise RuntimeError(f"writer failed: {out[-1500:]}")
    sb = parse_sysbench(out)
    drained = load.drain(DRAIN_SECONDS)
    drained_at = time.time()
    cap1, app1 = load.capture.stat(), load.apply.stat()
    records = high_watermark(load.topic) - hw0
    rows = sql(PORT_B, "SELECT src_us, arrived_us FROM bench_arrivals", load.fed.db)
    cut = (start + LAG_WARMUP) * 1e6
    lags = sorted((int(b) - int(a)) / 1000.0 for a, b in rows if int(a) >= cut)
    offered = sb["tps"] * rows_per_txn
    r = {
        "load": load.kind, "target_rows_per_s": rows_per_s, "rows_per_txn": rows_per_txn, "seconds": LAG_SECONDS,
        "offered_rows_per_s": round(offered, 1), "txns": sb["txns"], "records_published": records,
        "rows_measured": len(lags), "drained": drained, "drain_seconds": round(drained_at - end, 2),
        "lag_ms": {"p50": percentile(lags, 50), "p99": percentile(lags, 99), "max": lags[-1] if lags else None},
        "capture_cpu_pct": round(100 * (cap1[0] - cap0[0]) / (drained_at - start), 1),
        "apply_cpu_pct": round(100 * (app1[0] - app0[0]) / (drained_at - start), 1),
        "capture_rss_mb": round(cap1[1], 1), "apply_rss_mb": round(app1[1], 1),
        **meter.result(), "loadavg": loadavg(),
        "server_b_statements_per_1000_rows": per_1000_rows(status0, server_status(PORT_B), max(len(rows), 1)),
        # Where the time goes, as means over the scenario (histogram deltas): the origin's
        # commit to capture reading it, record handed to Kafka to acknowledged, one apply
        # transaction begin to commit, and records per apply transaction.
        "stages": stage_means(hist0, (load.capture.histograms(), load.apply.histograms())),
    }
    log(f"lag {load.kind} {rows_per_s}/s x{rows_per_txn}: offered {offered:.0f} rows/s, p50 {r['lag_ms']['p50']} ms, "
        f"p99 {r['lag_ms']['p99']} ms, max {r['lag_ms']['max']} ms, drained={drained}; means {r['stages']}")
    return r


def stage_means(before, after):
    names = {"capture_delay_ms": (0, "sitesync_capture_delay_seconds", 1000), "publish_ms": (0, "sitesync_capture_publish_duration_seconds", 1000),
             "apply_txn_ms": (1, "sitesync_apply_batch_duration_seconds", 1000), "apply_txn_records": (1, "sitesync_apply_batch_records", 1),
             "apply_latency_ms": (1, "sitesync_apply_latency_seconds", 1000)}
    out = {}
    for key, (proc, name, scale) in names.items():
        b, a = before[proc], after[proc]
        if not b or not a or name not in a:
            continue
        s0, c0 = b.get(name, (0.0, 0.0))
        s1, c1 = a[name]
        out[key] = round(scale * (s1 - s0) / (c1 - c0), 2) if c1 > c0 else None
    return out


def phase_lag():
    """The lag scenarios of each load; the stall test with the sysbench load."""
    out = RESULTS.setdefault("lag", [])
    loads = LAG_LOADS if "lag" in PHASES else []
    if "stall" in PHASES and "sysbench" not in loads:
        loads = loads + ["sysbench"]
    for kind in loads:
        load = LagLoad(kind)
        try:
            if "lag" in PHASES and kind in LAG_LOADS:
                log(f"lag scenarios, load {kind}")
                for txn in LAG_TXN:
                    for r in LAG_RATES:
                        out.append(lag_scenario(load, r, txn))
                out_hwm = {"capture_peak_rss_mb": round(load.capture.stat()[2], 1), "apply_peak_rss_mb": round(load.apply.stat()[2], 1),
                           "processes": f"{load.capture.command} at {load.a_site}, {load.apply.command} at {load.b_site}"}
                RESULTS.setdefault("lag_processes", {})[kind] = out_hwm
            if kind == "sysbench" and "stall" in PHASES:
                phase_stall(load)
        finally:
            load.stop()


def phase_stall(load):
    """Apply stalled by a lock on B's table while records keep coming: memory stays bounded?"""
    log(f"stall: {STALL_RATE} rows/s in {STALL_TXN}-row transactions, B's table locked for {STALL_SECONDS} s")
    load.reset()
    # A fresh applier: its memory before the stall is not what earlier scenarios left behind.
    load.restart_apply()
    samples = []
    total = 3 * STALL_SECONDS
    w = load.writer(STALL_RATE, STALL_TXN, total, threads_for(STALL_RATE / STALL_TXN))
    start = time.time()
    locker = None
    lock_at, unlock_at = start + STALL_SECONDS, start + 2 * STALL_SECONDS
    while w.poll() is None or time.time() < start + total:
        now = time.time()
        if locker is None and now >= lock_at:
            locker = subprocess.Popen(["mariadb", f"-h{HOST}", f"-P{PORT_B}", "-uroot", load.fed.db, "-e",
                                       f"LOCK TABLES sbtest1 WRITE; SELECT SLEEP({STALL_SECONDS}); UNLOCK TABLES;"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        a, c = load.apply.stat(), load.capture.stat()
        samples.append({"t": round(now - start, 2), "apply_rss_mb": round(a[1], 1), "capture_rss_mb": round(c[1], 1),
                        "waiting_records": int(high_watermark(load.topic) - load.consumed())})
        time.sleep(0.5)
    w.communicate()
    if locker:
        locker.wait()
    drained = load.drain(DRAIN_SECONDS)

    def window(lo, hi):
        s = [x for x in samples if lo <= x["t"] < hi]
        return {"apply_rss_mb_max": max((x["apply_rss_mb"] for x in s), default=None),
                "capture_rss_mb_max": max((x["capture_rss_mb"] for x in s), default=None),
                "waiting_records_max": max((x["waiting_records"] for x in s), default=None)}
    RESULTS["stall"] = {
        "rows_per_s": STALL_RATE, "rows_per_txn": STALL_TXN, "stall_seconds": STALL_SECONDS, "how": "LOCK TABLES sbtest1 WRITE at B from another session",
        "before": window(0, STALL_SECONDS), "during": window(STALL_SECONDS, 2 * STALL_SECONDS),
        "after": window(2 * STALL_SECONDS, 1e9), "drained": drained,
        "apply_peak_rss_mb": round(load.apply.stat()[2], 1), "capture_peak_rss_mb": round(load.capture.stat()[2], 1),
        "samples": samples,
    }
    s = RESULTS["stall"]
    log(f"stall: before {s['before']}, during {s['during']}, after {s['after']}")


def phase_snapshot():
    log(f"snapshot of {SNAPSHOT_ROWS} rows")
    fed = Fed("snap", {"a": PORT_A, "b": PORT_B},
              '[entities.snap]\ntable = "snap_rows"\n\n[[routes]]\nfrom = ["a"]\nto = ["b"]\nentities = ["snap"]\n')
    FEDS.append(fed)
    for port in (PORT_A, PORT_B):
        sql(port, ROWS_DDL.format(t="snap_rows"), fed.db)
    script = os.path.join(OUT, "snap.sql")
    write_rows_script(script, "snap_rows", 1, SNAPSHOT_ROWS, 10_000)
    sql_script(PORT_A, script, fed.db)
    os.remove(script)
    fed.init()
    run = fed.start("a", "run")
    run.wait_ready()
    cpu0 = run.stat()[0]
    t = time.time()
    out = fed.cli("a", "snapshot", "--entity", "snap", timeout=3600)
    secs = time.time() - t
    cpu1, _, hwm = run.stat()
    hw = high_watermark(fed.topic("a"))
    t2 = time.time()
    p = subprocess.run(["mariadb", f"-h{HOST}", f"-P{PORT_A}", "-uroot", "-N", "-B", fed.db, "-e", "SELECT * FROM snap_rows"],
                       stdout=subprocess.DEVNULL)
    select_secs = time.time() - t2
    RESULTS["snapshot"] = {
        "rows": SNAPSHOT_ROWS, "seconds": round(secs, 2), "rows_per_s": rate(SNAPSHOT_ROWS, secs), "records_in_topic": hw,
        "cpu_s_per_100k_rows": round((cpu1 - cpu0) / (SNAPSHOT_ROWS / 1e5), 3), "peak_rss_mb": round(hwm, 1),
        "select_all_seconds": round(select_secs, 2), "select_all_rows_per_s": rate(SNAPSHOT_ROWS, select_secs),
        "chunk_rows": 2000, "last_output": out.strip().splitlines()[-1] if out.strip() else "",
    }
    log(f"snapshot: {RESULTS['snapshot']}")
    run.stop()


def run_measured(args, timeout=3600):
    """(output, seconds, peak RSS in MB, exit code) of a command."""
    t = time.time()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return out, time.time() - t, usage.ru_maxrss / 1024, p.returncode


def verify_loop(fed, stop, passes):
    """`sitesync verify` at b, again and again until `stop` is set; counts the passes."""
    while not stop.is_set():
        p = subprocess.run([BIN, "--config", fed.path, "--site", "b", "verify", "--entity", "ver", "--json"],
                           capture_output=True, text=True, timeout=3600)
        passes.append((p.returncode, time.time()))


def phase_export():
    """Capture catch-up of the same backlog with and without `[export]` of its table: what the
    Debezium-shaped export stream costs replication. The export reads the binlog on its own, at
    a lower CPU priority: `rows_per_s` is the site topic's (replication), `export_rows_per_s` the
    export topic's, both from process start; CPU is the whole process until both are full."""
    res = RESULTS.setdefault("export", {})
    for variant in ("off", "on", "off2", "on2"):
        extra = '[export]\nentities = ["row"]\n' if variant.startswith("on") else ""
        fed = Fed(f"export{variant}", {"a": PORT_A},
                  '[entities.row]\ntable = "bench_rows"\n\n[[routes]]\nfrom = ["a"]\nto = ["*"]\nentities = ["row"]\n', extra)
        FEDS.append(fed)
        sql(PORT_A, ROWS_DDL.format(t="bench_rows"), fed.db)
        fed.init()
        script = os.path.join(OUT, f"export-{variant}.sql")
        write_rows_script(script, "bench_rows", 1, EXPORT_ROWS, TXN_ROWS)
        log(f"export {variant}: writing {EXPORT_ROWS} rows at A")
        sql_script(PORT_A, script, fed.db)
        os.remove(script)
        site_topic = fed.topic("a")
        export_topic = f"{fed.prefix}.export.a.{fed.db}.bench_rows" if extra else None
        cap = fed.start("a", "capture")
        t0 = cap.started
        wait_until(f"capture ({variant}) to publish the backlog", lambda: high_watermark(site_topic) >= EXPORT_ROWS, 3600, [cap], 0.05)
        t1 = time.time()
        cpu_site, _, _ = cap.stat()
        t2 = t1
        if export_topic:
            wait_until(f"the export stream ({variant}) to publish the backlog", lambda: high_watermark(export_topic) >= EXPORT_ROWS,
                       3600, [cap], 0.05)
            t2 = time.time()
        cpu, _, hwm = cap.stat()
        cap.stop()
        res[variant] = {"rows": EXPORT_ROWS, "seconds": round(t1 - t0, 2), "rows_per_s": rate(EXPORT_ROWS, t1 - t0),
                        "cpu_s_until_site_topic_full": round(cpu_site, 2),
                        "cpu_s_per_100k_rows": round(cpu / (EXPORT_ROWS / 1e5), 3), "peak_rss_mb": round(hwm, 1)}
        if export_topic:
            res[variant].update({"export_seconds": round(t2 - t0, 2), "export_rows_per_s": rate(EXPORT_ROWS, t2 - t0)})
        log(f"export {variant}: {res[variant]}")
    off = (res["off"]["rows_per_s"] + res["off2"]["rows_per_s"]) / 2
    on = (res["on"]["rows_per_s"] + res["on2"]["rows_per_s"]) / 2
    res["throughput_ratio_on_off"] = round(on / off, 3)
    both = (res["on"]["export_rows_per_s"] + res["on2"]["export_rows_per_s"]) / 2
    res["export_ratio_on_off"] = round(both / off, 3)
    cpu_off = (res["off"]["cpu_s_per_100k_rows"] + res["off2"]["cpu_s_per_100k_rows"]) / 2
    cpu_on = (res["on"]["cpu_s_per_100k_rows"] + res["on2"]["cpu_s_per_100k_rows"]) / 2
    res["cpu_ratio_on_off"] = round(cpu_on / cpu_off, 3)
    log(f"export: replication throughput with/without {res['throughput_ratio_on_off']}, export topic full at "
        f"{res['export_ratio_on_off']} of the rate without, CPU per row with/without {res['cpu_ratio_on_off']}")


def phase_verify():
    """verify of a VERIFY_ROWS-row table with no differences, beside SELECT and CHECKSUM TABLE;
    the lag of another table at VERIFY_LAG_RATE rows/s without verify, with an unpaced verify
    running in a loop, and with verify at its default pace ([verify] rows_per_second)."""
    import threading
    log(f"verify of {VERIFY_ROWS} rows")
    load = LagLoad("sysbench", verify_rows=VERIFY_ROWS)
    fed = load.fed
    res = RESULTS["verify"] = {"rows": VERIFY_ROWS}
    try:
        hwm0 = load.capture.stat()[2]
        out, secs, rss, code = run_measured([BIN, "--config", fed.path, "--site", "b", "verify", "--entity", "ver", "--json"])
        if code != 0:
            raise RuntimeError(f"verify found differences or failed ({code}): {out[-1500:]}")
        report = json.loads(out[out.index("{"):])
        r = report["results"][0]
        res.update({"seconds": round(secs, 2), "rows_per_s": rate(VERIFY_ROWS, secs), "verify_peak_rss_mb": round(rss, 1),
                    "origin_process_peak_rss_mb_before": round(hwm0, 1), "origin_process_peak_rss_mb_after": round(load.capture.stat()[2], 1),
                    "compared": r["compared"], "buckets": r["buckets"], "buckets_differing": r["buckets_differing"],
                    "differences": report["differences"]})
        t = time.time()
        subprocess.run(["mariadb", f"-h{HOST}", f"-P{PORT_A}", "-uroot", "-N", "-B", fed.db, "-e", "SELECT * FROM verify_rows"],
                       stdout=subprocess.DEVNULL, check=True)
        res["select_all_seconds"] = round(time.time() - t, 2)
        res["select_all_rows_per_s"] = rate(VERIFY_ROWS, time.time() - t)
        t = time.time()
        sql(PORT_A, "CHECKSUM TABLE verify_rows", fed.db)
        res["checksum_table_seconds"] = round(time.time() - t, 2)
        res["checksum_table_rows_per_s"] = rate(VERIFY_ROWS, time.time() - t)
        log(f"verify: {res}")

        res["lag_without_verify"] = lag_scenario(load, VERIFY_LAG_RATE, 10)
        for pace in ("unpaced", "default pace"):
            if pace == "default pace":
                text = open(fed.path).read().replace("rows_per_second = 100000000\n", "")
                open(fed.path, "w").write(text)
                load.capture.stop()
                load.capture = fed.start("a", "capture")
                load.procs[0] = load.capture
                load.capture.wait_ready()
            stop, passes = threading.Event(), []
            th = threading.Thread(target=verify_loop, args=(fed, stop, passes), daemon=True)
            th.start()
            time.sleep(1)
            lag = lag_scenario(load, VERIFY_LAG_RATE, 10)
            stop.set()
            th.join(timeout=3600)
            lag["verify_passes"] = len(passes)
            lag["verify_passes_with_differences"] = sum(1 for c, _ in passes if c != 0)
            res[f"lag_while_verifying_{pace.replace(' ', '_')}"] = lag
        log(f"verify lag: without {res['lag_without_verify']['lag_ms']}, unpaced {res['lag_while_verifying_unpaced']['lag_ms']}, "
            f"default pace {res['lag_while_verifying_default_pace']['lag_ms']}")
    finally:
        load.stop()


# ----------------------------------------------------------------------------- report
def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float) and v >= 100:
        v = round(v)
    return f"{v:,}{unit}" if isinstance(v, (int, float)) else str(v)


def summary():
    rows = []  # (measure, sitesync, limit, limit name, ratio, target, verdict)
    b = RESULTS.get("bulk", {})
    kp = b.get("kafka_producer_perf", {}).get("records_per_s")
    if "capture_catchup" in b:
        c = b["capture_catchup"]["rows_per_s"]
        dec = b.get("binlog_decode_remote", {}).get("rows_per_s")
        rows.append(("capture catch-up, rows/s", c, kp, "Kafka ProducerPerformance", ratio(c, kp),
                     f">= {TARGETS['capture_rows_per_s']:,} and >= {TARGETS['capture_vs_kafka']} x Kafka",
                     c >= TARGETS["capture_rows_per_s"] and (ratio(c, kp) or 0) >= TARGETS["capture_vs_kafka"]))
        rows.append(("capture catch-up vs binlog decode", c, dec, "mariadb-binlog -v (remote)", ratio(c, dec), "", None))
        dl = b.get("binlog_decode_local", {}).get("rows_per_s")
        rows.append(("  (binlog decode, local files)", None, dl, "mariadb-binlog -v (local)", ratio(c, dl), "", None))
    if "capture_steady" in b:
        s = b["capture_steady"]
        rows.append(("capture steady state, rows/s", s["captured_rows_per_s_while_writing"], s["offered_rows_per_s"],
                     "offered (writer rate)", ratio(s["captured_rows_per_s_while_writing"], s["offered_rows_per_s"]),
                     "keeps up", s["caught_up_seconds_after_writer"] < 2))
    if "apply" in b:
        a, p = b["apply"]["rows_per_s"], b.get("plain_sql", {}).get("rows_per_s")
        rows.append(("apply, rows/s", a, p, "mariadb client, 1000-row INSERTs", ratio(a, p),
                     f">= {TARGETS['apply_vs_plain_sql']} x plain SQL", (ratio(a, p) or 0) >= TARGETS["apply_vs_plain_sql"]))
    if "verify" in RESULTS and "rows_per_s" in RESULTS["verify"]:
        v = RESULTS["verify"]
        rows.append((f"verify {v['rows']:,} equal rows, rows/s", v["rows_per_s"], v["select_all_rows_per_s"], "SELECT * to /dev/null",
                     ratio(v["rows_per_s"], v["select_all_rows_per_s"]), "", None))
        rows.append(("  (CHECKSUM TABLE at the origin)", None, v["checksum_table_rows_per_s"], "CHECKSUM TABLE",
                     ratio(v["rows_per_s"], v["checksum_table_rows_per_s"]), "", None))
        rows.append(("verify peak RSS, MB", v["verify_peak_rss_mb"], None, "", None, f"<= {TARGETS['peak_rss_mb']}",
                     v["verify_peak_rss_mb"] <= TARGETS["peak_rss_mb"]))
        base = (v.get("lag_without_verify") or {}).get("lag_ms", {}).get("p99")
        for key, name in (("lag_while_verifying_unpaced", "unpaced"), ("lag_while_verifying_default_pace", "default pace")):
            p99 = (v.get(key) or {}).get("lag_ms", {}).get("p99")
            if p99 is not None:
                rows.append((f"lag p99 ms at {VERIFY_LAG_RATE}/s, verify {name}", p99, base, "lag p99 without verify", ratio(p99, base), "", None))
    if "snapshot" in RESULTS:
        s = RESULTS["snapshot"]
        rows.append(("snapshot, rows/s", s["rows_per_s"], s["select_all_rows_per_s"], "SELECT * to /dev/null",
                     ratio(s["rows_per_s"], s["select_all_rows_per_s"]), "", None))
    rss = []
    for k, label in (("capture_catchup", "capture"), ("apply", "apply")):
        if k in b:
            v = b[k].get("peak_rss_mb_after_steady", b[k]["peak_rss_mb"])
            rows.append((f"{label} peak RSS, MB", v, None, "", None, f"< {TARGETS['peak_rss_mb']}", v < TARGETS["peak_rss_mb"]))
            rows.append((f"{label} CPU s / 100k rows", b[k]["cpu_s_per_100k_rows"], None, "", None, "", None))
            rss.append(v)
    for kind, v in RESULTS.get("lag_processes", {}).items():
        for who in ("capture", "apply"):
            mb = v[f"{who}_peak_rss_mb"]
            rows.append((f"{who} peak RSS ({kind} lag runs), MB", mb, None, "", None, f"< {TARGETS['peak_rss_mb']}", mb < TARGETS["peak_rss_mb"]))
    if "stall" in RESULTS:
        s = RESULTS["stall"]
        rows.append(("apply RSS before/during/after stall, MB",
                     f"{s['before']['apply_rss_mb_max']} / {s['during']['apply_rss_mb_max']} / {s['after']['apply_rss_mb_max']}",
                     None, "", None, f"< {TARGETS['peak_rss_mb']}", s["apply_peak_rss_mb"] < TARGETS["peak_rss_mb"]))
    lag_rows = []
    for r in RESULTS.get("lag", []):
        target = TARGETS["lag_p99_ms_at_2000"] if r["target_rows_per_s"] == 2000 else TARGETS["lag_p99_ms_at_10000"] if r["target_rows_per_s"] == 10000 else None
        p99 = r["lag_ms"]["p99"]
        ok = None if target is None else (p99 is not None and r["drained"] and p99 < target)
        if ok and r["offered_rows_per_s"] < 0.9 * r["target_rows_per_s"]:
            ok = None  # the writer could not offer the target load: no verdict
        lag_rows.append((r["load"], r["target_rows_per_s"], r["rows_per_txn"], r["offered_rows_per_s"], r["rows_measured"],
                         r["lag_ms"]["p50"], p99, r["lag_ms"]["max"], r["drained"], r["capture_cpu_pct"], r["apply_cpu_pct"],
                         f"< {target} ms" if target else "", ok))
    return rows, lag_rows


def verdict(v):
    return "" if v is None else ("PASS" if v else "FAIL")


def print_table(rows, lag_rows):
    hdr = ("measure", "sitesync", "machine limit", "limit is", "ratio", "target", "")
    table = [hdr] + [(m, fmt(s), fmt(l), ln, fmt(r), t, verdict(v)) for m, s, l, ln, r, t, v in rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(hdr))]
    lines = []
    for i, r in enumerate(table):
        lines.append("  ".join(str(c).ljust(widths[j]) if j in (0, 3, 5) else str(c).rjust(widths[j]) for j, c in enumerate(r)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if lag_rows:
        lines.append("")
        h2 = ("load", "target/s", "rows/txn", "offered/s", "rows", "p50 ms", "p99 ms", "max ms", "drained", "cap CPU%", "app CPU%", "target", "")
        t2 = [h2] + [tuple(fmt(c) if not isinstance(c, bool) else str(c) for c in r[:-1]) + (verdict(r[-1]),) for r in lag_rows]
        w2 = [max(len(str(r[i])) for r in t2) for i in range(len(h2))]
        for i, r in enumerate(t2):
            lines.append("  ".join(str(c).rjust(w2[j]) if j not in (0, 11) else str(c).ljust(w2[j]) for j, c in enumerate(r)))
            if i == 0:
                lines.append("  ".join("-" * w for w in w2))
    return "\n".join(lines)


FEDS = []


def main():
    os.makedirs(OUT, exist_ok=True)
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: cargo build --release --locked (or set BENCH_BIN)")
    # A copy: other work may rebuild target/release while the benchmark runs.
    binary = os.path.join(OUT, "sitesync")
    shutil.copy2(BIN, binary)
    globals()["BIN"] = binary
    tz = scalar(PORT_A, "SELECT @@system_time_zone")
    if tz not in ("UTC", "Etc/UTC", "GMT"):
        log(f"warning: the servers' time zone is {tz}; the sysbench lag scenario assumes UTC")
    top = top_now()
    RESULTS["machine"] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": loadavg(), "cpu_use_at_start": top,
        "mariadb": scalar(PORT_A, "SELECT VERSION()"), "sitesync": subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip(),
        "git": subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
               + (" + uncommitted changes" if subprocess.run(["git", "-C", REPO, "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip() else ""),
        "sizes": {"rows": ROWS, "txn_rows": TXN_ROWS, "steady_rows": STEADY_ROWS, "snapshot_rows": SNAPSHOT_ROWS,
                  "lag_rates": LAG_RATES, "lag_txn": LAG_TXN, "lag_seconds": LAG_SECONDS, "stall_seconds": STALL_SECONDS,
                  "phases": PHASES, "perf": PERF},
    }
    mark = machine_cpu()
    log(f"run {RUN}: results in {OUT}")
    failed = None
    try:
        if any(want(p) for p in ("capture", "steady", "limits", "apply", "plain")):
            phase_bulk()
        if "lag" in PHASES or "stall" in PHASES:
            phase_lag()
        if "snapshot" in PHASES:
            phase_snapshot()
        if "verify" in PHASES:
            phase_verify()
        if "export" in PHASES:
            phase_export()
    except Exception as e:  # noqa: BLE001 - report what was measured, then fail
        failed = e
        RESULTS["error"] = str(e)
        log(f"FAILED: {e}")
    finally:
        RESULTS["machine"]["loadavg_at_end"] = loadavg()
        RESULTS["machine"]["cpu_use_at_end"] = top_now()
        RESULTS["machine"]["busy_pct_whole_run"] = busy_since(mark)
        RESULTS["machine"]["seconds"] = round(time.time() - T0, 1)
        if not KEEP:
            for fed in FEDS:
                fed.drop()
            try:
                java_tool("org.apache.kafka.tools.TopicCommand", ["--bootstrap-server", KAFKA, "--delete", "--topic", rf"bench\.{RUN}\..*"])
            except Exception as e:  # noqa: BLE001
                log(f"cleanup of topics: {e}")
    rows, lag_rows = summary()
    RESULTS["summary"] = [dict(zip(("measure", "sitesync", "limit", "limit_is", "ratio", "target", "pass"), r)) for r in rows]
    text = print_table(rows, lag_rows)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=2, default=str)
    with open(os.path.join(OUT, "table.txt"), "w") as f:
        f.write(text + "\n")
    shutil.copy2(os.path.join(OUT, "results.json"), os.path.join(os.path.dirname(OUT), "latest.json"))
    if not (PERF or KEEP):
        os.remove(BIN)  # the run's copy (100 MB); perf reports need it, so it stays with BENCH_PERF=1
    m = RESULTS["machine"]
    print(f"\nsitesync benchmark {RUN}: {m['date']}, {m['cpus']} CPUs ({m['cpu_model']}), load average {m['loadavg_at_start']} at start, "
          f"machine {m['busy_pct_whole_run']}% busy over {m['seconds']} s (other work shares the machine)\n")
    print(text)
    print(f"\nJSON: {os.path.join(OUT, 'results.json')}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
