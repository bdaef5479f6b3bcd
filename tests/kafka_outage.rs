//! Kafka unavailable for a minute, on a Kafka node of this test only: capture waits with
//! bounded memory and resumes; nothing is lost and nothing is applied twice.

mod common;

use std::time::{Duration, Instant};

use common::kafka_node::KafkaNode;
use common::{Federation, Spec};

/// A person table whose every applied insert, update and delete B counts (applied_events):
/// a change applied twice would show.
const SCHEMA: &str = include_str!("fixtures/counted_person.sql");
const CONFIG: &str = "[entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"person\"]\n";

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_frozen_for_a_minute_loses_nothing_and_capture_memory_stays_bounded() {
    let kafka = KafkaNode::start("outage");
    let mut fed =
        Federation::new("outage", Spec { schema: SCHEMA, entities_and_routes: CONFIG, kafka: Some(kafka.bootstrap()), ..Spec::default() })
            .await;
    let capture = fed.start("a", &["capture"]);
    fed.start("b", &["apply"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fed.exec("a", "INSERT INTO person (id, name) VALUES (0, 'before')").await;
    let pb = fed.pool("b").clone();
    fed.wait_for(Duration::from_secs(60), "the first row before the outage", || {
        let pb = pb.clone();
        async move { common::rows(&pb, "SELECT COUNT(*) FROM person").await == vec![vec!["1".to_string()]] }
    })
    .await;
    let rss_before = rss_mib(fed.pid(capture));

    // A minute without Kafka, while the application keeps writing.
    kafka.freeze();
    let started = Instant::now();
    let mut i = 1;
    let mut rss_during: f64 = 0.0;
    while started.elapsed() < Duration::from_secs(60) {
        let values: Vec<String> = (i..i + 20).map(|k| format!("({k}, 'p{k}')")).collect();
        fed.exec("a", &format!("INSERT INTO person (id, name) VALUES {}", values.join(", "))).await;
        fed.exec("a", &format!("UPDATE person SET n = n + 1 WHERE id BETWEEN {i} AND {}", i + 19)).await;
        i += 20;
        rss_during = rss_during.max(rss_mib(fed.pid(capture)));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fed.assert_running();
    kafka.thaw();
    let rows = i as i64; // ids 0 .. i-1
    let pb = fed.pool("b").clone();
    fed.wait_for(Duration::from_secs(180), "every row after Kafka is back", || {
        let pb = pb.clone();
        async move { common::rows(&pb, "SELECT COUNT(*) FROM person").await == vec![vec![rows.to_string()]] }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.scalar("b", "SELECT CAST(SUM(n) AS SIGNED) FROM person").await, rows - 1);
    assert_eq!(fed.scalar("b", "SELECT n FROM applied_events").await, 2 * (rows - 1) + 1, "each change applied exactly once");
    eprintln!("capture RSS: {rss_before:.0} MiB before, at most {rss_during:.0} MiB during the outage ({} rows written)", rows - 1);
    assert!(rss_during < rss_before + 100.0, "capture memory grew from {rss_before:.0} to {rss_during:.0} MiB");
}
