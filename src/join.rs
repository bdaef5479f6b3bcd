//! `sitesync join`: a site new to the federation (or newly routed an entity) asks every origin
//! routed to it, through the control channel, for that origin's own history of the routed
//! entities. Each origin's running capture publishes it as a snapshot for this site alone
//! (records addressed `sitesync.to`: the other sites skip them, as they already hold them);
//! this site's applier merges it by natural key with what the site already has. No origin
//! database is opened from here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::channel::{self, Body, Channel};
use crate::config::Config;
use crate::control::{self, Control};
use crate::verify::{caught_up, Caught, VerifyError};

/// Where one origin's history for this site stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Joined {
    /// The origin.
    pub origin: String,
    /// `done` or `failed`, once over.
    pub status: String,
    /// Rows the origin published.
    pub rows: i64,
    /// What it said.
    pub message: Option<String>,
    /// This site's applier applied them.
    pub applied: bool,
}

/// Asks `from` (default: every origin routed to `site`) for their history of `entities`
/// (default: every entity routed), prints progress per origin, and waits until this site's
/// applier has applied it.
pub async fn join(config: &Config, site: &str, entities: &[String], from: &[String]) -> Result<Vec<Joined>, VerifyError> {
    for e in entities {
        if !config.entities.contains_key(e) {
            return Err(VerifyError::Config(format!("--entity {e}: no such entity in {}", config.path.display())));
        }
    }
    let origins_here = config.origins_of(site);
    for s in from {
        if !origins_here.contains(s) {
            return Err(VerifyError::Config(format!(
                "--from {s}: no route in {} carries anything from {s} to {site}",
                config.path.display()
            )));
        }
    }
    let origins = if from.is_empty() { origins_here } else { from.to_vec() };
    let url = config.site(site).map_err(|e| VerifyError::Config(e.to_string()))?.mysql.expose();
    let pool = control::connect(site, url, 2)
        .await
        .map_err(|e| VerifyError::Database { what: format!("connecting to site `{site}`"), message: e.to_string() })?;
    let ctl = Control::new(pool, &config.federation.control_database);
    let channel = Channel::open(config, site).await?;

    // One request per origin, for the entities routed from it.
    let mut asked: BTreeMap<String, String> = BTreeMap::new();
    let mut state: BTreeMap<String, Joined> = BTreeMap::new();
    for origin in &origins {
        let routed: Vec<String> = config
            .entities
            .keys()
            .filter(|e| config.routes_entity(origin, site, e) && (entities.is_empty() || entities.contains(e)))
            .cloned()
            .collect();
        if routed.is_empty() {
            continue;
        }
        let id = channel::request_id(site);
        channel.send(&id, origin, Body::SnapshotRequest { entities: routed.clone() }).await?;
        println!("asked {origin} for its history of {}", routed.join(", "));
        asked.insert(id, origin.clone());
        state.insert(origin.clone(), Joined { origin: origin.clone(), status: "asked".into(), rows: 0, message: None, applied: false });
    }

    // Progress until every origin is done; an origin silent for the timeout is named.
    let timeout = Duration::from_secs(config.verify.timeout_seconds.max(1));
    let started = Instant::now();
    let mut heard: BTreeMap<String, Instant> = state.keys().map(|o| (o.clone(), Instant::now())).collect();
    while state.values().any(|j| !matches!(j.status.as_str(), "done" | "failed")) {
        let message = channel.next(Duration::from_secs(1)).await?;
        if let Some(m) = message.filter(|m| asked.get(&m.id) == Some(&m.from)) {
            heard.insert(m.from.clone(), Instant::now());
            let j = state.get_mut(&m.from).expect("asked");
            match m.body {
                Body::SnapshotProgress { status, rows_done, rows_total, message, request } => {
                    println!(
                        "  {}: snapshot {request} {status}, {rows_done} of {rows_total} rows  [{:.0} s]",
                        m.from,
                        started.elapsed().as_secs_f64()
                    );
                    j.status = status;
                    j.rows = rows_done;
                    j.message = message;
                }
                Body::Failed { message } => {
                    println!("  {}: refused: {message}", m.from);
                    j.status = "failed".into();
                    j.message = Some(message);
                }
                _ => {}
            }
        }
        for (origin, at) in &heard {
            let j = &state[origin];
            if !matches!(j.status.as_str(), "done" | "failed") && at.elapsed() > timeout {
                return Err(VerifyError::Channel(crate::channel::ChannelError::Timeout {
                    site: origin.clone(),
                    seconds: timeout.as_secs(),
                    topic: channel.topic().to_string(),
                }));
            }
        }
    }

    // Applied here: the applier reached each origin's topic end after its snapshot ended.
    for j in state.values_mut().filter(|j| j.status == "done") {
        match caught_up(&channel, &ctl, &config.topic_of(&j.origin), timeout * 5).await? {
            Caught::Up => {
                j.applied = true;
                println!("  {}: applied here", j.origin);
            }
            Caught::Behind { applied, end } => {
                println!("  {}: this site's applier is still behind ({applied} of {end}): is `sitesync run` running here?", j.origin)
            }
        }
    }
    Ok(state.into_values().collect())
}
