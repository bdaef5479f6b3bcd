//! `sitesync check`: every precondition of `sitesync run` at one site, each judged PASS or FAIL,
//! and every FAIL says how to fix it. Exit code 1 on any FAIL.
//!
//! What is checked: the database answers; the server settings capture depends on
//! ([`crate::preflight::judge`], the same words capture refuses to start with); the binlog
//! client id (`sites.<site>.server_id`) differs from the server's own and from every binlog
//! reader already connected; the grants; the configured tables exist; their text columns' character sets can be carried
//! exactly; the control tables
//! exist; Kafka answers within a few seconds; the site topics exist.
//!
//! Nothing here prints the connection URL or the password: a connection is described by host,
//! port and user only.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use mysql_async::prelude::Queryable;

use crate::config::Config;
use crate::control::{self, Control};
use crate::kafka;
use crate::mysql::charset::{self, TextEncoding};
use crate::mysql::dsn::{self, Dsn, Encryption, SslMode};
use crate::preflight::{self, Finding};

/// How long Kafka may take to answer a metadata request.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the database may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long all database checks together may take.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(30);

/// `sitesync check`: prints one PASS/FAIL line per check and a summary; exit 1 on any FAIL.
pub async fn run(config: &Config, site: &str) -> Result<ExitCode> {
    let findings = findings(config, site).await;
    let failed = findings.iter().filter(|f| !f.ok).count();
    for f in &findings {
        println!(
            "{} {}: {}",
            if !f.ok {
                "FAIL"
            } else if f.warn {
                "WARN"
            } else {
                "PASS"
            },
            f.name,
            f.detail
        );
    }
    println!("{} checks, {} failed", findings.len(), failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Every check for `site`, in the order they are printed.
pub async fn findings(config: &Config, site: &str) -> Vec<Finding> {
    let mut out = vec![Finding::pass("config", format!("{} is valid", config.path.display()))];

    // Kafka answers (or not) while the database is checked.
    let origins = config.origins_of(site);
    let mut topics = vec![config.topic_of(site)];
    topics.extend(origins.iter().map(|o| config.topic_of(o)));
    topics.push(config.heartbeat_topic_of(site));
    topics.extend(origins.iter().map(|o| config.heartbeat_topic_of(o)));
    topics.push(config.control_topic());
    topics.extend(config.export_topics_of(site));
    let kafka_cfg = config.kafka.clone();
    let kafka_task = tokio::task::spawn_blocking(move || kafka::topic_states(&kafka_cfg, &topics, KAFKA_TIMEOUT));

    match tokio::time::timeout(DATABASE_TIMEOUT, database_findings(config, site)).await {
        Ok(found) => out.extend(found),
        Err(_) => out.push(Finding::fail(
            "database",
            format!(
                "no answer within {} s: check that the server of sites.{site}.mysql runs and is not overloaded",
                DATABASE_TIMEOUT.as_secs()
            ),
        )),
    }

    out.push(kafka_transport(config));
    out.extend(console_exposure(config, site));
    match kafka_task.await {
        Err(e) => out.push(Finding::fail("kafka", format!("the metadata request failed: {e}"))),
        Ok(Err(kafka::TransportError::Refused { refusal, .. })) => {
            out.push(Finding::fail("kafka", format!("{} at {}", refusal, config.kafka.bootstrap_servers)))
        }
        Ok(Err(e)) => out.push(Finding::fail(
            "kafka",
            format!(
                "no answer from {} within {} s ({e}): check kafka.bootstrap_servers and kafka.properties (TLS, SASL), \
                 that the brokers run, and that this host can reach them",
                config.kafka.bootstrap_servers,
                KAFKA_TIMEOUT.as_secs()
            ),
        )),
        Ok(Ok(found)) => {
            out.push(Finding::pass("kafka", format!("reachable at {}", config.kafka.bootstrap_servers)));
            let acls = kafka::acls(config, site);
            let principal = kafka::principal(&config.kafka);
            for (topic, state) in found {
                let whose = if topic == config.topic_of(site) {
                    "this site's changes"
                } else if topic == config.heartbeat_topic_of(site) {
                    "this site's capture heartbeats"
                } else if topic.ends_with(".heartbeat") {
                    "heartbeats of an origin"
                } else if topic == config.control_topic() {
                    "verify requests and answers between sites"
                } else if topic.starts_with(&format!("{}.export.", config.federation.topic_prefix)) {
                    "this site's export stream for Kafka Connect"
                } else {
                    "changes applied here"
                };
                match state {
                    kafka::TopicState::Present(n) => out.push(Finding::pass("topic", format!("{topic} ({n} partition(s), {whose})"))),
                    kafka::TopicState::Missing => out.push(Finding::fail(
                        "topic",
                        format!("{topic} ({whose}) does not exist: run `sitesync init` (it creates every site's topic)"),
                    )),
                    kafka::TopicState::Refused(code) => {
                        let grant = acls
                            .iter()
                            .find(|a| a.resource == "topic" && a.name == topic)
                            .map(|a| a.command(&config.kafka.bootstrap_servers, &principal))
                            .unwrap_or_default();
                        out.push(Finding::fail(
                            "topic",
                            format!("{topic} ({whose}): Kafka's ACLs do not let {principal} see it ({code}); grant: {grant}"),
                        ))
                    }
                }
            }
        }
    }
    out
}

/// Who reaches the console on `listen`: its pages show dead letters' rows (people's names) to
/// anyone who reaches the address, and its actions need the operator token.
fn console_exposure(config: &Config, site: &str) -> Option<Finding> {
    let listen = config.sites[site].listen?;
    let actions =
        if config.console.operator_token.is_some() { "actions need the operator token" } else { "read-only (no [console] operator_token)" };
    Some(if listen.ip().is_loopback() {
        Finding::pass("console", format!("http://{listen}/console/ on this host only, {actions}"))
    } else {
        Finding::warn(
            "console",
            format!(
                "http://{listen}/console/ is reachable beyond this host without TLS: its pages show dead letters' rows to \
                 anyone who reaches it and its sign-in crosses the network in clear; {actions}. Listen on 127.0.0.1 and \
                 reach it through an SSH tunnel or a TLS reverse proxy (runbook: operator console)"
            ),
        )
    })
}

/// Whether the connection to Kafka is encrypted: a WARN for PLAINTEXT across the network.
fn kafka_transport(config: &Config) -> Finding {
    let protocol = config.kafka.properties.get("security.protocol").cloned().unwrap_or_else(|| "PLAINTEXT".into());
    match kafka::plaintext_across_network(&config.kafka) {
        (true, true) => Finding::warn(
            "kafka security",
            format!(
                "security.protocol={protocol} to {}, not on this host: records (and any SASL/PLAIN password) cross the \
                 network unencrypted; set kafka.properties security.protocol = \"SASL_SSL\" (runbook: Kafka with SASL_SSL and ACLs)",
                config.kafka.bootstrap_servers
            ),
        ),
        (true, false) => Finding::pass("kafka security", format!("security.protocol={protocol}, brokers on this host only")),
        (false, _) => {
            let user = config.kafka.properties.get("sasl.username").map(|u| format!(" as {u}")).unwrap_or_default();
            let mechanism = config.kafka.properties.get("sasl.mechanism").map(|m| format!(", {m}")).unwrap_or_default();
            Finding::pass("kafka security", format!("security.protocol={protocol}{mechanism}{user}"))
        }
    }
}

/// `host:port as user` of a connection URL, for messages (never the URL itself: it holds the password).
fn describe(opts: &mysql_async::Opts) -> String {
    format!("{}:{} as user `{}`", opts.ip_or_hostname(), opts.tcp_port(), opts.user().unwrap_or(""))
}

async fn database_findings(config: &Config, site: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let site_cfg = &config.sites[site];
    let app_db = config.database_of(site);
    let control_db = &config.federation.control_database;
    let dsn = match Dsn::parse(site_cfg.mysql.expose()) {
        Ok(dsn) => dsn,
        Err(e) => {
            out.push(Finding::fail(
                "database",
                format!(
                    "sites.{site}.mysql is not a usable URL ({e}): expected \
                     mysql://user:password@host:port/database[?ssl-mode=verify_identity&ssl-ca=/path/ca.pem]"
                ),
            ));
            return out;
        }
    };
    let target = dsn.async_plain().map(|o| describe(&o)).unwrap_or_default();
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, dsn::connect(&dsn)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) if is_tls_failure(&e) => {
            out.push(Finding::fail("database tls", tls_failure(&dsn, &target, &e)));
            return out;
        }
        Ok(Err(e)) => {
            out.push(Finding::fail(
                "database",
                format!(
                    "cannot connect to {target}: {e}: check sites.{site}.mysql (host, port, user, password, database) \
                     and that the server runs and accepts this user from this host"
                ),
            ));
            return out;
        }
        Err(_) => {
            out.push(Finding::fail(
                "database",
                format!(
                    "no answer from {target} within {} s: check the host and port in sites.{site}.mysql and the firewall",
                    CONNECT_TIMEOUT.as_secs()
                ),
            ));
            return out;
        }
    };
    out.push(Finding::pass("database", format!("connected to {target}")));
    out.push(match dsn::encryption(&mut conn).await {
        Ok(enc) => judge_tls("database tls", "binlog and snapshot connection", &dsn, &enc),
        Err(e) => Finding::fail("database tls", format!("cannot read Ssl_version: {e}")),
    });

    match preflight::read_settings(&mut conn).await {
        Ok(s) => {
            out.extend(preflight::judge(&s));
            let key = format!("sites.{site}.server_id");
            out.extend(judge_server_id(&mut conn, "server_id", &key, site_cfg.server_id, s.server_id, s.mariadb).await);
            if config.export.any_at(site) {
                // The export stream reads the binlog on a connection of its own.
                if let Some(id) = config.export.server_id(site_cfg.server_id) {
                    let key = format!("sites.{site}.server_id + [export] server_id_offset");
                    out.extend(judge_server_id(&mut conn, "export server_id", &key, id, s.server_id, s.mariadb).await);
                }
            }
        }
        Err(e) => out.push(Finding::fail("settings", format!("cannot read the server's variables: {e}"))),
    }

    let user: String = conn.query_first("SELECT CURRENT_USER()").await.ok().flatten().unwrap_or_default();
    let grantee = match user.rsplit_once('@') {
        Some((u, h)) => format!("'{u}'@'{h}'"),
        None => "<user>".to_string(),
    };
    let tables = relevant_tables(config, site);
    let grants_ok = match conn.query::<String, _>("SHOW GRANTS").await {
        Ok(grants) => {
            let found = judge_grants(&grants, app_db, control_db, &tables, &grantee);
            let ok = found.iter().find(|f| f.name == "grant control").map(|f| f.ok).unwrap_or(true);
            out.extend(found);
            ok
        }
        Err(e) => {
            out.push(Finding::fail("grants", format!("cannot read SHOW GRANTS: {e}")));
            true
        }
    };

    if !tables.is_empty() {
        let present: Vec<String> =
            conn.exec("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?", (app_db,)).await.unwrap_or_default();
        let db_exists: Option<String> =
            conn.exec_first("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", (app_db,)).await.ok().flatten();
        let missing: Vec<String> =
            tables.iter().filter(|(_, t)| !present.contains(t)).map(|(e, t)| format!("{t} (entities.{e})")).collect();
        out.push(if db_exists.is_none() {
            Finding::fail(
                "tables",
                format!(
                    "the application database `{app_db}` does not exist at this server (needed: {}): create it with the \
                     application's schema, or fix sites.{site}.database / federation.database",
                    missing.join(", ")
                ),
            )
        } else if missing.is_empty() {
            Finding::pass("tables", format!("{} configured table(s) present in `{app_db}`", tables.len()))
        } else {
            Finding::fail(
                "tables",
                format!(
                    "missing in `{app_db}`: {}: create them with the application's schema, or fix entities.<name>.table \
                     (and sites.{site}.database or federation.database)",
                    missing.join(", ")
                ),
            )
        });
    }
    if !tables.is_empty() {
        out.extend(judge_charsets(&mut conn, config, app_db, &tables).await);
    }
    let _ = conn.disconnect().await;

    if !grants_ok {
        out.push(Finding::fail(
            "control tables",
            format!("not visible to {grantee} without privileges on `{control_db}` (see grant control above)"),
        ));
        return out;
    }
    match control::connect(site, site_cfg.mysql.expose(), 1).await {
        Err(e) => out.push(Finding::fail("control tables", format!("cannot connect to {target}: {}", source_text(&e)))),
        Ok(pool) => {
            out.push(match pool_encryption(&pool).await {
                Ok(enc) => judge_tls("database tls (apply)", "apply and control connections", &dsn, &enc),
                Err(e) => Finding::fail("database tls (apply)", format!("cannot read Ssl_version: {}", source_text(&e))),
            });
            let ctl = Control::new(pool.clone(), control_db);
            out.push(match ctl.missing_tables().await {
                Ok(missing) if missing.is_empty() => Finding::pass("control tables", format!("present in `{control_db}`")),
                Ok(missing) => Finding::fail(
                    "control tables",
                    format!("missing in `{control_db}`: {}: run `sitesync init --site {site}`", missing.join(", ")),
                ),
                Err(e) => Finding::fail("control tables", format!("cannot list them: {}", source_text(&e))),
            });
            pool.close().await;
        }
    }
    out
}

