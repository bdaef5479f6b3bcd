//! Kafka with SASL_SSL, SCRAM-SHA-512 users per site and ACLs (the local stack's second listener,
//! 127.0.0.1:9094, with KRaft's StandardAuthorizer). Users and ACLs are made through the
//! PLAINTEXT listener (a super user there) with Kafka's own command-line tools, the same commands
//! the runbook gives. Each site may write only its own topics and read its origins'.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{output_text, Federation, Spec};

use common::{PEOPLE_BOTH_WAYS as CONFIG, PEOPLE_SCHEMA as SCHEMA};

fn sasl_listener() -> String {
    std::env::var("SITESYNC_KAFKA_SASL").expect("SITESYNC_KAFKA_SASL (deploy/local/stack.sh env): the stack's SASL_SSL listener")
}

fn stack_ca() -> String {
    std::env::var("SITESYNC_KAFKA_CA").expect("SITESYNC_KAFKA_CA (deploy/local/stack.sh env): the CA of the stack's broker certificate")
}

/// Runs one of Kafka's tools (ConfigCommand, AclCommand) against the PLAINTEXT listener.
fn kafka_tool(class: &str, args: &[&str]) {
    let libs = std::env::var("SITESYNC_KAFKA_LIBS").expect("SITESYNC_KAFKA_LIBS (deploy/local/stack.sh env)");
    let out = Command::new("java")
        .args(["-Xmx128m", "-cp", &format!("{libs}/*"), class, "--bootstrap-server", &common::kafka()])
        .args(args)
        .output()
        .expect("java");
    assert!(out.status.success(), "{class} {}: {}", args.join(" "), output_text(&out));
}

fn scram_user(name: &str, password: &str) {
    kafka_tool(
        "org.apache.kafka.tools.ConfigCommand",
        &["--alter", "--add-config", &format!("SCRAM-SHA-512=[password={password}]"), "--entity-type", "users", "--entity-name", name],
    );
}

