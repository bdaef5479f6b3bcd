//! Large work: a 20 MB value, a 100,000-row transaction, with memory bounded by configuration.

mod common;

use std::time::Duration;

use common::{Federation, Spec};

const SCHEMA: &str = "CREATE TABLE doc (id INT NOT NULL PRIMARY KEY, body LONGBLOB NULL, note VARCHAR(200) NULL) ENGINE=InnoDB";
const CONFIG: &str = "[entities.doc]\ntable = \"doc\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"doc\"]\n";
const WAIT: Duration = Duration::from_secs(240);

/// Peak resident memory of a process, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20mb_value_and_a_100k_row_transaction_arrive_whole_with_bounded_memory() {
    let mut fed = Federation::new("large", Spec { schema: SCHEMA, entities_and_routes: CONFIG, ..Spec::default() }).await;
    let capture = fed.start("a", &["capture"]);
    let apply = fed.start("b", &["apply"]);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // 20 MB of every byte value, in one row.
    fed.exec("a", "INSERT INTO doc (id, body) SELECT 1, REPEAT(UNHEX('000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F202122232425262728292A2B2C2D2E2F303132333435363738393A3B3C3D3E3F404142434445464748494A4B4C4D4E4F505152535455565758595A5B5C5D5E5F606162636465666768696A6B6C6D6E6F707172737475767778797A7B7C7D7E7F808182838485868788898A8B8C8D8E8F909192939495969798999A9B9C9D9E9FA0A1A2A3A4A5A6A7A8A9AAABACADAEAFB0B1B2B3B4B5B6B7B8B9BABBBCBDBEBFC0C1C2C3C4C5C6C7C8C9CACBCCCDCECFD0D1D2D3D4D5D6D7D8D9DADBDCDDDEDFE0E1E2E3E4E5E6E7E8E9EAEBECEDEEEFF0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF'), 81920)").await;
    // 100,000 rows in one transaction.
    fed.exec("a", "INSERT INTO doc (id, note) SELECT seq + 1, CONCAT('row ', seq, ' ', REPEAT('x', 100)) FROM seq_1_to_100000").await;
    let pb = fed.pool("b").clone();
    fed.wait_for(WAIT, "the 20 MB row and the 100,000-row transaction at B", || {
        let pb = pb.clone();
        async move { common::rows(&pb, "SELECT COUNT(*) FROM doc").await == vec![vec!["100001".to_string()]] }
    })
    .await;
    let q = "SELECT LENGTH(body), MD5(body) FROM doc WHERE id = 1";
    assert_eq!(fed.rows("a", q).await, fed.rows("b", q).await);
    assert_eq!(fed.rows("b", "SELECT LENGTH(body) FROM doc WHERE id = 1").await, vec![vec!["20971520".to_string()]]);
    let q = "SELECT COUNT(*), MD5(GROUP_CONCAT(note ORDER BY id)) FROM doc WHERE id > 1";
    assert_eq!(fed.rows("a", q).await, fed.rows("b", q).await);

    let (cap_pid, app_pid) = (fed.pid(capture), fed.pid(apply));
    let (cap, app) = (peak_rss_mib(cap_pid), peak_rss_mib(app_pid));
    eprintln!("peak RSS: capture {cap:.0} MiB, apply {app:.0} MiB");
    // Bounded by configuration (in-flight records, batch size), not by the 100,000 rows; the
    // 20 MB value is held a few times over (binlog event, JSON, Kafka buffers).
    assert!(cap < 400.0, "capture peak RSS {cap:.0} MiB");
    assert!(app < 400.0, "apply peak RSS {app:.0} MiB");
}
