//! The deployment files (deploy/systemd, deploy/supervisor, deploy/compose, deploy/runbook) read
//! as what they claim to be, agree with each other and with sitesync itself:
//!
//! - `deploy/compose/docker-compose.yml` parses as YAML (a small block-YAML reader below; PyYAML,
//!   when present, must read the same tree) and has the seven services of the demo, wired to
//!   the files and addresses of `deploy/compose/sitesync.toml`;
//! - `deploy/compose/sitesync.toml` loads with sitesync's own loader and has the key layout of
//!   `config/shandong.toml`;
//! - the systemd unit and the supervisor program run `sitesync ... run` with a command line that
//!   sitesync's own parser accepts, and give it the password variables the file needs;
//! - both runbooks use every command of `sitesync --help`, and only commands and options that
//!   exist.
//!
//! No database, Kafka or Docker is needed: these tests only read files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use serde_json::{json, Map, Value};
use sitesync::cli::{Cli, Command, DlqAction};
use sitesync::config::Config;

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// A small reader for the block YAML the deployment files are written in: block mappings and
// sequences (including `- key: value` items), plain, single- and double-quoted scalars, flow
// sequences and flow mappings of scalars, comments. Anything else (tabs, anchors, aliases,
// block scalars, tags, documents, duplicate keys, bad indentation) is an error, so that a file
// this reader accepts is one every YAML parser reads the same way.

#[derive(Debug)]
struct Line {
    no: usize,
    indent: usize,
    text: String,
}

/// Removes a comment (`#` at the start or after a space, outside quotes) and trailing spaces.
fn strip_comment(line: &str) -> String {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && (prev == ' ' || i == 0) => return line[..i].trim_end().to_string(),
            None => {}
        }
        prev = c;
    }
    line.trim_end().to_string()
}

fn yaml_lines(text: &str) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let body = raw.trim_start_matches(' ');
        if body.starts_with('\t') {
            return Err(format!("line {no}: tab in indentation"));
        }
        let text = strip_comment(body);
        if text.is_empty() {
            continue;
        }
        if text == "---" || text == "..." || text.starts_with('%') {
            return Err(format!("line {no}: documents and directives are not used here"));
        }
        out.push(Line { no, indent: raw.len() - body.len(), text });
    }
    Ok(out)
}

/// Splits `key: rest` (a `:` followed by a space or the end, outside quotes); None for a scalar.
fn split_key(text: &str) -> Option<(String, String)> {
    let mut quote: Option<char> = None;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (n, &(i, c)) in chars.iter().enumerate() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if (c == '"' || c == '\'') && n == 0 => quote = Some(c),
            None if c == '[' || c == '{' => return None,
            None if c == ':' => {
                let next = chars.get(n + 1).map(|&(_, c)| c);
                if next.is_none() || next == Some(' ') {
                    let key = text[..i].trim();
                    let key = scalar(key).ok()?;
                    let key = match key {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    return Some((key, text[i + 1..].trim().to_string()));
                }
            }
            None => {}
        }
    }
    None
}

fn scalar(text: &str) -> Result<Value, String> {
    let t = text.trim();
    if let Some(body) = t.strip_prefix('"') {
        let body = body.strip_suffix('"').ok_or_else(|| format!("unterminated string {t}"))?;
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    other => return Err(format!("unsupported escape \\{other:?} in {t}")),
                }
            } else if c == '"' {
                return Err(format!("stray quote in {t}"));
            } else {
                out.push(c);
            }
        }
        return Ok(Value::String(out));
    }
    if let Some(body) = t.strip_prefix('\'') {
        let body = body.strip_suffix('\'').ok_or_else(|| format!("unterminated string {t}"))?;
        return Ok(Value::String(body.replace("''", "'")));
    }
    if t.starts_with(['&', '*', '!', '|', '>', '@', '`']) {
        return Err(format!("`{t}`: anchors, aliases, tags and block scalars are not used here"));
    }
    // YAML 1.1 booleans (what PyYAML and Compose's parser resolve) must be quoted to be strings.
    match t {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        "yes" | "no" | "on" | "off" | "Yes" | "No" | "On" | "Off" | "YES" | "NO" | "ON" | "OFF" => {
            return Err(format!("`{t}` is a boolean to some YAML readers and a string to others: quote it"))
        }
        _ => {}
    }
    if let Ok(n) = t.parse::<i64>() {
        if !(t.len() > 1 && t.starts_with('0')) {
            return Ok(json!(n));
        }
    }
    if t.parse::<f64>().is_ok() && t.chars().any(|c| c.is_ascii_digit()) && !t.contains(':') {
        return Err(format!("`{t}` reads as a number: quote it if it is a string"));
    }
    Ok(Value::String(t.to_string()))
}