/// `kafka-acls.sh --add --allow-principal User:<user> --operation ... --topic|--group <name>`.
fn allow(user: &str, operations: &[&str], resource: &str, name: &str, prefixed: bool) {
    let mut args = vec!["--add".to_string(), "--allow-principal".into(), format!("User:{user}")];
    for op in operations {
        args.extend(["--operation".to_string(), op.to_string()]);
    }
    args.extend([format!("--{resource}"), name.to_string()]);
    if prefixed {
        args.extend(["--resource-pattern-type".to_string(), "prefixed".to_string()]);
    }
    kafka_tool("org.apache.kafka.tools.AclCommand", &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// A two-site federation whose topics an administrator made (the test's `init`s through the
/// PLAINTEXT listener), then switched to the SASL_SSL listener with one SCRAM user per site and
/// the least-privilege ACLs of the runbook.
async fn federation(test: &str) -> (Federation, String) {
    let mut fed = Federation::new(test, Spec { schema: SCHEMA, entities_and_routes: CONFIG, ..Spec::default() }).await;
    let prefix = fed.topic_prefix.clone();
    let user = |s: &str| format!("{}_{s}", prefix.replace('.', "_"));
    for (site, origin) in [("a", "b"), ("b", "a")] {
        let u = user(site);
        scram_user(&u, &format!("pw-{site}"));
        allow(&u, &["Write", "Describe"], "topic", &format!("{prefix}.{site}"), false);
        allow(&u, &["Write", "Describe"], "topic", &format!("{prefix}.{site}.heartbeat"), false);
        allow(&u, &["Read", "Write", "Describe"], "topic", &format!("{prefix}.control"), false);
        allow(&u, &["Read", "Describe"], "topic", &format!("{prefix}.{origin}"), false);
        allow(&u, &["Read", "Describe"], "topic", &format!("{prefix}.{origin}.heartbeat"), false);
        allow(&u, &["Read", "Describe"], "group", &format!("sitesync.{test}.{site}."), true);
        fed.set_site_env(site, "SITESYNC_TEST_KAFKA_USER", &u);
        fed.set_site_env(site, "SITESYNC_TEST_KAFKA_PASSWORD", &format!("pw-{site}"));
        fed.set_site_env(site, "SITESYNC_TEST_KAFKA_CA", &stack_ca());
    }
    let text = std::fs::read_to_string(&fed.config_path).unwrap();
    let plain = format!("[kafka]\nbootstrap_servers = \"{}\"\n", common::kafka());
    assert!(text.contains(&plain), "{text}");
    let secured = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"${{SITESYNC_TEST_KAFKA_USER}}\"\n\"sasl.password\" = \"${{SITESYNC_TEST_KAFKA_PASSWORD}}\"\n\
         \"ssl.ca.location\" = \"${{SITESYNC_TEST_KAFKA_CA}}\"\n",
        sasl_listener(),
    );
    std::fs::write(&fed.config_path, text.replace(&plain, &secured)).unwrap();
    (fed, user("a"))
}

/// The line a stopped `run` ends with (the whole log is in the assertion's message if it fails):
/// short enough that CI's excerpt of a failure keeps the panic message.
fn last_error_line(text: &str) -> &str {
    text.lines().rev().find(|l| l.contains("sitesync stopped")).unwrap_or("(no \"sitesync stopped\" line)")
}

fn run_text(fed: &Federation, site: &str, args: &[&str]) -> (bool, String) {
    let out = fed.command(site, args).output().unwrap();
    (out.status.success(), output_text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_replicate_through_sasl_ssl_with_least_privilege_acls() {
    let (mut fed, user_a) = federation("saslmesh").await;

    let (ok, text) = run_text(&fed, "a", &["check"]);
    assert!(ok, "check at a:\n{text}");
    assert!(text.contains(&format!("PASS kafka security: security.protocol=SASL_SSL, SCRAM-SHA-512 as {user_a}")), "{text}");
    assert!(text.contains(&format!("PASS kafka: reachable at {}", sasl_listener())), "{text}");
    // Topics made beforehand by an administrator: `init` needs no right to create them.
    let (ok, text) = run_text(&fed, "a", &["init"]);
    assert!(ok, "init at a without Create rights, topics made beforehand:\n{text}");
    assert!(text.contains(&format!("topic {}.b: exists", fed.topic_prefix)), "{text}");

    fed.exec("a", "INSERT INTO person (token, name) VALUES ('t-ada', 'Ada')").await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    fed.exec("b", "INSERT INTO person (token, name) VALUES ('t-bo', 'Bo')").await;
    fed.exec("a", "UPDATE person SET name = 'Ada L.' WHERE token = 't-ada'").await;
    for site in ["a", "b"] {
        fed.wait_rows(site, "SELECT token, name FROM person ORDER BY token", &[&["t-ada", "Ada L."], &["t-bo", "Bo"]]).await;
    }
    // The control channel works through the same ACLs: verify at b asks a, a answers.
    let (ok, text) = run_text(&fed, "b", &["verify"]);
    assert!(ok, "verify at b through SASL_SSL:\n{text}");
    fed.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_another_sites_credentials_are_refused_by_name() {
    let (mut fed, user_a) = federation("saslrefused").await;

    // A wrong password: check names the login, run stops with it instead of waiting for ever.
    fed.set_site_env("a", "SITESYNC_TEST_KAFKA_PASSWORD", "not-the-password");
    let (ok, text) = run_text(&fed, "a", &["check"]);
    assert!(!ok, "{text}");
    let line = text.lines().find(|l| l.starts_with("FAIL kafka: ")).unwrap_or_else(|| panic!("no FAIL kafka line:\n{text}"));
    println!("{line}");
    assert!(line.contains("Kafka refused this site's login") && line.contains("sasl.password"), "{line}");
    assert!(!text.contains("not-the-password"), "the password is never printed:\n{text}");
    let started = Instant::now();
    let (ok, text) = run_text(&fed, "a", &["run"]);
    println!("run with a wrong password: {}", last_error_line(&text));
    assert!(!ok && text.contains("Kafka refused this site's login"), "run with a wrong password:\n{text}");
    assert!(started.elapsed() < Duration::from_secs(60), "run should stop at the refusal: {:?}\n{text}", started.elapsed());
    assert!(!text.contains("not-the-password"), "{text}");

    // A CA that did not sign the broker's certificate: TLS is named, not "unreachable".
    fed.set_site_env("a", "SITESYNC_TEST_KAFKA_PASSWORD", "pw-a");
    let wrong_ca = fed.dir.join("wrong-ca.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not the stack's CA",
        ])
        .arg("-keyout")
        .arg(fed.dir.join("wrong-ca.key"))
        .arg("-out")
        .arg(&wrong_ca)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", output_text(&out));
    fed.set_site_env("a", "SITESYNC_TEST_KAFKA_CA", &wrong_ca.display().to_string());
    let (ok, text) = run_text(&fed, "a", &["check"]);
    assert!(!ok, "{text}");
    let line = text.lines().find(|l| l.starts_with("FAIL kafka: ")).unwrap_or_else(|| panic!("no FAIL kafka line:\n{text}"));
    println!("{line}");
    assert!(line.contains("TLS to Kafka failed") && line.contains("ssl.ca.location"), "{line}");

    // A user without any ACL: check names every topic it may not see, with the grant.
    let nobody = format!("{}_nobody", fed.topic_prefix.replace('.', "_"));
    scram_user(&nobody, "pw-nobody");
    fed.set_site_env("b", "SITESYNC_TEST_KAFKA_USER", &nobody);
    fed.set_site_env("b", "SITESYNC_TEST_KAFKA_PASSWORD", "pw-nobody");
    let (ok, text) = run_text(&fed, "b", &["check"]);
    assert!(!ok, "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("FAIL topic: {}.b ", fed.topic_prefix)))
        .unwrap_or_else(|| panic!("no FAIL line for b's topic:\n{text}"));
    assert!(line.contains(&format!("do not let User:{nobody} see it")), "{line}");
    assert!(line.contains(&format!("--allow-principal User:{nobody} --operation Write --operation Describe")), "{line}");

    // Site b's process holding site a's credentials: a may read b's topic, not write it.
    fed.set_site_env("b", "SITESYNC_TEST_KAFKA_USER", &user_a);
    fed.set_site_env("b", "SITESYNC_TEST_KAFKA_PASSWORD", "pw-a");
    fed.exec("b", "INSERT INTO person (token, name) VALUES ('t-bo', 'Bo')").await;
    let started = Instant::now();
    let (ok, text) = run_text(&fed, "b", &["run"]);
    println!("run at b with a's credentials: {}", last_error_line(&text));
    assert!(!ok && text.contains("Kafka's ACLs refused this site's user"), "run at b with a's credentials:\n{text}");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}\n{text}", started.elapsed());
}
