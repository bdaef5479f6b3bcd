//! What a site's `listen` address answers: `/metrics`, `/healthz`, `/readyz` (DESIGN.md's HTTP
//! surface, from `telemetry`) and the operator console with its API (`console`), served by
//! `http`.

use std::sync::Arc;

use crate::console::Console;
use crate::http::{Handler, Request, Response};
use crate::telemetry::{Health, Metrics};

/// The routes of `listen`.
pub struct Routes {
    /// Metrics for `/metrics`.
    pub metrics: Metrics,
    /// Health for `/healthz`, `/readyz`.
    pub health: Arc<Health>,
    /// The console and its API.
    pub console: Arc<Console>,
}

impl Handler for Routes {
    async fn handle(&self, request: Request) -> Response {
        match (request.method.as_str(), request.path.as_str()) {
            ("GET" | "HEAD", "/metrics") => {
                let mut r = Response::text(200, self.metrics.render());
                r.content_type = "text/plain; version=0.0.4";
                r
            }
            ("GET" | "HEAD", "/healthz") => Response::text(200, "ok\n"),
            ("GET" | "HEAD", "/readyz") => match self.health.check_ready().await {
                Ok(()) => {
                    let stopped = self.health.stopped_entities.lock().map(|s| s.clone()).unwrap_or_default();
                    let mut body = "ready\n".to_string();
                    for line in stopped {
                        body.push_str(&format!("stopped: {line}\n"));
                    }
                    Response::text(200, body)
                }
                Err(why) => Response::text(503, format!("not ready: {why}\n")),
            },
            ("GET", "/") => Response::text(302, "the console is at /console/\n").with_header("Location", "/console/".into()),
            _ if request.path.starts_with("/console") || request.path.trim_start_matches('/').starts_with("api/") => {
                self.console.handle(request).await
            }
            (_, "/metrics" | "/healthz" | "/readyz") => Response::text(405, "GET only\n").with_header("Allow", "GET, HEAD".into()),
            _ => Response::text(404, "not found\n"),
        }
    }
}
