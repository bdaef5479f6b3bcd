//! The four causes of a mesh that did not converge (issue 11), each on its own: an applied
//! transaction echoed after its SAVEPOINT, LIMS2's 0 for "no reference", a snapshot republishing
//! rows that came from other sites, and last writer wins dropping a change made on top of the
//! one it tied with. `tests/mesh.rs` runs them all at once under a random workload.

mod common;

use std::time::Duration;

use common::{Federation, Spec};

const WAIT: Duration = Duration::from_secs(60);

/// LIMS2's conventions: references are `INT NOT NULL DEFAULT 0`, and 0 means none.
const LIMS2: &str = "
CREATE TABLE user (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  token VARCHAR(64) NOT NULL,
  name VARCHAR(100) NOT NULL,
  group_id INT NOT NULL DEFAULT 0,
  creator_id INT NOT NULL DEFAULT 0,
  mtime INT NOT NULL DEFAULT 0,
  UNIQUE KEY token (token)
) ENGINE=InnoDB;
CREATE TABLE tag (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  uuid CHAR(36) NOT NULL,
  name VARCHAR(100) NOT NULL,
  parent_id INT NOT NULL DEFAULT 0,
  UNIQUE KEY uuid (uuid)
) ENGINE=InnoDB
";

const ENTITIES: &str = r#"
[entities.user]
table = "user"
key = ["token"]
refs = { group_id = "tag", creator_id = "user" }
conflict = { version_column = "mtime" }

[entities.tag]
table = "tag"
key = ["uuid"]
refs = { parent_id = { entity = "tag", none = [0, -1] } }

[[routes]]
from = ["*"]
to = ["*"]
entities = ["user", "tag"]
"#;