/// Whether a connection failed in the TLS handshake or because TLS was asked and not offered.
fn is_tls_failure(e: &mysql_async::Error) -> bool {
    let text = source_text(e).to_ascii_lowercase();
    matches!(e, mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))
        || ["certificate", "tls", "ssl", "handshake"].iter().any(|w| text.contains(w))
}

/// A TLS failure, with what to change.
fn tls_failure(dsn: &Dsn, target: &str, e: &mysql_async::Error) -> String {
    let mode = dsn.tls.mode.as_str();
    if matches!(e, mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)) {
        return format!(
            "{target} offers no TLS but sites.<site>.mysql says ssl-mode={mode}: configure ssl_cert/ssl_key at the \
             server, or lower ssl-mode"
        );
    }
    let ca = dsn.tls.ca.as_ref().map(|p| format!("ssl-ca={}", p.display())).unwrap_or_else(|| "the system's roots".into());
    format!(
        "TLS to {target} failed with ssl-mode={mode}: {}: check that {ca} signed the server's certificate{}",
        source_text(e),
        if dsn.tls.mode == SslMode::VerifyIdentity {
            format!(" and that it names the host `{}` (or use ssl-mode=verify_ca)", dsn.host())
        } else {
            String::new()
        }
    )
}

/// What the server says about one connection's encryption, against what the URL asked for.
fn judge_tls(name: &str, which: &str, dsn: &Dsn, enc: &Encryption) -> Finding {
    let mode = dsn.tls.mode;
    if enc.version.is_empty() {
        return if mode.requires() {
            Finding::fail(name, format!("{which}: not encrypted although ssl-mode={}", mode.as_str()))
        } else if mode == SslMode::Disabled {
            Finding::warn(name, format!("{which}: not encrypted (ssl-mode=disabled)"))
        } else {
            Finding::warn(
                name,
                format!(
                    "{which}: not encrypted: the server offers no TLS (ssl-mode=preferred); across networks give the \
                     server a certificate and set ssl-mode=verify_identity&ssl-ca=..."
                ),
            )
        };
    }
    let how = format!("{which}: encrypted ({}, {})", enc.version, enc.cipher);
    if mode.verifies() {
        let what =
            if mode == SslMode::VerifyIdentity { "certificate and host name verified" } else { "certificate verified (not the host name)" };
        Finding::pass(name, format!("{how}, server {what} (ssl-mode={})", mode.as_str()))
    } else {
        Finding::warn(
            name,
            format!("{how}, server certificate NOT verified (ssl-mode={}): set ssl-mode=verify_identity and ssl-ca", mode.as_str()),
        )
    }
}

