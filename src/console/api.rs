//! What the console's pages read: JSON built from the control tables, the process's metrics
//! and health, and the origins' topic ends (schemas/console-api.md).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use serde_json::{json, Map, Value};

use super::Console;
use crate::apply::inspect::Inspector;
use crate::control::{DeadLetter, DeadLetterSummary};
use crate::http::Response;
use crate::kafka::Reporting;
use crate::record::{self, ChangeRecord, RecordKey};

/// Letters listed at most (the oldest; `total` says how many there are).
const LISTED: u64 = 500;
/// How long topic ends read from Kafka are reused.
const ENDS_FRESH: Duration = Duration::from_secs(3);
/// Raw bytes of an unreadable record shown at most.
const UNREADABLE_SHOWN: usize = 4096;

type Answer = Result<Response, Response>;

fn failed(what: &str) -> impl Fn(crate::control::ControlError) -> Response + '_ {
    move |e| Response::error(503, format!("{what}: {e}"))
}

impl Console {
    pub(super) async fn overview(&self) -> Answer {
        let ctl = self.control().await?;
        let site = self.site.as_str();
        let checkpoint = ctl.load_checkpoint(site).await.map_err(failed("reading the capture checkpoint"))?;
        let offsets = ctl.load_offsets().await.map_err(failed("reading apply offsets"))?;
        let progress = ctl.load_progress().await.map_err(failed("reading apply progress"))?;
        let dead = ctl.count_dead_letters().await.map_err(failed("counting dead letters"))?;
        let parked = ctl.count_parked().await.map_err(failed("counting parked transactions"))?;
        let stopped = ctl.stopped().list().await.map_err(failed("reading stopped entities"))?;
        let verified = ctl.verified().list().await.map_err(failed("reading verify state"))?;
        let snapshots = ctl.snapshots().recent(20).await.map_err(failed("reading snapshot requests"))?;
        let ready = self.health.check_ready().await;
        let applied = self.metrics.applied_by_origin(site);
        let lag = self.metrics.lag_by_origin(site);
        let origins = self.config.origins_of(site);
        let topics: Vec<String> = origins.iter().map(|o| self.config.topic_of(o)).collect();
        let ends = self.topic_ends(&topics).await;
        let origins: Vec<Value> = origins
            .iter()
            .zip(&topics)
            .map(|(o, topic)| {
                let next: i64 = offsets.iter().filter(|off| &off.topic == topic).map(|off| off.next).sum();
                let end = ends.get(topic).copied();
                let last = progress.iter().filter(|p| &p.origin == o).max_by_key(|p| p.source_ts_ms);
                json!({
                    "origin": o,
                    "topic": topic,
                    "lag_seconds": lag.get(o),
                    "lag_records": end.map(|e| (e - next).max(0)),
                    "next_offset": next,
                    "end_offset": end,
                    "last_applied": last.map(|p| json!({"gtid": p.gtid, "source_ts_ms": p.source_ts_ms})),
                    "applied_total": applied.get(o).copied().unwrap_or(0),
                })
            })
            .collect();
        let capture_enabled = self.health.capture_enabled.load(std::sync::atomic::Ordering::Relaxed);
        let export = match self.config.export.any_at(site) && capture_enabled {
            true => {
                let key = crate::control::export_checkpoint_key(site);
                let at = ctl.load_checkpoint(&key).await.map_err(failed("reading the export checkpoint"))?;
                let behind = at.as_ref().zip(checkpoint.as_ref()).map(|(e, c)| e.seconds_behind(c));
                json!({
                    "running": self.metrics.is_running(site, crate::telemetry::Component::Export),
                    "checkpoint_gtid": at.map(|e| e.gtid),
                    "last_source_commit_ms": self.metrics.export_timestamp(site).map(|s| (s * 1000.0) as i64),
                    "behind_capture_seconds": behind,
                    "last_error": self.health.export_error.lock().expect("export error lock").as_ref()
                        .map(|(at_ms, message)| json!({"at_ms": at_ms, "message": message})),
                })
            }
            false => Value::Null,
        };
        Ok(Response::json(
            200,
            &json!({
                "site": site,
                "site_name": self.config.sites[site].name,
                "federation": self.config.federation.name,
                "version": env!("CARGO_PKG_VERSION"),
                "now_ms": record::now_ms(),
                "ready": {"ok": ready.is_ok(), "why": ready.err()},
                "capture": {
                    "enabled": capture_enabled,
                    "running": self.health.capture_running.load(std::sync::atomic::Ordering::Relaxed),
                    "checkpoint_gtid": checkpoint.map(|c| c.gtid),
                    "last_source_commit_ms": self.metrics.source_timestamp(site).map(|s| (s * 1000.0) as i64),
                },
                "export": export,
                "apply": {
                    "enabled": self.health.apply_enabled.load(std::sync::atomic::Ordering::Relaxed),
                    "running": self.health.apply_running.load(std::sync::atomic::Ordering::Relaxed),
                },
                "origins": origins,
                "dead_letters": dead,
                "parked": parked,
                "stopped_entities": stopped.iter().map(|s| json!({
                    "entity": s.entity,
                    "state": if s.resume { "catching up" } else { "stopped" },
                    "since": format!("{}Z", s.stopped_at.replacen(' ', "T", 1)),
                    "reason": s.reason,
                })).collect::<Vec<_>>(),
                "verify": verified,
                "snapshots": snapshots.iter().map(|(id, entities, s, at)| json!({
                    "id": id, "entities": entities, "status": s.status, "rows_done": s.rows_done,
                    "rows_total": s.rows_total, "message": s.message, "for_site": s.for_site, "requested_at": at,
                })).collect::<Vec<_>>(),
                "actions": self.audit.recent(),
            }),
        ))
    }