/// Splits the inside of a flow collection on commas outside quotes and brackets.
fn flow_items(body: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut depth = 0;
    for c in body.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '[' || c == '{' => depth += 1,
            None if c == ']' || c == '}' => depth -= 1,
            None if c == ',' && depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            None => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        items.push(current);
    }
    items.into_iter().map(|s| s.trim().to_string()).collect()
}

fn inline(text: &str) -> Result<Value, String> {
    let t = text.trim();
    if let Some(body) = t.strip_prefix('[') {
        let body = body.strip_suffix(']').ok_or_else(|| format!("unterminated flow sequence {t}"))?;
        return flow_items(body).iter().map(|i| scalar(i)).collect::<Result<Vec<_>, _>>().map(Value::Array);
    }
    if let Some(body) = t.strip_prefix('{') {
        let body = body.strip_suffix('}').ok_or_else(|| format!("unterminated flow mapping {t}"))?;
        let mut map = Map::new();
        for item in flow_items(body) {
            let (k, v) = split_key(&item).ok_or_else(|| format!("`{item}` in {t} is not key: value"))?;
            if map.insert(k.clone(), scalar(&v)?).is_some() {
                return Err(format!("duplicate key {k} in {t}"));
            }
        }
        return Ok(Value::Object(map));
    }
    scalar(t)
}

/// Parses the block node whose lines start at `*i` with indentation `indent`.
fn block(lines: &[Line], i: &mut usize, indent: usize) -> Result<Value, String> {
    let first = &lines[*i];
    if first.indent != indent {
        return Err(format!("line {}: indentation {} where {indent} was expected", first.no, first.indent));
    }
    if first.text == "-" || first.text.starts_with("- ") {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].indent == indent && (lines[*i].text == "-" || lines[*i].text.starts_with("- ")) {
            let line = &lines[*i];
            let rest = line.text[1..].trim_start();
            if rest.is_empty() {
                *i += 1;
                items.push(nested(lines, i, indent)?);
            } else if split_key(rest).is_some() {
                // `- key: value` opens a mapping whose keys sit at the column of `key`.
                let column = indent + (line.text.len() - rest.len());
                let mut virtual_lines = vec![Line { no: line.no, indent: column, text: rest.to_string() }];
                *i += 1;
                while *i < lines.len() && lines[*i].indent > indent {
                    virtual_lines.push(Line { no: lines[*i].no, indent: lines[*i].indent, text: lines[*i].text.clone() });
                    *i += 1;
                }
                let mut j = 0;
                let item = block(&virtual_lines, &mut j, column)?;
                if j != virtual_lines.len() {
                    return Err(format!("line {}: unexpected indentation", virtual_lines[j].no));
                }
                items.push(item);
            } else {
                items.push(inline(rest).map_err(|e| format!("line {}: {e}", line.no))?);
                *i += 1;
            }
        }
        return Ok(Value::Array(items));
    }
    let mut map = Map::new();
    while *i < lines.len() && lines[*i].indent == indent {
        let line = &lines[*i];
        if line.text.starts_with("- ") {
            return Err(format!("line {}: a sequence item where a key was expected", line.no));
        }
        let (key, rest) = split_key(&line.text).ok_or_else(|| format!("line {}: expected `key: value`, found `{}`", line.no, line.text))?;
        *i += 1;
        let value =
            if rest.is_empty() { nested(lines, i, indent)? } else { inline(&rest).map_err(|e| format!("line {}: {e}", line.no))? };
        if map.insert(key.clone(), value).is_some() {
            return Err(format!("line {}: duplicate key `{key}`", line.no));
        }
    }
    Ok(Value::Object(map))
}

/// The value of a key or item with nothing after it: a deeper block, or null.
fn nested(lines: &[Line], i: &mut usize, indent: usize) -> Result<Value, String> {
    match lines.get(*i) {
        Some(next) if next.indent > indent => block(lines, i, next.indent),
        _ => Ok(Value::Null),
    }
}