/// The encryption of a pooled (sqlx) connection.
async fn pool_encryption(pool: &sqlx::MySqlPool) -> Result<Encryption, sqlx::Error> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')").fetch_all(pool).await?;
    let get = |name: &str| rows.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    Ok(Encryption { version: get("Ssl_version"), cipher: get("Ssl_cipher") })
}

/// The error and its causes on one line.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Drivers often repeat their cause in their own message: say each part once.
        let part = s.to_string();
        if !text.contains(part.trim_end_matches(':')) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// `server_id`: the site's binlog client id must differ from the server's own and from every
/// binlog reader already connected (the server drops one of two readers with the same id).
async fn judge_server_id(
    conn: &mut mysql_async::Conn,
    name: &'static str,
    key: &str,
    ours: u32,
    servers: u32,
    mariadb: bool,
) -> Vec<Finding> {
    if ours == servers {
        return vec![Finding::fail(
            name,
            format!(
                "{key} = {ours} equals the server's own @@server_id: the server would refuse the binlog connection; \
                 set {key} to a number that neither the server nor any of its replicas uses"
            ),
        )];
    }
    let listing = if mariadb { "SHOW SLAVE HOSTS" } else { "SHOW REPLICAS" };
    match conn.query::<mysql_async::Row, _>(listing).await {
        Ok(rows) => {
            let column = |row: &mysql_async::Row, name: &str| -> Option<String> {
                let i = row.columns_ref().iter().position(|c| c.name_str().eq_ignore_ascii_case(name))?;
                match row.as_ref(i)? {
                    mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    mysql_async::Value::Int(n) => Some(n.to_string()),
                    mysql_async::Value::UInt(n) => Some(n.to_string()),
                    _ => None,
                }
            };
            let same: Vec<String> = rows
                .iter()
                .filter(|r| column(r, "Server_id").and_then(|v| v.parse::<u32>().ok()) == Some(ours))
                .map(|r| {
                    let host = column(r, "Host").filter(|h| !h.is_empty()).unwrap_or_else(|| "(no report_host)".into());
                    let port = column(r, "Port").unwrap_or_default();
                    format!("{host}:{port}")
                })
                .collect();
            if same.is_empty() {
                vec![Finding::pass(
                    name,
                    format!("{key} = {ours} differs from the server's {servers} and from its {} connected binlog reader(s)", rows.len()),
                )]
            } else {
                vec![Finding::fail(
                    name,
                    format!(
                        "a binlog reader with server_id {ours} is already connected ({listing}: {}): two readers with \
                         one id disconnect each other; if it is not this site's own running `sitesync run`/`capture`, \
                         set {key} to a number that no other replica or reader of this server uses",
                        same.join(", ")
                    ),
                )]
            }
        }
        Err(_) => {
            // Least privilege cannot list replicas (MariaDB: REPLICATION MASTER ADMIN).
            vec![Finding::pass(
                name,
                format!(
                    "{key} = {ours} differs from the server's {servers}; connected readers not listed ({listing} needs \
                     {}): make sure no other replica or reader uses {ours}",
                    if mariadb { "REPLICATION MASTER ADMIN" } else { "REPLICATION SLAVE" }
                ),
            )]
        }
    }
}

