//! Server settings that capture depends on, read once and judged in one place, so that
//! `sitesync check` and capture's own start-up refuse the same things with the same words.

use mysql_async::prelude::Queryable;

/// The settings of a source server that matter to capture.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    /// `VERSION()`.
    pub version: String,
    /// MariaDB rather than MySQL.
    pub mariadb: bool,
    /// `@@server_id`.
    pub server_id: u32,
    /// `@@log_bin`.
    pub log_bin: bool,
    /// `@@binlog_format`.
    pub binlog_format: String,
    /// `@@binlog_row_image`.
    pub binlog_row_image: String,
    /// `@@binlog_row_metadata` (empty when the server has no such variable).
    pub binlog_row_metadata: String,
    /// `@@log_bin_compress` (MariaDB).
    pub log_bin_compress: bool,
    /// `@@gtid_mode` (MySQL).
    pub gtid_mode: String,
    /// Current GTID position: `@@gtid_binlog_pos` (MariaDB) or `@@gtid_executed` (MySQL).
    pub gtid_position: String,
}

/// One judged setting.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Short name of the check.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, and on failure how to fix it.
    pub detail: String,
    /// Passed, but weaker than it should be in production (printed WARN; not a failure).
    pub warn: bool,
}

impl Finding {
    /// A check that passed; `detail` says what was found.
    pub fn pass(name: &str, detail: impl Into<String>) -> Self {
        Finding { name: name.into(), ok: true, detail: detail.into(), warn: false }
    }
    /// A check that passed but deserves attention; `detail` says why and what is better.
    pub fn warn(name: &str, detail: impl Into<String>) -> Self {
        Finding { name: name.into(), ok: true, detail: detail.into(), warn: true }
    }
    /// A check that failed; `detail` says what was found and how to fix it.
    pub fn fail(name: &str, detail: impl Into<String>) -> Self {
        Finding { name: name.into(), ok: false, detail: detail.into(), warn: false }
    }
}

async fn var(conn: &mut mysql_async::Conn, name: &str) -> Result<Option<String>, mysql_async::Error> {
    let row: Option<(String, Option<String>)> = conn.exec_first("SHOW GLOBAL VARIABLES WHERE Variable_name = ?", (name,)).await?;
    Ok(row.and_then(|(_, v)| v))
}

/// Reads the settings from a connected server.
pub async fn read_settings(conn: &mut mysql_async::Conn) -> Result<ServerSettings, mysql_async::Error> {
    let version: String = conn.query_first("SELECT VERSION()").await?.unwrap_or_default();
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let on = |v: Option<String>| v.is_some_and(|v| v.eq_ignore_ascii_case("ON") || v == "1");
    Ok(ServerSettings {
        mariadb,
        server_id: var(conn, "server_id").await?.and_then(|v| v.parse().ok()).unwrap_or(0),
        log_bin: on(var(conn, "log_bin").await?),
        binlog_format: var(conn, "binlog_format").await?.unwrap_or_default(),
        binlog_row_image: var(conn, "binlog_row_image").await?.unwrap_or_default(),
        binlog_row_metadata: var(conn, "binlog_row_metadata").await?.unwrap_or_default(),
        log_bin_compress: on(var(conn, "log_bin_compress").await?),
        gtid_mode: var(conn, "gtid_mode").await?.unwrap_or_default(),
        gtid_position: if mariadb {
            var(conn, "gtid_binlog_pos").await?.unwrap_or_default()
        } else {
            var(conn, "gtid_executed").await?.unwrap_or_default().replace('\n', "")
        },
        version,
    })
}

/// How to change a dynamic server variable now and keep it across restarts.
fn set_global(name: &str, value: &str) -> String {
    format!(
        "run SET GLOBAL {name} = '{value}' on the server (new sessions, capture's included, use it) \
         and put {name} = {value} under [mysqld] in the server's configuration so that it survives a restart"
    )
}

/// Judges the settings; every failure says how to fix it.
pub fn judge(s: &ServerSettings) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(if s.log_bin {
        Finding::pass("binlog", "log_bin=ON")
    } else {
        Finding::fail(
            "binlog",
            "log_bin is OFF: sitesync reads every change from the binary log; put log_bin = mysql-bin \
             (and a server_id of its own) under [mysqld] in the server's configuration and restart the server \
             (log_bin cannot be switched on at run time)",
        )
    });
    out.push(if s.binlog_format.eq_ignore_ascii_case("ROW") {
        Finding::pass("binlog_format", "ROW")
    } else {
        Finding::fail(
            "binlog_format",
            format!("is {}: sitesync needs row events (binlog_format=ROW); {}", s.binlog_format, set_global("binlog_format", "ROW")),
        )
    });
    out.push(if s.binlog_row_image.eq_ignore_ascii_case("FULL") {
        Finding::pass("binlog_row_image", "FULL")
    } else {
        Finding::fail(
            "binlog_row_image",
            format!(
                "is {}: updates and deletes would lose the columns they do not change, so natural keys, filters and \
                 refs could not be read; {}",
                s.binlog_row_image,
                set_global("binlog_row_image", "FULL")
            ),
        )
    });
    out.push(if s.binlog_row_metadata.eq_ignore_ascii_case("FULL") {
        Finding::pass("binlog_row_metadata", "FULL")
    } else if s.binlog_row_metadata.is_empty() {
        Finding::fail(
            "binlog_row_metadata",
            "the server has no binlog_row_metadata setting (MariaDB before 10.5, MySQL before 8.0.1): column names \
             cannot travel with the rows; upgrade the server to MariaDB 10.5+ or MySQL 8.0+",
        )
    } else {
        Finding::fail(
            "binlog_row_metadata",
            format!(
                "is {}: column names must travel with every row (binlog_row_metadata=FULL); {}",
                s.binlog_row_metadata,
                set_global("binlog_row_metadata", "FULL")
            ),
        )
    });
    if s.mariadb {
        out.push(if !s.log_bin_compress {
            Finding::pass("log_bin_compress", "OFF")
        } else {
            Finding::fail(
                "log_bin_compress",
                format!("is ON: compressed binlog events cannot be read; {}", set_global("log_bin_compress", "OFF")),
            )
        });
        out.push(Finding::pass("gtid", format!("MariaDB GTIDs, current position `{}`", s.gtid_position)));
    } else {
        out.push(if s.gtid_mode.eq_ignore_ascii_case("ON") {
            Finding::pass("gtid_mode", "ON")
        } else {
            Finding::fail(
                "gtid_mode",
                format!(
                    "is {}: sitesync resumes by GTID; set enforce_gtid_consistency = ON and gtid_mode = ON under [mysqld] \
                     (on a running server: SET GLOBAL enforce_gtid_consistency = ON, then step gtid_mode through \
                     OFF_PERMISSIVE and ON_PERMISSIVE to ON)",
                    s.gtid_mode
                ),
            )
        });
    }
    out
}
