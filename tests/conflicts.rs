//! Concurrent changes to one row at two sites, and `sitesync verify`.

mod common;

use std::time::Duration;

use common::{Federation, Spec};

const LIMS: &str = include_str!("fixtures/lims.sql");
const WAIT: Duration = Duration::from_secs(60);
const CONFIG: &str = r#"
[entities.user]
table = "user"
key = ["token"]
exclude = ["avatar"]
refs = { creator_id = "user", approver_id = "user" }
conflict = { version_column = "mtime" }

[entities.tag]
table = "tag"
key = ["uuid"]
refs = { parent_id = "tag" }

[[routes]]
from = ["*"]
to = ["*"]
entities = ["user", "tag"]
"#;

async fn wait_same(fed: &mut Federation, sql: &'static str) {
    let (pa, pb) = (fed.pool("a").clone(), fed.pool("b").clone());
    fed.wait_for(WAIT, sql, || {
        let (pa, pb) = (pa.clone(), pb.clone());
        async move { common::rows(&pa, sql).await == common::rows(&pb, sql).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_end_identical_by_last_writer_and_verify_lists_differences() {
    let mut fed = Federation::new(
        "lww",
        Spec {
            schema: LIMS,
            entities_and_routes: CONFIG,
            // The same admin at both sites, under different ids.
            seed: |i, _| {
                format!("ALTER TABLE user AUTO_INCREMENT = {}; INSERT INTO user (token, name) VALUES ('admin', 'Admin')", 100 * (i + 1))
            },
            ..Spec::default()
        },
    )
    .await;
    let cap_a = fed.start("a", &["capture"]);
    let cap_b = fed.start("b", &["capture"]);
    let app_a = fed.start("a", &["apply"]);
    let app_b = fed.start("b", &["apply"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    fed.exec("a", "INSERT INTO user (token, name, mtime) VALUES ('u1', 'one', 1), ('u2', 'two', 1), ('u3', 'three', 1), ('u4', 'four', 1)")
        .await;
    let pb = fed.pool("b").clone();
    fed.wait_for(WAIT, "users at B", || {
        let pb = pb.clone();
        async move { common::rows(&pb, "SELECT COUNT(*) FROM user WHERE token LIKE 'u_'").await == vec![vec!["4".to_string()]] }
    })
    .await;

    // Both appliers stopped: the two sites change the same rows without seeing each other.
    assert!(fed.stop(app_a).success() && fed.stop(app_b).success(), "appliers stop cleanly on SIGTERM");
    fed.exec("a", "UPDATE user SET name = 'A1', mtime = 100 WHERE token = 'u1'").await; // tie: site b wins
    fed.exec("b", "UPDATE user SET name = 'B1', mtime = 100 WHERE token = 'u1'").await;
    fed.exec("a", "UPDATE user SET name = 'A2', mtime = 200 WHERE token = 'u2'").await; // a is later
    fed.exec("b", "UPDATE user SET name = 'B2', mtime = 150 WHERE token = 'u2'").await;
    fed.exec("a", "UPDATE user SET name = 'A3', mtime = 300 WHERE token = 'u3'").await; // b is later
    fed.exec("b", "UPDATE user SET name = 'B3', mtime = 301 WHERE token = 'u3'").await;
    // A delete at A against a concurrent update at B: the update is newer and wins everywhere.
    fed.exec("a", "DELETE FROM user WHERE token = 'u4'").await;
    fed.exec("b", "UPDATE user SET name = 'B4', mtime = 2 WHERE token = 'u4'").await;
    fed.start("a", &["apply"]);
    fed.start("b", &["apply"]);
    let q = "SELECT token, name, mtime FROM user WHERE token LIKE 'u_' ORDER BY token";
    wait_same(&mut fed, q).await;
    let expected: Vec<Vec<String>> = [["u1", "B1", "100"], ["u2", "A2", "200"], ["u3", "B3", "301"], ["u4", "B4", "2"]]
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(fed.rows("a", q).await, expected);

    // verify: equal now.
    let out = fed.command("a", &["verify"]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 difference(s)"));

    // Changes B's capture never sees (it is stopped) are differences that verify lists.
    fed.kill9(cap_b);
    fed.exec("b", "UPDATE user SET email = 'drift@b' WHERE token = 'u1'").await;
    fed.exec("b", "DELETE FROM user WHERE token = 'u2'").await;
    fed.exec("b", "INSERT INTO tag (uuid, name) VALUES ('only-b', 'Only at B')").await;
    // B's capture is down, so B cannot answer through Kafka: `--direct` opens both databases.
    let out = fed.command("a", &["verify", "--direct", "--entity", "user", "--against", "b"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(r#"DIFF user {"token":"u1"} (a -> b): `email`"#), "{text}");
    assert!(text.contains(r#"DIFF user {"token":"u2"} (a -> b): missing at b"#), "{text}");
    assert!(text.contains(r#"DIFF user {"token":"u1"} (b -> a): `email`"#), "{text}");
    assert!(text.contains("3 difference(s)"), "{text}");
    let out = fed.command("a", &["verify", "--direct", "--entity", "tag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#"DIFF tag {"uuid":"only-b"} (b -> a): missing at a"#));
    let _ = cap_a;
}