fn parse_yaml(text: &str) -> Result<Value, String> {
    let lines = yaml_lines(text)?;
    if lines.is_empty() {
        return Ok(Value::Null);
    }
    let mut i = 0;
    let value = block(&lines, &mut i, 0)?;
    if i != lines.len() {
        return Err(format!("line {}: unexpected indentation", lines[i].no));
    }
    Ok(value)
}

/// The same file as read by PyYAML, when python3 and its yaml module are installed.
fn pyyaml(path: &Path) -> Option<Value> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))"])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("No module named"), "PyYAML cannot read {}: {stderr}", path.display());
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("python3 printed JSON"))
}

fn yaml_file(rel: &str) -> Value {
    let value = parse_yaml(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    match pyyaml(&repo_path(rel)) {
        Some(other) => assert_eq!(value, other, "{rel}: this reader and PyYAML disagree"),
        None => eprintln!("note: python3 with PyYAML not found; {rel} checked by the built-in reader only"),
    }
    value
}

#[test]
fn the_yaml_reader_refuses_what_it_does_not_understand() {
    assert_eq!(
        parse_yaml("a:\n  - x\n  - k: v\n    n: 1\nb: [\"p\", q]\nc: { s: t }\nd:\n").unwrap(),
        json!({"a": ["x", {"k": "v", "n": 1}], "b": ["p", "q"], "c": {"s": "t"}, "d": null})
    );
    assert_eq!(parse_yaml("k: \"a # b\" # comment\nu: http://h:1/x\n").unwrap(), json!({"k": "a # b", "u": "http://h:1/x"}));
    for bad in
        ["a: 1\na: 2\n", "a:\n\t- x\n", "a: &x 1\n", "a: |\n  t\n", "a:\n  b: 1\n c: 2\n", "a: on\n", "a: 1.5\n", "a: [x\n", "- a\nb: 1\n"]
    {
        assert!(parse_yaml(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The compose demo

const COMPOSE: &str = "deploy/compose/docker-compose.yml";
const COMPOSE_TOML: &str = "deploy/compose/sitesync.toml";

fn compose_config() -> Config {
    Config::from_toml(&read(COMPOSE_TOML), Path::new(COMPOSE_TOML), &|_| Some("x".into())).unwrap_or_else(|e| panic!("{e}"))
}

fn str_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(|i| i.as_str().expect("a list of strings").to_string()).collect(),
        Value::String(s) => vec![s.clone()],
        Value::Null => vec![],
        other => panic!("expected a list, found {other}"),
    }
}

/// `environment:` as a map, whichever of its two forms is used.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let s = i.as_str().unwrap();
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The value Compose substitutes for `${NAME:-default}` when NAME is not set.
fn compose_default(value: &str) -> String {
    match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')).and_then(|v| v.split_once(":-")) {
        Some((_, default)) => default.to_string(),
        None => value.to_string(),
    }
}

fn services_by_image<'a>(services: &'a Map<String, Value>, prefix: &str) -> Vec<(&'a String, &'a Value)> {
    services.iter().filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with(prefix))).collect()
}

#[test]
fn compose_file_parses_and_names_the_demo_services() {
    let compose = yaml_file(COMPOSE);
    let services = compose["services"].as_object().expect("services: a mapping");
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for expected in ["mysql-campus-a", "mysql-campus-b", "kafka", "sitesync-campus-a", "sitesync-campus-b", "prometheus", "grafana"] {
        assert!(names.contains(&expected), "service {expected} missing; services: {names:?}");
    }
    assert_eq!(services_by_image(services, "mysql:8.0").len(), 2, "two MySQL 8.0 servers");
    assert_eq!(services_by_image(services, "apache/kafka:").len(), 1, "one Apache Kafka");
    assert_eq!(services_by_image(services, "prom/prometheus:").len(), 1);
    assert_eq!(services_by_image(services, "grafana/grafana").len(), 1);
    let sitesync: Vec<_> = services.iter().filter(|(_, s)| !s["build"].is_null()).collect();
    assert_eq!(sitesync.len(), 2, "two sitesync services built from the Dockerfile");

    // Every bind-mounted file or folder exists (paths relative to the compose file).
    let base = repo_path("deploy/compose");
    for (name, service) in services {
        for volume in str_list(&service["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(base.join(source).exists(), "{name}: volume source {source} does not exist");
            }
        }
        // Every service a service waits for exists.
        let deps: Vec<String> = match &service["depends_on"] {
            Value::Object(m) => m.keys().cloned().collect(),
            other => str_list(other),
        };
        for dep in deps {
            assert!(services.contains_key(&dep), "{name} depends on unknown service {dep}");
        }
    }
    for (name, service) in &sitesync {
        let context = base.join(service["build"]["context"].as_str().unwrap());
        let dockerfile = context.join(service["build"]["dockerfile"].as_str().unwrap());
        assert!(dockerfile.is_file(), "{name}: {} is not a file", dockerfile.display());
        assert_eq!(
            std::fs::canonicalize(&context).unwrap(),
            std::fs::canonicalize(repo_path(".")).unwrap(),
            "{name}: build from the repository root"
        );
    }
}

