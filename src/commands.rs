//! One function per command; the binary only parses and dispatches.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use crate::cli::{Cli, Command, DlqAction};
use crate::config::Config;
use crate::control::{self, Control};
use crate::shutdown::Shutdown;
use crate::telemetry::{Health, Metrics};
use crate::{apply, capture, kafka, preflight, telemetry};

/// Runs the command `cli` names.
pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let config = Arc::new(Config::load(&cli.config)?);
    let site = cli.site.clone().ok_or_else(|| {
        anyhow!(
            "--site (or SITESYNC_SITE) is required; sites in {}: {}",
            cli.config.display(),
            config.sites.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    config.site(&site)?;
    match cli.command {
        Command::Check => check(&config, &site).await,
        Command::Init { reset_position } => init(&config, &site, reset_position).await,
        Command::Run => run(config, site, true, true).await,
        Command::Capture => run(config, site, true, false).await,
        Command::Apply => run(config, site, false, true).await,
        Command::Status { json } => status(&config, &site, json).await,
        Command::Dlq { action } => dlq(&config, &site, action).await,
        Command::Snapshot { entities, no_wait, export } => snapshot(&config, &site, &entities, no_wait, export).await,
        Command::Resume { entities } => resume(&config, &site, &entities).await,
        Command::Join { entities, from } => join(&config, &site, &entities, &from).await,
        Command::Forget { departed } => forget(&config, &site, &departed).await,
        Command::Verify { entities, against, repair, direct, json } => {
            let options = crate::verify::Options { entities, against, repair };
            if direct {
                verify_direct(&config, &site, &options, json).await
            } else {
                verify(&config, &site, &options, json).await
            }
        }
    }
}

async fn control_of(config: &Config, site: &str) -> Result<Control> {
    let pool = control::connect(site, config.sites[site].mysql.expose(), 2).await?;
    Ok(Control::new(pool, &config.federation.control_database))
}

/// `sitesync init`: control tables, topics, and the capture's starting position.
async fn init(config: &Config, site: &str, reset_position: bool) -> Result<ExitCode> {
    let ctl = control_of(config, site).await?;
    ctl.init().await?;
    println!("control tables ready in `{}`", ctl.database());
    // Every site's topics where this site's Kafka user may create them (a shared cluster's
    // ACLs usually let a site create only its own: the others' inits make theirs).
    let mut own = vec![config.topic_of(site), config.heartbeat_topic_of(site), config.control_topic()];
    let exports = config.export_topics_of(site);
    own.extend(exports.iter().cloned());
    let topics: Vec<String> = config.sites.keys().map(|s| config.topic_of(s)).collect();
    let heartbeats: Vec<String> = config.sites.keys().map(|s| config.heartbeat_topic_of(s)).collect();
    // Requests and answers between sites: a day is plenty (a request is answered in minutes).
    // Export topics (`[export]`) are this site's only, kept like its replication topic.
    for (group, retention_ms) in [(topics, -1), (heartbeats, 3_600_000), (vec![config.control_topic()], 86_400_000), (exports, -1)] {
        if group.is_empty() {
            continue;
        }
        let mut refused_own = Vec::new();
        for (topic, state) in kafka::create_topics(&config.kafka, &group, retention_ms).await? {
            if state != "refused" {
                println!("topic {topic}: {state}");
            } else if own.contains(&topic) {
                refused_own.push(topic);
            } else {
                println!("topic {topic}: missing, and this site's Kafka user may not create it: its own site's `sitesync init` does");
            }
        }
        if !refused_own.is_empty() {
            return Err(kafka::creation_refused(&config.kafka, &refused_own, retention_ms).into());
        }
    }
    if reset_position || ctl.load_checkpoint(site).await?.is_none() {
        let dsn = crate::mysql::dsn::Dsn::parse(config.sites[site].mysql.expose()).with_context(|| format!("sites.{site}.mysql"))?;
        let mut conn = crate::mysql::dsn::connect(&dsn).await.context("connecting to the site's database")?;
        let s = preflight::read_settings(&mut conn).await?;
        ctl.save_checkpoint(site, &control::Checkpoint { gtid: s.gtid_position.clone(), file: String::new(), pos: 4, source_ts_ms: 0 })
            .await?;
        // The export stream then starts where capture does.
        ctl.forget_checkpoint(&control::export_checkpoint_key(site)).await?;
        println!("capture will start at GTID position `{}` (changes before it: `sitesync snapshot`)", s.gtid_position);
        if config.export.any_at(site) {
            println!("the export stream starts there too: `sitesync snapshot --export` sends the exported tables' rows again");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sitesync run|capture|apply`.
async fn run(config: Arc<Config>, site: String, with_capture: bool, with_apply: bool) -> Result<ExitCode> {
    let shutdown = Shutdown::new();
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    health.set_probe(telemetry::ReadinessProbe::new(&config, &site));
    health.capture_enabled.store(with_capture, Ordering::Relaxed);
    health.apply_enabled.store(with_apply, Ordering::Relaxed);

    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: draining in-flight work");
        signals.trigger();
    });

    if let Some(listen) = config.sites[&site].listen {
        let console = Arc::new(crate::console::Console::new(config.clone(), &site, metrics.clone(), health.clone()));
        let history = console.history();
        let (m, s, origins, sampled_site) = (metrics.clone(), shutdown.clone(), config.origins_of(&site), site.clone());
        tokio::spawn(async move { history.run(m, sampled_site, origins, s).await });
        let routes = Arc::new(crate::endpoints::Routes { metrics: metrics.clone(), health: health.clone(), console });
        let s = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listen, routes, s).await {
                tracing::error!(%listen, error = %e, "cannot serve HTTP");
            }
        });
    }

    if with_capture && config.export.any_at(&site) {
        start_export_where_capture_is(&config, &site).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    if with_capture {
        let capture_ctx = || capture::CaptureContext {
            config: config.clone(),
            site: site.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
        };
        let ctx = capture_ctx();
        tasks.spawn(async move { capture::run(ctx).await.map_err(|e| anyhow!(e).context("capture")) });
        if config.export.any_at(&site) {
            // The export stream: a binlog reader of its own (capture::run_export).
            let ctx = capture_ctx();
            tasks.spawn(async move { capture::run_export(ctx).await.map_err(|e| anyhow!(e).context("export")) });
        }
    }
    if with_apply {
        let ctx = apply::ApplyContext {
            config: config.clone(),
            site: site.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(async move { apply::run(ctx).await.map_err(|e| anyhow!(e).context("apply")) });
    }
    if with_capture {
        // The origin's half of verify: answers the other sites' requests about this site's rows.
        let ctx = crate::verify::responder::ResponderContext {
            config: config.clone(),
            site: site.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(async move {
            crate::verify::responder::run(ctx).await;
            Ok(())
        });
    }
    if with_apply && config.verify.interval().is_some() {
        // This site's half of continuous verification: it asks its origins.
        let ctx = crate::verify::continuous::ContinuousContext {
            config: config.clone(),
            site: site.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(async move {
            crate::verify::continuous::run(ctx).await;
            Ok(())
        });
    }
    {
        // Kafka refusing this site (a login, an ACL, TLS) is definite: stop and say so, instead
        // of waiting for brokers that will never let it in.
        let (metrics, shutdown, site) = (metrics.clone(), shutdown.clone(), site.clone());
        tasks.spawn(async move {
            tokio::select! {
                refusal = crate::kafka::refused() => {
                    metrics.error(&site, telemetry::ErrorKind::of_refusal(&refusal));
                    Err(anyhow!("{refusal}"))
                }
                _ = shutdown.wait() => Ok(()),
            }
        });
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| anyhow!("task panicked: {e}")).and_then(|r| r);
        if let Err(mut e) = result {
            if let Some(refusal) = crate::kafka::refusal() {
                // A component's own error (a fatal producer, a timeout) after a refusal.
                if !format!("{e:#}").contains(&refusal.to_string()) {
                    e = e.context(refusal.to_string());
                }
            }
            if failure.is_none() && !shutdown.is_triggered() {
                tracing::error!(site = %site, error = %format!("{e:#}"), "stopping the other components");
                failure = Some(e);
            }
            shutdown.trigger();
        } else if !shutdown.is_triggered() {
            // A component that ends without being asked means the process should end too.
            shutdown.trigger();
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!(site = %site, "stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A site that starts exporting exports from where its capture resumes: the export stream's
/// checkpoint is copied from capture's before either reader moves (the export stream copies it
/// itself, later, if the database cannot be reached now).
async fn start_export_where_capture_is(config: &Config, site: &str) {
    let copied = async {
        control_of(config, site).await?.export_checkpoint(site).await?;
        anyhow::Ok(())
    };
    if let Err(e) = copied.await {
        tracing::warn!(site = %site, error = %e, "could not place the export stream at capture's checkpoint yet; it will when it starts");
    }
}

/// `sitesync check`.
async fn check(config: &Config, site: &str) -> Result<ExitCode> {
    crate::check::run(config, site).await
}

/// `sitesync status`.
async fn status(config: &Config, site: &str, json: bool) -> Result<ExitCode> {
    let ctl = control_of(config, site).await?;
    let checkpoint = ctl.load_checkpoint(site).await?;
    // The export stream's own position, and how far (in source time) it trails capture's.
    let export = match config.export.any_at(site) {
        true => ctl.load_checkpoint(&control::export_checkpoint_key(site)).await?.map(|e| {
            let behind = checkpoint.as_ref().map(|c| e.seconds_behind(c));
            (e, behind)
        }),
        false => None,
    };
    let offsets = ctl.load_offsets().await?;
    let progress = ctl.load_progress().await?;
    let dead = ctl.count_dead_letters().await?;
    let stopped = ctl.stopped().list().await?;
    let verified = ctl.verified().list().await?;
    let now = crate::record::now_ms();
    let origins: Vec<serde_json::Value> = config
        .origins_of(site)
        .iter()
        .map(|o| {
            let topic = config.topic_of(o);
            let next: i64 = offsets.iter().filter(|off| off.topic == topic).map(|off| off.next).sum();
            let last = progress.iter().filter(|p| &p.origin == o).max_by_key(|p| p.source_ts_ms);
            serde_json::json!({
                "origin": o,
                "topic": topic,
                "next_offset": next,
                "last_applied_gtid_stream": last.map(|p| format!("{}:{}", p.stream, p.seq)),
                "last_applied_source_age_seconds": last.map(|p| (now - p.source_ts_ms) as f64 / 1000.0),
            })
        })
        .collect();
    let report = serde_json::json!({
        "site": site,
        "capture": checkpoint.as_ref().map(|c| serde_json::json!({"gtid": c.gtid, "file": c.file, "pos": c.pos})),
        "apply": origins,
        "export": export.as_ref().map(|(e, behind)| serde_json::json!({"gtid": e.gtid, "file": e.file, "pos": e.pos, "behind_capture_seconds": behind})),
        "dead_letters": dead,
        "stopped_entities": stopped.iter().map(|s| serde_json::json!({
            "entity": s.entity,
            "state": if s.resume { "catching up" } else { "stopped" },
            "since": s.stopped_at,
            "position": s.gtid_state,
            "reason": s.reason,
        })).collect::<Vec<_>>(),
        "verified": verified,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("site {site}");
        match &checkpoint {
            Some(c) => println!("  capture checkpoint  gtid {}", c.gtid),
            None => println!("  capture checkpoint  none (run `sitesync init`)"),
        }
        match &export {
            Some((e, behind)) => println!(
                "  export checkpoint   gtid {}{}",
                e.gtid,
                behind.map(|b| format!(" ({b:.0} s of source time behind capture)")).unwrap_or_default()
            ),
            None if config.export.any_at(site) => println!("  export checkpoint   none yet (the export stream starts with `sitesync run`)"),
            None => {}
        }
        println!("  {:<16} {:<32} {:>12} {:>14}", "origin", "topic", "next offset", "last applied");
        for o in &origins {
            println!(
                "  {:<16} {:<32} {:>12} {:>14}",
                o["origin"].as_str().unwrap_or(""),
                o["topic"].as_str().unwrap_or(""),
                o["next_offset"],
                o["last_applied_source_age_seconds"].as_f64().map(|s| format!("{s:.1}s ago")).unwrap_or_else(|| "never".into())
            );
        }
        println!("  dead letters        {dead}");
        for s in &stopped {
            let state = if s.resume { "catching up" } else { "STOPPED" };
            println!("  entity {}  {state} since {} UTC at gtid {}: {}", s.entity, s.stopped_at, s.gtid_state, s.reason);
        }
        if stopped.iter().any(|s| !s.resume) {
            println!("  fix the cause, then `sitesync resume --site {site}` (its changes since then are read again)");
        }
        for v in &verified {
            println!(
                "  verified {} from {}  {:.0} s ago: {} rows compared, {} difference(s), {} repaired",
                v.entity,
                v.origin,
                (now - v.checked_at_ms) as f64 / 1000.0,
                v.compared,
                v.differences,
                v.repaired
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sitesync resume`: asks the running capture to go on with stopped entities, from where each
/// stopped.
async fn resume(config: &Config, site: &str, entities: &[String]) -> Result<ExitCode> {
    for e in entities {
        if !config.entities.contains_key(e) {
            anyhow::bail!(
                "--entity {e}: no such entity; defined entities: {}",
                config.entities.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let ctl = control_of(config, site).await?;
    let resumed = ctl.stopped().request_resume(entities).await?;
    if resumed.is_empty() {
        println!("no stopped entity to resume at site {site}");
        return Ok(if entities.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    println!(
        "asked the capture of site {site} to resume {}: it reads their changes again from where each stopped \
         (`sitesync status` shows them catching up until done)",
        resumed.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `sitesync snapshot`: asks the running capture for a snapshot and follows its progress.
async fn snapshot(config: &Config, site: &str, entities: &[String], no_wait: bool, export: bool) -> Result<ExitCode> {
    for e in entities {
        if !config.entities.contains_key(e) {
            return Err(anyhow!(
                "--entity {e}: no such entity in {}; entities: {}",
                config.path.display(),
                config.entities.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let mut entities = entities.to_vec();
    if export {
        // The export stream's history: only tables this site exports.
        if let Some(e) = entities.iter().find(|e| !config.export.exports(site, e)) {
            return Err(anyhow!("--export --entity {e}: site {site} does not export it ([export] in {})", config.path.display()));
        }
        if entities.is_empty() {
            entities = config.entities.keys().filter(|e| config.export.exports(site, e)).cloned().collect();
            if entities.is_empty() {
                return Err(anyhow!("--export: site {site} exports nothing ([export] in {})", config.path.display()));
            }
        }
    }
    let entities = &entities[..];
    let ctl = control_of(config, site).await?;
    let requests = ctl.snapshots();
    let id = if export { requests.request_export(&entities.join(",")).await? } else { requests.request(&entities.join(",")).await? };
    println!(
        "snapshot {id} requested at site {site} ({})",
        if entities.is_empty() { "all entities".to_string() } else { entities.join(", ") }
    );
    if no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let request = requests.get(id).await?.ok_or_else(|| anyhow!("snapshot request {id} disappeared from the control database"))?;
        let (status, done, total, message) = (request.status, request.rows_done, request.rows_total, request.message);
        let line = match status.as_str() {
            "requested" => format!("waiting for the capture of site {site} to start it (is `sitesync run` running there?)"),
            "running" => format!(
                "running: {done} of {total} rows published ({:.0}%)",
                if total > 0 { 100.0 * done as f64 / total as f64 } else { 100.0 }
            ),
            other => format!("{other}: {}", message.clone().unwrap_or_default()),
        };
        if line != last {
            println!("snapshot {id}: {line}  [{:.0} s]", started.elapsed().as_secs_f64());
            last = line;
        }
        match status.as_str() {
            "done" => return Ok(ExitCode::SUCCESS),
            "failed" => return Ok(ExitCode::from(1)),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// `sitesync forget SITE`.
async fn forget(config: &Config, site: &str, departed: &str) -> Result<ExitCode> {
    if config.sites.contains_key(departed) {
        anyhow::bail!(
            "site `{departed}` is still in {}: remove [sites.{departed}] (and it from the routes), deploy the file and restart every site first",
            config.path.display()
        );
    }
    if departed.is_empty() || !departed.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        anyhow::bail!("`{departed}` is not a site id (letters, digits, `.`, `_`, `-`)");
    }
    let ctl = control_of(config, site).await?;
    let topics = vec![config.topic_of(departed), config.heartbeat_topic_of(departed)];
    let forgotten = ctl.forget_site(departed, &topics).await?;
    for (table, n) in &forgotten {
        println!("{table}: {n} row(s) about {departed} deleted");
    }
    println!(
        "forgot {departed} at {site}; its rows stay here. Its topics ({}) are no longer read: delete them when no site needs them",
        topics.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `sitesync join`.
async fn join(config: &Config, site: &str, entities: &[String], from: &[String]) -> Result<ExitCode> {
    let joined = crate::join::join(config, site, entities, from).await?;
    let complete = joined.iter().all(|j| j.status == "done" && j.applied);
    for j in &joined {
        let why = j.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        println!("history from {}: {} ({} rows{}){}", j.origin, j.status, j.rows, why, if j.applied { ", applied" } else { "" });
    }
    Ok(if complete { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `sitesync verify`: through the control channel.
async fn verify(config: &Config, site: &str, options: &crate::verify::Options, json: bool) -> Result<ExitCode> {
    let reports = crate::verify::verify(config, site, options).await?;
    let remaining: usize = reports.iter().map(|r| r.remaining()).sum();
    if json {
        let out = serde_json::json!({ "site": site, "results": reports, "differences": remaining });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        use crate::verify::Kind;
        for r in &reports {
            println!(
                "{} from {}: {} rows compared, {} missing here, {} different, {} gone at the origin, {} repaired, {} still changing",
                r.entity,
                r.origin,
                r.compared,
                r.count(Kind::Missing),
                r.count(Kind::Different),
                r.count(Kind::Gone),
                r.repaired(),
                r.unsettled
            );
            for d in &r.differences {
                let columns = if d.columns.is_empty() { String::new() } else { format!(": {}", d.columns.join(", ")) };
                let state = if d.repaired { "REPAIRED" } else { "DIFF" };
                println!("{state} {} {} ({} -> {site}): {}{columns}", r.entity, d.key, r.origin, d.kind.as_str());
            }
        }
        println!("{remaining} difference(s)");
    }
    Ok(if remaining == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `sitesync verify --direct`: every site's database opened from here.
async fn verify_direct(config: &Config, site: &str, options: &crate::verify::Options, json: bool) -> Result<ExitCode> {
    let diffs = crate::verify::direct::verify(config, site, &options.entities, &options.against).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&diffs)?);
    } else {
        for d in &diffs {
            println!("DIFF {} {} ({} -> {}): {}", d.entity, d.key, d.from, d.to, d.detail);
        }
        println!("{} difference(s)", diffs.len());
    }
    Ok(if diffs.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `sitesync dlq ...`.
async fn dlq(config: &Config, site: &str, action: DlqAction) -> Result<ExitCode> {
    let ctl = control_of(config, site).await?;
    match action {
        DlqAction::List { json } => {
            let letters = ctl.list_dead_letters().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                for d in &letters {
                    let key = d.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                    println!(
                        "{:>6}  {}  {}:{}@{}  {}  {}  {}",
                        d.id,
                        d.created_at,
                        d.topic,
                        d.partition,
                        d.offset,
                        d.entity.as_deref().unwrap_or("-"),
                        key,
                        d.reason
                    );
                }
                println!("{} dead letter(s)", letters.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Replay { id } => {
            let results = crate::apply::replay(config, site, id).await?;
            let mut failed = 0;
            for r in &results {
                match &r.failure {
                    None => println!("{:>6}  replayed", r.id),
                    Some(why) => {
                        failed += 1;
                        println!("{:>6}  still fails: {why}", r.id);
                    }
                }
            }
            println!("{} replayed, {failed} still failing", results.len() - failed);
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        DlqAction::Drop { id } => {
            if ctl.drop_dead_letter(id).await? {
                println!("dropped dead letter {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no dead letter {id}");
                Ok(ExitCode::from(1))
            }
        }
    }
}
