//! What an operator may do from the console, each through the code the command line uses
//! (`dlq replay`, `dlq drop`, verify's repair request), and the audit log of every attempt.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use super::auth::{self, Refused};
use super::Console;
use crate::apply::inspect::Inspector;
use crate::channel::{self, Body, Channel};
use crate::control::{Control, DeadLetter};
use crate::http::{Request, Response};
use crate::record::ChangeRecord;

/// Entries the overview lists.
const AUDIT_KEPT: usize = 100;
/// How long a re-request waits for the origin to republish.
const REREQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One attempted action.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEntry {
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Who (the name given at sign-in or in `X-Sitesync-Operator`; "-" when refused).
    pub operator: String,
    /// The client's address.
    pub address: String,
    /// `replay`, `drop`, `rerequest`, `sign-in`.
    pub action: String,
    /// What it was about.
    pub target: String,
    /// What came of it.
    pub outcome: String,
    /// Whether it was allowed and succeeded.
    pub ok: bool,
}

/// The last actions, newest first; each also logged (target `sitesync::audit`). Refusals are
/// kept apart, fewer, and logged at most [`REFUSALS_LOGGED_PER_MINUTE`] a minute: anyone who
/// reaches `listen` can cause them, and they must not push the operators' actions out.
#[derive(Default)]
pub struct Audit {
    done: Mutex<VecDeque<AuditEntry>>,
    refused: Mutex<(VecDeque<AuditEntry>, Option<std::time::Instant>, u32)>,
}

/// Refusals kept for the overview.
const REFUSALS_KEPT: usize = 20;
/// Refusals written to the log per minute (the rest are counted in the next one logged).
const REFUSALS_LOGGED_PER_MINUTE: u32 = 30;

impl Audit {
    fn record(&self, request: &Request, operator: &str, action: &str, target: &str, outcome: &str, ok: bool) {
        let entry = AuditEntry {
            at_ms: crate::record::now_ms(),
            operator: operator.to_string(),
            address: request.peer.ip().to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
            ok,
        };
        let address = entry.address.clone();
        if !outcome.starts_with("refused") {
            tracing::info!(target: "sitesync::audit", operator, address, action, target, outcome, ok, "console action");
            let mut done = self.done.lock().expect("lock");
            if done.len() == AUDIT_KEPT {
                done.pop_back();
            }
            done.push_front(entry);
            return;
        }
        let mut refused = self.refused.lock().expect("lock");
        let (kept, minute, logged) = &mut *refused;
        if minute.is_none_or(|m| m.elapsed() >= Duration::from_secs(60)) {
            if *logged > REFUSALS_LOGGED_PER_MINUTE {
                let unlogged = *logged - REFUSALS_LOGGED_PER_MINUTE;
                tracing::warn!(target: "sitesync::audit", unlogged, "console refusals not logged in the last minute (too many)");
            }
            *minute = Some(std::time::Instant::now());
            *logged = 0;
        }
        *logged += 1;
        if *logged <= REFUSALS_LOGGED_PER_MINUTE {
            tracing::info!(target: "sitesync::audit", operator, address, action, target, outcome, ok, "console action");
        }
        if kept.len() == REFUSALS_KEPT {
            kept.pop_back();
        }
        kept.push_front(entry);
    }

    /// Newest first: the actions done and the latest refusals.
    pub fn recent(&self) -> Vec<AuditEntry> {
        let mut all: Vec<AuditEntry> = self.done.lock().expect("lock").iter().cloned().collect();
        all.extend(self.refused.lock().expect("lock").0.iter().cloned());
        all.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
        all
    }
}

type Answer = Result<Response, Response>;

impl Console {
    pub(super) fn session_json(&self, request: &Request) -> Response {
        let session = self.auth.session(request);
        Response::json(
            200,
            &json!({
                "signed_in": session.is_some(),
                "operator": session.as_ref().map(|s| s.operator.clone()),
                "csrf": session.map(|s| s.csrf),
                "actions_enabled": self.auth.actions_enabled(),
            }),
        )
    }