#[test]
fn compose_servers_have_the_settings_sitesync_check_wants() {
    let compose = yaml_file(COMPOSE);
    let services = compose["services"].as_object().unwrap();
    let mut server_ids = BTreeSet::new();
    for (name, mysql) in services_by_image(services, "mysql:") {
        let args = str_list(&mysql["command"]);
        for wanted in [
            "--log-bin",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            "--gtid-mode=ON",
            "--enforce-gtid-consistency=ON",
        ] {
            assert!(args.iter().any(|a| a == wanted || a.starts_with(&format!("{wanted}="))), "{name}: {wanted} missing from {args:?}");
        }
        let id = args.iter().find_map(|a| a.strip_prefix("--server-id=")).unwrap_or_else(|| panic!("{name}: no --server-id"));
        assert!(server_ids.insert(id.parse::<u32>().unwrap()), "{name}: server id {id} used twice");
        let env = environment(mysql);
        assert_eq!(env.get("MYSQL_DATABASE").map(String::as_str), Some("lims"));
        assert!(
            str_list(&mysql["volumes"]).iter().any(|v| v.starts_with("./initdb:/docker-entrypoint-initdb.d")),
            "{name}: initdb not mounted"
        );
    }
    let kafka = &services["kafka"];
    let env = environment(kafka);
    assert!(
        env["KAFKA_PROCESS_ROLES"].contains("controller") && env["KAFKA_PROCESS_ROLES"].contains("broker"),
        "KRaft: one node both broker and controller"
    );
    let config = compose_config();
    let bootstrap = &config.kafka.bootstrap_servers;
    let advertised = &env["KAFKA_ADVERTISED_LISTENERS"];
    assert!(
        advertised.ends_with(&format!("//{bootstrap}")) || advertised.contains(&format!("//{bootstrap},")),
        "kafka.bootstrap_servers {bootstrap} is not advertised ({advertised})"
    );
    // The binlog client ids of the sites differ from the servers' own.
    for (id, site) in &config.sites {
        assert!(!server_ids.contains(&site.server_id), "sites.{id}.server_id {} is also a server's --server-id", site.server_id);
    }
    // The LIMS schema of the demo is the test fixture's.
    let initdb = read("deploy/compose/initdb/01-lims.sql");
    assert!(initdb.contains(read("tests/fixtures/lims.sql").trim()), "initdb/01-lims.sql no longer matches tests/fixtures/lims.sql");
}

