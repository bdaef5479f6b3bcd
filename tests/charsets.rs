//! Every character set the server offers replicates byte for byte (issue 16): one table per
//! character set holding every character of the Basic Multilingual Plane that the set can encode
//! (and characters past it, where the set has them), once through the binlog and once through a
//! snapshot, compared with HEX at the target.

mod common;

use std::time::Duration;

use common::{Federation, Spec};
use sqlx::mysql::MySqlPoolOptions;

/// Code points of every character `{cs}` encodes, as the server converts them: the oracle is the
/// server, from Unicode's side (capture learns its tables from the bytes' side).
fn characters_of(cs: &str) -> String {
    format!(
        "WITH RECURSIVE b(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM b WHERE n < 255), \
         cp(i) AS (SELECT h.n * 256 + l.n FROM b AS h JOIN b AS l \
                   UNION ALL SELECT 0x10000 UNION ALL SELECT 0x1D11E UNION ALL SELECT 0x1F600 UNION ALL SELECT 0x10FFFF) \
         SELECT COUNT(*), HEX(CONVERT(GROUP_CONCAT(CHAR(i USING utf32) ORDER BY i SEPARATOR '') USING {cs})) FROM cp \
         WHERE (i < 0xD800 OR i > 0xDFFF) \
           AND CAST(CONVERT(CONVERT(CHAR(i USING utf32) USING {cs}) USING utf32) AS BINARY) = CAST(CHAR(i USING utf32) AS BINARY)"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_character_of_every_character_set_arrives_byte_for_byte() {
    let server = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&common::server_url(0))
        .await
        .expect("site a's server (deploy/local/stack.sh up)");
    let charsets: Vec<String> = common::rows(
        &server,
        "SELECT CHARACTER_SET_NAME FROM information_schema.CHARACTER_SETS WHERE CHARACTER_SET_NAME <> 'binary' ORDER BY 1",
    )
    .await
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    assert!(charsets.len() >= 30, "the server offers {} character sets", charsets.len());
    let mut schema = String::new();
    let mut entities = String::new();
    for cs in &charsets {
        schema.push_str(&format!(
            "CREATE TABLE cs_{cs} (id INT PRIMARY KEY, v LONGTEXT CHARACTER SET {cs} NOT NULL, short VARCHAR(12) CHARACTER SET {cs} NOT NULL DEFAULT '') ENGINE=InnoDB;\n"
        ));
        entities.push_str(&format!("[entities.cs_{cs}]\ntable = \"cs_{cs}\"\n\n"));
    }
    let names: Vec<String> = charsets.iter().map(|cs| format!("\"cs_{cs}\"")).collect();
    entities.push_str(&format!("[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [{}]\n", names.join(", ")));
    let mut fed =
        Federation::new("charsets", Spec { sites: &["a", "b"], schema: &schema, entities_and_routes: &entities, ..Spec::default() }).await;

    // check learns every character set from the server, and says so before anything runs.
    let out = fed.command("a", &["check"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let line = report.lines().find(|l| l.contains("character sets")).unwrap_or_else(|| panic!("no character sets line:\n{report}"));
    assert!(line.contains("PASS") && line.contains("latin2 (learnt from the server"), "{line}");

    // Row 1 of each table goes through the binlog; row 2 is history (not in the binlog) that
    // a snapshot publishes.
    let mut expected = Vec::new();
    for cs in &charsets {
        let r = common::rows(fed.pool("a"), &format!("SET SESSION group_concat_max_len = 1073741824; {}", characters_of(cs))).await;
        let (count, hex) = (r[0][0].parse::<usize>().unwrap(), r[0][1].clone());
        let floor = match cs.as_str() {
            "ascii" => 128,
            "swe7" | "dec8" | "hp8" | "geostd8" | "armscii8" | "keybcs2" | "tis620" | "greek" | "hebrew" | "latin7" | "cp1257" => 100,
            _ => 180,
        };
        assert!(count >= floor, "{cs} encodes only {count} characters: the oracle is broken");
        fed.exec("a", &format!("SET SESSION sql_log_bin = 0; INSERT INTO cs_{cs} (id, v, short) VALUES (2, x'{hex}', LEFT(CONVERT(x'{hex}' USING {cs}), 12)); SET SESSION sql_log_bin = 1"))
            .await;
        expected.push((cs.clone(), count, hex));
    }
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    for (cs, _, hex) in &expected {
        fed.exec("a", &format!("INSERT INTO cs_{cs} (id, v, short) VALUES (1, x'{hex}', LEFT(REVERSE(CONVERT(x'{hex}' USING {cs})), 12))"))
            .await;
    }
    let out = fed.command("a", &["snapshot"]).output().unwrap();
    assert!(out.status.success(), "snapshot at a: {}", String::from_utf8_lossy(&out.stderr));

    let mut report = Vec::new();
    for (cs, count, hex) in &expected {
        let sql = format!("SELECT id, MD5(HEX(v)), HEX(short) FROM cs_{cs} ORDER BY id");
        let at_a = fed.rows("a", &sql).await;
        assert_eq!(at_a.len(), 2, "{cs} at a");
        assert_eq!(
            fed.rows("a", &format!("SELECT HEX(v) FROM cs_{cs} WHERE id = 1")).await[0][0],
            *hex,
            "{cs}: the source stored what the test wrote"
        );
        let pool = fed.pool("b").clone();
        let what = format!("{cs}: both rows at b, byte for byte");
        fed.wait_for(Duration::from_secs(90), &what, || {
            let (pool, sql, at_a) = (pool.clone(), sql.clone(), at_a.clone());
            async move { common::rows(&pool, &sql).await == at_a }
        })
        .await;
        report.push(format!("{cs}:{count}"));
    }
    println!("characters per character set: {}", report.join(" "));
    assert!(!fed.logs_contain("not a character of"), "no value was refused");
}
