//! The LIMS rules of seed 000, by configuration alone, on a LIMS-like schema
//! (`tests/fixtures/lims.sql`) whose sites hold different existing rows, so the same person has
//! different ids at different sites. The configurations are the examples in `config/`.

mod common;

use std::time::Duration;

use common::{example, Federation, Spec};

const LIMS: &str = include_str!("fixtures/lims.sql");
const WAIT: Duration = Duration::from_secs(60);

/// A federation from an example file, every site seeded with its own history: site i has
/// 2 + 3i local-only users before the shared `admin`, so ids differ between sites.
async fn lims(test: &str, file: &str, ref_wait_seconds: u64) -> Federation {
    let (entities, sites) = example(file);
    let sites: Vec<&str> = sites.iter().map(String::as_str).collect();
    Federation::new(
        test,
        Spec {
            sites: &sites[..sites.len().min(3)],
            schema: LIMS,
            entities_and_routes: &entities,
            ref_wait_seconds,
            seed: history,
            kafka: None,
            servers: &[],
        },
    )
    .await
}

/// Rows that exist at a site before sitesync: local-only users, then the shared admin.
fn history(i: usize, site: &str) -> String {
    let mut sql: Vec<String> =
        (0..2 + 3 * i).map(|n| format!("INSERT INTO user (token, name) VALUES ('local-{site}-{n}', 'Local {n}')")).collect();
    sql.push("INSERT INTO user (token, name, mtime) VALUES ('admin', 'Administrator', 1)".into());
    sql.join(";\n")
}