#[test]
fn compose_sitesync_services_match_the_federation_file() {
    let compose = yaml_file(COMPOSE);
    let services = compose["services"].as_object().unwrap();
    let config = compose_config();
    let text = read(COMPOSE_TOML);
    let variables: BTreeSet<String> = text.split("${").skip(1).map(|s| s.split('}').next().unwrap().to_string()).collect();
    assert!(!variables.is_empty());

    let mut sites_seen = BTreeSet::new();
    let prometheus = yaml_file("deploy/compose/prometheus.yml");
    let targets: Vec<(String, String)> = prometheus["scrape_configs"][0]["static_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|sc| str_list(&sc["targets"]).into_iter().map(move |t| (t, sc["labels"]["site"].as_str().unwrap().to_string())))
        .collect();
    for (name, service) in services.iter().filter(|(_, s)| !s["build"].is_null()) {
        let env = environment(service);
        let site = env.get("SITESYNC_SITE").unwrap_or_else(|| panic!("{name}: no SITESYNC_SITE"));
        let site_cfg = config.site(site).unwrap_or_else(|e| panic!("{name}: {e}"));
        sites_seen.insert(site.clone());
        // The file in the container is the compose sitesync.toml.
        let config_path = &env["SITESYNC_CONFIG"];
        assert!(
            str_list(&service["volumes"]).contains(&format!("./sitesync.toml:{config_path}:ro")),
            "{name}: sitesync.toml not mounted at {config_path}"
        );
        // Every ${VAR} of the file is set (sitesync expands all of them at start), with the
        // same default as the MySQL container that creates the user.
        for var in &variables {
            assert!(env.contains_key(var), "{name}: {var} is not set; sitesync would not start");
        }
        let url = site_cfg.mysql.expose();
        let host = url.split('@').nth(1).unwrap().split(':').next().unwrap();
        let mysql = services.get(host).unwrap_or_else(|| panic!("sites.{site}.mysql names host {host}, which is no service"));
        let password_var = variables
            .iter()
            .find(|v| text.contains(&format!("${{{v}}}@{host}:")))
            .unwrap_or_else(|| panic!("no password variable in the URL of {host}"));
        assert_eq!(
            compose_default(&environment(mysql)["SITESYNC_PASSWORD"]),
            compose_default(&env[password_var]),
            "{name}: password of {host} differs from the one its user is created with"
        );
        let deps = service["depends_on"].as_object().expect("depends_on with conditions");
        assert_eq!(deps[host]["condition"], "service_healthy", "{name}: waits for {host}");
        assert_eq!(deps["kafka"]["condition"], "service_healthy", "{name}: waits for kafka");
        // Runs init, then run as the container's main process; stops on SIGTERM with time to drain.
        let command = str_list(&service["command"]).join(" ");
        assert!(command.contains("sitesync init") && command.contains("exec sitesync run"), "{name}: {command}");
        assert_eq!(service["stop_signal"], "SIGTERM");
        // Prometheus scrapes it at its listen port under its site id.
        let port = site_cfg.listen.expect("listen set").port();
        assert!(
            targets.contains(&(format!("{name}:{port}"), site.clone())),
            "{name}: no Prometheus target {name}:{port} with site={site} in {targets:?}"
        );
        assert!(
            str_list(&service["healthcheck"]["test"]).iter().any(|t| t.contains(&format!(":{port}/readyz"))),
            "{name}: health check is not /readyz on {port}"
        );
    }
    assert_eq!(sites_seen, config.sites.keys().cloned().collect(), "one sitesync service per site");

    // Prometheus gets the alert rules, Grafana the dashboard.
    let prom = services_by_image(services, "prom/prometheus:")[0].1;
    assert!(str_list(&prom["volumes"]).iter().any(|v| v.starts_with("../prometheus/alerts.yml:")));
    assert_eq!(str_list(&prometheus["rule_files"]), vec!["alerts.yml".to_string()]);
    let grafana = services_by_image(services, "grafana/grafana")[0].1;
    let mounts = str_list(&grafana["volumes"]);
    let dashboard = mounts.iter().find(|v| v.starts_with("../../grafana/sitesync.json:")).expect("dashboard mounted");
    let dashboard_dir = Path::new(dashboard.split(':').nth(1).unwrap()).parent().unwrap().to_str().unwrap().to_string();
    let provider = yaml_file("deploy/compose/grafana/provisioning/dashboards/sitesync.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"],
        dashboard_dir.as_str(),
        "dashboard provider reads where the dashboard is mounted"
    );
    let datasource = yaml_file("deploy/compose/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasource["datasources"][0]["type"], "prometheus");
    assert_eq!(datasource["datasources"][0]["isDefault"], true, "the dashboard's DS_PROMETHEUS picks the default data source");
}

#[test]
fn compose_federation_file_loads_and_has_the_layout_of_the_examples() {
    let config = compose_config();
    assert_eq!(config.sites.len(), 2);
    let keys = |text: &str, path: &[&str]| -> BTreeSet<String> {
        let mut v: toml::Value = toml::from_str(text).unwrap();
        for p in path {
            v = v[p].clone();
        }
        v.as_table().unwrap().keys().cloned().collect()
    };
    let ours = read(COMPOSE_TOML);
    let example = read("config/shandong.toml");
    assert_eq!(keys(&ours, &[]), keys(&example, &[]), "top-level keys");
    assert_eq!(keys(&ours, &["federation"]), keys(&example, &["federation"]), "[federation] keys");
    assert_eq!(keys(&ours, &["kafka"]), keys(&example, &["kafka"]), "[kafka] keys");
    let example_sites: Vec<BTreeSet<String>> = keys(&example, &["sites"]).iter().map(|s| keys(&example, &["sites", s])).collect();
    for site in keys(&ours, &["sites"]) {
        for example_site in &example_sites {
            assert_eq!(&keys(&ours, &["sites", &site]), example_site, "[sites.{site}] keys");
        }
    }
    // Every configured table is in the LIMS schema the demo creates.
    let schema = read("deploy/compose/initdb/01-lims.sql");
    for (name, entity) in &config.entities {
        let table = &entity.table;
        assert!(
            schema.contains(&format!("CREATE TABLE `{table}`")) || schema.contains(&format!("CREATE TABLE {table} ")),
            "entities.{name}: table {table} not in initdb/01-lims.sql"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// systemd and supervisor

/// `key=value` lines of an INI-style file, by section, in order.
fn ini(text: &str, comment: &[char]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(comment) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
        out.entry(section.clone()).or_default().push((k.trim().to_string(), v.trim().to_string()));
    }
    out
}

fn get<'a>(section: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    section.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

/// Parses a command line with sitesync's own parser (argv[0] is the program).
fn sitesync_cli(command: &str) -> Cli {
    let args: Vec<&str> = command.split_whitespace().collect();
    assert!(args[0].ends_with("/sitesync"), "runs {} rather than sitesync", args[0]);
    Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("sitesync does not accept `{command}`: {e}"))
}

/// The `${VAR}`s of a federation file: every one must be set wherever sitesync starts with it.
fn variables_of(rel: &str) -> BTreeSet<String> {
    read(rel).split("${").skip(1).map(|s| s.split('}').next().unwrap().to_string()).collect()
}

#[test]
fn systemd_unit_runs_one_site_with_its_environment_file() {
    let unit = ini(&read("deploy/systemd/sitesync@.service"), &['#', ';']);
    let service = &unit["Service"];
    let exec = get(service, "ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(exec[0].contains("--site %i") && exec[0].contains("--config /etc/sitesync/sitesync.toml"), "{}", exec[0]);
    let cli = sitesync_cli(&exec[0].replace("%i", "jinan"));
    assert!(matches!(cli.command, Command::Run), "ExecStart runs `sitesync run`");
    assert_eq!(cli.site.as_deref(), Some("jinan"));
    assert_eq!(cli.config, Path::new("/etc/sitesync/sitesync.toml"));
    assert_eq!(get(service, "EnvironmentFile"), vec!["/etc/sitesync/%i.env"]);
    for (key, value) in [
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "60"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
    ] {
        assert_eq!(get(service, key), vec![value], "{key}");
    }
    let user = get(service, "User");
    assert!(user.len() == 1 && user[0] != "root" && !user[0].is_empty(), "a dedicated user: {user:?}");
    assert!(unit["Install"].iter().any(|(k, v)| k == "WantedBy" && v == "multi-user.target"));
    let sysusers = read("deploy/systemd/sitesync.sysusers.conf");
    assert!(sysusers.lines().any(|l| l.starts_with(&format!("u {} ", user[0]))), "sitesync.sysusers.conf creates {}", user[0]);

    // The example environment file sets the password of the site and every other variable of
    // the federation file (sitesync expands them all at start): shown for config/shandong.toml.
    let env = read("deploy/systemd/site.env.example");
    let set: BTreeSet<String> = env
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().to_string())
        .collect();
    assert!(set.contains("SITESYNC_JINAN_PASSWORD"), "{set:?}");
    assert_eq!(
        variables_of("config/shandong.toml"),
        set.iter().filter(|v| v.ends_with("_PASSWORD")).cloned().collect(),
        "site.env.example: the variables of config/shandong.toml"
    );
}

#[test]
fn supervisor_program_runs_one_site_with_its_password() {
    let conf = ini(&read("deploy/supervisor/sitesync.conf"), &[';', '#']);
    let programs: Vec<&String> = conf.keys().filter(|s| s.starts_with("program:sitesync-")).collect();
    assert_eq!(programs.len(), 1, "{:?}", conf.keys());
    let site = programs[0].strip_prefix("program:sitesync-").unwrap();
    let program = &conf[programs[0]];
    let command = get(program, "command");
    assert_eq!(command.len(), 1);
    let cli = sitesync_cli(command[0]);
    assert!(matches!(cli.command, Command::Run), "command runs `sitesync run`");
    assert_eq!(cli.site.as_deref(), Some(site), "--site matches the program name");
    assert_eq!(cli.config, Path::new("/etc/sitesync/sitesync.toml"));
    let environment = get(program, "environment");
    assert_eq!(environment.len(), 1);
    let vars: BTreeSet<String> = environment[0].split(',').map(|kv| kv.split('=').next().unwrap().trim().to_string()).collect();
    assert!(vars.contains(&format!("SITESYNC_{}_PASSWORD", site.to_uppercase())), "{vars:?}");
    assert_eq!(vars, variables_of("config/shandong.toml"), "every variable of config/shandong.toml is set");
    for (key, value) in [("stopsignal", "TERM"), ("autorestart", "true"), ("user", "sitesync")] {
        assert_eq!(get(program, key), vec![value], "{key}");
    }
    let wait: u64 = get(program, "stopwaitsecs")[0].parse().unwrap();
    assert!(wait >= 30, "stopwaitsecs {wait}: give sitesync time to drain");
    for key in ["stdout_logfile", "stderr_logfile"] {
        assert!(get(program, key)[0].starts_with("/var/log/"), "{key}");
    }
}

// ---------------------------------------------------------------------------------------------
// The runbooks

const RUNBOOKS: [&str; 2] = ["deploy/runbook/README.md", "deploy/runbook/README.zh.md"];

/// Code in a Markdown text: the lines of fenced blocks and the inline `code` spans.
fn code_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            out.push(line.to_string());
        } else {
            out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        }
    }
    out
}

