//! A Kafka node of one test only (KRaft, its own ports and data), from the local stack's jars,
//! for faults that must not touch the shared broker: stopping it, freezing it. Killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct KafkaNode {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

fn stack_dir() -> PathBuf {
    std::env::var("SITESYNC_STACK_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".stack"))
}

fn libs() -> String {
    std::env::var("SITESYNC_KAFKA_LIBS").unwrap_or_else(|_| stack_dir().join("kafka/libs").display().to_string())
}

impl KafkaNode {
    /// Formats and starts a node; returns once it answers metadata requests.
    pub fn start(name: &str) -> KafkaNode {
        let port = super::scratch::free_port();
        let controller = super::scratch::free_port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kafka-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let props = dir.join("server.properties");
        std::fs::write(
            &props,
            format!(
                "process.roles=broker,controller\nnode.id=1\ncontroller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 inter.broker.listener.name=PLAINTEXT\ncontroller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\nlog.dirs={}\n\
                 num.partitions=1\nauto.create.topics.enable=false\noffsets.topic.replication.factor=1\n\
                 offsets.topic.num.partitions=1\ntransaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
                 share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let tools_log = stack_dir().join("kafka/config/tools-log4j2.xml");
        let out = Command::new("java")
            .arg("-Xmx256m")
            .arg(format!("-Dlog4j2.configurationFile={}", tools_log.display()))
            .arg("-cp")
            .arg(format!("{}/*", libs()))
            .args(["kafka.tools.StorageTool", "format", "--standalone", "-t", "c2l0ZXN5bmMtdGVzdC0xMg", "-c"])
            .arg(&props)
            .output()
            .expect("java (Kafka's storage tool; deploy/local/stack.sh up installs the jars)");
        assert!(
            out.status.success(),
            "kafka storage format failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(dir.join("kafka.out")).unwrap();
        let child = Command::new("java")
            .args(["-Xms128m", "-Xmx384m"])
            .arg(format!("-Dlog4j2.configurationFile={}", tools_log.display()))
            .arg("-cp")
            .arg(format!("{}/*", libs()))
            .arg("kafka.Kafka")
            .arg(&props)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("java");
        let mut node = KafkaNode { port, dir, child };
        node.wait_ready(Duration::from_secs(90));
        node
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self, timeout: Duration) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("kafka exited with {status}: {}", std::fs::read_to_string(self.dir.join("kafka.out")).unwrap_or_default());
            }
            let consumer: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", self.bootstrap()).create().unwrap();
            if consumer.fetch_metadata(None, Duration::from_secs(2)).is_ok_and(|m| !m.brokers().is_empty()) {
                return;
            }
            assert!(Instant::now() < deadline, "kafka node not ready after {timeout:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        let _ = Command::new("kill").arg("-STOP").arg(self.child.id().to_string()).status();
    }

    /// Lets it run again (SIGCONT).
    pub fn thaw(&self) {
        let _ = Command::new("kill").arg("-CONT").arg(self.child.id().to_string()).status();
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").arg(self.child.id().to_string()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
