use super::*;

const GOOD: &str = r#"
[federation]
name = "sdu"
topic_prefix = "sitesync.sdu"
database = "lims"
control_database = "sitesync"

[kafka]
bootstrap_servers = "127.0.0.1:9092"

[sites.jinan]
mysql = "mysql://sitesync:${PW_A}@127.0.0.1:3307/lims"
server_id = 4001
listen = "127.0.0.1:9464"

[sites.qingdao]
mysql = "mysql://sitesync:${PW_B}@127.0.0.1:3308/lims"
server_id = 4002

[entities.user]
table = "user"
key = ["token"]
exclude = ["avatar"]
filter = "is_temporary = 0"
on_delete = { set = { atime = 0 } }
refs = { creator_id = "user" }
conflict = { version_column = "mtime" }

[entities.tag]
table = "tag"
on_delete = "propagate"

[[routes]]
from = ["*"]
to = ["*"]
entities = ["user", "tag"]
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "PW_A" => Some("s3cr\"et".into()),
        "PW_B" => Some("b".into()),
        _ => None,
    }
}

fn problems(text: &str) -> Vec<ConfigProblem> {
    match Config::from_toml(text, Path::new("fed.toml"), &env) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn loads_the_design_example_and_expands_secrets() {
    let c = Config::from_toml(GOOD, Path::new("fed.toml"), &env).unwrap();
    assert_eq!(c.sites["jinan"].mysql.expose(), "mysql://sitesync:s3cr\"et@127.0.0.1:3307/lims");
    assert!(!format!("{c:?}").contains("s3cr"), "secrets must not show in Debug output");
    assert_eq!(c.entities["user"].on_delete, OnDelete::Set([("atime".to_string(), serde_json::json!(0))].into()));
    assert!(c.routes_entity("jinan", "qingdao", "user"));
    assert!(!c.routes_entity("jinan", "jinan", "user"));
    assert_eq!(c.origins_of("qingdao"), vec!["jinan".to_string()]);
    assert_eq!(c.topic_of("jinan"), "sitesync.sdu.jinan");
}

#[test]
fn a_missing_variable_names_itself_and_its_key() {
    let p = problems(&GOOD.replace("name = \"sdu\"", "name = \"${NOPE}\""));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "federation.name");
    assert!(p[0].message.contains("NOPE"));
}

#[test]
fn another_sites_password_is_needed_only_when_its_url_is_used() {
    let c = Config::from_toml(&GOOD.replace("${PW_B}", "${NOPE}"), Path::new("fed.toml"), &env).unwrap();
    assert!(c.site("jinan").is_ok(), "jinan runs without qingdao's password");
    let err = c.site("qingdao").unwrap_err().to_string();
    assert!(err.contains("sites.qingdao.mysql") && err.contains("NOPE"), "{err}");
}