/// One `sitesync ...` invocation found in code: the command path and the options after it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Invocation {
    command: Vec<String>,
    options: Vec<String>,
}

/// Every `sitesync <command> ...` in the code of `text` (a lone `sitesync`, a path or the user
/// name is not an invocation); panics on a command or an option sitesync does not have.
fn invocations(rel: &str, text: &str) -> Vec<Invocation> {
    let root = Cli::command();
    let globals: BTreeMap<String, bool> = root
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| (format!("--{l}"), a.get_action().takes_values())))
        .chain([("--help".to_string(), false), ("-h".to_string(), false), ("--version".to_string(), false), ("-V".to_string(), false)])
        .collect();
    let mut found = Vec::new();
    for code in code_of(text) {
        let code = strip_comment(&code);
        let tokens: Vec<&str> = code.split_whitespace().collect();
        for (i, token) in tokens.iter().enumerate() {
            if *token != "sitesync" && !token.ends_with("/sitesync") {
                continue;
            }
            let ends = |t: &str| ["|", "||", "&&", ";", ")", "#", ">", "2>&1", "&"].contains(&t) || t.starts_with('>');
            // Usage notation (`[--entity E]...`) reads as the options it shows.
            let unbracket = |t: &str| t.trim_start_matches('[').trim_end_matches("...").trim_end_matches(']').to_string();
            let cleaned: Vec<String> = tokens[i + 1..].iter().copied().take_while(|t| !ends(t)).map(unbracket).collect();
            let mut rest = cleaned.iter().map(String::as_str).peekable();
            // Global options before the command.
            let mut options = Vec::new();
            while let Some(t) = rest.peek().copied().filter(|t| t.starts_with('-')) {
                let name = t.split('=').next().unwrap();
                let takes = *globals.get(name).unwrap_or_else(|| panic!("{rel}: `{code}`: sitesync has no global option {name}"));
                options.push(name.to_string());
                rest.next();
                if takes && !t.contains('=') {
                    rest.next();
                }
            }
            let Some(first) = rest.next() else {
                assert!(
                    options.iter().all(|o| ["--help", "-h", "--version", "-V"].contains(&o.as_str())),
                    "{rel}: `{code}`: options but no command"
                );
                continue;
            };
            if first.starts_with('<') {
                continue; // a synopsis: `sitesync [options] <command>`
            }
            if options.is_empty() && !first.chars().all(|c| c.is_ascii_lowercase()) {
                continue; // the binary as an argument: `install target/release/sitesync /usr/local/bin/`
            }
            let mut cmd =
                root.find_subcommand(first).unwrap_or_else(|| panic!("{rel}: `{code}`: sitesync has no command `{first}`")).clone();
            let mut path = vec![first.to_string()];
            if cmd.has_subcommands() {
                let Some(sub) = rest.next() else { panic!("{rel}: `{code}`: `sitesync {first}` needs a subcommand") };
                cmd = cmd.find_subcommand(sub).unwrap_or_else(|| panic!("{rel}: `{code}`: `sitesync {first}` has no `{sub}`")).clone();
                path.push(sub.to_string());
            }
            let own: BTreeMap<String, bool> =
                cmd.get_arguments().filter_map(|a| a.get_long().map(|l| (format!("--{l}"), a.get_action().takes_values()))).collect();
            let positionals = cmd.get_positionals().count();
            let mut seen_positionals = 0;
            while let Some(t) = rest.next() {
                if t.starts_with("--") || (t.starts_with('-') && t.len() == 2) {
                    let name = t.split('=').next().unwrap();
                    let takes = own
                        .get(name)
                        .or_else(|| globals.get(name))
                        .copied()
                        .unwrap_or_else(|| panic!("{rel}: `{code}`: `sitesync {}` has no option {name}", path.join(" ")));
                    options.push(name.to_string());
                    if takes && !t.contains('=') {
                        rest.next();
                    }
                } else {
                    seen_positionals += 1;
                    assert!(seen_positionals <= positionals, "{rel}: `{code}`: `sitesync {}` takes no argument `{t}`", path.join(" "));
                }
            }
            options.sort();
            options.dedup();
            found.push(Invocation { command: path, options });
        }
    }
    found
}

