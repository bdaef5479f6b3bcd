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
        let path = request.path.clone();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let get = request.method == hyper::Method::GET;
        let post = request.method == hyper::Method::POST;
        let answer = match segments.as_slice() {
            ["console"] if get => return Response::text(302, "").with_header("Location", "/console/".into()),
            ["console", ""] if get => return page(INDEX_HTML, "text/html; charset=utf-8"),
            ["console", "app.js"] if get => return page(APP_JS, "text/javascript; charset=utf-8"),
            ["console", "app.css"] if get => return page(APP_CSS, "text/css; charset=utf-8"),
            ["api", "v1", "overview"] if get => self.overview().await,
            ["api", "v1", "history"] if get => Ok(self.history_json()),
            ["api", "v1", "dead-letters"] if get => self.dead_letters().await,
            ["api", "v1", "dead-letters", id] if get => match id.parse() {
                Ok(id) => self.dead_letter(id).await,
                Err(_) => Err(Response::error(404, format!("`{}` is not a dead letter id", crate::record::shown(id)))),
            },
            ["api", "v1", "dead-letters", id, action] if post => match id.parse() {
                Ok(id) => self.act(&request, id, action).await,
                Err(_) => Err(Response::error(404, format!("`{}` is not a dead letter id", crate::record::shown(id)))),
            },
            ["api", "v1", "parked"] if get => self.parked().await,
            ["api", "v1", "session"] if get => Ok(self.session_json(&request)),
            ["api", "v1", "session"] if post => self.sign_in(&request),
            ["api", "v1", "session", "logout"] if post => Ok(self.sign_out(&request)),
            _ if known(&segments) => Err(Response::error(405, format!("{} is not allowed on {path}", request.method))),
            _ => Err(Response::error(404, format!("no such page: {}", crate::record::shown(&path)))),
        };
        answer.unwrap_or_else(|refusal| refusal)
    }
}

/// A path the console answers with some method.
fn known(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["console"]
            | ["console", "" | "app.js" | "app.css"]
            | ["api", "v1", "overview" | "history" | "dead-letters" | "parked" | "session"]
            | ["api", "v1", "dead-letters", _, ..]
            | ["api", "v1", "session", "logout"]
    )
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    Response { status: 200, content_type, headers: vec![("Content-Security-Policy", CSP.to_string())], body: body.as_bytes().to_vec() }
}
