//! Issue 13: `sitesync verify` through Kafka. Three campuses with per-site ids, history at
//! each, differences made behind sitesync's back (`sql_log_bin = 0`): verify lists exactly
//! those, `--repair` heals them through the origins' pipelines, and a second verify agrees.
//! Each verifying process holds its own site's password only.

mod common;

use std::collections::BTreeSet;
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

[entities.lab]
table = "lab"
key = ["code"]
on_delete = "ignore"
refs = { pi_id = "user", creator_id = "user" }

[entities.tag]
table = "tag"
key = ["uuid"]
refs = { parent_id = "tag" }

[entities.user_lab]
table = "user_lab"
key = ["user_id", "lab_id"]
refs = { user_id = "user", lab_id = "lab" }

[[routes]]
from = ["*"]
to = ["*"]
entities = ["user", "lab", "tag", "user_lab"]
"#;

/// History before sitesync: each site its own ids; `admin` at every site.
fn history(i: usize, _site: &str) -> String {
    let base = 1000 * (i + 1);
    let mut sql = format!(
        "ALTER TABLE user AUTO_INCREMENT = {base}; ALTER TABLE lab AUTO_INCREMENT = {base}; ALTER TABLE tag AUTO_INCREMENT = {base}; \
         ALTER TABLE user_lab AUTO_INCREMENT = {base}; INSERT INTO user (token, name) VALUES ('admin', 'Admin');"
    );
    if i == 0 {
        sql.push_str(
            "INSERT INTO tag (uuid, name) VALUES ('t-root', 'University'); \
             INSERT INTO tag (uuid, name, parent_id) SELECT 't-chem', 'Chemistry', id FROM tag WHERE uuid = 't-root'; \
             INSERT INTO tag (uuid, name, parent_id) SELECT 't-phys', 'Physics', id FROM tag WHERE uuid = 't-root'; \
             INSERT INTO user (token, name, creator_id, group_id) SELECT CONCAT('u', n.n), CONCAT('User ', n.n), a.id, t.id \
               FROM (SELECT 1 n UNION SELECT 2 UNION SELECT 3 UNION SELECT 4 UNION SELECT 5) n, user a, tag t WHERE a.token = 'admin' AND t.uuid = 't-chem'; \
             INSERT INTO user (token, name, is_temporary) VALUES ('temp-a', 'Visitor', 1); \
             INSERT INTO lab (code, name, pi_id) SELECT 'L1', 'Lab one', id FROM user WHERE token = 'u1'; \
             INSERT INTO user_lab (user_id, lab_id) SELECT u.id, l.id FROM user u, lab l WHERE u.token IN ('u1', 'u2') AND l.code = 'L1';",
        );
    }
    if i == 1 {
        sql.push_str("INSERT INTO user (token, name) VALUES ('b1', 'From B');");
    }
    sql
}

use common::output_text as text;

/// `verify --json` at `site` (with only `site`'s password: the other URLs name unset variables).
fn verify(fed: &Federation, site: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec!["verify", "--json"];
    args.extend_from_slice(extra);
    let out = fed.command(site, &args).output().unwrap();
    let all = text(&out);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("verify at {site}: not JSON ({e}): {all}"));
    (out.status.code(), json, all)
}