/// (entity, table) of every entity this site captures or applies, and of the entities they refer to.
fn relevant_tables(config: &Config, site: &str) -> Vec<(String, String)> {
    let mut names: Vec<&String> = config
        .entities
        .keys()
        .filter(|e| config.sites.keys().any(|other| config.routes_entity(site, other, e) || config.routes_entity(other, site, e)))
        .collect();
    let mut i = 0;
    while i < names.len() {
        for target in config.entities[names[i]].refs.values().map(|r| &r.entity) {
            if config.entities.contains_key(target) && !names.contains(&target) {
                names.push(target);
            }
        }
        i += 1;
    }
    names.sort();
    names.into_iter().map(|n| (n.clone(), config.entities[n].table.clone())).collect()
}

/// Every text column of a configured table (excluded ones aside) in a character set that
/// sitesync can carry exactly, learnt from this server where sitesync has no table of its own.
async fn judge_charsets(conn: &mut mysql_async::Conn, config: &Config, app_db: &str, tables: &[(String, String)]) -> Option<Finding> {
    let columns: Vec<(String, String, String)> = match conn
        .exec(
            "SELECT TABLE_NAME, COLUMN_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND CHARACTER_SET_NAME IS NOT NULL ORDER BY TABLE_NAME, ORDINAL_POSITION",
            (app_db,),
        )
        .await
    {
        Ok(c) => c,
        Err(e) => return Some(Finding::fail("character sets", format!("cannot read the columns of `{app_db}`: {e}"))),
    };
    let columns: Vec<(&str, String, String, String)> = columns
        .into_iter()
        .filter_map(|(table, column, charset)| {
            let (entity, _) = tables.iter().find(|(_, t)| *t == table)?;
            (!config.entities[entity].exclude.contains(&column)).then_some((entity.as_str(), table, column, charset))
        })
        .collect();
    if columns.is_empty() {
        return None;
    }
    let mut names: Vec<String> = columns.iter().map(|c| c.3.clone()).collect();
    names.sort();
    names.dedup();
    let encodings = match charset::load(conn, &names).await {
        Ok(e) => e,
        Err(e) => return Some(Finding::fail("character sets", e.to_string())),
    };
    let refused: Vec<String> = columns
        .iter()
        .filter(|c| encodings.get(&c.3).is_none_or(|e| *e == TextEncoding::Unsupported))
        .map(|(entity, table, column, cs)| format!("{table}.{column} ({cs}, entities.{entity})"))
        .collect();
    if !refused.is_empty() {
        return Some(Finding::fail(
            "character sets",
            format!(
                "sitesync cannot carry these columns' character sets exactly: {}: convert them \
                 (ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4) or list them in entities.<name>.exclude",
                refused.join(", ")
            ),
        ));
    }
    let described: Vec<String> = names
        .iter()
        .map(|n| match encodings[n] {
            TextEncoding::Table(t) => format!("{n} (learnt from the server: {} characters)", t.characters()),
            _ => n.clone(),
        })
        .collect();
    Some(Finding::pass("character sets", format!("{} text column(s) in {}", columns.len(), described.join(", "))))
}

