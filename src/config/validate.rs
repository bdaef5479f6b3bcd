//! Cross-field checks of a parsed file. Each returns problems naming the key; none stops early,
//! so a user fixes every mistake in one round.

use super::{Config, ConfigProblem, Filter, OnDelete};
use crate::mysql::ident::is_identifier;
use crate::mysql::schema::TableSchema;

/// Whether `name` can be used as a MySQL identifier inside backticks without escaping: the
/// control database's name, which sitesync writes into its statements as it is.
pub fn is_safe_identifier(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && !name.contains(['`', '\0', '\n', '\r']) && name.trim() == name
}

fn is_site_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) fn validate(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut problem = |key: String, message: String| problems.push(ConfigProblem { key, message });

    for (i, name) in config.export.entities.iter().enumerate() {
        if !config.entities.contains_key(name) {
            problem(format!("export.entities[{i}]"), format!("`{name}` is not an entity of this file"));
        }
    }
    for (i, site) in config.export.sites.iter().enumerate() {
        if !config.sites.contains_key(site) {
            problem(format!("export.sites[{i}]"), format!("`{site}` is not a site of this file"));
        }
    }
    if let Some(format) = config.export.format.as_deref().filter(|f| *f != "debezium-json") {
        problem("export.format".into(), format!("`{format}` is not a known format (\"debezium-json\")"));
    }
    if let Some(priority) = config.export.cpu_priority.as_deref().filter(|p| !matches!(*p, "low" | "normal")) {
        problem("export.cpu_priority".into(), format!("`{priority}` is not a priority (\"low\" or \"normal\")"));
    }
    if config.export.server_id_offset == Some(0) {
        problem("export.server_id_offset".into(), "must not be 0: the export stream would read the binlog with capture's own id".into());
    }
    for (id, site) in config.sites.iter().filter(|(id, _)| config.export.any_at(id)) {
        if id.len() > 57 {
            // capture_checkpoint.site is VARCHAR(64), and the export stream's row is `<site>*export`.
            problem(format!("sites.{id}"), "a site that exports needs an id of at most 57 characters".into());
        }
        match config.export.server_id(site.server_id) {
            None => problem(
                "export.server_id_offset".into(),
                format!("site `{id}`: server_id {} plus the offset does not fit a binlog client id (at most 4294967295)", site.server_id),
            ),
            Some(export_id) => {
                if let Some((other, _)) = config.sites.iter().find(|(_, s)| s.server_id == export_id) {
                    problem(
                        "export.server_id_offset".into(),
                        format!("site `{id}`'s export stream would read as server_id {export_id}, which is site `{other}`'s; choose another offset"),
                    );
                }
            }
        }
    }
    if let Some(token) = &config.console.operator_token {
        // A guessable token would let anyone who reaches `listen` replay or drop dead letters.
        if token.expose().chars().count() < 16 {
            problem("console.operator_token".into(), "is shorter than 16 characters; make one with `openssl rand -hex 24`".into());
        }
    }
    if let Some(interval) = &config.verify.interval {
        if let Err(e) = super::parse_duration(interval) {
            problem("verify.interval".into(), e);
        }
    }
    if config.verify.rows_per_second == 0 {
        problem("verify.rows_per_second".into(), "must be at least 1".into());
    }
    if config.verify.timeout_seconds == 0 {
        problem("verify.timeout_seconds".into(), "must be at least 1".into());
    }
    if config.verify.max_lag_seconds.is_nan() || config.verify.max_lag_seconds <= 0.0 {
        problem("verify.max_lag_seconds".into(), "must be a number of seconds above 0".into());
    }

    let fed = &config.federation;
    if fed.name.is_empty() {
        problem("federation.name".into(), "must not be empty".into());
    }
    if fed.topic_prefix.is_empty() || !fed.topic_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        problem(
            "federation.topic_prefix".into(),
            format!("`{}` is not a valid Kafka topic prefix (letters, digits, `.`, `_`, `-`)", fed.topic_prefix),
        );
    }
    if !is_identifier(&fed.database) {
        problem("federation.database".into(), format!("`{}` is not a valid database name", fed.database));
    }
    if !is_safe_identifier(&fed.control_database) {
        problem(
            "federation.control_database".into(),
            format!("`{}` is not a valid name for sitesync's control database (no backticks, quotes or line breaks)", fed.control_database),
        );
    }
    if fed.database == fed.control_database {
        problem(
            "federation.control_database".into(),
            "must differ from federation.database: sitesync never alters the application's database".into(),
        );
    }
    if config.kafka.bootstrap_servers.trim().is_empty() {
        problem("kafka.bootstrap_servers".into(), "must not be empty (host:port[,host:port])".into());
    }
    if config.kafka.partitions != 1 {
        problem(
            "kafka.partitions".into(),
            "must be 1: a site's transactions span several rows, and only one partition keeps them whole and in commit order".into(),
        );
    }

    if config.sites.is_empty() {
        problem("sites".into(), "at least one [sites.<id>] table is required".into());
    }
    let mut server_ids = std::collections::BTreeMap::new();
    let mut listens = std::collections::BTreeMap::new();
    for (id, site) in &config.sites {
        if !is_site_id(id) {
            problem(format!("sites.{id}"), "a site id may hold only letters, digits, `_` and `-`".into());
        }
        if !site.mysql.expose().starts_with("mysql://") {
            problem(format!("sites.{id}.mysql"), "expected a URL of the form mysql://user:password@host:port/db".into());
        }
        if site.server_id == 0 {
            problem(format!("sites.{id}.server_id"), "must be a non-zero binlog client id".into());
        }
        if let Some(other) = server_ids.insert(site.server_id, id) {
            problem(
                format!("sites.{id}.server_id"),
                format!("{} is also the server_id of site `{other}`; two binlog readers with one id disconnect each other", site.server_id),
            );
        }
        // Sites on one machine (a demo) must not share a loopback listen address; sites on
        // their own machines may all use the same one.
        if let Some(listen) = site.listen.filter(|l| l.ip().is_loopback()) {
            if let Some(other) = listens.insert(listen, id) {
                problem(format!("sites.{id}.listen"), format!("{listen} is also the listen address of site `{other}`"));
            }
        }
        if let Some(db) = &site.database {
            if !is_identifier(db) {
                problem(format!("sites.{id}.database"), format!("`{db}` is not a valid database name"));
            }
        }
    }

    let mut tables = std::collections::BTreeMap::new();
    for (name, entity) in &config.entities {
        let at = |k: &str| format!("entities.{name}.{k}");
        if !is_identifier(&entity.table) {
            problem(at("table"), format!("`{}` is not a valid table name", entity.table));
        }
        if let Some(other) = tables.insert(entity.table.as_str(), name) {
            problem(at("table"), format!("table `{}` is also entity `{other}`", entity.table));
        }
        for (i, col) in entity.key.iter().enumerate() {
            if !is_identifier(col) {
                problem(format!("{}[{i}]", at("key")), format!("`{col}` is not a valid column name"));
            }
            if entity.exclude.contains(col) {
                problem(at("exclude"), format!("`{col}` is part of the key and cannot be excluded"));
            }
        }
        for (i, col) in entity.exclude.iter().enumerate() {
            if !is_identifier(col) {
                problem(format!("{}[{i}]", at("exclude")), format!("`{col}` is not a valid column name"));
            }
        }
        if let Some(filter) = &entity.filter {
            match Filter::parse(filter) {
                Ok(f) => {
                    for col in f.columns() {
                        if entity.exclude.iter().any(|e| e == col) {
                            problem(at("filter"), format!("reads `{col}`, which is excluded; a filter may only read replicated columns"));
                        }
                    }
                }
                Err(e) => problem(at("filter"), format!("`{filter}`: {e}")),
            }
        }
        for (col, target) in &entity.refs {
            let target = &target.entity;
            if !is_identifier(col) {
                problem(format!("{}.{col}", at("refs")), format!("`{col}` is not a valid column name"));
            }
            if !config.entities.contains_key(target) {
                problem(
                    format!("{}.{col}", at("refs")),
                    format!(
                        "refers to entity `{target}`, which is not defined; defined entities: {}",
                        config.entities.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
            if entity.exclude.contains(col) {
                problem(format!("{}.{col}", at("refs")), format!("`{col}` is excluded and cannot also be a reference"));
            }
        }
        if let Some(conflict) = &entity.conflict {
            if !is_identifier(&conflict.version_column) || entity.exclude.contains(&conflict.version_column) {
                problem(at("conflict.version_column"), format!("`{}` must be a replicated (not excluded) column", conflict.version_column));
            }
        }
        if let OnDelete::Set(cols) = &entity.on_delete {
            if cols.is_empty() {
                problem(at("on_delete.set"), "names no column to set".into());
            }
            for col in cols.keys() {
                if !is_identifier(col) {
                    problem(format!("{}.{col}", at("on_delete.set")), format!("`{col}` is not a valid column name"));
                }
            }
        }
        if let Some(col) = &entity.origin_column {
            if !is_identifier(col) {
                problem(at("origin_column"), format!("`{col}` is not a valid column name"));
            }
        }
    }

    for (i, route) in config.routes.iter().enumerate() {
        for (field, list) in [("from", &route.from), ("to", &route.to)] {
            if list.is_empty() {
                problem(format!("routes[{i}].{field}"), "names no site (use \"*\" for all)".into());
            }
            for site in list {
                if site != "*" && !config.sites.contains_key(site) {
                    problem(
                        format!("routes[{i}].{field}"),
                        format!(
                            "names site `{site}`, which is not defined; defined sites: {}",
                            config.sites.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
        }
        if route.entities.is_empty() {
            problem(format!("routes[{i}].entities"), "names no entity".into());
        }
        for entity in &route.entities {
            if entity != "*" && !config.entities.contains_key(entity) {
                problem(
                    format!("routes[{i}].entities"),
                    format!(
                        "names entity `{entity}`, which is not defined; defined entities: {}",
                        config.entities.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }
    problems
}

/// Checks one entity against its table as it really is at a site (`None`: it does not exist):
/// every configured column must exist there. Capture and apply both check with it at start-up.
pub fn schema_problems(config: &super::Config, entity: &str, site: &str, table: Option<&TableSchema>) -> Vec<ConfigProblem> {
    let columns = table.map(TableSchema::column_names).unwrap_or_default();
    let primary_key: &[String] = table.map(|t| t.primary_key.as_slice()).unwrap_or_default();
    let Some(e) = config.entities.get(entity) else { return Vec::new() };
    let table = format!("{}.{}", config.database_of(site), e.table);
    let mut problems = Vec::new();
    if columns.is_empty() {
        problems.push(ConfigProblem {
            key: format!("entities.{entity}.table"),
            message: format!("table {table} does not exist at site `{site}`"),
        });
        return problems;
    }
    let mut missing = |key: String, col: &str| {
        if !columns.iter().any(|c| c == col) {
            problems.push(ConfigProblem {
                key,
                message: format!("column `{col}` does not exist in {table} at site `{site}`; columns: {}", columns.join(", ")),
            });
        }
    };
    for col in &e.key {
        missing(format!("entities.{entity}.key"), col);
    }
    for col in &e.exclude {
        missing(format!("entities.{entity}.exclude"), col);
    }
    for col in e.refs.keys() {
        missing(format!("entities.{entity}.refs.{col}"), col);
    }
    if let Some(c) = &e.conflict {
        missing(format!("entities.{entity}.conflict.version_column"), &c.version_column);
    }
    if let Some(c) = &e.origin_column {
        missing(format!("entities.{entity}.origin_column"), c);
    }
    if let super::OnDelete::Set(values) = &e.on_delete {
        for col in values.keys() {
            missing(format!("entities.{entity}.on_delete.set.{col}"), col);
        }
    }
    if let Some(f) = e.filter.as_deref().and_then(|f| Filter::parse(f).ok()) {
        for col in f.columns() {
            missing(format!("entities.{entity}.filter"), col);
        }
    }
    for col in &e.exclude {
        if primary_key.contains(col) {
            problems.push(ConfigProblem {
                key: format!("entities.{entity}.exclude"),
                message: format!("`{col}` is part of the primary key of {table} and cannot be excluded (rows are read in key order, and a natural-key entity never copies ids anyway)"),
            });
        }
    }
    if e.key.is_empty() && primary_key.is_empty() {
        problems.push(ConfigProblem {
            key: format!("entities.{entity}.key"),
            message: format!(
                "table {table} has no primary key at site `{site}`: set `key` to the columns that identify a row at every site"
            ),
        });
    }
    problems
}
