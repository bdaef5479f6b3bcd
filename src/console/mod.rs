//! The operator console `sitesync run` serves on the site's `listen` address: embedded pages
//! at `/console/` and the JSON API they use under `/api/v1/` (schemas/console-api.md).
//!
//! - `api`: what the pages read (overview, history, dead letters, parked transactions);
//! - `actions`: what an operator may do (replay, drop, re-request) and the audit log of it;
//! - `auth`: the operator token, sessions and CSRF;
//! - `history`: the last hour of rates and lags for the charts.

mod actions;
mod api;
pub mod auth;
pub mod history;

use std::sync::Arc;

use rdkafka::consumer::BaseConsumer;

use crate::config::Config;
use crate::control::{self, Control};
use crate::http::{Request, Response};
use crate::kafka::Reporting;
use crate::telemetry::{Health, Metrics};

/// The console's pages, embedded in the binary (no CDN, nothing to install).
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Scripts and styles from this server only: a value in a record cannot run as code.
const CSP: &str =
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'";

/// One site's console.
pub struct Console {
    config: Arc<Config>,
    site: String,
    metrics: Metrics,
    health: Arc<Health>,
    auth: auth::Auth,
    history: Arc<history::History>,
    audit: actions::Audit,
    /// Opened at first use: the console answers (with the error) while the database is down.
    control: tokio::sync::OnceCell<Control>,
    /// Reads the origins' topic ends (lag in records).
    watermarks: tokio::sync::OnceCell<Arc<BaseConsumer<Reporting>>>,
    /// The last topic ends read, and when: polled pages share one read every few seconds.
    ends: tokio::sync::Mutex<Option<(std::time::Instant, std::collections::HashMap<String, i64>)>>,
    /// Re-requests running at once.
    rerequests: tokio::sync::Semaphore,
    /// Letters being re-requested.
    rerequesting: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl Console {
    /// The console of `site`.
    pub fn new(config: Arc<Config>, site: &str, metrics: Metrics, health: Arc<Health>) -> Self {
        let auth = auth::Auth::new(config.console.operator_token.as_ref());
        Self {
            config,
            site: site.to_string(),
            metrics,
            health,
            auth,
            history: Arc::default(),
            audit: actions::Audit::default(),
            control: tokio::sync::OnceCell::new(),
            watermarks: tokio::sync::OnceCell::new(),
            ends: tokio::sync::Mutex::new(None),
            rerequests: tokio::sync::Semaphore::new(4),
            rerequesting: Default::default(),
        }
    }

    /// The chart samples, filled by [`history::History::run`].
    pub fn history(&self) -> Arc<history::History> {
        self.history.clone()
    }

    async fn control(&self) -> Result<&Control, Response> {
        self.control
            .get_or_try_init(|| async {
                let pool = control::connect(&self.site, self.config.sites[&self.site].mysql.expose(), 2).await?;
                Ok::<_, control::ControlError>(Control::new(pool, &self.config.federation.control_database))
            })
            .await
            .map_err(|e| Response::error(503, format!("the site's database cannot be reached: {e}")))
    }

    /// Answers a request under `/console` or `/api/`.
    pub async fn handle(&self, request: Request) -> Response {
        if let Err(host) = self.host_allowed(&request) {
            return Response::error(
                421,
                format!(
                    "the console does not answer to host `{}`: use the listen address, or add the name to [console] allowed_hosts",
                    crate::record::shown(&host)
                ),
            );
        }
        let path = request.path.clone();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // HEAD is GET without the body (hyper leaves the body out).
        let get = request.method == hyper::Method::GET || request.method == hyper::Method::HEAD;
        let post = request.method == hyper::Method::POST;
        let answer = match segments.as_slice() {
            ["console"] if get => return Response::text(302, "").with_header("Location", "/console/".into()),
            ["console", ""] if get => return page(INDEX_HTML, "text/html; charset=utf-8"),
            ["console", "app.js"] if get => return page(APP_JS, "text/javascript; charset=utf-8"),
            ["console", "app.css"] if get => return page(APP_CSS, "text/css; charset=utf-8"),
            ["api", "v1", "overview"] if get => self.overview().await,
            ["api", "v1", "history"] if get => Ok(self.history_json()),
            ["api", "v1", "dead-letters"] if get => self.dead_letters().await,
            ["api", "v1", "dead-letters", id] if get => match letter_id(id) {
                Ok(id) => self.dead_letter(id).await,
                Err(not) => Err(not),
            },
            ["api", "v1", "dead-letters", id, action @ ("replay" | "drop" | "rerequest")] if post => match letter_id(id) {
                Ok(id) => self.act(&request, id, action).await,
                Err(not) => Err(not),
            },
            ["api", "v1", "parked"] if get => self.parked().await,
            ["api", "v1", "session"] if get => Ok(self.session_json(&request)),
            ["api", "v1", "session"] if post => self.sign_in(&request),
            ["api", "v1", "session", "logout"] if post => Ok(self.sign_out(&request)),
            _ if allowed(&segments).is_some() => {
                let allow = allowed(&segments).unwrap_or_default();
                Err(Response::error(405, format!("{} is not allowed on {path} (only {allow})", request.method))
                    .with_header("Allow", allow.into()))
            }
            _ => Err(Response::error(404, format!("no such page: {}", crate::record::shown(&path)))),
        };
        answer.unwrap_or_else(|refusal| refusal)
    }
}

/// The methods of a path the console answers (`None`: no such path).
fn allowed(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["console"] | ["console", "" | "app.js" | "app.css"] => Some("GET, HEAD"),
        ["api", "v1", "overview" | "history" | "dead-letters" | "parked"] | ["api", "v1", "dead-letters", _] => Some("GET, HEAD"),
        ["api", "v1", "dead-letters", _, "replay" | "drop" | "rerequest"] | ["api", "v1", "session", "logout"] => Some("POST"),
        ["api", "v1", "session"] => Some("GET, HEAD, POST"),
        _ => None,
    }
}

/// A dead letter id: digits only (Rust's parser would take `+1`).
fn letter_id(text: &str) -> Result<u64, Response> {
    match text.parse() {
        Ok(id) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(Response::error(404, format!("`{}` is not a dead letter id", crate::record::shown(text)))),
    }
}

impl Console {
    /// The request's `Host` is an IP address, `localhost` or a configured name; else the host
    /// it named.
    fn host_allowed(&self, request: &Request) -> Result<(), String> {
        let host = request.header("host").unwrap_or("");
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
        };
        let ok = name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.config.console.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(name));
        if ok {
            Ok(())
        } else {
            Err(host.to_string())
        }
    }
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    Response { status: 200, content_type, headers: vec![("Content-Security-Policy", CSP.to_string())], body: body.as_bytes().to_vec() }
}