/// Where a `SHOW GRANTS` line applies.
#[derive(Debug, PartialEq)]
enum Scope {
    Global,
    /// A database name or LIKE pattern (`\_` is a literal underscore).
    Database(String),
    Table(String, String),
    Other,
}

/// One identifier of a grant scope: `name`, `*`, or a bare word; returns it and the rest.
fn identifier(s: &str) -> Option<(String, &str)> {
    if let Some(rest) = s.strip_prefix('`') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '`' {
                if rest[i + 1..].starts_with('`') {
                    out.push('`');
                    chars.next();
                } else {
                    return Some((out, &rest[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let end = s.find(|c: char| c == '.' || c.is_whitespace()).unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

/// Parses `GRANT <privileges> ON <scope> TO ...` into upper-case privilege names and the scope.
fn parse_grant(line: &str) -> Option<(Vec<String>, Scope)> {
    let rest = line.trim().strip_prefix("GRANT ")?;
    // Privileges end at the " ON " that is outside parentheses (column lists).
    let mut depth = 0usize;
    let mut split = None;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ' ' if depth == 0 && rest[i..].starts_with(" ON ") => {
                split = Some(i);
                break;
            }
            _ => {}
        }
    }
    let split = split?;
    let mut privileges = Vec::new();
    let mut current = String::new();
    depth = 0;
    for c in rest[..split].chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                privileges.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        if depth == 0 && c != ')' {
            current.push(c);
        }
    }
    privileges.push(current);
    let privileges = privileges.iter().map(|p| p.trim().to_ascii_uppercase()).filter(|p| !p.is_empty()).collect();
    let scope_text = rest[split + 4..].trim_start();
    let scope_text = scope_text.strip_prefix("TABLE ").unwrap_or(scope_text);
    let scope = match identifier(scope_text) {
        Some((db, after)) => match after.strip_prefix('.').and_then(identifier) {
            Some((table, _)) if db == "*" && table == "*" => Scope::Global,
            Some((table, _)) if table == "*" => Scope::Database(db),
            Some((table, _)) => Scope::Table(db, table),
            None => Scope::Other,
        },
        None => Scope::Other,
    };
    Some((privileges, scope))
}

/// Whether database name `name` matches a grant's database pattern (LIKE, `\` escapes).
fn db_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('%') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('_') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Judges `SHOW GRANTS` lines against what sitesync needs (least privilege, see README):
/// REPLICATION SLAVE on `*.*`; SELECT, INSERT, UPDATE, DELETE on the application database (or
/// on each of `tables` in it); SELECT, INSERT, UPDATE, DELETE, CREATE on the control database.
/// Each failure names the missing privileges and the GRANT statement that adds them for `grantee`.
pub fn judge_grants(grants: &[String], app_db: &str, control_db: &str, tables: &[(String, String)], grantee: &str) -> Vec<Finding> {
    let parsed: Vec<(Vec<String>, Scope)> = grants.iter().filter_map(|g| parse_grant(g)).collect();
    let grants_on = |privilege: &str, db: Option<&str>, table: Option<&str>| {
        parsed.iter().any(|(privileges, scope)| {
            let applies = match scope {
                Scope::Global => true,
                Scope::Database(pattern) => db.is_some_and(|d| db_matches(pattern, d)),
                Scope::Table(d, t) => db == Some(d.as_str()) && table == Some(t.as_str()),
                Scope::Other => false,
            };
            applies
                && privileges.iter().any(|p| {
                    p == "ALL"
                        || p == "ALL PRIVILEGES"
                        || p == privilege
                        || (privilege == "REPLICATION SLAVE" && p == "REPLICATION REPLICA")
                })
        })
    };
    let on_db = |privilege: &str, db: &str, tables: &[(String, String)]| {
        grants_on(privilege, Some(db), None) || (!tables.is_empty() && tables.iter().all(|(_, t)| grants_on(privilege, Some(db), Some(t))))
    };
    let mut out = Vec::new();

    out.push(if grants_on("REPLICATION SLAVE", None, None) {
        Finding::pass("grant replication", "REPLICATION SLAVE on *.*")
    } else {
        Finding::fail(
            "grant replication",
            format!(
                "missing REPLICATION SLAVE on *.* (capture cannot read the binlog): \
                 GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {grantee}; (MariaDB 10.5+: also BINLOG MONITOR)"
            ),
        )
    });

    let needed = ["SELECT", "INSERT", "UPDATE", "DELETE"];
    let missing: Vec<&str> = needed.iter().copied().filter(|p| !on_db(p, app_db, tables)).collect();
    out.push(if missing.is_empty() {
        Finding::pass("grant application", format!("SELECT, INSERT, UPDATE, DELETE on `{app_db}`"))
    } else {
        Finding::fail(
            "grant application",
            format!(
                "missing {} on `{app_db}`.* (capture reads, apply writes the application's tables): \
                 GRANT SELECT, INSERT, UPDATE, DELETE ON `{app_db}`.* TO {grantee};",
                missing.join(", ")
            ),
        )
    });

    let needed = ["SELECT", "INSERT", "UPDATE", "DELETE", "CREATE"];
    let missing: Vec<&str> = needed.iter().copied().filter(|p| !on_db(p, control_db, &[])).collect();
    out.push(if missing.is_empty() {
        Finding::pass("grant control", format!("read, write and CREATE on `{control_db}`"))
    } else {
        Finding::fail(
            "grant control",
            format!(
                "missing {} on `{control_db}`.* (sitesync's own tables): GRANT ALL ON `{control_db}`.* TO {grantee};",
                missing.join(", ")
            ),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn failed(f: &[Finding]) -> Vec<&str> {
        f.iter().filter(|f| !f.ok).map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn a_console_beyond_this_host_is_a_warning_and_a_short_token_an_error() {
        let file = |listen: &str, console: &str| {
            format!(
                "[federation]\nname = \"f\"\ntopic_prefix = \"p\"\ndatabase = \"d\"\ncontrol_database = \"c\"\n[kafka]\nbootstrap_servers = \"k:9092\"\n\
                 [sites.a]\nmysql = \"mysql://u@h/d\"\nserver_id = 1\nlisten = \"{listen}\"\n{console}"
            )
        };
        let load = |text: String| Config::from_toml(&text, std::path::Path::new("f.toml"), &|_| Some("0123456789abcdef0123".into()));
        let local = load(file("127.0.0.1:9464", "")).unwrap();
        let f = console_exposure(&local, "a").unwrap();
        assert!(f.ok && !f.warn && f.detail.contains("read-only"), "{f:?}");
        let open = load(file("0.0.0.0:9464", "[console]\noperator_token = \"${T}\"\n")).unwrap();
        let f = console_exposure(&open, "a").unwrap();
        assert!(f.warn && f.detail.contains("beyond this host") && f.detail.contains("operator token"), "{f:?}");
        let short = load(file("127.0.0.1:9464", "[console]\noperator_token = \"short\"\n")).unwrap_err().to_string();
        assert!(short.contains("console.operator_token") && !short.contains("short\""), "{short}");
    }

    #[test]
    fn least_privilege_passes() {
        let g = lines(&[
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `sitesync`@`127.0.0.1` IDENTIFIED BY PASSWORD '*AB'",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON `lims`.* TO `sitesync`@`127.0.0.1`",
            "GRANT ALL PRIVILEGES ON `sitesync`.* TO `sitesync`@`127.0.0.1`",
        ]);
        assert!(failed(&judge_grants(&g, "lims", "sitesync", &[], "'sitesync'@'127.0.0.1'")).is_empty());
    }

    #[test]
    fn root_passes_and_missing_privileges_are_named() {
        let root = lines(&[
            "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION",
            "GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION",
        ]);
        assert!(failed(&judge_grants(&root, "lims", "sitesync", &[], "x")).is_empty());
        let some = lines(&[
            "GRANT USAGE ON *.* TO `u`@`%`",
            "GRANT SELECT ON `lims`.* TO `u`@`%`",
            "GRANT SELECT (`a`, `b`), INSERT ON `sitesync`.`t` TO `u`@`%`",
        ]);
        let f = judge_grants(&some, "lims", "sitesync", &[], "'u'@'%'");
        assert_eq!(failed(&f), vec!["grant replication", "grant application", "grant control"]);
        let app = f.iter().find(|f| f.name == "grant application").unwrap();
        assert!(app.detail.starts_with("missing INSERT, UPDATE, DELETE on `lims`.*"), "{}", app.detail);
        assert!(app.detail.contains("GRANT SELECT, INSERT, UPDATE, DELETE ON `lims`.* TO 'u'@'%';"));
    }

    #[test]
    fn patterns_and_table_grants() {
        let g = lines(&[
            "GRANT REPLICATION SLAVE ON *.* TO `u`@`%`",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON `li\\_%`.* TO `u`@`%`",
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON `ctl`.`a` TO `u`@`%`",
        ]);
        let f = judge_grants(&g, "li_ms", "ctl", &[], "u");
        assert_eq!(failed(&f), vec!["grant control"]);
        assert!(!db_matches("li\\_%", "lixms"));
        let t = lines(&[
            "GRANT REPLICATION REPLICA ON *.* TO u",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON `app`.`user` TO u",
            "GRANT ALL ON `c`.* TO u",
        ]);
        let tables = vec![("user".to_string(), "user".to_string())];
        assert!(failed(&judge_grants(&t, "app", "c", &tables, "u")).is_empty());
    }
}