    pub(super) fn history_json(&self) -> Response {
        Response::json(
            200,
            &json!({
                "interval_seconds": super::history::INTERVAL.as_secs(),
                "origins": self.config.origins_of(&self.site),
                "samples": self.history.samples(),
            }),
        )
    }

    pub(super) async fn dead_letters(&self) -> Answer {
        let ctl = self.control().await?;
        let letters = ctl.first_dead_letters(LISTED).await.map_err(failed("listing dead letters"))?;
        let total = ctl.count_dead_letters().await.map_err(failed("counting dead letters"))?;
        Ok(Response::json(200, &json!({ "dead_letters": letters.iter().map(summary_json).collect::<Vec<_>>(), "total": total })))
    }

    pub(super) async fn dead_letter(&self, id: u64) -> Answer {
        let ctl = self.control().await?;
        let letter = ctl.dead_letter(id).await.map_err(failed("reading the dead letter"))?;
        let letter = letter.ok_or_else(|| Response::error(404, format!("no dead letter {id} at site {}", self.site)))?;
        let parsed = ChangeRecord::from_slice(letter.value.as_deref());
        // The record's own entity decides what is never shown (the letter's column is only
        // what apply could read of it).
        let entity = parsed.as_ref().ok().map(|r| r.sitesync.entity.as_str()).or(letter.entity.as_deref());
        let excluded: Vec<String> = entity.and_then(|e| self.config.entities.get(e)).map(|e| e.exclude.to_vec()).unwrap_or_default();
        let (record, unreadable, local_row, rerequest) = match &parsed {
            Ok(r) => {
                let shown = |image: &Option<Map<String, Value>>| image.as_ref().map(|i| without(i, &excluded));
                let record = json!({
                    "op": r.op.code(), "before": shown(&r.before), "after": shown(&r.after),
                    "transaction": r.transaction.id, "source_ts_ms": r.source.ts_ms,
                });
                // One load of this site's plans serves the lookup and the re-request check.
                let inspector = match letter.origin.as_deref().filter(|o| *o != r.sitesync.origin) {
                    Some(topic_origin) => Err(format!(
                        "the record says origin `{}` but came from the topic of {topic_origin}",
                        record::shown(&r.sitesync.origin)
                    )),
                    None => Inspector::load(&self.config, &self.site, ctl.pool(), &r.sitesync.origin).await.map_err(|e| e.to_string()),
                };
                let (local, rerequest) = match &inspector {
                    Ok(inspector) => (inspector.local_row(r).await.map_err(|e| e.to_string()), self.origin_key(&letter, r, inspector)),
                    Err(e) => (Err(e.clone()), Err(e.clone())),
                };
                let local = match local {
                    Ok(Some(row)) => json!({"found": true, "row": row}),
                    Ok(None) => json!({"found": false}),
                    Err(e) => json!({"error": e}),
                };
                let rerequest = match rerequest {
                    Ok(_) => json!({"possible": true, "why": null}),
                    Err(why) => json!({"possible": false, "why": why}),
                };
                (record, Value::Null, local, rerequest)
            }
            Err(e) => {
                let raw = letter.value.as_deref().map(|v| shorten(&String::from_utf8_lossy(v))).unwrap_or_default();
                let why = format!("the record cannot be read ({e}): nothing to look up or re-request");
                (Value::Null, Value::String(raw), json!({"error": why}), json!({"possible": false, "why": why}))
            }
        };
        Ok(Response::json(
            200,
            &json!({
                "letter": letter_json(&letter, parsed.as_ref().ok()), "record": record, "unreadable": unreadable,
                "local_row": local_row, "excluded": excluded, "rerequest": rerequest,
            }),
        ))
    }

