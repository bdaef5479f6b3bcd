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

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

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
        let sql = if n % 2 == 0 {
            format!("INSERT INTO user (token, name) VALUES ('live-{site}-{n}', 'Live {n}')")
        } else {
            format!("UPDATE user SET name = 'Live {n} renamed' WHERE token = 'live-{site}-{}'", n - 1)
        };
        for attempt in 0.. {
            match sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&pool).await {
                Ok(_) => break,
                Err(sqlx::Error::Database(e)) if attempt < 20 && matches!(e.code().as_deref(), Some("40001" | "HY000")) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
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
    let mut runs = vec![fed.start("a", &["run"]), fed.start("b", &["run"])];
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