    pub(super) fn sign_in(&self, request: &Request) -> Answer {
        #[derive(serde::Deserialize)]
        struct SignIn {
            token: String,
            #[serde(default)]
            operator: String,
        }
        let refuse = |r: Refused| {
            self.audit.record(request, "-", "sign-in", "console", &format!("refused: {r}"), false);
            Response::error(r.status(), r.to_string())
        };
        auth::same_origin(request).map_err(refuse)?;
        let body: SignIn = serde_json::from_slice(&request.body).map_err(|e| {
            self.audit.record(request, "-", "sign-in", "console", "refused: unreadable sign-in body", false);
            Response::error(400, format!("expected {{\"token\": ..., \"operator\": ...}}: {e}"))
        })?;
        match self.auth.sign_in(&body.token, &body.operator, request.peer.ip()) {
            Ok((id, session)) => {
                self.audit.record(request, &session.operator, "sign-in", "console", "signed in", true);
                Ok(Response::json(
                    200,
                    &json!({"signed_in": true, "operator": session.operator, "csrf": session.csrf, "actions_enabled": true}),
                )
                .with_header("Set-Cookie", auth::set_cookie(Some(&id))))
            }
            Err(r) => Err(refuse(r)),
        }
    }

    pub(super) fn sign_out(&self, request: &Request) -> Response {
        if let Err(r) = auth::same_origin(request) {
            return Response::error(r.status(), r.to_string());
        }
        self.auth.sign_out(request);
        Response::json(200, &json!({"signed_in": false})).with_header("Set-Cookie", auth::set_cookie(None))
    }

    /// `POST /api/v1/dead-letters/{id}/{action}`.
    pub(super) async fn act(&self, request: &Request, id: u64, action: &str) -> Answer {
        if !matches!(action, "replay" | "drop" | "rerequest") {
            return Err(Response::error(404, format!("no action `{}` (replay, drop, rerequest)", crate::record::shown(action))));
        }
        let target = format!("dead letter {id}");
        let operator = match self.auth.authorize(request) {
            Ok(operator) => operator,
            Err(r) => {
                self.audit.record(request, "-", action, &target, &format!("refused: {r}"), false);
                return Err(Response::error(r.status(), r.to_string()));
            }
        };
        let result = match action {
            "replay" => self.replay(id).await,
            "drop" => self.drop_letter(id).await,
            _ => self.rerequest(id).await,
        };
        let outcome = match &result {
            Ok(message) => message.clone(),
            Err((_, why)) => format!("failed: {why}"),
        };
        self.audit.record(request, &operator, action, &target, &outcome, result.is_ok());
        match result {
            Ok(message) => Ok(Response::json(200, &json!({"ok": true, "message": message}))),
            Err((status, why)) => Err(Response::error(status, why)),
        }
    }

    async fn letter(&self, id: u64) -> Result<(&Control, DeadLetter), (u16, String)> {
        let ctl = self.control().await.map_err(|_| (503, "the site's database cannot be reached".to_string()))?;
        match ctl.dead_letter(id).await {
            Ok(Some(letter)) => Ok((ctl, letter)),
            Ok(None) => Err((404, format!("no dead letter {id} at site {}", self.site))),
            Err(e) => Err((503, e.to_string())),
        }
    }

    async fn replay(&self, id: u64) -> Result<String, (u16, String)> {
        self.letter(id).await?;
        let results = match crate::apply::replay(&self.config, &self.site, Some(id)).await {
            Ok(results) => results,
            // Another operator's replay or drop took it meanwhile.
            Err(_) if matches!(self.letter(id).await, Err((404, _))) => {
                return Err((404, format!("no dead letter {id} at site {}", self.site)))
            }
            Err(e) => return Err((503, e.to_string())),
        };
        match results.iter().find(|r| r.id == id).and_then(|r| r.failure.clone()) {
            None => Ok(format!("dead letter {id} replayed: applied at {}", self.site)),
            Some(why) => Err((409, format!("dead letter {id} still fails (it stays): {why}"))),
        }
    }

