//! The operator console served by `sitesync run` on `listen`: every endpoint of its JSON API
//! (schemas/console-api.md) against a real federation with real dead letters, the refusals of
//! actions without the operator token, CSRF and other origins, and the pages in a real
//! headless Chromium (tests/browser/console.mjs) that replays a letter after its cause is
//! fixed, switches the language and keeps screenshots in target/artifacts/console/.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{http, Federation, Spec, PEOPLE_BOTH_WAYS, PEOPLE_SCHEMA};
use serde_json::Value;

const TOKEN: &str = "console-test-token-0123456789";
const TOKEN_VAR: &str = "SITESYNC_TEST_CONSOLE_TOKEN";

fn get(addr: SocketAddr, path: &str) -> Value {
    let answer = http(addr, "GET", path, &[], "");
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    answer.json()
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Waits until site `b`'s console lists `n` dead letters; the list.
async fn letters(fed: &mut Federation, addr: SocketAddr, n: usize) -> Vec<Value> {
    fed.wait_for(Duration::from_secs(60), &format!("{n} dead letter(s) listed by the console"), || async move {
        get(addr, "/api/v1/dead-letters")["dead_letters"].as_array().map(|l| l.len()) == Some(n)
    })
    .await;
    get(addr, "/api/v1/dead-letters")["dead_letters"].as_array().unwrap().clone()
}

fn letter_of<'a>(letters: &'a [Value], token: &str) -> &'a Value {
    letters.iter().find(|l| l["key"]["token"] == token).unwrap_or_else(|| panic!("no dead letter of {token}: {letters:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_lists_explains_and_acts_on_dead_letters_in_a_browser() {
    // People, and labs whose PI is a person (NOT NULL DEFAULT 0: LIMS2's "no reference").
    let schema = format!("{PEOPLE_SCHEMA};\nCREATE TABLE lab (id INT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(20) NOT NULL UNIQUE, pi_id INT NOT NULL DEFAULT 0)");
    let entities = format!("{PEOPLE_BOTH_WAYS}\n[entities.lab]\ntable = \"lab\"\nkey = [\"code\"]\nrefs = {{ pi_id = \"person\" }}\n\n[[routes]]\nfrom = [\"*\"]\nto = [\"*\"]\nentities = [\"lab\"]\n");
    let mut fed =
        Federation::new("console", Spec { sites: &["a", "b"], schema: &schema, entities_and_routes: &entities, ..Default::default() })
            .await;
    let mut text = std::fs::read_to_string(&fed.config_path).unwrap();
    text.push_str(&format!("\n[console]\noperator_token = \"${{{TOKEN_VAR}}}\"\n"));
    // b also feeds a warehouse: the overview shows its export stream.
    text.push_str("\n[export]\nentities = [\"lab\"]\nsites = [\"b\"]\n");
    std::fs::write(&fed.config_path, text).unwrap();
    for site in ["a", "b"] {
        fed.set_site_env(site, TOKEN_VAR, TOKEN);
    }
    let console = fed.listen("b");
    // Site b's column is too narrow for a's longer names: those rows become dead letters.
    fed.exec("b", "ALTER TABLE person MODIFY name VARCHAR(8) NOT NULL").await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    fed.exec("a", "INSERT INTO person (token, name) VALUES ('t1', 'Alice Longname')").await;
    fed.exec("a", "INSERT INTO person (token, name) VALUES ('ok', 'Bob')").await;
    fed.exec("a", "INSERT INTO person (token, name) VALUES ('t3', 'Carol Longname')").await;
    fed.exec("a", "INSERT INTO person (token, name) VALUES ('t4', 'Dave Longname')").await;
    fed.exec("a", "INSERT INTO person (token, name) VALUES ('t5', 'Erin Longname')").await;
    // A lab whose PI is a dead letter at b: it waits there, parked.
    fed.exec("a", "INSERT INTO person (token, name) VALUES ('t6', 'Frank Longname')").await;
    fed.exec("a", "INSERT INTO lab (code, pi_id) SELECT 'L-1', id FROM person WHERE token = 't6'").await;
    fed.wait_rows("b", "SELECT token, name FROM person ORDER BY token", &[&["ok", "Bob"]]).await;
    let listed = letters(&mut fed, console, 5).await;
    fed.assert_running();

    // Pages: embedded, with a content security policy; / leads to them.
    let page = http(console, "GET", "/console/", &[], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("app.js") && page.header("content-type").unwrap().starts_with("text/html"), "{}", page.body);
    assert!(page.header("content-security-policy").unwrap().contains("script-src 'self'"));
    assert_eq!(http(console, "GET", "/console/app.js", &[], "").status, 200);
    assert_eq!(http(console, "GET", "/console/app.css", &[], "").status, 200);
    assert_eq!(http(console, "GET", "/", &[], "").header("location"), Some("/console/"));
    assert_eq!(http(console, "GET", "/console/nothing", &[], "").status, 404);
    // The older endpoints still answer through the new server.
    assert!(http(console, "GET", "/metrics", &[], "").body.contains("sitesync_build_info"));
    assert_eq!(http(console, "GET", "/healthz", &[], "").body, "ok\n");

    // The list: origin, entity, natural key, reason, first seen.
    let t1 = letter_of(&listed, "t1").clone();
    assert_eq!(t1["origin"], "a");
    assert_eq!(t1["entity"], "person");
    assert_eq!(t1["op"], "c");
    let reason = t1["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("too long") || reason.contains("name"), "reason: {reason}");
    assert!(t1["first_seen"].as_str().unwrap().ends_with('Z'));

    // The detail: the record beside the row as it is here (not here yet).
    let id1 = t1["id"].as_u64().unwrap();
    let detail = get(console, &format!("/api/v1/dead-letters/{id1}"));
    assert_eq!(detail["record"]["after"]["name"], "Alice Longname", "{detail}");
    assert_eq!(detail["local_row"]["found"], false, "{detail}");
    assert_eq!(detail["rerequest"]["possible"], true, "{detail}");
    assert_eq!(http(console, "GET", "/api/v1/dead-letters/999999", &[], "").status, 404);
    assert_eq!(http(console, "GET", "/api/v1/dead-letters/x", &[], "").status, 404);
    assert_eq!(http(console, "GET", &format!("/api/v1/dead-letters/{id1}/replay"), &[], "").status, 405);

    // The overview: this site, its origin, the letter count, the lag in records.
    fed.wait_for(Duration::from_secs(30), "the overview to show a ready site", || async move {
        get(console, "/api/v1/overview")["ready"]["ok"] == true
    })
    .await;
    let overview = get(console, "/api/v1/overview");
    assert_eq!(overview["site"], "b");
    assert_eq!(overview["dead_letters"], 5);
    assert_eq!(overview["capture"]["running"], true);
    let origin = &overview["origins"][0];
    assert_eq!(origin["origin"], "a");
    assert!(origin["lag_records"].is_i64() && origin["end_offset"].is_i64(), "{overview}");
    assert!(origin["last_applied"]["gtid"].is_string(), "{overview}");
    assert_eq!(get(console, "/api/v1/history")["origins"][0], "a");
    fed.wait_for(Duration::from_secs(30), "the lab to be parked", || async move { get(console, "/api/v1/overview")["parked"] == 1 }).await;
    let parked = get(console, "/api/v1/parked");
    assert_eq!(parked["total"], 1, "{parked}");
    let lab = &parked["parked"][0];
    assert_eq!(lab["origin"], "a", "{parked}");
    assert!(lab["reason"].as_str().unwrap().contains("person") && lab["row_keys"].as_str().unwrap().contains("lab"), "{parked}");

    // Refused: no credentials, a wrong token, a session without its CSRF token, another origin.
    let replay1 = format!("/api/v1/dead-letters/{id1}/replay");
    assert_eq!(http(console, "POST", &replay1, &[], "").status, 401);
    assert_eq!(http(console, "POST", &replay1, &[("Authorization", "Bearer wrong-token")], "").status, 401);
    let signed_in = http(
        console,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        &format!(r#"{{"token":"{TOKEN}","operator":"li"}}"#),
    );
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let set_cookie = signed_in.header("set-cookie").unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!signed_in.body.contains(TOKEN), "the token is never sent back");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = signed_in.json()["csrf"].as_str().unwrap().to_string();
    assert_eq!(get_with(console, "/api/v1/session", &cookie)["operator"], "li");
    assert_eq!(http(console, "POST", &replay1, &[("Cookie", &cookie)], "").status, 403);
    assert_eq!(http(console, "POST", &replay1, &[("Cookie", &cookie), ("X-CSRF-Token", "forged")], "").status, 403);
    let other = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Origin", "http://evil.example")];
    assert_eq!(http(console, "POST", &replay1, &other, "").status, 403);
    let wrong_sign_in = http(console, "POST", "/api/v1/session", &[], r#"{"token":"guess","operator":"x"}"#);
    assert_eq!(wrong_sign_in.status, 401);
    assert_eq!(http(console, "POST", "/api/v1/session", &[], &"x".repeat(70_000)).status, 413);
    // The cause is still there: replay keeps the letter and says why.
    let still = http(console, "POST", &replay1, &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], "");
    assert_eq!(still.status, 409, "{}", still.body);
    assert!(still.json()["error"].as_str().unwrap().contains("still fails"), "{}", still.body);
    assert_eq!(fed.scalar("b", &format!("SELECT COUNT(*) FROM `{}`.dead_letters", fed.control_db)).await, 5);

    // The cause fixed, the browser replays t1 (tests/browser/console.mjs).
    fed.exec("b", "ALTER TABLE person MODIFY name VARCHAR(80) NOT NULL").await;
    run_browser(console, id1, &reason);
    fed.wait_rows("b", "SELECT name FROM person WHERE token = 't1'", &[&["Alice Longname"]]).await;
    assert!(letters(&mut fed, console, 4).await.iter().all(|l| l["id"] != id1));

    // A script replays t5 with the bearer token.
    let listed = letters(&mut fed, console, 4).await;
    let id5 = letter_of(&listed, "t5")["id"].as_u64().unwrap();
    let replayed = http(
        console,
        "POST",
        &format!("/api/v1/dead-letters/{id5}/replay"),
        &[("Authorization", &bearer()), ("X-Sitesync-Operator", "cron")],
        "",
    );
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    fed.wait_rows("b", "SELECT name FROM person WHERE token = 't5'", &[&["Erin Longname"]]).await;

    // Re-request t3: the origin republishes its current row, which arrives; the letter goes.
    let listed = letters(&mut fed, console, 3).await;
    let id3 = letter_of(&listed, "t3")["id"].as_u64().unwrap();
    let rerequested = http(console, "POST", &format!("/api/v1/dead-letters/{id3}/rerequest"), &[("Authorization", &bearer())], "");
    assert_eq!(rerequested.status, 200, "{}", rerequested.body);
    assert!(rerequested.json()["message"].as_str().unwrap().contains("republished 1 row"), "{}", rerequested.body);
    fed.wait_rows("b", "SELECT name FROM person WHERE token = 't3'", &[&["Carol Longname"]]).await;

    // t4 meanwhile written at b itself: the detail shows that row beside the record; drop
    // removes the letter and leaves b's row.
    fed.exec("b", "INSERT INTO person (token, name) VALUES ('t4', 'Dave')").await;
    let listed = letters(&mut fed, console, 2).await;
    let id4 = letter_of(&listed, "t4")["id"].as_u64().unwrap();
    let detail4 = get(console, &format!("/api/v1/dead-letters/{id4}"));
    assert_eq!(detail4["local_row"]["found"], true, "{detail4}");
    assert_eq!(detail4["local_row"]["row"]["name"], "Dave", "{detail4}");
    assert_eq!(detail4["record"]["after"]["name"], "Dave Longname", "{detail4}");
    let dropped = http(console, "POST", &format!("/api/v1/dead-letters/{id4}/drop"), &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], "");
    assert_eq!(dropped.status, 200, "{}", dropped.body);
    let listed = letters(&mut fed, console, 1).await;
    assert_eq!(fed.rows("b", "SELECT name FROM person WHERE token = 't4'").await, vec![vec!["Dave".to_string()]]);
    assert_eq!(http(console, "POST", &format!("/api/v1/dead-letters/{id4}/drop"), &[("Authorization", &bearer())], "").status, 404);

    // The PI replayed, the parked lab follows and the parked list empties.
    let id6 = letter_of(&listed, "t6")["id"].as_u64().unwrap();
    let replayed = http(console, "POST", &format!("/api/v1/dead-letters/{id6}/replay"), &[("Authorization", &bearer())], "");
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    fed.wait_rows("b", "SELECT l.code, p.token FROM lab l JOIN person p ON p.id = l.pi_id", &[&["L-1", "t6"]]).await;
    fed.wait_for(Duration::from_secs(30), "the parked list to empty", || async move { get(console, "/api/v1/parked")["total"] == 0 }).await;
    letters(&mut fed, console, 0).await;

    // Every action, refused or done, is in the audit log with who did it.
    let actions = get(console, "/api/v1/overview")["actions"].as_array().unwrap().clone();
    let done = |operator: &str, action: &str| {
        actions.iter().any(|a| a["operator"] == operator && a["action"] == action && !a["outcome"].as_str().unwrap().starts_with("refused"))
    };
    assert!(done("browser-test", "replay") && done("cron", "replay") && done("operator", "rerequest") && done("li", "drop"), "{actions:?}");
    assert!(actions.iter().any(|a| a["operator"] == "-" && a["outcome"].as_str().unwrap().starts_with("refused")), "{actions:?}");
    assert!(fed.logs_contain("console action"));
    assert!(!fed.logs_contain(TOKEN), "the operator token was logged");

    // HTTP edges: HEAD, a trailing slash, a signed id, a name the console does not answer to
    // (a DNS-rebinding page), the older endpoints' methods.
    assert_eq!(http(console, "HEAD", "/healthz", &[], "").status, 200);
    assert_eq!(http(console, "HEAD", "/console/", &[], "").status, 200);
    assert_eq!(http(console, "GET", "/api/v1/dead-letters/1/", &[], "").status, 404);
    assert_eq!(http(console, "GET", "/api/v1/dead-letters/+1", &[], "").status, 404);
    let not_allowed = http(console, "DELETE", "/api/v1/overview", &[], "");
    assert_eq!((not_allowed.status, not_allowed.header("allow")), (405, Some("GET, HEAD")));
    let rebound = http(console, "GET", "/api/v1/overview", &[("Host", "evil.example:80")], "");
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    assert_eq!(http(console, "GET", "/api/v1/overview", &[("Host", &format!("localhost:{}", console.port()))], "").status, 200);
    assert_eq!(http(console, "POST", "/metrics", &[], "").status, 405);

    // Signed out, the cookie no longer acts.
    assert_eq!(http(console, "POST", "/api/v1/session/logout", &[("Cookie", &cookie)], "").status, 200);
    assert_eq!(http(console, "POST", &replay1, &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], "").status, 401);

    // Guessing the token: after 10 wrong ones in a minute this address waits, even with the
    // right one (a guesser cannot tell which guess was right).
    let guesses: Vec<u16> =
        (0..11).map(|i| http(console, "POST", &replay1, &[("Authorization", &format!("Bearer guess-{i}"))], "").status).collect();
    // (Two wrong tokens above may count in the same minute.)
    let first_wait = guesses.iter().position(|s| *s == 429).unwrap_or_else(|| panic!("never throttled: {guesses:?}"));
    assert!((8..=10).contains(&first_wait) && guesses[..first_wait].iter().all(|s| *s == 401), "{guesses:?}");
    assert!(guesses[first_wait..].iter().all(|s| *s == 429), "{guesses:?}");
    assert_eq!(http(console, "POST", &replay1, &[("Authorization", &bearer())], "").status, 429);
    fed.assert_running();
}

fn get_with(addr: SocketAddr, path: &str, cookie: &str) -> Value {
    http(addr, "GET", path, &[("Cookie", cookie)], "").json()
}

/// Runs the browser script against `console`; screenshots go to target/artifacts/console/.
fn run_browser(console: SocketAddr, letter: u64, reason: &str) {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../artifacts/console");
    std::fs::create_dir_all(&out_dir).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.mjs");
    // The script checks that the listed reason contains this (the start of it: the page may wrap).
    let reason_part: String = reason.chars().take(30).collect();
    let out = Command::new("node")
        .arg(script)
        .args(["--url", &format!("http://{console}/console/"), "--token", TOKEN, "--letter", &letter.to_string()])
        .args(["--reason", &reason_part, "--out"])
        .arg(&out_dir)
        .output()
        .expect("node (tests/browser/console.mjs needs Node.js, chromium and chromium-driver: tests/run.sh installs them)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the browser test failed:\n{text}");
    for shot in ["overview.png", "dead-letter.png", "overview-zh.png"] {
        let png = std::fs::read(out_dir.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{shot} is no screenshot ({} bytes)", png.len());
    }
}
