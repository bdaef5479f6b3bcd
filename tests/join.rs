//! Issue 14: a campus joins a running federation. Two campuses replicate under a write load;
//! the federation file gains a third that already holds some of the same people (same tokens,
//! other ids) and rows of its own; the two restart one after the other while their
//! applications write; the third runs `init`, `run`, `join` (its history from every origin,
//! for it alone) and `snapshot` (its own history, for everyone). At the end the three are
//! equal by natural key, `verify` agrees at each, the identity map links the shared people,
//! and the college's instruments reach the university under the many-to-one route.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Federation, Spec};

const LIMS2: &str = include_str!("fixtures/lims2.sql");

const CONFIG: &str = r#"
[entities.user]
table = "user"
key = ["token"]
exclude = ["avatar"]
filter = "is_temporary = 0"
refs = { creator_id = "user", approver_id = "user", group_id = "tag" }

[entities.tag]
table = "tag"
key = ["uuid"]
refs = { parent_id = "tag" }

[entities.lab]
table = "lab"
key = ["code"]
refs = { pi_id = "user", creator_id = "user" }

[entities.user_lab]
table = "user_lab"
key = ["user_id", "lab_id"]
refs = { user_id = "user", lab_id = "lab" }

[entities.equipment]
table = "equipment"
key = ["ref_no"]
refs = { group_id = "lab" }
origin_column = "source_site"

[[routes]]
from = ["*"]
to = ["*"]
entities = ["user", "tag", "lab", "user_lab"]

[[routes]]
from = ["b", "c"]
to = ["a"]
entities = ["equipment"]
"#;

fn history(i: usize, _site: &str) -> String {
    let base = 1000 * (i + 1);
    let mut sql = format!(
        "ALTER TABLE user AUTO_INCREMENT = {base}; ALTER TABLE lab AUTO_INCREMENT = {base}; ALTER TABLE user_lab AUTO_INCREMENT = {base}; \
         ALTER TABLE equipment AUTO_INCREMENT = {base}; INSERT INTO user (token, name) VALUES ('admin', 'Admin');"
    );
    match i {
        // The university: people p1..p20 and a lab.
        0 => sql.push_str(
            "INSERT INTO user (token, name, creator_id) SELECT CONCAT('p', seq), CONCAT('Person ', seq), (SELECT id FROM user WHERE token = 'admin') FROM seq_1_to_20; \
             INSERT INTO lab (code, name, pi_id) SELECT 'L-A', 'Lab A', id FROM user WHERE token = 'p1'; \
             INSERT INTO user_lab (user_id, lab_id) SELECT u.id, l.id FROM user u, lab l WHERE u.token IN ('p1', 'p2') AND l.code = 'L-A';",
        ),
        // A college: its people and an instrument.
        1 => sql.push_str(
            "INSERT INTO user (token, name) SELECT CONCAT('q', seq), CONCAT('College B ', seq) FROM seq_1_to_10; \
             INSERT INTO equipment (ref_no, name) VALUES ('E-B1', 'Microscope of B');",
        ),
        // The joining college: five of the university's people already (other ids), its own.
        _ => sql.push_str(
            "INSERT INTO user (token, name, creator_id) SELECT CONCAT('p', seq), CONCAT('Person ', seq), (SELECT id FROM user WHERE token = 'admin') FROM seq_1_to_5; \
             INSERT INTO user (token, name) SELECT CONCAT('r', seq), CONCAT('College C ', seq) FROM seq_1_to_5; \
             INSERT INTO equipment (ref_no, name) VALUES ('E-C1', 'Spectrometer of C');",
        ),
    }
    sql
}

use common::output_text as text;

/// The replicated people, labs and memberships of a site, by natural key.
async fn content(pool: &sqlx::MySqlPool) -> Vec<Vec<String>> {
    let mut rows = common::rows(
        pool,
        "SELECT u.token, u.name, COALESCE(c.token, '-') FROM user u LEFT JOIN user c ON c.id = u.creator_id WHERE u.is_temporary = 0",
    )
    .await;
    rows.extend(common::rows(pool, "SELECT l.code, l.name, COALESCE(p.token, '-') FROM lab l LEFT JOIN user p ON p.id = l.pi_id").await);
    rows.extend(
        common::rows(
            pool,
            "SELECT u.token, l.code, ul.type FROM user_lab ul JOIN user u ON u.id = ul.user_id JOIN lab l ON l.id = ul.lab_id",
        )
        .await,
    );
    rows.sort();
    rows
}

