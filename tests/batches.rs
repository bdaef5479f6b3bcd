//! A backlog applied in large batches (multi-row statements, what the batch read up front,
//! changes to different rows reordered) ends exactly as the same changes applied one at a time:
//! the same rows, references, versions and identity-map entries, and every change applied once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Federation, Spec};

const LIMS: &str = include_str!("fixtures/lims.sql");
const WAIT: Duration = Duration::from_secs(90);

const LIMS_CONFIG: &str = r#"
[entities.user]
table = "user"
key = ["token"]
exclude = ["avatar"]
refs = { creator_id = "user", approver_id = "user" }
conflict = { version_column = "mtime" }

[entities.lab]
table = "lab"
key = ["code"]
refs = { pi_id = "user" }

[entities.user_lab]
table = "user_lab"
key = ["user_id", "lab_id", "type"]
refs = { user_id = "user", lab_id = "lab" }

[[routes]]
from = ["a"]
to = ["b"]
entities = ["user", "lab", "user_lab"]
"#;

/// Waits until the topic of `site` holds `n` records (the backlog is all in Kafka).
async fn wait_published(fed: &mut Federation, site: &str, n: i64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let have = fed.topic_records(site);
        if have >= n {
            return;
        }
        if std::time::Instant::now() > deadline {
            fed.dump_logs();
            panic!("topic of {site} holds {have} records, expected {n}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// People with their references as tokens, so sites with different ids compare.
const PEOPLE: &str = "SELECT u.token, u.name, u.mtime, COALESCE(c.token, '-'), COALESCE(p.token, '-')
  FROM user u LEFT JOIN user c ON c.id = u.creator_id LEFT JOIN user p ON p.id = u.approver_id
  WHERE u.token REGEXP '^[uw][0-9]' ORDER BY u.token";
const MEMBERS: &str = "SELECT u.token, l.code, ul.type, p.token, l.name FROM user_lab ul JOIN user u ON u.id = ul.user_id
  JOIN lab l ON l.id = ul.lab_id LEFT JOIN user p ON p.id = l.pi_id ORDER BY u.token, l.code";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_natural_key_backlog_in_large_batches_matches_the_origin_row_for_row() {
    let mut fed = Federation::new(
        "batchkeys",
        Spec {
            schema: LIMS,
            entities_and_routes: LIMS_CONFIG,
            // History before sitesync, under different ids: B already has two of A's people,
            // one at an older version than A will write, one at a newer.
            seed: |i, _| {
                let mut sql = format!(
                    "ALTER TABLE user AUTO_INCREMENT = {}; INSERT INTO user (token, name, mtime) VALUES ('admin', 'Admin', 0)",
                    1000 * (i + 1)
                );
                // And one whose key B spells in other case: the column's collation makes it the
                // same person, as it would for one change applied alone.
                if i == 0 {
                    sql.push_str(", ('old5', 'A-old5', 1), ('new50', 'A-new50', 1), ('case1', 'A-case1', 1)");
                } else {
                    sql.push_str(", ('old5', 'B-old5', 5), ('new50', 'B-new50', 50), ('CASE1', 'B-case1', 5)");
                }
                sql
            },
            ..Spec::default()
        },
    )
    .await;
    fed.start("a", &["capture"]);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // The backlog, written while B applies nothing.
    let admin = "(SELECT id FROM (SELECT id FROM user WHERE token = 'admin') x)";
    fed.exec("a", &format!(
        "INSERT INTO user (token, name, mtime, creator_id) SELECT CONCAT('u', LPAD(seq, 3, '0')), CONCAT('one ', seq), 10, {admin} FROM seq_0_to_199"
    )).await;
    for i in 0..50 {
        // One transaction each: later versions of rows inserted earlier in the same backlog.
        fed.exec("a", &format!("UPDATE user SET name = CONCAT('two ', token), mtime = 20 WHERE token = 'u{i:03}'")).await;
    }
    // References to rows inserted earlier in the backlog.
    fed.exec(
        "a",
        "INSERT INTO user (token, name, mtime, approver_id) SELECT CONCAT('w', LPAD(seq, 3, '0')), 'w', 10, \
                   (SELECT id FROM user u WHERE u.token = CONCAT('u', LPAD(seq, 3, '0'))) FROM seq_0_to_49",
    )
    .await;
    // One transaction: a lab pointing at a person, and memberships pointing at both.
    fed.exec("a", "INSERT INTO lab (code, name, pi_id) SELECT 'L1', 'Lab one', id FROM user WHERE token = 'u001'").await;
    fed.exec(
        "a",
        "INSERT INTO user_lab (user_id, lab_id, type) SELECT u.id, l.id, 'member' FROM user u, lab l \
                   WHERE u.token IN ('u002', 'u003') AND l.code = 'L1'",
    )
    .await;
    // History meets the backlog: A's version beats B's older one and loses to B's newer one.
    fed.exec("a", "UPDATE user SET name = 'A-old5', mtime = 10 WHERE token = 'old5'").await;
    fed.exec("a", "UPDATE user SET name = 'A-new50', mtime = 20 WHERE token = 'new50'").await;
    fed.exec("a", "UPDATE user SET name = 'A-case1', mtime = 10 WHERE token = 'case1'").await;
    // A delete among the inserts and updates, then the same token again under a new id.
    fed.exec("a", "DELETE FROM user WHERE token = 'u199'").await;
    fed.exec("a", "INSERT INTO user (token, name, mtime) VALUES ('u199', 'reborn', 30)").await;
    fed.exec("a", "UPDATE user SET name = 'three', mtime = 40 WHERE token IN ('u000', 'u100')").await;
    // A key change: the row keeps its id at B and takes the new key.
    fed.exec("a", "DELETE FROM user WHERE token = 'u198'").await;
    fed.exec("a", "UPDATE user SET token = 'u198', name = 'renamed', mtime = 50 WHERE token = 'u197'").await;
    // 200 + 50 + 50 + 1 + 2 + 3 + 1 + 1 + 2 + 2 changes.
    wait_published(&mut fed, "a", 312).await;

    fed.start("b", &["apply"]);
    let (pa, pb) = (fed.pool("a").clone(), fed.pool("b").clone());
    fed.wait_for(WAIT, "B has every person and membership of A", || {
        let (pa, pb) = (pa.clone(), pb.clone());
        async move {
            common::rows(&pa, PEOPLE).await == common::rows(&pb, PEOPLE).await
                && common::rows(&pa, MEMBERS).await == common::rows(&pb, MEMBERS).await
        }
    })
    .await;
    let people = fed.rows("b", PEOPLE).await;
    assert_eq!(people.len(), 249);
    assert_eq!(people[0], ["u000", "three", "40", "admin", "-"]);
    assert_eq!(people[1], ["u001", "two u001", "20", "admin", "-"]);
    assert_eq!(people[197], ["u198", "renamed", "50", "admin", "-"]);
    assert_eq!(people[198], ["u199", "reborn", "30", "-", "-"]);
    assert_eq!(people[248], ["w049", "w", "10", "-", "u049"]);
    assert_eq!(fed.rows("b", MEMBERS).await.len(), 2);
    // Last writer wins against history.
    assert_eq!(
        fed.rows("b", "SELECT token, name, mtime FROM user WHERE token IN ('old5', 'new50') ORDER BY token").await,
        [["new50", "B-new50", "50"], ["old5", "A-old5", "10"]]
    );
    assert_eq!(
        fed.rows("b", "SELECT token, name, mtime, id FROM user WHERE token = 'case1'").await,
        [["case1", "A-case1", "10", "2003"]],
        "B's CASE1 (id 2003, seeded fourth) is A's case1: updated in place"
    );
    // The versions B's applier wrote, by whom.
    let ctl = &fed.control_db;
    assert_eq!(
        fed.rows("b", &format!("SELECT row_key, origin, version FROM `{ctl}`.row_versions WHERE row_key IN ('[\"u000\"]', '[\"u001\"]', '[\"old5\"]') ORDER BY row_key")).await,
        [["[\"old5\"]", "a", "10"], ["[\"u000\"]", "a", "40"], ["[\"u001\"]", "a", "20"]]
    );

    // Identity map: each of A's people B has (the one B kept included) maps to B's own id of
    // the same token; u199's first life and the deleted u198 keep their old entries.
    let ids = |rows: Vec<Vec<String>>| rows.into_iter().map(|r| (r[0].clone(), r[1].clone())).collect::<HashMap<_, _>>();
    let a_ids = ids(fed.rows("a", "SELECT id, token FROM user WHERE token <> 'admin'").await);
    let b_ids: HashMap<String, String> = ids(fed.rows("b", "SELECT token, id FROM user").await);
    let map =
        ids(fed.rows("b", &format!("SELECT origin_key, local_key FROM `{ctl}`.identity_map WHERE entity = 'user' AND origin = 'a'")).await);
    for (a_id, token) in &a_ids {
        assert_eq!(map.get(a_id), b_ids.get(token), "identity of A's {token} (id {a_id})");
    }
    assert_eq!(map.len(), a_ids.len() + 2, "deleted rows' ids stay mapped");
    assert_eq!(fed.scalar("b", &format!("SELECT COUNT(*) FROM `{ctl}`.dead_letters")).await, 0);
    assert_eq!(fed.scalar("b", &format!("SELECT COUNT(*) FROM `{ctl}`.parked")).await, 0);
}

const ITEMS: &str = "
CREATE TABLE item (
  id INT NOT NULL PRIMARY KEY,
  v INT NOT NULL,
  note VARCHAR(40) NULL
) ENGINE=InnoDB;
CREATE TABLE item_log (id INT NOT NULL, op CHAR(1) NOT NULL, v INT NULL, n INT NOT NULL AUTO_INCREMENT PRIMARY KEY) ENGINE=InnoDB;
CREATE TRIGGER item_ins AFTER INSERT ON item FOR EACH ROW INSERT INTO item_log (id, op, v) VALUES (NEW.id, 'i', NEW.v);
CREATE TRIGGER item_upd AFTER UPDATE ON item FOR EACH ROW INSERT INTO item_log (id, op, v) VALUES (NEW.id, 'u', NEW.v);
CREATE TRIGGER item_del AFTER DELETE ON item FOR EACH ROW INSERT INTO item_log (id, op, v) VALUES (OLD.id, 'd', OLD.v)
";

const ITEMS_CONFIG: &str = r#"
[entities.item]
table = "item"

[[routes]]
from = ["a"]
to = ["b"]
entities = ["item"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_many_rows_in_one_batch_keep_each_rows_order_and_apply_each_once() {
    let mut fed = Federation::new("batchrounds", Spec { schema: ITEMS, entities_and_routes: ITEMS_CONFIG, ..Spec::default() }).await;
    fed.start("a", &["capture"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    fed.exec("a", "INSERT INTO item (id, v) SELECT seq, 0 FROM seq_1_to_100").await;
    // sysbench's write mix, deterministic: updates, a delete and an insert of the same key in
    // one transaction, rows deleted and inserted again, rows changed many times.
    let mut changes = 100;
    for t in 0..60 {
        let k = 1 + (t * 37) % 100;
        let j = 1 + (t * 53 + 11) % 100;
        fed.exec(
            "a",
            &format!(
                "BEGIN NOT ATOMIC START TRANSACTION; \
                 UPDATE item SET v = v + 1 WHERE id = {k}; \
                 UPDATE item SET note = 'n{t}' WHERE id = {j}; \
                 DELETE FROM item WHERE id = {j}; \
                 INSERT INTO item (id, v, note) VALUES ({j}, {t}, 'again'); \
                 COMMIT; END"
            ),
        )
        .await;
        changes += 4;
    }
    fed.exec("a", "DELETE FROM item WHERE id BETWEEN 90 AND 95").await;
    fed.exec("a", "UPDATE item SET v = v * 2 + 1 WHERE id BETWEEN 1 AND 20").await;
    changes += 6 + 20;
    wait_published(&mut fed, "a", changes).await;

    fed.start("b", &["apply"]);
    let (pa, pb) = (fed.pool("a").clone(), fed.pool("b").clone());
    let q = "SELECT id, v, COALESCE(note, '-') FROM item ORDER BY id";
    fed.wait_for(WAIT, "B equals A", || {
        let (pa, pb) = (pa.clone(), pb.clone());
        async move { common::rows(&pa, q).await == common::rows(&pb, q).await }
    })
    .await;
    // Every change applied once, and each row's changes in their order: the triggers at B log
    // the same sequence per row as at A.
    let per_row = "SELECT id, GROUP_CONCAT(CONCAT(op, v) ORDER BY n) FROM item_log GROUP BY id ORDER BY id";
    let (la, lb) = (fed.rows("a", per_row).await, fed.rows("b", per_row).await);
    assert_eq!(la.len(), 100);
    assert_eq!(la, lb);
    assert_eq!(fed.scalar("b", "SELECT COUNT(*) FROM item_log").await, changes);
}
