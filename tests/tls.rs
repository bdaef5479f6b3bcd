//! TLS to MySQL/MariaDB: two sites on servers of this test's own that refuse unencrypted
//! connections (`require_secure_transport=ON`), with certificates made here by `openssl` for a
//! CA of this test. Replication works end to end, every connection sitesync holds is TLS, `check`
//! says so, and a wrong CA or a server without TLS fails `check` and `run` with what to fix.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::scratch::Scratch;
use common::{output_text, Federation, Spec};

use common::{PEOPLE_BOTH_WAYS as CONFIG, PEOPLE_SCHEMA as SCHEMA};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (Debian package openssl)");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), output_text(&out));
}

/// A CA, a server certificate for 127.0.0.1 (not `localhost`) signed by it, a client certificate signed
/// by it, and a second CA that signed nothing here.
fn make_pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for ca in ["ca", "wrong-ca"] {
        openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &format!("{ca}.key")]);
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{ca}.key"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=sitesync test {ca}"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage = clientAuth\n").unwrap();
    for (who, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &format!("{who}.key")]);
        openssl(
            dir,
            &["req", "-new", "-key", &format!("{who}.key"), "-subj", &format!("/CN=sitesync test {who}"), "-out", &format!("{who}.csr")],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &format!("{who}.pem"),
            ],
        );
    }
}

fn tls_server(name: &str, pki: &Path, id: u32) -> Scratch {
    let p = |f: &str| pki.join(f).display().to_string();
    Scratch::new(
        name,
        &[
            "--log-bin=mysql-bin",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            &format!("--server-id={id}"),
            &format!("--gtid-domain-id={id}"),
            "--character-set-server=utf8mb4",
            &format!("--ssl-ca={}", p("ca.pem")),
            &format!("--ssl-cert={}", p("server.pem")),
            &format!("--ssl-key={}", p("server.key")),
            "--require-secure-transport=ON",
            "--performance-schema=ON",
        ],
    )
}

/// Rewrites site `site`'s `mysql` URL in the federation's file: `user` and `query` instead of
/// root without parameters.
fn set_url(fed: &Federation, site: &str, server: &Scratch, user: &str, query: &str) {
    let text = std::fs::read_to_string(&fed.config_path).unwrap();
    let from = format!("mysql = \"mysql://root@127.0.0.1:{}/{}", server.port, fed.app_db);
    let start = text.find(&from).unwrap_or_else(|| panic!("no URL of site {site} in {text}"));
    let end = start + text[start..].find('\n').unwrap();
    let url = format!("mysql = \"mysql://{user}@127.0.0.1:{}/{}?{query}\"", server.port, fed.app_db);
    std::fs::write(&fed.config_path, format!("{}{}{}", &text[..start], url, &text[end..])).unwrap();
}

fn check(fed: &Federation, site: &str) -> (bool, String) {
    let out = fed.command(site, &["check"]).output().unwrap();
    (out.status.success(), output_text(&out))
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
}