/// An application at `site`: new people and changes to its own, until `stop`.
async fn load(pool: sqlx::MySqlPool, site: &'static str, stop: Arc<AtomicBool>) -> u64 {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let sql = if n.is_multiple_of(2) {
            format!("INSERT INTO user (token, name) VALUES ('live-{site}-{n}', 'Live {n}')")
        } else {
            format!("UPDATE user SET name = 'Live {n} renamed' WHERE token = 'live-{site}-{}'", n - 1)
        };
        common::exec_as_application(&pool, &sql).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n
}

/// Records of a that b's applier skipped, over every entity.
fn skipped_from_a(listen: std::net::SocketAddr) -> f64 {
    let body = common::http_get(listen, "/metrics").unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("sitesync_apply_records_total{") && l.contains("origin=\"a\"") && l.contains("outcome=\"skipped\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campus_with_history_joins_a_running_federation_under_load() {
    let mut fed = Federation::new(
        "join",
        Spec { sites: &["a", "b", "c"], schema: LIMS2, entities_and_routes: CONFIG, seed: history, ..Spec::default() },
    )
    .await;
    let three = std::fs::read_to_string(&fed.config_path).unwrap();
    // The federation as it runs before c: without c's entry and routes.
    let start = three.find("[sites.c]").unwrap();
    let end = start + three[start..].find("\n\n").unwrap() + 2;
    let two = format!("{}{}", &three[..start], &three[end..]).replace(r#"from = ["b", "c"]"#, r#"from = ["b"]"#);
    std::fs::write(&fed.config_path, &two).unwrap();
    let listen_b = fed.listen("b");
    let mut runs = [fed.start("a", &["run"]), fed.start("b", &["run"])];
    for site in ["a", "b"] {
        let out = fed.command(site, &["snapshot"]).output().unwrap();
        assert!(out.status.success(), "snapshot at {site}: {}", text(&out));
    }
    let (pa, pb, pc) = (fed.pool("a").clone(), fed.pool("b").clone(), fed.pool("c").clone());
    {
        let (pa, pb) = (pa.clone(), pb.clone());
        fed.wait_for(Duration::from_secs(90), "a and b merged", || {
            let (pa, pb) = (pa.clone(), pb.clone());
            async move { content(&pa).await == content(&pb).await }
        })
        .await;
    }

    // The two campuses' applications write from now on.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = vec![tokio::spawn(load(pa.clone(), "a", stop.clone())), tokio::spawn(load(pb.clone(), "b", stop.clone()))];
    tokio::time::sleep(Duration::from_secs(1)).await;

    // c enters the file; a and b restart one after the other (a rolling restart) to read it.
    let three = three.replacen("[sites.b]\n", &format!("[sites.b]\nlisten = \"{listen_b}\"\n"), 1);
    std::fs::write(&fed.config_path, &three).unwrap();
    for (i, site) in ["a", "b"].iter().enumerate() {
        assert!(fed.stop(runs[i]).success(), "{site} stops cleanly");
        runs[i] = fed.start(site, &["run"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The new campus: check, init (done by the harness: its control tables and topics), run.
    let out = fed.command("c", &["check"]).output().unwrap();
    assert!(text(&out).contains("PASS"), "check at c: {}", text(&out));
    fed.start("c", &["run"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let skipped_before = skipped_from_a(listen_b);
    let out = fed.command("c", &["join"]).output().unwrap();
    let joined = text(&out);
    assert!(out.status.success(), "join at c: {joined}");
    assert!(joined.contains("history from a: done") && joined.contains("history from b: done") && joined.contains(", applied"), "{joined}");
    // c's own history, for everyone.
    let out = fed.command("c", &["snapshot"]).output().unwrap();
    assert!(out.status.success(), "snapshot at c: {}", text(&out));

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    assert!(written > 50, "the load ran: {written}");
    {
        let (pa, pb, pc) = (pa.clone(), pb.clone(), pc.clone());
        fed.wait_for(Duration::from_secs(120), "the three campuses equal by natural key", || {
            let (pa, pb, pc) = (pa.clone(), pb.clone(), pc.clone());
            async move {
                let a = content(&pa).await;
                a == content(&pb).await && a == content(&pc).await
            }
        })
        .await;
    }
    for site in ["a", "b", "c"] {
        let out = fed.command(site, &["verify"]).output().unwrap();
        assert!(out.status.success(), "verify at {site}: {}", text(&out));
    }

    // Nobody duplicated: c holds each person once, and its own p1..p5 are linked to a's.
    let c = content(&pc).await;
    let people = common::rows(&pc, "SELECT COUNT(*), COUNT(DISTINCT token) FROM user").await;
    assert_eq!(people[0][0], people[0][1], "{people:?}");
    assert!(c.iter().any(|r| r[0] == "r3") && c.iter().any(|r| r[0] == "q7") && c.iter().any(|r| r[0] == "p20"), "{c:?}");
    let linked = fed
        .rows(
            "c",
            &format!(
                "SELECT COUNT(*) FROM `{0}`.identity_map m JOIN user u ON CAST(u.id AS CHAR) = m.local_key \
                 WHERE m.entity = 'user' AND m.origin = 'a' AND u.token IN ('p1', 'p2', 'p3', 'p4', 'p5') AND u.id < 4000",
                fed.control_db
            ),
        )
        .await;
    assert_eq!(linked, vec![vec!["5".to_string()]], "c's own p1..p5 (ids from 3000) are a's p1..p5");
    // The college's instrument reached the university, named as c's; b's is untouched.
    fed.wait_rows("a", "SELECT ref_no, source_site FROM equipment ORDER BY ref_no", &[&["E-B1", "b"], &["E-C1", "c"]]).await;
    // b skipped what a published for c alone.
    let skipped_after = skipped_from_a(listen_b);
    assert!(skipped_after - skipped_before >= 20.0, "b skipped a's history for c: {skipped_before} -> {skipped_after}");
    fed.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_leaves_is_forgotten_and_the_others_go_on() {
    let config = "[entities.user]\ntable = \"user\"\nkey = [\"token\"]\nrefs = { creator_id = \"user\", approver_id = \"user\" }\n\n\
                  [[routes]]\nfrom = [\"*\"]\nto = [\"*\"]\nentities = [\"user\"]\n";
    let mut fed = Federation::new(
        "leave",
        Spec {
            sites: &["a", "b", "c"],
            schema: LIMS2,
            entities_and_routes: config,
            seed: |i, _| format!("ALTER TABLE user AUTO_INCREMENT = {}", 1000 * (i + 1)),
            ..Spec::default()
        },
    )
    .await;
    let mut runs: Vec<usize> = ["a", "b", "c"].iter().map(|s| fed.start(s, &["run"])).collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    fed.exec("c", "INSERT INTO user (token, name) VALUES ('from-c', 'Made at c')").await;
    for site in ["a", "b"] {
        fed.wait_rows(site, "SELECT name FROM user WHERE token = 'from-c'", &[&["Made at c"]]).await;
    }

    // c leaves: stopped for good, out of the file; a and b restart one after the other.
    assert!(fed.stop(runs[2]).success());
    let text3 = std::fs::read_to_string(&fed.config_path).unwrap();
    let start = text3.find("[sites.c]").unwrap();
    let end = start + text3[start..].find("\n\n").unwrap() + 2;
    std::fs::write(&fed.config_path, format!("{}{}", &text3[..start], &text3[end..])).unwrap();
    for i in 0..2 {
        assert!(fed.stop(runs[i]).success());
        runs[i] = fed.start(["a", "b"][i], &["run"]);
    }
    // Still configured: refused.
    let out = fed.command("a", &["forget", "b"]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("still in"), "{}", text(&out));
    let control = fed.control_db.clone();
    let about_c = format!(
        "SELECT (SELECT COUNT(*) FROM `{control}`.apply_offsets WHERE topic = '{0}.c'), \
         (SELECT COUNT(*) FROM `{control}`.identity_map WHERE origin = 'c'), (SELECT COUNT(*) FROM `{control}`.apply_progress WHERE origin = 'c')",
        fed.topic_prefix
    );
    let before = fed.rows("a", &about_c).await;
    assert!(before[0].iter().all(|n| n != "0"), "a holds offsets, identity links and progress of c: {before:?}");
    for site in ["a", "b"] {
        let out = fed.command(site, &["forget", "c"]).output().unwrap();
        assert!(out.status.success(), "forget c at {site}: {}", text(&out));
        assert!(text(&out).contains("identity_map: 1 row(s) about c deleted"), "{}", text(&out));
        assert_eq!(fed.rows(site, &about_c).await, vec![vec!["0".to_string(); 3]]);
    }
    // Its rows stay; the others go on replicating, and agree.
    fed.exec("a", "INSERT INTO user (token, name) VALUES ('after-c', 'Made at a after c left')").await;
    fed.wait_rows(
        "b",
        "SELECT name FROM user WHERE token IN ('from-c', 'after-c') ORDER BY token",
        &[&["Made at a after c left"], &["Made at c"]],
    )
    .await;
    for site in ["a", "b"] {
        let out = fed.command(site, &["verify"]).output().unwrap();
        assert!(out.status.success(), "verify at {site}: {}", text(&out));
    }
    fed.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_site_under_load_loses_nothing_and_applies_nothing_twice() {
    let config = "[entities.user]\ntable = \"user\"\nkey = [\"token\"]\nrefs = { creator_id = \"user\", approver_id = \"user\" }\n\n\
                  [[routes]]\nfrom = [\"*\"]\nto = [\"*\"]\nentities = [\"user\"]\n";
    // Every row write at every site is logged by triggers: the applier's included.
    let schema = format!(
        "{LIMS2};\nCREATE TABLE write_log (n BIGINT AUTO_INCREMENT PRIMARY KEY, token VARCHAR(64) NOT NULL, kind CHAR(1) NOT NULL) ENGINE=InnoDB;\n\
         CREATE TRIGGER log_insert AFTER INSERT ON user FOR EACH ROW INSERT INTO write_log (token, kind) VALUES (NEW.token, 'i');\n\
         CREATE TRIGGER log_update AFTER UPDATE ON user FOR EACH ROW INSERT INTO write_log (token, kind) VALUES (NEW.token, 'u')"
    );
    let mut fed = Federation::new(
        "rolling",
        Spec {
            sites: &["a", "b", "c"],
            schema: &schema,
            entities_and_routes: config,
            seed: |i, _| format!("ALTER TABLE user AUTO_INCREMENT = {}", 1000 * (i + 1)),
            ..Spec::default()
        },
    )
    .await;
    let sites: [&'static str; 3] = ["a", "b", "c"];
    let mut runs: Vec<usize> = sites.iter().map(|s| fed.start(s, &["run"])).collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let pools: Vec<sqlx::MySqlPool> = sites.iter().map(|s| fed.pool(s).clone()).collect();
    let writers: Vec<_> = sites
        .into_iter()
        .enumerate()
        .map(|(i, site)| {
            let (pool, stop) = (pools[i].clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    common::exec(&pool, &format!("INSERT INTO user (token, name) VALUES ('{site}-{n}', 'Row {n}')")).await;
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                n
            })
        })
        .collect();
    // Every site restarts in turn, twice, while all three write.
    for round in 0..2 {
        for (i, site) in sites.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert!(fed.stop(runs[i]).success(), "round {round}: {site} stops cleanly");
            runs[i] = fed.start(site, &["run"]);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    assert!(written > 100, "{written}");
    let expected = vec![vec![written.to_string()]];
    for site in sites {
        fed.wait_rows(site, "SELECT COUNT(*) FROM user", &[&[&written.to_string()]]).await;
        // Each row written once at every site: one insert, no second write.
        let log = fed.rows(site, "SELECT COUNT(*) FROM write_log WHERE kind = 'i'").await;
        assert_eq!(log, expected, "{site}: inserts logged");
        let twice = fed.rows(site, "SELECT COUNT(*) FROM write_log WHERE kind = 'u'").await;
        assert_eq!(twice, vec![vec!["0".to_string()]], "{site}: a row was written twice");
    }
    fed.assert_running();
}