    async fn drop_letter(&self, id: u64) -> Result<String, (u16, String)> {
        let (ctl, _) = self.letter(id).await?;
        match ctl.drop_dead_letter(id).await {
            Ok(true) => Ok(format!("dead letter {id} dropped")),
            Ok(false) => Err((404, format!("no dead letter {id} at site {}", self.site))),
            Err(e) => Err((503, e.to_string())),
        }
    }

    /// Asks the letter's origin to republish its current row (verify's repair request); once it
    /// has, the letter is dropped: the republished row is newer than the letter's record and
    /// replaces it (it becomes a dead letter of its own if it fails too).
    async fn rerequest(&self, id: u64) -> Result<String, (u16, String)> {
        // One at a time per letter, and a few at once in all: each waits up to a minute on the
        // origin with a Kafka producer and consumer of its own.
        let _slot =
            self.rerequests.try_acquire().map_err(|_| (429, "other re-requests are under way: try again in a minute".to_string()))?;
        let _letter = InProgress::claim(&self.rerequesting, id).ok_or((409, format!("a re-request of dead letter {id} is under way")))?;
        let (ctl, letter) = self.letter(id).await?;
        let record = ChangeRecord::from_slice(letter.value.as_deref()).map_err(|e| (409, format!("the record cannot be read: {e}")))?;
        let inspector = crate::apply::inspect::Inspector::load(&self.config, &self.site, ctl.pool(), &record.sitesync.origin)
            .await
            .map_err(|e| (503, e.to_string()))?;
        let pk = self.origin_key(&letter, &record, &inspector).map_err(|why| (409, why))?;
        let origin = record.sitesync.origin.clone();
        let channel = Channel::open(&self.config, &self.site).await.map_err(|e| (503, e.to_string()))?;
        let request = channel::request_id(&self.site);
        let body = Body::RepairRequest { entity: record.sitesync.entity.clone(), rows: vec![pk.clone()] };
        channel.send(&request, &origin, body).await.map_err(|e| (503, e.to_string()))?;
        match channel.answer(&request, &origin, REREQUEST_TIMEOUT).await {
            Ok(Body::Repaired { request: snapshot, rows }) => {
                let dropped = ctl.drop_dead_letter(id).await.map_err(|e| (503, e.to_string()))?;
                let gone = if rows == 0 { " (the row no longer exists there)" } else { "" };
                Ok(format!(
                    "{origin} republished {rows} row(s) of {} with key {pk}{gone} (its snapshot {snapshot}); dead letter {id} {}",
                    record.sitesync.entity,
                    if dropped { "dropped: the fresh row replaces it" } else { "was already gone" }
                ))
            }
            Ok(Body::Failed { message }) => Err((409, format!("{origin} refused: {message}"))),
            Ok(other) => Err((502, format!("{origin} answered {other:?}"))),
            Err(crate::channel::ChannelError::Timeout { .. }) => {
                Err((504, format!("{origin} did not answer within {} s: is its `sitesync run` running?", REREQUEST_TIMEOUT.as_secs())))
            }
            Err(e) => Err((503, e.to_string())),
        }
    }

    /// The origin's primary key of the letter's row, or why it cannot be re-requested.
    pub(super) fn origin_key(&self, letter: &DeadLetter, record: &ChangeRecord, inspector: &Inspector<'_>) -> Result<String, String> {
        let origin = &record.sitesync.origin;
        if letter.origin.as_deref().is_some_and(|o| o != origin) {
            return Err("the record's origin is not the site whose topic it came from".into());
        }
        if !self.config.routes_entity(origin, &self.site, &record.sitesync.entity) {
            return Err(format!("{} is not routed from {origin} to {}", record.sitesync.entity, self.site));
        }
        inspector.origin_primary_key(record)
    }
}

/// A letter being re-requested, released when dropped.
struct InProgress<'a> {
    set: &'a Mutex<std::collections::HashSet<u64>>,
    id: u64,
}

impl<'a> InProgress<'a> {
    fn claim(set: &'a Mutex<std::collections::HashSet<u64>>, id: u64) -> Option<Self> {
        set.lock().expect("lock").insert(id).then_some(Self { set, id })
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("lock").remove(&self.id);
    }
}