#[test]
fn every_cross_reference_mistake_is_reported_with_its_key() {
    let bad = GOOD
        .replace(r#"entities = ["user", "tag"]"#, r#"entities = ["user", "lab"]"#)
        .replace(r#"to = ["*"]"#, r#"to = ["weihai"]"#)
        .replace(r#"refs = { creator_id = "user" }"#, r#"refs = { creator_id = "person" }"#)
        .replace(r#"filter = "is_temporary = 0""#, r#"filter = "is_temporary = ""#)
        .replace("server_id = 4002", "server_id = 4001");
    let p = problems(&bad);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    for key in ["routes[0].entities", "routes[0].to", "entities.user.refs.creator_id", "entities.user.filter", "sites.qingdao.server_id"] {
        assert!(keys.contains(&key), "no problem for {key}: {p:?}");
    }
}

#[test]
fn structural_errors_name_the_key() {
    let p = problems(&GOOD.replace(r#"on_delete = "propagate""#, r#"on_delete = "sometimes""#));
    assert_eq!(p[0].key, "entities.tag.on_delete");
    let p = problems(&GOOD.replace("table = \"tag\"", "tabel = \"tag\""));
    assert!(p[0].key.starts_with("entities.tag"), "{p:?}");
}

#[test]
fn expansion_handles_dollars_and_rejects_bad_names() {
    let e = |n: &str| if n == "X" { Some("1".to_string()) } else { None };
    assert_eq!(expand::expand_str("a$$b${X}c$", &e).unwrap(), "a$b1c$");
    assert!(expand::expand_str("${X", &e).is_err());
    assert!(expand::expand_str("${A-B}", &e).is_err());
}

#[test]
fn references_mean_no_row_at_null_and_zero_unless_told_otherwise() {
    let c = Config::from_toml(GOOD, Path::new("fed.toml"), &env).unwrap();
    let creator = &c.entities["user"].refs["creator_id"];
    assert_eq!(creator.entity, "user");
    for none in [serde_json::json!(null), serde_json::json!(0), serde_json::json!("0")] {
        assert!(creator.is_none(&none), "{none} is no reference by default");
    }
    assert!(!creator.is_none(&serde_json::json!(7)));

    let text = GOOD.replace(r#"refs = { creator_id = "user" }"#, r#"refs = { creator_id = { entity = "user", none = [0, -1] } }"#);
    let c = Config::from_toml(&text, Path::new("fed.toml"), &env).unwrap();
    let creator = &c.entities["user"].refs["creator_id"];
    assert!(creator.is_none(&serde_json::json!(-1)) && creator.is_none(&serde_json::json!(0)));
    assert!(!creator.is_none(&serde_json::json!(1)));

    let text = GOOD.replace(r#"refs = { creator_id = "user" }"#, r#"refs = { creator_id = { entity = "user", none = [] } }"#);
    let c = Config::from_toml(&text, Path::new("fed.toml"), &env).unwrap();
    assert!(!c.entities["user"].refs["creator_id"].is_none(&serde_json::json!(0)), "none = [] makes 0 a real id");

    for bad in [
        r#"refs = { creator_id = 5 }"#,
        r#"refs = { creator_id = { entity = "user", nothing = [0] } }"#,
        r#"refs = { creator_id = { entity = "user", none = [[0]] } }"#,
    ] {
        let p = problems(&GOOD.replace(r#"refs = { creator_id = "user" }"#, bad));
        assert!(p.iter().any(|p| p.key == "entities.user.refs.creator_id"), "{bad}: {p:?}");
    }
}

#[test]
fn continuous_verification_is_off_by_default_and_a_bad_interval_names_its_key() {
    let c = Config::from_toml(GOOD, Path::new("fed.toml"), &env).unwrap();
    assert_eq!(c.verify.interval(), None);
    assert!(!c.verify.repair);
    let c = Config::from_toml(&format!("{GOOD}\n[verify]\ninterval = \"6h\"\nrepair = true\n"), Path::new("fed.toml"), &env).unwrap();
    assert_eq!(c.verify.interval(), Some(std::time::Duration::from_secs(6 * 3600)));
    assert!(c.verify.repair);
    for bad in ["6 hours", "0s", "h", "-1m"] {
        let p = problems(&format!("{GOOD}\n[verify]\ninterval = \"{bad}\"\n"));
        assert_eq!(p.len(), 1, "{bad}: {p:?}");
        assert_eq!(p[0].key, "verify.interval");
        assert!(p[0].message.contains(bad), "{}", p[0].message);
    }
    assert_eq!(super::parse_duration("90s"), Ok(std::time::Duration::from_secs(90)));
    assert_eq!(super::parse_duration("1d"), Ok(std::time::Duration::from_secs(86_400)));
}

/// A directory of its own for a test's secret files.
fn secret_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sitesync-config-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn secrets_come_from_files_less_one_trailing_newline() {
    let dir = secret_dir("file");
    let e = |_: &str| None;
    for (name, content, expected) in [
        ("plain", "pa$$w0rd${X}", "pa$$w0rd${X}"),
        ("newline", "s3cret\n", "s3cret"),
        ("crlf", "s3cret\r\n", "s3cret"),
        ("two", "s3cret\n\n", "s3cret\n"),
        ("spaces", " s3 cret ", " s3 cret "),
        ("empty", "", ""),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let got = expand::expand_str(&format!("mysql://u:${{file:{}}}@h/db", path.display()), &e).unwrap();
        assert_eq!(got, format!("mysql://u:{expected}@h/db"), "{name}: the content is taken as it is, never expanded again");
    }

    // Through the whole file: the site's URL gets the file's password; `$$` and `${VAR}` stay.
    let pw = dir.join("jinan");
    std::fs::write(&pw, "fr0m-f1le\n").unwrap();
    let text = GOOD.replace("${PW_A}", &format!("${{file:{}}}", pw.display())).replace("name = \"sdu\"", "name = \"s$$du\"");
    let c = Config::from_toml(&text, Path::new("fed.toml"), &env).unwrap();
    assert_eq!(c.sites["jinan"].mysql.expose(), "mysql://sitesync:fr0m-f1le@127.0.0.1:3307/lims");
    assert_eq!(c.sites["qingdao"].mysql.expose(), "mysql://sitesync:b@127.0.0.1:3308/lims");
    assert_eq!(c.federation.name, "s$du");
    assert!(!format!("{c:?}").contains("fr0m"), "secrets must not show in Debug output");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_secret_file_that_cannot_be_read_names_the_key_and_the_path_never_the_content() {
    let dir = secret_dir("badfile");
    let missing = dir.join("nope");
    let text = GOOD.replace("${PW_A}", &format!("${{file:{}}}", missing.display()));
    // Deferred like a missing variable: only site jinan needs it.
    let c = Config::from_toml(&text, Path::new("fed.toml"), &env).unwrap();
    assert!(c.site("qingdao").is_ok());
    let err = c.site("jinan").unwrap_err().to_string();
    assert!(err.contains("sites.jinan.mysql") && err.contains(&missing.display().to_string()) && err.contains("missing"), "{err}");

    // Elsewhere in the file it stops the load, naming the key.
    let p = problems(&GOOD.replace("name = \"sdu\"", &format!("name = \"${{file:{}}}\"", missing.display())));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "federation.name");
    assert!(p[0].message.contains("missing") && p[0].message.contains("nope"), "{}", p[0].message);

    // A directory, a file without read permission (when not root), not UTF-8, a relative path.
    let e = |_: &str| None;
    let err = expand::expand_str(&format!("${{file:{}}}", dir.display()), &e).unwrap_err();
    assert!(err.contains("unreadable") && err.contains(&dir.display().to_string()), "{err}");
    let locked = dir.join("locked");
    std::fs::write(&locked, "t0p-s3cret").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&locked).is_err() {
        let err = expand::expand_str(&format!("${{file:{}}}", locked.display()), &e).unwrap_err();
        assert!(err.contains("unreadable") && err.contains("locked"), "{err}");
    }
    let latin1 = dir.join("latin1");
    std::fs::write(&latin1, b"caf\xe9-s3cret").unwrap();
    let err = expand::expand_str(&format!("${{file:{}}}", latin1.display()), &e).unwrap_err();
    assert!(err.contains("not UTF-8") && !err.contains("s3cret"), "{err}");
    let err = expand::expand_str("${file:secrets/pw}", &e).unwrap_err();
    assert!(err.contains("absolute") && err.contains("secrets/pw"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn systemd_credentials_come_from_the_credentials_directory() {
    let dir = secret_dir("credential");
    std::fs::write(dir.join("sitesync-jinan"), "cr3d\n").unwrap();
    let creds = dir.display().to_string();
    let with = |name: &str| if name == "CREDENTIALS_DIRECTORY" { Some(creds.clone()) } else { None };
    assert_eq!(expand::expand_str("u:${credential:sitesync-jinan}@h", &with).unwrap(), "u:cr3d@h");

    let err = expand::expand_str("${credential:other}", &with).unwrap_err();
    assert!(err.contains("credential other") && err.contains("missing") && err.contains(&creds), "{err}");
    let err = expand::expand_str("${credential:sitesync-jinan}", &|_| None).unwrap_err();
    assert!(err.contains("CREDENTIALS_DIRECTORY") && err.contains("not set") && err.contains("sitesync-jinan"), "{err}");
    for bad in ["${credential:}", "${credential:../etc/passwd}", "${credential:..}"] {
        assert!(expand::expand_str(bad, &with).unwrap_err().contains("not a valid credential name"), "{bad}");
    }

    // Through the whole file, and an unknown source is named.
    let text = GOOD.replace("${PW_A}", "${credential:sitesync-jinan}");
    let env_with = |name: &str| if name == "CREDENTIALS_DIRECTORY" { Some(creds.clone()) } else { env(name) };
    let c = Config::from_toml(&text, Path::new("fed.toml"), &env_with).unwrap();
    assert_eq!(c.sites["jinan"].mysql.expose(), "mysql://sitesync:cr3d@127.0.0.1:3307/lims");
    let err = expand::expand_str("${vault:x}", &with).unwrap_err();
    assert!(err.contains("vault:x") && err.contains("${file:/path}"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_export_stream_gets_a_binlog_client_id_of_its_own_and_a_known_priority() {
    let ok = Config::from_toml(&format!("{GOOD}\n[export]\nentities = [\"user\"]\n"), Path::new("fed.toml"), &env).unwrap();
    assert!(ok.export.any_at("jinan") && ok.export.low_priority());
    assert_eq!(ok.export.server_id(4001), Some(1_004_001));
    assert_eq!(ok.export.trail(), std::time::Duration::from_secs(600));
    let bad =
        problems(&format!("{GOOD}\n[export]\nentities = [\"user\"]\nsites = [\"jinan\"]\nserver_id_offset = 1\ncpu_priority = \"idle\"\n"));
    let keys: Vec<(&str, &str)> = bad.iter().map(|p| (p.key.as_str(), p.message.as_str())).collect();
    assert!(keys.iter().any(|(k, m)| *k == "export.cpu_priority" && m.contains("`idle`")), "{keys:?}");
    // jinan's export would read as 4002, qingdao's own id.
    assert!(keys.iter().any(|(k, m)| *k == "export.server_id_offset" && m.contains("site `qingdao`'s")), "{keys:?}");
    let overflow = problems(&format!("{GOOD}\n[export]\nentities = [\"user\"]\nserver_id_offset = 4294967295\n"));
    assert!(overflow.iter().any(|p| p.key == "export.server_id_offset" && p.message.contains("does not fit")), "{overflow:?}");
}