/// Every record ever published on `site`'s topic, as JSON.
fn topic_values(fed: &Federation, site: &str) -> Vec<serde_json::Value> {
    let topic = format!("{}.{site}", fed.topic_prefix);
    fed.topic_payloads_of(&topic).into_iter().map(|(_, payload)| serde_json::from_slice(&payload.unwrap()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_inside_an_applied_transaction_does_not_end_it() {
    let mut fed = Federation::new("savepoint", Spec { schema: LIMS2, entities_and_routes: ENTITIES, ..Spec::default() }).await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // What the applier writes, as the binlog shows it: the echo marker, a savepoint, then rows.
    let ctl = fed.control_db.clone();
    fed.exec(
        "a",
        &format!(
            "BEGIN; INSERT INTO `{ctl}`.apply_offsets (topic, kafka_partition, next_offset) VALUES ('elsewhere', 0, 1)
             ON DUPLICATE KEY UPDATE next_offset = next_offset + 1;
             SAVEPOINT source_txn; INSERT INTO user (token, name) VALUES ('applied', 'Applied');
             RELEASE SAVEPOINT source_txn; INSERT INTO tag (uuid, name) VALUES ('applied-tag', 'T'); COMMIT"
        ),
    )
    .await;
    fed.exec("a", "INSERT INTO user (token, name) VALUES ('own', 'Own')").await;
    fed.wait_rows("b", "SELECT token FROM user ORDER BY token", &[&["own"]]).await;
    let published: Vec<String> = topic_values(&fed, "a").iter().map(|r| r["sitesync"]["key"].to_string()).collect();
    assert_eq!(published, vec![r#"{"token":"own"}"#], "only the application's own change leaves the site");
    assert_eq!(fed.scalar("b", "SELECT COUNT(*) FROM tag").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_is_no_reference_and_a_real_dangling_one_still_waits() {
    let mut fed =
        Federation::new("noref", Spec { schema: LIMS2, entities_and_routes: ENTITIES, ref_wait_seconds: 3, ..Spec::default() }).await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The root of the tree has parent 0; -1 is configured as "none" too; a person without a
    // group and without a creator has 0 in both.
    fed.exec("a", "INSERT INTO tag (uuid, name, parent_id) VALUES ('root', 'Root', 0), ('other-root', 'Other', -1)").await;
    fed.exec("a", "INSERT INTO tag (uuid, name, parent_id) SELECT 'child', 'Child', id FROM tag WHERE uuid = 'root'").await;
    fed.exec("a", "INSERT INTO user (token, name, group_id, creator_id, mtime) VALUES ('admin', 'Admin', 0, 0, 1)").await;
    fed.exec("a", "INSERT INTO user (token, name, group_id, creator_id, mtime) SELECT 'alice', 'Alice', t.id, u.id, 1 FROM tag t, user u WHERE t.uuid = 'child' AND u.token = 'admin'").await;
    // 0 and -1 arrive as themselves; the child's parent is B's own id of the root.
    fed.wait_rows(
        "b",
        "SELECT t.uuid, IF(t.parent_id > 0, p.uuid, t.parent_id) FROM tag t LEFT JOIN tag p ON p.id = t.parent_id ORDER BY t.uuid",
        &[&["child", "root"], &["other-root", "-1"], &["root", "0"]],
    )
    .await;
    fed.wait_rows(
        "b",
        "SELECT u.token, IF(u.group_id > 0, g.uuid, u.group_id), IF(u.creator_id > 0, c.token, u.creator_id) FROM user u LEFT JOIN tag g ON g.id = u.group_id LEFT JOIN user c ON c.id = u.creator_id ORDER BY u.token",
        &[&["admin", "0", "0"], &["alice", "child", "admin"]],
    )
    .await;
    // Later changes to those rows are not held behind anything.
    fed.exec("a", "UPDATE user SET name = 'Administrator', mtime = 2 WHERE token = 'admin'").await;
    fed.exec("a", "UPDATE tag SET name = 'The root' WHERE uuid = 'root'").await;
    fed.wait_rows(
        "b",
        "SELECT name FROM user WHERE token = 'admin' UNION ALL SELECT name FROM tag WHERE uuid = 'root'",
        &[&["Administrator"], &["The root"]],
    )
    .await;
    let ctl = fed.control_db.clone();
    assert_eq!(fed.scalar("b", &format!("SELECT COUNT(*) FROM `{ctl}`.parked")).await, 0, "nothing waits for a row 0");

    // A real id whose row is gone at the origin (deleted behind the application's back, as a
    // dangling reference) still waits, then becomes a dead letter that says why.
    fed.exec("a", "SET SESSION sql_log_bin = 0; INSERT INTO tag (uuid, name) VALUES ('ghost', 'Ghost'); SET SESSION sql_log_bin = 1").await;
    fed.exec("a", "INSERT INTO tag (uuid, name, parent_id) SELECT 'orphan', 'Orphan', id FROM tag WHERE uuid = 'ghost'").await;
    fed.exec("a", "SET SESSION sql_log_bin = 0; DELETE FROM tag WHERE uuid = 'ghost'; SET SESSION sql_log_bin = 1").await;
    let pool = fed.pool("b").clone();
    let sql = format!("SELECT reason FROM `{ctl}`.dead_letters");
    fed.wait_for(WAIT, "the orphan becomes a dead letter", || {
        let (pool, sql) = (pool.clone(), sql.clone());
        async move { common::rows(&pool, &sql).await.iter().any(|r| r[0].contains("parent_id")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_publishes_only_the_rows_its_site_owns() {
    let mut fed = Federation::new(
        "ownsnap",
        Spec {
            sites: &["a", "b", "c"],
            schema: LIMS2,
            entities_and_routes: ENTITIES,
            // History: b holds a tree of its own, and every site the same administrator.
            seed: |i, site| {
                let mut sql = format!("ALTER TABLE user AUTO_INCREMENT = {}; INSERT INTO user (token, name, mtime) VALUES ('admin', 'Admin', 1)", 10 * (i + 1));
                if site == "b" {
                    sql.push_str("; INSERT INTO tag (uuid, name) VALUES ('b-root', 'B root'); INSERT INTO user (token, name, mtime) VALUES ('b-old', 'From before', 1)");
                }
                sql
            },
            ..Spec::default()
        },
    )
    .await;
    for site in ["a", "b", "c"] {
        fed.start(site, &["run"]);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Rows that reach b from a and from c, one of them changed at b afterwards (still a's).
    fed.exec("a", "INSERT INTO user (token, name, mtime) VALUES ('from-a', 'A', 5)").await;
    fed.exec("c", "INSERT INTO tag (uuid, name) VALUES ('from-c', 'C')").await;
    fed.wait_rows(
        "b",
        "SELECT token FROM user WHERE token = 'from-a' UNION ALL SELECT uuid FROM tag WHERE uuid = 'from-c'",
        &[&["from-a"], &["from-c"]],
    )
    .await;
    fed.exec("b", "UPDATE user SET name = 'A, renamed at b', mtime = 6 WHERE token = 'from-a'").await;

    let out = fed.command("b", &["snapshot"]).output().unwrap();
    assert!(out.status.success(), "snapshot at b: {}", String::from_utf8_lossy(&out.stderr));
    let snapshot: Vec<String> = topic_values(&fed, "b")
        .iter()
        .filter(|r| r["op"] == "r")
        .map(|r| format!("{}:{}", r["sitesync"]["entity"].as_str().unwrap(), r["sitesync"]["key"]))
        .collect();
    let mut snapshot = snapshot;
    snapshot.sort();
    assert_eq!(
        snapshot,
        vec![r#"tag:{"uuid":"b-root"}"#, r#"user:{"token":"admin"}"#, r#"user:{"token":"b-old"}"#],
        "b publishes its history and nothing it received from a or c"
    );
    for site in ["a", "c"] {
        fed.wait_rows(
            site,
            "SELECT name FROM user WHERE token IN ('b-old', 'from-a') ORDER BY token",
            &[&["From before"], &["A, renamed at b"]],
        )
        .await;
        fed.wait_rows(site, "SELECT COUNT(*) FROM tag WHERE uuid = 'b-root'", &[&["1"]]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_on_top_of_a_received_one_wins_whatever_order_others_see_them_in() {
    let mut fed =
        Federation::new("causal", Spec { sites: &["a", "b", "c"], schema: LIMS2, entities_and_routes: ENTITIES, ..Spec::default() }).await;
    // b first hears only from a: it will see a's change before c's, which a's was made on.
    let full = std::fs::read_to_string(&fed.config_path).unwrap();
    let only_from_a = fed.dir.join("b-from-a-only.toml");
    let partial = full.replace("from = [\"*\"]\nto = [\"*\"]", "from = [\"a\"]\nto = [\"*\"]");
    assert_ne!(partial, full);
    std::fs::write(&only_from_a, partial).unwrap();
    fed.start("a", &["run"]);
    fed.start("c", &["run"]);
    fed.start("b", &["capture"]);
    let b_partial = {
        let log = std::fs::File::create(fed.dir.join("b-apply-partial.log")).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_sitesync"))
            .args(["--config", only_from_a.to_str().unwrap(), "--site", "b", "apply"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(700)).await;

    // c creates p at second T; a receives it and, within the same second, renames it; then c's
    // create and a's rename tie on mtime, and a site id must not decide between them: a's was
    // made knowing c's. The same for an activation right after a rename arrived.
    fed.exec("c", "INSERT INTO user (token, name, mtime) VALUES ('p354', 'Created at c', 1000), ('q7', 'Q', 1000)").await;
    fed.wait_rows("a", "SELECT name FROM user WHERE token IN ('p354', 'q7') ORDER BY token", &[&["Created at c"], &["Q"]]).await;
    fed.exec("a", "UPDATE user SET name = 'Renamed at a', mtime = 1000 WHERE token = 'p354'").await;
    fed.exec("c", "UPDATE user SET name = 'Q renamed at c', mtime = 1001 WHERE token = 'q7'").await;
    fed.wait_rows("a", "SELECT name FROM user WHERE token = 'q7'", &[&["Q renamed at c"]]).await;
    fed.exec("a", "UPDATE user SET group_id = 0, name = 'Q renamed at c, activated at a', mtime = 1001 WHERE token = 'q7'").await;
    fed.wait_rows(
        "b",
        "SELECT name FROM user WHERE token IN ('p354', 'q7') ORDER BY token",
        &[&["Renamed at a"], &["Q renamed at c, activated at a"]],
    )
    .await;

    // Now b hears from c too: c's older changes arrive after a's, and lose to them.
    let mut b_partial = b_partial;
    let _ = std::process::Command::new("kill").arg("-TERM").arg(b_partial.id().to_string()).status();
    b_partial.wait().unwrap();
    fed.start("b", &["apply"]);
    for site in ["a", "b", "c"] {
        fed.wait_rows(
            site,
            "SELECT token, name, mtime FROM user ORDER BY token",
            &[&["p354", "Renamed at a", "1000"], &["q7", "Q renamed at c, activated at a", "1001"]],
        )
        .await;
    }
    // Applied by the one rule everywhere: nothing is left over for verify either.
    for site in ["a", "b", "c"] {
        let out = fed.command(site, &["verify"]).output().unwrap();
        assert!(out.status.success(), "verify at {site}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}