async fn start_all(fed: &mut Federation) {
    for site in fed.sites.clone() {
        fed.start(&site, &["run"]);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
}

/// Waits until `sql` returns `expected` at `site`.
async fn wait_rows(fed: &mut Federation, site: &str, sql: &str, expected: Vec<Vec<&str>>) {
    let pool = fed.pool(site).clone();
    let expected: Vec<Vec<String>> = expected.into_iter().map(|r| r.into_iter().map(String::from).collect()).collect();
    let what = format!("{site}: {sql} = {expected:?}");
    fed.wait_for(WAIT, &what, || {
        let (pool, expected) = (pool.clone(), expected.clone());
        async move { common::rows(&pool, sql).await == expected }
    })
    .await;
}

async fn id_of(fed: &Federation, site: &str, token: &str) -> i64 {
    fed.scalar(site, &format!("SELECT id FROM user WHERE token = '{token}'")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shandong_people_and_tree_replicate_under_each_sites_own_ids() {
    let mut fed = lims("shandong", "shandong.toml", 300).await;
    start_all(&mut fed).await;
    let (a, b, c) = ("jinan", "qingdao", "weihai");

    // A person created at A, created by the admin, appears at B and C under their own ids.
    let admin_a = id_of(&fed, a, "admin").await;
    fed.exec(a, &format!("INSERT INTO user (token, name, email, avatar, creator_id, mtime) VALUES ('alice', 'Alice', 'alice@a', x'89504E47', {admin_a}, 10)")).await;
    fed.exec(a, "INSERT INTO user_password VALUES ('alice', 'hash-1')").await;
    for site in [b, c] {
        wait_rows(
            &mut fed,
            site,
            "SELECT u.name, u.email, c.token, u.avatar IS NULL FROM user u JOIN user c ON c.id = u.creator_id WHERE u.token = 'alice'",
            vec![vec!["Alice", "alice@a", "admin", "1"]],
        )
        .await;
        wait_rows(&mut fed, site, "SELECT password_hash FROM user_password WHERE token = 'alice'", vec![vec!["hash-1"]]).await;
    }
    let (alice_a, alice_b) = (id_of(&fed, a, "alice").await, id_of(&fed, b, "alice").await);
    assert_ne!(alice_a, alice_b, "the sites' existing rows give alice different ids");
    // The identity map records the correspondence.
    let map = fed
        .rows(
            b,
            &format!(
                "SELECT local_key FROM `{}`.identity_map WHERE entity = 'user' AND origin = 'jinan' AND origin_key = '{alice_a}'",
                fed.control_db
            ),
        )
        .await;
    assert_eq!(map, vec![vec![alice_b.to_string()]]);

    // B's own avatar survives A's updates; B's update (activation) reaches A and C.
    fed.exec(b, "UPDATE user SET avatar = x'FFD8FF' WHERE token = 'alice'").await;
    fed.exec(a, "UPDATE user SET name = 'Alice Li', mtime = 11 WHERE token = 'alice'").await;
    wait_rows(&mut fed, b, "SELECT name, HEX(avatar) FROM user WHERE token = 'alice'", vec![vec!["Alice Li", "FFD8FF"]]).await;
    fed.exec(b, "UPDATE user SET atime = 1700000000, mtime = 12 WHERE token = 'alice'").await;
    for site in [a, c] {
        wait_rows(&mut fed, site, "SELECT name, atime FROM user WHERE token = 'alice'", vec![vec!["Alice Li", "1700000000"]]).await;
    }
    assert_eq!(fed.rows(a, "SELECT HEX(avatar) FROM user WHERE token = 'alice'").await, vec![vec!["89504E47".to_string()]]);

    // The organisation tree, children written before their parents in one transaction.
    fed.exec(
        a,
        "START TRANSACTION; \
        INSERT INTO tag (id, uuid, name, parent_id) VALUES (902, 'u-chem-lab', 'Chemistry lab', 901); \
        INSERT INTO tag (id, uuid, name, parent_id) VALUES (901, 'u-chem', 'Chemistry', 900); \
        INSERT INTO tag (id, uuid, name, parent_id) VALUES (900, 'u-root', 'University', NULL); \
        COMMIT",
    )
    .await;
    let tree = "SELECT t.uuid, COALESCE(p.uuid, '-') FROM tag t LEFT JOIN tag p ON p.id = t.parent_id ORDER BY t.uuid";
    for site in [b, c] {
        wait_rows(&mut fed, site, tree, vec![vec!["u-chem", "u-root"], vec!["u-chem-lab", "u-chem"], vec!["u-root", "-"]]).await;
    }
    // Membership: connect at C (C's ids), disconnect at A.
    let (alice_c, chem_c) = (id_of(&fed, c, "alice").await, fed.scalar(c, "SELECT id FROM tag WHERE uuid = 'u-chem'").await);
    fed.exec(c, &format!("INSERT INTO user_tag (user_id, tag_id) VALUES ({alice_c}, {chem_c})")).await;
    let member = "SELECT u.token, t.uuid FROM user_tag ut JOIN user u ON u.id = ut.user_id JOIN tag t ON t.id = ut.tag_id";
    for site in [a, b] {
        wait_rows(&mut fed, site, member, vec![vec!["alice", "u-chem"]]).await;
    }
    fed.exec(a, "DELETE ut FROM user_tag ut JOIN user u ON u.id = ut.user_id WHERE u.token = 'alice'").await;
    for site in [b, c] {
        wait_rows(&mut fed, site, member, vec![]).await;
    }
    // A tree change and delete propagate.
    fed.exec(b, "UPDATE tag SET name = 'Chem Lab 1' WHERE uuid = 'u-chem-lab'").await;
    wait_rows(&mut fed, c, "SELECT name FROM tag WHERE uuid = 'u-chem-lab'", vec![vec!["Chem Lab 1"]]).await;
    fed.exec(c, "DELETE FROM tag WHERE uuid = 'u-chem-lab'").await;
    for site in [a, b] {
        wait_rows(&mut fed, site, "SELECT COUNT(*) FROM tag", vec![vec!["2"]]).await;
    }

    // Temporary users never leave; once permanent they arrive whole.
    fed.exec(a, "INSERT INTO user (token, name, email, is_temporary) VALUES ('temp', 'Visitor', 'v@a', 1)").await;
    fed.exec(a, "UPDATE user SET name = 'Visitor 2' WHERE token = 'temp'").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.scalar(b, "SELECT COUNT(*) FROM user WHERE token = 'temp'").await, 0);
    fed.exec(a, "UPDATE user SET is_temporary = 0 WHERE token = 'temp'").await;
    wait_rows(&mut fed, b, "SELECT name, email, is_temporary FROM user WHERE token = 'temp'", vec![vec!["Visitor 2", "v@a", "0"]]).await;

    // A delete only deactivates elsewhere (on_delete = { set = { atime = 0 } }).
    fed.exec(a, "DELETE FROM user WHERE token = 'alice'").await;
    for site in [b, c] {
        wait_rows(&mut fed, site, "SELECT name, atime FROM user WHERE token = 'alice'", vec![vec!["Alice Li", "0"]]).await;
    }
    assert!(fed.topic_records(a) > 0, "the origin published its changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guangdong_colleges_instruments_gather_at_the_university() {
    let mut fed = lims("guangdong", "guangdong.toml", 300).await;
    start_all(&mut fed).await;
    let (chem, phys, univ) = ("chem", "phys", "univ");
    fed.exec(univ, "INSERT INTO tag (uuid, name) VALUES ('g-univ', 'University')").await;
    wait_rows(&mut fed, chem, "SELECT COUNT(*) FROM tag", vec![vec!["1"]]).await;
    let g = fed.scalar(chem, "SELECT id FROM tag WHERE uuid = 'g-univ'").await;
    fed.exec(chem, &format!("INSERT INTO equipment (ref_no, name, group_id) VALUES ('C-1', 'NMR 600', {g}), ('C-2', 'XRD', NULL)")).await;
    fed.exec(phys, "INSERT INTO equipment (ref_no, name) VALUES ('P-1', 'Laser')").await;
    fed.exec(univ, "INSERT INTO equipment (ref_no, name) VALUES ('U-1', 'Cluster')").await;
    let list = "SELECT e.ref_no, COALESCE(e.source_site, '-'), COALESCE(t.uuid, '-') FROM equipment e LEFT JOIN tag t ON t.id = e.group_id ORDER BY e.ref_no";
    wait_rows(
        &mut fed,
        univ,
        list,
        vec![vec!["C-1", "chem", "g-univ"], vec!["C-2", "chem", "-"], vec!["P-1", "phys", "-"], vec!["U-1", "-", "-"]],
    )
    .await;
    // Many-to-one only: colleges do not receive each other's or the university's instruments.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fed.rows(chem, "SELECT ref_no FROM equipment ORDER BY ref_no").await,
        vec![vec!["C-1".to_string()], vec!["C-2".to_string()]]
    );
    assert_eq!(fed.rows(phys, "SELECT ref_no FROM equipment").await, vec![vec!["P-1".to_string()]]);
    // Instruments may be deleted; people are never deleted through sync.
    fed.exec(chem, "DELETE FROM equipment WHERE ref_no = 'C-2'").await;
    fed.exec(phys, "INSERT INTO user (token, name) VALUES ('bob', 'Bob')").await;
    wait_rows(&mut fed, univ, "SELECT COUNT(*) FROM equipment WHERE ref_no = 'C-2'", vec![vec!["0"]]).await;
    wait_rows(&mut fed, chem, "SELECT name FROM user WHERE token = 'bob'", vec![vec!["Bob"]]).await;
    fed.exec(phys, "DELETE FROM user WHERE token = 'bob'").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.scalar(chem, "SELECT COUNT(*) FROM user WHERE token = 'bob'").await, 1);
    assert_eq!(fed.scalar(univ, "SELECT COUNT(*) FROM user WHERE token = 'bob'").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zhejiang_labs_and_memberships_wait_for_the_people_they_reference() {
    let mut fed = lims("zhejiang", "zhejiang.toml", 300).await;
    start_all(&mut fed).await;
    let (a, b) = ("yuquan", "zijingang");
    // A lab whose PI is a temporary user: the PI never left A, so the lab waits at B...
    fed.exec(a, "INSERT INTO user (token, name, is_temporary) VALUES ('pi', 'Prof. Wang', 1)").await;
    let pi_a = id_of(&fed, a, "pi").await;
    fed.exec(a, &format!("INSERT INTO lab (code, name, pi_id) VALUES ('L-1', 'Wang Lab', {pi_a})")).await;
    fed.exec(a, "UPDATE lab SET name = 'Wang Group' WHERE code = 'L-1'").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.scalar(b, "SELECT COUNT(*) FROM lab").await, 0, "the lab waits for its PI");
    assert_eq!(fed.scalar(b, &format!("SELECT COUNT(*) FROM `{}`.parked", fed.control_db)).await, 2);
    // ...other changes go on meanwhile...
    fed.exec(a, "INSERT INTO user (token, name) VALUES ('carol', 'Carol')").await;
    wait_rows(&mut fed, b, "SELECT name FROM user WHERE token = 'carol'", vec![vec!["Carol"]]).await;
    // ...and once the PI becomes permanent and arrives, the lab follows, in order.
    fed.exec(a, "UPDATE user SET is_temporary = 0 WHERE token = 'pi'").await;
    wait_rows(&mut fed, b, "SELECT l.name, u.token FROM lab l JOIN user u ON u.id = l.pi_id", vec![vec!["Wang Group", "pi"]]).await;
    assert_eq!(fed.scalar(b, &format!("SELECT COUNT(*) FROM `{}`.parked", fed.control_db)).await, 0);
    // Applied late, but still sitesync's own write: B's capture does not echo it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fed.topic_records(b), 0, "nothing written by B's application yet, so nothing on B's topic");

    // Memberships carry both ids translated; a lab deleted at B is only deactivated at A.
    let (carol_b, lab_b) = (id_of(&fed, b, "carol").await, fed.scalar(b, "SELECT id FROM lab WHERE code = 'L-1'").await);
    fed.exec(b, &format!("INSERT INTO user_lab (user_id, lab_id, type) VALUES ({carol_b}, {lab_b}, 'member')")).await;
    wait_rows(
        &mut fed,
        a,
        "SELECT u.token, l.code, ul.type FROM user_lab ul JOIN user u ON u.id = ul.user_id JOIN lab l ON l.id = ul.lab_id",
        vec![vec!["carol", "L-1", "member"]],
    )
    .await;
    fed.exec(b, "UPDATE lab SET atime = 5 WHERE code = 'L-1'").await;
    wait_rows(&mut fed, a, "SELECT atime FROM lab WHERE code = 'L-1'", vec![vec!["5"]]).await;
    fed.exec(b, "DELETE FROM lab WHERE code = 'L-1'").await;
    wait_rows(&mut fed, a, "SELECT name, atime FROM lab WHERE code = 'L-1'", vec![vec!["Wang Group", "0"]]).await;

    // Every instrument of Yuquan appears at Zijingang, not the other way.
    fed.exec(a, "INSERT INTO equipment (ref_no, name) VALUES ('Y-1', 'TEM')").await;
    fed.exec(b, "INSERT INTO equipment (ref_no, name) VALUES ('Z-1', 'SEM')").await;
    wait_rows(
        &mut fed,
        b,
        "SELECT ref_no, COALESCE(source_site, '-') FROM equipment ORDER BY ref_no",
        vec![vec!["Y-1", "yuquan"], vec!["Z-1", "-"]],
    )
    .await;
    assert_eq!(fed.scalar(a, "SELECT COUNT(*) FROM equipment").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_that_never_arrives_becomes_a_dead_letter_with_its_reason() {
    let mut fed = lims("refwait", "zhejiang.toml", 2).await;
    start_all(&mut fed).await;
    let (a, b) = ("yuquan", "zijingang");
    fed.exec(a, "INSERT INTO user (token, name, is_temporary) VALUES ('ghost', 'Ghost', 1)").await;
    let ghost = id_of(&fed, a, "ghost").await;
    fed.exec(a, &format!("INSERT INTO lab (code, name, pi_id) VALUES ('L-9', 'Nobody''s lab', {ghost})")).await;
    let ctl = fed.control_db.clone();
    wait_rows(&mut fed, b, &format!("SELECT entity, reason LIKE '%waited%ghost%' FROM `{ctl}`.dead_letters"), vec![vec!["lab", "1"]]).await;
    assert_eq!(fed.scalar(b, &format!("SELECT COUNT(*) FROM `{ctl}`.parked")).await, 0);
    let out = fed.command(b, &["dlq", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("1 dead letter(s)") && text.contains("ghost"), "{text}");
    // The stream goes on after the dead letter.
    fed.exec(a, "INSERT INTO user (token, name) VALUES ('dave', 'Dave')").await;
    wait_rows(&mut fed, b, "SELECT name FROM user WHERE token = 'dave'", vec![vec!["Dave"]]).await;
    // status shows it; dlq drop removes it.
    let out = fed.command(b, &["status", "--json"]).output().unwrap();
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(status["dead_letters"], 1);
    assert_eq!(status["apply"][0]["origin"], "yuquan");
    assert!(status["apply"][0]["next_offset"].as_i64().unwrap() > 0);
    assert!(!status["capture"]["gtid"].as_str().unwrap().is_empty());
    let text = String::from_utf8_lossy(&fed.command(b, &["status"]).output().unwrap().stdout).to_string();
    assert!(text.contains("yuquan") && text.contains("dead letters        1"), "{text}");
    let id = fed.scalar(b, &format!("SELECT CAST(id AS SIGNED) FROM `{ctl}`.dead_letters")).await;
    assert!(fed.command(b, &["dlq", "drop", &id.to_string()]).status().unwrap().success());
    assert_eq!(fed.scalar(b, &format!("SELECT COUNT(*) FROM `{ctl}`.dead_letters")).await, 0);
    assert_eq!(fed.command(b, &["dlq", "drop", &id.to_string()]).status().unwrap().code(), Some(1), "dropping twice fails");
}

#[test]
fn every_school_example_loads() {
    for (file, sites) in [("shandong.toml", 3), ("guangdong.toml", 3), ("zhejiang.toml", 2), ("wuhan.toml", 7)] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(file);
        let config = sitesync::config::Config::from_toml(&std::fs::read_to_string(&path).unwrap(), &path, &|_| Some("x".into()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.sites.len(), sites, "{file}");
        assert!(!config.routes.is_empty());
    }
    // Wuhan: six colleges into the university.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wuhan.toml");
    let config = sitesync::config::Config::from_toml(&std::fs::read_to_string(&path).unwrap(), &path, &|_| Some("x".into())).unwrap();
    for college in ["chem", "phys", "bio", "med", "eng", "env"] {
        assert!(config.routes_entity(college, "univ", "equipment"));
        assert!(!config.routes_entity("univ", college, "equipment"));
    }
}

/// Zhejiang: both campuses hold history before sitesync; a snapshot at each merges them by
/// natural key while both applications keep writing.
fn zhejiang_history(i: usize, site: &str) -> String {
    let mut sql = vec![format!("ALTER TABLE user AUTO_INCREMENT = {}", 100 * (i + 1))];
    sql.push("INSERT INTO user (token, name, mtime) VALUES ('admin', 'Administrator', 1)".into());
    if site == "yuquan" {
        sql.push("INSERT INTO user (token, name, mtime) VALUES ('alice', 'Alice', 1), ('bob', 'Bob', 1)".into());
        for n in 0..10 {
            sql.push(format!("INSERT INTO user (token, name, mtime) VALUES ('y-{n}', 'Yuquan {n}', 1)"));
        }
        sql.push("INSERT INTO lab (code, name, pi_id) SELECT 'L-A', 'Alice Lab', id FROM user WHERE token = 'alice'".into());
        sql.push(
            "INSERT INTO user_lab (user_id, lab_id) SELECT u.id, l.id FROM user u, lab l WHERE u.token = 'bob' AND l.code = 'L-A'".into(),
        );
    } else {
        sql.push("INSERT INTO user (token, name, mtime) VALUES ('alice', 'Alice Z', 1), ('carol', 'Carol', 1)".into());
        sql.push("INSERT INTO lab (code, name, pi_id) SELECT 'L-Z', 'Carol Lab', id FROM user WHERE token = 'carol'".into());
    }
    sql.join(";\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zhejiang_history_on_both_sides_merges_by_natural_key_through_snapshots() {
    let (entities, sites) = example("zhejiang.toml");
    let sites: Vec<&str> = sites.iter().map(String::as_str).collect();
    let mut fed = Federation::new(
        "history",
        Spec { sites: &sites, schema: LIMS, entities_and_routes: &entities, seed: zhejiang_history, ..Spec::default() },
    )
    .await;
    start_all(&mut fed).await;
    let (a, b) = ("yuquan", "zijingang");

    // Writes during the snapshot must not be lost or overtaken by older snapshot rows.
    let pa = fed.pool(a).clone();
    let writer = tokio::spawn(async move {
        for n in 0..10 {
            common::exec(&pa, &format!("UPDATE user SET name = 'Yuquan {n} v2', mtime = 2 WHERE token = 'y-{n}'")).await;
            common::exec(&pa, &format!("INSERT INTO user (token, name, mtime) VALUES ('new-{n}', 'New {n}', 1)")).await;
        }
    });
    let out_a = fed.command(a, &["snapshot"]).output().unwrap();
    writer.await.unwrap();
    let text = String::from_utf8_lossy(&out_a.stdout);
    assert!(out_a.status.success() && text.contains("done"), "{text}{}", String::from_utf8_lossy(&out_a.stderr));
    let out_b = fed.command(b, &["snapshot", "--entity", "user", "--entity", "lab"]).output().unwrap();
    assert!(out_b.status.success(), "{}", String::from_utf8_lossy(&out_b.stdout));

    let users = "SELECT token, name FROM user WHERE token NOT LIKE 'local%' ORDER BY token";
    let pb = fed.pool(b).clone();
    let pa = fed.pool(a).clone();
    fed.wait_for(WAIT, "both campuses hold the merged people", || {
        let (pa, pb) = (pa.clone(), pb.clone());
        async move {
            let (ra, rb) = (common::rows(&pa, users).await, common::rows(&pb, users).await);
            ra == rb && ra.len() == 24
        }
    })
    .await;
    // Matching rows linked, never duplicated; the tie on alice broken the same way at both.
    assert_eq!(fed.rows(b, "SELECT name FROM user WHERE token = 'alice'").await, vec![vec!["Alice Z".to_string()]]);
    assert_eq!(fed.rows(a, "SELECT name FROM user WHERE token = 'alice'").await, vec![vec!["Alice Z".to_string()]]);
    assert_eq!(fed.rows(b, "SELECT name FROM user WHERE token = 'y-9'").await, vec![vec!["Yuquan 9 v2".to_string()]]);
    let alice_a = id_of(&fed, a, "alice").await;
    let linked = fed
        .rows(
            b,
            &format!(
                "SELECT local_key FROM `{}`.identity_map WHERE entity = 'user' AND origin = 'yuquan' AND origin_key = '{alice_a}'",
                fed.control_db
            ),
        )
        .await;
    assert_eq!(linked, vec![vec![id_of(&fed, b, "alice").await.to_string()]]);
    // Labs and memberships arrive with their references translated.
    let labs = "SELECT l.code, u.token FROM lab l JOIN user u ON u.id = l.pi_id ORDER BY l.code";
    wait_rows(&mut fed, b, labs, vec![vec!["L-A", "alice"], vec!["L-Z", "carol"]]).await;
    wait_rows(&mut fed, a, labs, vec![vec!["L-A", "alice"], vec!["L-Z", "carol"]]).await;
    wait_rows(
        &mut fed,
        b,
        "SELECT u.token, l.code FROM user_lab ul JOIN user u ON u.id = ul.user_id JOIN lab l ON l.id = ul.lab_id",
        vec![vec!["bob", "L-A"]],
    )
    .await;

    // verify agrees, apart from the local-only seed rows that were never snapshotted at B's side
    // (the B snapshot covered user and lab: everything is merged).
    let out = fed.command(a, &["verify", "--entity", "user", "--entity", "lab", "--entity", "user_lab"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_the_table_lacks_stops_start_up_naming_file_and_key() {
    let config = "[entities.user]\ntable = \"user\"\nkey = [\"tokn\"]\nexclude = [\"avatr\"]\n\n[entities.lab]\ntable = \"labs\"\n\n[[routes]]\nfrom = [\"*\"]\nto = [\"*\"]\nentities = [\"user\", \"lab\"]\n";
    let fed = Federation::new("badcols", Spec { schema: LIMS, entities_and_routes: config, ..Spec::default() }).await;
    for command in ["capture", "apply"] {
        let out = fed.command("a", &[command]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command} must not start");
        let file = fed.config_path.display().to_string();
        for expected in [file.as_str(), "entities.user.key", "`tokn`", "entities.user.exclude", "`avatr`", "entities.lab.table", "labs"] {
            assert!(text.contains(expected), "{command}: no `{expected}` in:\n{text}");
        }
    }
}