#[test]
fn runbooks_use_every_command_and_only_existing_ones() {
    let root = Cli::command();
    let mut wanted: Vec<Vec<String>> = Vec::new();
    for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
        if sub.has_subcommands() {
            for leaf in sub.get_subcommands().filter(|s| s.get_name() != "help") {
                wanted.push(vec![sub.get_name().to_string(), leaf.get_name().to_string()]);
            }
        } else {
            wanted.push(vec![sub.get_name().to_string()]);
        }
    }
    // The contract's commands are all there (a renamed command must update the runbooks).
    for name in ["check", "init", "run", "capture", "apply", "snapshot", "status", "verify"] {
        assert!(wanted.contains(&vec![name.to_string()]), "sitesync --help lacks {name}");
    }
    assert!(wanted.contains(&vec!["dlq".to_string(), "list".to_string()]) && wanted.contains(&vec!["dlq".to_string(), "drop".to_string()]));

    let mut per_book = Vec::new();
    for rel in RUNBOOKS {
        let text = read(rel);
        let found = invocations(rel, &text);
        for command in &wanted {
            assert!(found.iter().any(|f| &f.command == command), "{rel} never shows `sitesync {}`", command.join(" "));
        }
        // Every option of snapshot, verify, status and dlq list appears at least once.
        for command in &wanted {
            let mut cmd = root.clone();
            for part in command {
                cmd = cmd.find_subcommand(part).unwrap().clone();
            }
            for arg in cmd.get_arguments().filter(|a| !a.is_global_set()) {
                if let Some(long) = arg.get_long() {
                    let option = format!("--{long}");
                    assert!(
                        found.iter().any(|f| &f.command == command && f.options.contains(&option)),
                        "{rel} never shows `sitesync {} {option}`",
                        command.join(" ")
                    );
                }
            }
        }
        let set: BTreeSet<Invocation> = found.into_iter().collect();
        per_book.push((rel, set, text.lines().filter(|l| l.starts_with("## ")).count()));
    }
    // The Chinese runbook says the same as the English one: the same sections, the same commands.
    let (en, zh) = (&per_book[0], &per_book[1]);
    assert_eq!(en.2, zh.2, "{} and {} have different numbers of sections", en.0, zh.0);
    assert_eq!(en.1, zh.1, "{} and {} show different sitesync command lines", en.0, zh.0);
}

#[test]
fn the_runbook_scanner_catches_invented_commands_and_options() {
    let ok = invocations("t", "```sh\nsitesync --site a status --json   # fine\nuseradd --system sitesync\ninstall -m 0755 target/release/sitesync /usr/local/bin/sitesync\n```\nRun `sitesync dlq drop 3`, `sitesync verify [--entity E]... [--json]`, `sitesync [--site ID] <command>`.");
    assert_eq!(ok.len(), 3);
    assert_eq!(ok[2], Invocation { command: vec!["verify".into()], options: vec!["--entity".into(), "--json".into()] });
    for bad in
        ["`sitesync dlq redo 3`", "`sitesync snapshot --all`", "`sitesync restart`", "`sitesync --sites a run`", "`sitesync status extra`"]
    {
        let caught = std::panic::catch_unwind(|| invocations("t", bad)).is_err();
        assert!(caught, "accepted {bad}");
    }
    // DlqAction is what the runbooks' `dlq` lines are checked against.
    assert!(matches!(
        Cli::try_parse_from(["sitesync", "dlq", "drop", "1"]).unwrap().command,
        Command::Dlq { action: DlqAction::Drop { id: 1 } }
    ));
}