/// The host and TLS version of every other connection of `user` to `server`, from the server's
/// own per-thread status.
async fn connections(server: &Scratch, user: &str) -> Vec<(String, String)> {
    server
        .rows(&format!(
            "SELECT t.PROCESSLIST_HOST, IFNULL(s.VARIABLE_VALUE, '') FROM performance_schema.threads t \
             LEFT JOIN performance_schema.status_by_thread s ON s.THREAD_ID = t.THREAD_ID AND s.VARIABLE_NAME = 'Ssl_version' \
             WHERE t.PROCESSLIST_USER = '{user}' AND t.PROCESSLIST_ID <> CONNECTION_ID()"
        ))
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_replicate_over_tls_only_and_check_reports_every_connection() {
    let pki = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pki-{}", std::process::id()));
    make_pki(&pki);
    let a = tls_server("tls-a", &pki, 81);
    let b = tls_server("tls-b", &pki, 82);
    // Site b logs in as a user the server accepts only with a client certificate of the CA.
    b.exec("CREATE USER 'certified'@'%' REQUIRE X509; GRANT ALL ON *.* TO 'certified'@'%'").await;
    let servers = [Some(a.url()), Some(b.url())];
    let mut fed = Federation::new("tls", Spec { schema: SCHEMA, entities_and_routes: CONFIG, servers: &servers, ..Spec::default() }).await;
    let ca = pki.join("ca.pem").display().to_string();
    set_url(&fed, "a", &a, "root", &format!("ssl-mode=verify_identity&ssl-ca={ca}"));
    set_url(
        &fed,
        "b",
        &b,
        "certified",
        &format!(
            "ssl-mode=verify_ca&ssl-ca={ca}&ssl-cert={}&ssl-key={}",
            pki.join("client.pem").display(),
            pki.join("client.key").display()
        ),
    );

    let (ok, text) = check(&fed, "a");
    println!("check at a:\n{text}");
    assert!(ok, "check at a:\n{text}");
    let tls = line(&text, "PASS database tls: ");
    assert!(tls.contains("encrypted (TLSv1.") && tls.contains("certificate and host name verified"), "{tls}");
    let tls = line(&text, "PASS database tls (apply): ");
    assert!(tls.contains("encrypted (TLSv1.") && tls.contains("verified"), "{tls}");
    let (ok, text) = check(&fed, "b");
    assert!(ok, "check at b:\n{text}");
    assert!(line(&text, "PASS database tls: ").contains("certificate verified (not the host name)"), "{text}");

    fed.exec("a", "INSERT INTO person (token, name) VALUES ('t-ada', 'Ada')").await;
    fed.exec("b", "INSERT INTO person (token, name) VALUES ('t-bo', 'Bo')").await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    fed.exec("a", "INSERT INTO person (token, name) VALUES ('t-cy', 'Cy')").await;
    fed.exec("b", "UPDATE person SET name = 'Bo B.' WHERE token = 't-bo'").await;
    for site in ["a", "b"] {
        fed.wait_rows(
            site,
            "SELECT token, name FROM person WHERE token IN ('t-cy', 't-bo') ORDER BY token",
            &[&["t-bo", "Bo B."], &["t-cy", "Cy"]],
        )
        .await;
    }
    // Every connection the sites' processes hold is TLS over TCP (the binlog stream included):
    // the servers refuse anything else, and say which version each one uses.
    for (server, user, at_least) in [(&a, "root", 3), (&b, "certified", 3)] {
        let conns = connections(server, user).await;
        assert!(conns.len() >= at_least, "{user}: {conns:?}");
        // (A Unix socket connection would show no Ssl_version.)
        for (_, version) in &conns {
            assert!(version.starts_with("TLSv1."), "{user}: a connection without TLS: {conns:?}");
        }
        let dumps = server.rows("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'").await;
        assert_eq!(dumps[0][0], "1", "the binlog stream is one of them");
    }
    fed.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_a_server_without_tls_fails_check_and_run_with_the_fix() {
    let pki = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pki-wrong-{}", std::process::id()));
    make_pki(&pki);
    let a = tls_server("tls-wrong", &pki, 83);
    let servers = [Some(a.url())];
    let fed = Federation::new("tlswrong", Spec { schema: SCHEMA, entities_and_routes: CONFIG, servers: &servers, ..Spec::default() }).await;
    let wrong = pki.join("wrong-ca.pem").display().to_string();

    // ssl-mode=preferred (the default) encrypts but says the certificate went unchecked.
    let (ok, text) = check(&fed, "a");
    assert!(ok, "{text}");
    let tls = line(&text, "WARN database tls: ");
    assert!(tls.contains("encrypted (TLSv1.") && tls.contains("NOT verified") && tls.contains("ssl-mode=verify_identity"), "{tls}");

    set_url(&fed, "a", &a, "root", &format!("ssl-mode=verify_ca&ssl-ca={wrong}"));
    let (ok, text) = check(&fed, "a");
    assert!(!ok, "{text}");
    let fail = line(&text, "FAIL database tls: ");
    println!("{fail}");
    assert!(fail.contains("ssl-mode=verify_ca") && fail.contains(&format!("ssl-ca={wrong} signed the server's certificate")), "{fail}");
    assert!(fail.to_ascii_lowercase().contains("certificate verify failed"), "{fail}");

    let started = std::time::Instant::now();
    let out = fed.command("a", &["run"]).output().unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "run with a wrong CA must stop: {text}");
    assert!(started.elapsed() < Duration::from_secs(60), "run retried a certificate that will not verify: {text}");
    println!("run with a wrong CA:\n{text}");
    assert!(text.to_ascii_lowercase().contains("certificate"), "{text}");

    // A host name the certificate does not name (`localhost`: the certificate says 127.0.0.1).
    let ca = pki.join("ca.pem").display().to_string();
    let text = std::fs::read_to_string(&fed.config_path).unwrap();
    std::fs::write(
        &fed.config_path,
        text.replace(
            &format!("127.0.0.1:{}/{}?ssl-mode=verify_ca&ssl-ca={wrong}", a.port, fed.app_db),
            &format!("localhost:{}/{}?ssl-mode=verify_identity&ssl-ca={ca}", a.port, fed.app_db),
        ),
    )
    .unwrap();
    let (ok, text) = check(&fed, "a");
    assert!(!ok, "{text}");
    let fail = line(&text, "FAIL database tls: ");
    assert!(fail.contains("names the host `localhost`"), "{fail}");

    // A server without TLS (the stack's) and ssl-mode=required.
    let plain = Federation::new("tlsplain", Spec { schema: SCHEMA, entities_and_routes: CONFIG, ..Spec::default() }).await;
    let text = std::fs::read_to_string(&plain.config_path).unwrap();
    let marker = format!("/{}\"", plain.app_db);
    std::fs::write(&plain.config_path, text.replacen(&marker, &format!("/{}?ssl-mode=required\"", plain.app_db), 1)).unwrap();
    let (ok, text) = check(&plain, "a");
    assert!(!ok, "{text}");
    assert!(line(&text, "FAIL database tls: ").contains("offers no TLS but sites.<site>.mysql says ssl-mode=required"), "{text}");
    // And preferred against it says it is not encrypted.
    std::fs::write(&plain.config_path, std::fs::read_to_string(&plain.config_path).unwrap().replace("?ssl-mode=required", "")).unwrap();
    let (ok, text) = check(&plain, "a");
    assert!(ok, "{text}");
    assert!(line(&text, "WARN database tls: ").contains("not encrypted"), "{text}");
}