/// (origin, entity, kind, key, columns) of every difference in a verify report.
fn findings(report: &serde_json::Value) -> BTreeSet<(String, String, String, String, String)> {
    let mut out = BTreeSet::new();
    for r in report["results"].as_array().unwrap() {
        for d in r["differences"].as_array().unwrap() {
            let columns: Vec<&str> = d["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
            out.insert((
                r["origin"].as_str().unwrap().to_string(),
                r["entity"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
                d["key"].as_str().unwrap().to_string(),
                columns.join(","),
            ));
        }
    }
    out
}

fn f(origin: &str, entity: &str, kind: &str, key: &str, columns: &str) -> (String, String, String, String, String) {
    (origin.into(), entity.into(), kind.into(), key.into(), columns.into())
}

/// The replicated content of a site, by natural key (references as keys).
async fn content(pool: &sqlx::MySqlPool) -> Vec<Vec<String>> {
    let mut rows = common::rows(
        pool,
        "SELECT 'user', u.token, u.name, COALESCE(u.email, '-'), COALESCE(c.token, '-'), COALESCE(t.uuid, '-') FROM user u \
         LEFT JOIN user c ON c.id = u.creator_id LEFT JOIN tag t ON t.id = u.group_id WHERE u.is_temporary = 0",
    )
    .await;
    rows.extend(
        common::rows(pool, "SELECT 'tag', t.uuid, t.name, COALESCE(p.uuid, '-'), '', '' FROM tag t LEFT JOIN tag p ON p.id = t.parent_id")
            .await,
    );
    rows.extend(
        common::rows(pool, "SELECT 'user_lab', u.token, l.code, ul.type, '', '' FROM user_lab ul JOIN user u ON u.id = ul.user_id JOIN lab l ON l.id = ul.lab_id")
            .await,
    );
    rows.extend(
        common::rows(pool, "SELECT 'lab', l.code, l.name, COALESCE(p.token, '-'), '', '' FROM lab l LEFT JOIN user p ON p.id = l.pi_id")
            .await,
    );
    rows.sort();
    rows
}

async fn wait_equal(fed: &mut Federation, what: &str) {
    let pools: Vec<sqlx::MySqlPool> = ["a", "b", "c"].iter().map(|s| fed.pool(s).clone()).collect();
    fed.wait_for(Duration::from_secs(90), what, || {
        let pools = pools.clone();
        async move {
            let a = content(&pools[0]).await;
            a == content(&pools[1]).await && a == content(&pools[2]).await
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_through_kafka_finds_exactly_what_was_changed_behind_sitesyncs_back_and_repair_heals_it() {
    let mut fed = Federation::new(
        "verify",
        Spec { sites: &["a", "b", "c"], schema: LIMS2, entities_and_routes: CONFIG, seed: history, ..Spec::default() },
    )
    .await;
    // Every site's URL names a password variable; each process below gets its own only.
    fed.own_password_only();
    for site in ["a", "b", "c"] {
        fed.start(site, &["run"]);
    }
    for site in ["a", "b", "c"] {
        let out = fed.command(site, &["snapshot"]).output().unwrap();
        assert!(out.status.success(), "snapshot at {site}: {}", text(&out));
    }
    wait_equal(&mut fed, "history merged at the three sites").await;
    let a = content(fed.pool("a")).await;
    assert_eq!(a.iter().filter(|r| r[0] == "user").count(), 7, "admin, u1-u5, b1 (the temporary visitor stays at a): {a:?}");

    // Equal: nothing to report, and the origins compared what they hold.
    for site in ["a", "b", "c"] {
        let (code, report, all) = verify(&fed, site, &[]);
        assert_eq!(code, Some(0), "verify at {site}: {all}");
        assert_eq!(report["differences"], 0, "{all}");
        let user_from_a = report["results"].as_array().unwrap().iter().find(|r| r["entity"] == "user" && r["origin"] == "a");
        if site != "a" {
            // a owns admin (history), u1-u5; the temporary visitor never travels.
            assert_eq!(user_from_a.unwrap()["compared"], 6, "{all}");
        }
    }

    // Behind sitesync's back.
    fed.exec(
        "b",
        "SET sql_log_bin = 0; \
         UPDATE user SET name = 'drifted at b' WHERE token = 'u1'; \
         DELETE FROM user WHERE token = 'u2'; \
         UPDATE user SET creator_id = (SELECT id FROM (SELECT id FROM user WHERE token = 'b1') x) WHERE token = 'u4'; \
         INSERT INTO user (token, name) VALUES ('ghost', 'Never published'); \
         SET sql_log_bin = 1",
    )
    .await;
    // At the origin, changes its capture never sees.
    fed.exec("a", "SET sql_log_bin = 0; UPDATE user SET email = 'new@a' WHERE token = 'u3'; DELETE FROM tag WHERE uuid = 't-phys'; SET sql_log_bin = 1").await;
    fed.exec("c", "SET sql_log_bin = 0; UPDATE user_lab SET type = 'pi' WHERE lab_id = (SELECT id FROM lab WHERE code = 'L1') AND user_id = (SELECT id FROM user WHERE token = 'u1'); SET sql_log_bin = 1").await;

    let (code, report, all) = verify(&fed, "b", &[]);
    assert_eq!(code, Some(1), "{all}");
    assert_eq!(
        findings(&report),
        BTreeSet::from([
            f("a", "user", "different", r#"{"token":"u1"}"#, "name"),
            f("a", "user", "missing", r#"{"token":"u2"}"#, ""),
            f("a", "user", "different", r#"{"token":"u3"}"#, "email"),
            f("a", "user", "different", r#"{"token":"u4"}"#, "creator_id"),
            f("a", "tag", "gone", r#"{"uuid":"t-phys"}"#, ""),
            // u2's membership at b now points at no user (its key says so), and a's is missing.
            f("a", "user_lab", "gone", r#"{"lab_id":"2:L1","user_id":"dangling 2003"}"#, ""),
            f("a", "user_lab", "missing", r#"{"lab_id":"2:L1","user_id":"2:u2"}"#, ""),
        ]),
        "{all}"
    );
    let (code, report, all) = verify(&fed, "a", &["--against", "b"]);
    assert_eq!(code, Some(1), "{all}");
    assert_eq!(findings(&report), BTreeSet::from([f("b", "user", "missing", r#"{"token":"ghost"}"#, "")]), "{all}");
    let (code, report, all) = verify(&fed, "c", &["--entity", "user_lab", "--entity", "user"]);
    assert_eq!(code, Some(1), "{all}");
    assert_eq!(
        findings(&report),
        BTreeSet::from([
            f("a", "user", "different", r#"{"token":"u3"}"#, "email"),
            f("a", "user_lab", "different", r#"{"lab_id":"2:L1","user_id":"2:u1"}"#, "type"),
            f("b", "user", "missing", r#"{"token":"ghost"}"#, ""),
        ]),
        "{all}"
    );

    // Repair, each site for itself.
    for site in ["b", "c", "a"] {
        let (code, report, all) = verify(&fed, site, &["--repair"]);
        assert_eq!(code, Some(0), "verify --repair at {site}: {all}");
        assert_eq!(report["differences"], 0, "{all}");
    }
    for site in ["a", "b", "c"] {
        let (code, _, all) = verify(&fed, site, &[]);
        assert_eq!(code, Some(0), "verify after the repairs at {site}: {all}");
    }
    wait_equal(&mut fed, "the three sites equal by natural key after the repairs").await;
    let after = content(fed.pool("b")).await;
    assert!(
        after.contains(&vec!["user".into(), "ghost".into(), "Never published".into(), "-".into(), "-".into(), "-".into()]),
        "{after:?}"
    );
    assert!(
        after.contains(&vec!["user".into(), "u3".into(), "User 3".into(), "new@a".into(), "admin".into(), "t-chem".into()]),
        "{after:?}"
    );
    assert!(!after.iter().any(|r| r[1] == "t-phys"), "gone at its origin, so gone everywhere: {after:?}");
    fed.assert_running();
}

/// A small xorshift generator: the load is the same for a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Writes at `site` until `stop`: new people and changes to its own, each committed alone.
async fn load(pool: sqlx::MySqlPool, site: &'static str, seed: u64, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let sql = match rng.below(4) {
            0 => format!(
                "INSERT INTO user (token, name, creator_id) SELECT 'live-{site}-{n}', 'Live {n}', id FROM user WHERE token = 'admin'"
            ),
            1 => format!("UPDATE user SET email = 'e{n}@{site}', mtime = mtime + 1 WHERE token = 'h-{site}-{}'", rng.below(3000)),
            2 => format!("UPDATE user SET name = 'renamed {n}' WHERE token = 'h-{site}-{}'", rng.below(3000)),
            _ => format!("UPDATE user SET is_temporary = 1 - is_temporary WHERE token = 'h-{site}-{}'", rng.below(3000)),
        };
        common::exec_as_application(&pool, &sql).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_while_every_site_writes_reports_no_false_difference() {
    let seed: u64 = std::env::var("SITESYNC_VERIFY_SEED")
        .ok()
        .map(|s| s.trim().parse().expect("SITESYNC_VERIFY_SEED: a number"))
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000);
    eprintln!("verify under load: seed {seed} (replay with SITESYNC_VERIFY_SEED={seed})");
    let config = "[entities.user]\ntable = \"user\"\nkey = [\"token\"]\nexclude = [\"avatar\"]\nfilter = \"is_temporary = 0\"\n\
                  refs = { creator_id = \"user\", approver_id = \"user\" }\n\n\
                  [[routes]]\nfrom = [\"*\"]\nto = [\"*\"]\nentities = [\"user\"]\n";
    let mut fed = Federation::new(
        "verifyload",
        Spec {
            sites: &["a", "b", "c"],
            schema: LIMS2,
            entities_and_routes: config,
            // 3,000 people of its own at each site, and the shared admin, under per-site ids.
            seed: |i, site| {
                format!(
                    "ALTER TABLE user AUTO_INCREMENT = {}; INSERT INTO user (token, name) VALUES ('admin', 'Admin'); \
                     INSERT INTO user (token, name, creator_id) SELECT CONCAT('h-{site}-', seq - 1), CONCAT('History ', seq), 0 FROM seq_1_to_3000",
                    10_000 * (i + 1)
                )
            },
            ..Spec::default()
        },
    )
    .await;
    for site in ["a", "b", "c"] {
        fed.start(site, &["run"]);
    }
    for site in ["a", "b", "c"] {
        let out = fed.command(site, &["snapshot"]).output().unwrap();
        assert!(out.status.success(), "snapshot at {site}: {}", text(&out));
    }
    let pools: Vec<sqlx::MySqlPool> = ["a", "b", "c"].iter().map(|s| fed.pool(s).clone()).collect();
    {
        let pools = pools.clone();
        fed.wait_for(Duration::from_secs(120), "history merged", || {
            let pools = pools.clone();
            async move {
                let mut counts = Vec::new();
                for p in &pools {
                    counts.push(common::rows(p, "SELECT COUNT(*) FROM user").await);
                }
                counts.iter().all(|c| c == &vec![vec!["9001".to_string()]])
            }
        })
        .await;
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, site)| tokio::spawn(load(pools[i].clone(), site, seed.wrapping_mul(31).wrapping_add(i as u64 * 7919), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Each site verifies against both others, twice, while all three write.
    let mut runs = 0;
    for round in 0..2 {
        for site in ["a", "b", "c"] {
            let (code, report, all) = verify(&fed, site, &[]);
            assert_eq!(code, Some(0), "round {round}, verify at {site} under load (seed {seed}): {all}");
            let compared: u64 = report["results"].as_array().unwrap().iter().map(|r| r["compared"].as_u64().unwrap()).sum();
            assert!(compared > 5000, "{all}");
            let sum = |k: &str| report["results"].as_array().unwrap().iter().map(|r| r[k].as_u64().unwrap()).sum::<u64>();
            eprintln!(
                "verify under load: round {round} at {site}: {compared} rows compared, {} buckets differed at first, {} rows still changing",
                sum("buckets_differing"),
                sum("unsettled")
            );
            runs += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    eprintln!("verify under load: {runs} verifications while the sites wrote {written} changes");
    assert!(written > 100, "the load ran: {written} changes");
    for site in ["a", "b", "c"] {
        let (code, _, all) = verify(&fed, site, &[]);
        assert_eq!(code, Some(0), "verify at {site} after the load: {all}");
    }
    fed.assert_running();
}

/// `verify_state` at `site`: (origin, entity, checked_at_ms).
async fn verified(fed: &Federation, site: &str) -> Vec<(String, String, String)> {
    fed.rows(site, &format!("SELECT origin, entity, checked_at_ms FROM `{}`.verify_state ORDER BY 1, 2", fed.control_db))
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_verification_resumes_its_pass_after_kill_9_and_repairs_within_an_interval() {
    // Three entities of 3,000 rows each, read at 1,500 rows/s: a pass takes seconds.
    let config = "[entities.user]\ntable = \"user\"\nkey = [\"token\"]\nrefs = { creator_id = \"user\", approver_id = \"user\", group_id = \"tag\" }\n\n\
                  [entities.lab]\ntable = \"lab\"\nkey = [\"code\"]\nrefs = { pi_id = \"user\", creator_id = \"user\" }\n\n\
                  [entities.tag]\ntable = \"tag\"\nkey = [\"uuid\"]\nrefs = { parent_id = \"tag\" }\n\n\
                  [[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"user\", \"lab\", \"tag\"]\n\n\
                  [verify]\ninterval = \"1h\"\nrepair = true\nrows_per_second = 1500\n";
    let mut fed = Federation::new(
        "verifycont",
        Spec {
            schema: LIMS2,
            entities_and_routes: config,
            seed: |i, _| {
                if i == 0 {
                    "INSERT INTO user (token, name) SELECT CONCAT('h', seq), 'History' FROM seq_1_to_3000; \
                     INSERT INTO lab (code, name, pi_id) SELECT CONCAT('L', seq), 'Lab', seq FROM seq_1_to_3000; \
                     INSERT INTO tag (uuid, name) SELECT CONCAT('t', seq), 'Tag' FROM seq_1_to_3000"
                        .into()
                } else {
                    "ALTER TABLE user AUTO_INCREMENT = 50000; ALTER TABLE lab AUTO_INCREMENT = 50000; ALTER TABLE tag AUTO_INCREMENT = 50000".into()
                }
            },
            ..Spec::default()
        },
    )
    .await;
    let listen = fed.listen("b");
    fed.start("a", &["run"]);
    // History first, with b's applier alone (its verification would only see rows in flight).
    let apply_b = fed.start("b", &["apply"]);
    let out = fed.command("a", &["snapshot"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let pb = fed.pool("b").clone();
    fed.wait_for(Duration::from_secs(120), "history at b", || {
        let pb = pb.clone();
        async move {
            common::rows(&pb, "SELECT (SELECT COUNT(*) FROM user) + (SELECT COUNT(*) FROM lab) + (SELECT COUNT(*) FROM tag)").await
                == vec![vec!["9000".to_string()]]
        }
    })
    .await;
    assert!(fed.stop(apply_b).success());

    // kill -9 of b in the middle of its first pass: one or two of the three pairs done.
    let run_b = fed.start("b", &["run"]);
    let started = std::time::Instant::now();
    let done_before = loop {
        let v = verified(&fed, "b").await;
        if !v.is_empty() {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no verification recorded at b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    fed.kill9(run_b);
    assert!(done_before.len() < 3, "killed before the pass ended: {done_before:?}");
    let run_b = fed.start("b", &["run"]);
    let control_db = fed.control_db.clone();
    fed.wait_for(Duration::from_secs(120), "the pass resumed and ended", || {
        let (pb, db) = (pb.clone(), control_db.clone());
        async move { common::rows(&pb, &format!("SELECT COUNT(*) FROM `{db}`.verify_state")).await == vec![vec!["3".to_string()]] }
    })
    .await;
    let after = verified(&fed, "b").await;
    for done in &done_before {
        assert!(after.contains(done), "{done:?} was verified before the kill and not again after it: {after:?}");
    }
    let out = fed.command("b", &["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(status["verified"].as_array().map(Vec::len), Some(3), "{status}");
    assert!(status["verified"].as_array().unwrap().iter().all(|v| v["differences"] == 0 && v["compared"] == 3000), "{status}");
    let body = common::http_get(listen, "/metrics").unwrap_or_default();
    assert!(common::metric(&body, "sitesync_verify_last_pass_timestamp_seconds", &["site=\"b\""]).unwrap_or(0.0) > 1.0e9, "{body}");
    assert_eq!(common::metric(&body, "sitesync_verify_differences", &["origin=\"a\"", "entity=\"user\""]), Some(0.0), "{body}");

    // A short interval: a difference made by hand is found and repaired within it.
    assert!(fed.stop(run_b).success());
    let text_config = std::fs::read_to_string(&fed.config_path).unwrap().replace("interval = \"1h\"", "interval = \"5s\"");
    std::fs::write(&fed.config_path, text_config).unwrap();
    fed.start("b", &["run"]);
    fed.exec(
        "b",
        "SET sql_log_bin = 0; UPDATE user SET name = 'drift' WHERE token = 'h7'; DELETE FROM tag WHERE uuid = 't9'; SET sql_log_bin = 1",
    )
    .await;
    fed.wait_rows(
        "b",
        "SELECT (SELECT name FROM user WHERE token = 'h7'), (SELECT COUNT(*) FROM tag WHERE uuid = 't9')",
        &[&["History", "1"]],
    )
    .await;
    fed.wait_for(Duration::from_secs(60), "the repairs counted", || async move {
        let body = common::http_get(listen, "/metrics").unwrap_or_default();
        common::metric(&body, "sitesync_verify_repaired_total", &["entity=\"user\""]) == Some(1.0)
            && common::metric(&body, "sitesync_verify_repaired_total", &["entity=\"tag\""]) == Some(1.0)
    })
    .await;
    fed.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_an_origin_that_does_not_answer() {
    let config = "[entities.user]\ntable = \"user\"\nkey = [\"token\"]\nrefs = { creator_id = \"user\", approver_id = \"user\" }\n\n\
                  [[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"user\"]\n\n[verify]\ntimeout_seconds = 3\n";
    let mut fed = Federation::new("verifysilent", Spec { schema: LIMS2, entities_and_routes: config, ..Spec::default() }).await;
    // Only b runs: nobody answers for a.
    fed.start("b", &["run"]);
    let started = std::time::Instant::now();
    let out = fed.command("b", &["verify"]).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("no answer from site `a` within 3 s") && all.contains("is `sitesync run` running there"), "{all}");
    assert!(started.elapsed() < Duration::from_secs(30), "bounded by the timeout: {:?}", started.elapsed());
    // A site that is not an origin of b cannot be asked.
    let out = fed.command("a", &["verify", "--against", "b"]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("no route"), "{}", text(&out));
    fed.assert_running();
}