    pub(super) async fn parked(&self) -> Answer {
        let ctl = self.control().await?;
        let total = ctl.count_parked().await.map_err(failed("counting parked transactions"))?;
        let parked = ctl.first_parked(LISTED).await.map_err(failed("reading parked transactions"))?;
        let parked: Vec<Value> = parked
            .iter()
            .map(|p| {
                json!({
                    "id": p.id, "origin": p.origin, "topic": p.topic, "partition": p.partition, "offset": p.offset,
                    "row_keys": p.row_keys, "reason": p.reason, "age_seconds": p.age_seconds,
                })
            })
            .collect();
        Ok(Response::json(200, &json!({ "parked": parked, "total": total })))
    }

    /// The end offset of partition 0 of each topic Kafka answered for within 2 s, read at most
    /// every [`ENDS_FRESH`] (every open page polls the overview; one read serves them all).
    async fn topic_ends(&self, topics: &[String]) -> std::collections::HashMap<String, i64> {
        let mut cached = self.ends.lock().await;
        if let Some((_, ends)) = cached.as_ref().filter(|(at, _)| at.elapsed() < ENDS_FRESH) {
            return ends.clone();
        }
        let ends = self.read_topic_ends(topics).await;
        *cached = Some((std::time::Instant::now(), ends.clone()));
        ends
    }

    async fn read_topic_ends(&self, topics: &[String]) -> std::collections::HashMap<String, i64> {
        let consumer = self
            .watermarks
            .get_or_try_init(|| async {
                let group = crate::kafka::group_of(&self.config, &self.site, "console");
                let config = crate::kafka::consumer_config(&self.config.kafka, &group)?;
                let consumer: BaseConsumer<Reporting> = crate::kafka::create(&config, "creating the console's offset reader")?;
                Ok::<_, crate::kafka::TransportError>(Arc::new(consumer))
            })
            .await;
        let Ok(consumer) = consumer.cloned() else { return Default::default() };
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            topics
                .into_iter()
                .filter_map(|t| consumer.fetch_watermarks(&t, 0, Duration::from_secs(2)).ok().map(|(_, high)| (t, high)))
                .collect()
        })
        .await
        .unwrap_or_default()
    }
}

/// A dead letter as the list shows it.
fn summary_json(d: &DeadLetterSummary) -> Value {
    // The record's own key first: the message key of a letter is vetted to match it, and a
    // letter from a parked transaction has none.
    let key = d
        .record_key
        .as_deref()
        .and_then(|k| serde_json::from_str::<Value>(k).ok())
        .filter(Value::is_object)
        .or_else(|| d.message_key.as_deref().and_then(|k| record::parse::<RecordKey>(k.as_bytes()).ok()).map(|k| Value::Object(k.key)));
    json!({
        "id": d.id, "origin": d.origin, "entity": d.entity, "key": key, "reason": d.reason,
        "first_seen": d.created_at, "topic": d.topic, "partition": d.partition, "offset": d.offset,
        "op": d.op.as_deref().filter(|op| ["c", "u", "d", "r"].contains(op)),
    })
}

/// A dead letter as its detail shows it: as listed, the origin from the record where the
/// letter has none.
fn letter_json(d: &DeadLetter, parsed: Option<&ChangeRecord>) -> Value {
    let mut letter = summary_json(&d.summary());
    if let (Value::Null, Some(r)) = (&letter["origin"], parsed) {
        letter["origin"] = Value::from(r.sitesync.origin.as_str());
    }
    letter
}

/// `image` without the excluded columns (they never travel; a record that carries one anyway,
/// from a misconfigured origin, does not show it here).
fn without(image: &Map<String, Value>, excluded: &[String]) -> Value {
    Value::Object(image.iter().filter(|(c, _)| !excluded.contains(c)).map(|(c, v)| (c.clone(), v.clone())).collect())
}

fn shorten(text: &str) -> String {
    if text.len() <= UNREADABLE_SHOWN {
        return text.to_string();
    }
    let mut end = UNREADABLE_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}
