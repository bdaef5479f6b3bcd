//! Who may act in the console: the operator token (`[console] operator_token`), as a bearer
//! header for scripts or exchanged for a session cookie by the sign-in form. Cookie-borne
//! actions also need the session's CSRF token in `X-CSRF-Token` (a form on another site can
//! send the cookie, not the header), and a request from another origin is refused outright.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::http::Request;

/// The session cookie's name.
pub const COOKIE: &str = "sitesync_session";
/// How long a sign-in lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Wrong tokens tolerated per client address and minute before that address pauses for the
/// rest of it (per address: one guesser cannot lock every operator out).
const WRONG_TOKENS_PER_MINUTE: u32 = 10;
/// Addresses remembered for throttling (the oldest minute's are forgotten first).
const ADDRESSES_KEPT: usize = 4096;

/// Why a request may not act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No `[console] operator_token`: the console is read-only.
    #[error("the console is read-only at this site: set [console] operator_token (from the environment) to allow actions")]
    ActionsDisabled,
    /// Neither a bearer token nor a session.
    #[error("sign in with the operator token first (or send Authorization: Bearer <token>)")]
    NotSignedIn,
    /// A bearer token or sign-in with the wrong token.
    #[error("wrong operator token")]
    WrongToken,
    /// A cookie-borne action without the session's CSRF token.
    #[error("missing or wrong X-CSRF-Token for this session: reload the console")]
    BadCsrf,
    /// `Origin` names another host.
    #[error("request from another origin ({0}) refused")]
    OtherOrigin(String),
    /// Too many wrong tokens lately.
    #[error("too many wrong operator tokens: sign-in pauses for a minute")]
    Throttled,
}

impl Refused {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Refused::NotSignedIn | Refused::WrongToken => 401,
            Refused::Throttled => 429,
            _ => 403,
        }
    }
}

struct StoredSession {
    operator: String,
    csrf: String,
    expires: Instant,
}

/// The signed-in operator of a request.
#[derive(Debug, Clone)]
pub struct Session {
    /// Operator name (for the audit log).
    pub operator: String,
    /// The CSRF token the session's actions carry.
    pub csrf: String,
}

/// Tokens and sessions of one console.
pub struct Auth {
    /// SHA-256 of the operator token: compared in constant time, the token itself not kept.
    token_digest: Option<[u8; 32]>,
    sessions: Mutex<HashMap<String, StoredSession>>,
    /// Per client address: when its current minute began, wrong tokens in it.
    wrong: Mutex<HashMap<std::net::IpAddr, (Instant, u32)>>,
}

impl Auth {
    /// With the configured token (`None`: read-only).
    pub fn new(token: Option<&Secret>) -> Self {
        Self { token_digest: token.map(|t| digest(t.expose())), sessions: Mutex::new(HashMap::new()), wrong: Mutex::new(HashMap::new()) }
    }

    /// Whether actions can be allowed at all.
    pub fn actions_enabled(&self) -> bool {
        self.token_digest.is_some()
    }

    fn token_matches(&self, offered: &str, from: std::net::IpAddr) -> Result<(), Refused> {
        let expected = self.token_digest.ok_or(Refused::ActionsDisabled)?;
        // One lock around check, compare and count: parallel guesses cannot slip past.
        let mut wrong = self.wrong.lock().expect("lock");
        let minute = Duration::from_secs(60);
        let entry = wrong.get(&from).copied().filter(|(since, _)| since.elapsed() < minute);
        if entry.is_some_and(|(_, n)| n >= WRONG_TOKENS_PER_MINUTE) {
            return Err(Refused::Throttled);
        }
        if openssl::memcmp::eq(&expected, &digest(offered)) {
            return Ok(());
        }
        if wrong.len() >= ADDRESSES_KEPT {
            wrong.retain(|_, (since, _)| since.elapsed() < minute);
        }
        if wrong.len() < ADDRESSES_KEPT {
            let (since, n) = entry.unwrap_or((Instant::now(), 0));
            wrong.insert(from, (since, n + 1));
        }
        Err(Refused::WrongToken)
    }

    /// Signs in: a new session for `operator`; (session id for the cookie, its session).
    pub fn sign_in(&self, token: &str, operator: &str, from: std::net::IpAddr) -> Result<(String, Session), Refused> {
        self.token_matches(token, from)?;
        let id = random_hex();
        let session =
            StoredSession { operator: operator_name(Some(operator)), csrf: random_hex(), expires: Instant::now() + SESSION_LIFETIME };
        let shown = Session { operator: session.operator.clone(), csrf: session.csrf.clone() };
        let mut sessions = self.sessions.lock().expect("lock");
        sessions.retain(|_, s| s.expires > Instant::now());
        sessions.insert(id.clone(), session);
        Ok((id, shown))
    }

    /// Ends the request's session, if it has one.
    pub fn sign_out(&self, request: &Request) {
        if let Some(id) = cookie(request) {
            self.sessions.lock().expect("lock").remove(&id);
        }
    }

    /// The request's live session, if any.
    pub fn session(&self, request: &Request) -> Option<Session> {
        let id = cookie(request)?;
        let sessions = self.sessions.lock().expect("lock");
        let s = sessions.get(&id).filter(|s| s.expires > Instant::now())?;
        Some(Session { operator: s.operator.clone(), csrf: s.csrf.clone() })
    }

    /// Who may perform an action with `request`, or why nobody may.
    pub fn authorize(&self, request: &Request) -> Result<String, Refused> {
        same_origin(request)?;
        if !self.actions_enabled() {
            return Err(Refused::ActionsDisabled);
        }
        if let Some(bearer) = request.header("authorization").and_then(|h| h.strip_prefix("Bearer ")) {
            self.token_matches(bearer.trim(), request.peer.ip())?;
            return Ok(operator_name(request.header("x-sitesync-operator")));
        }
        let session = self.session(request).ok_or(Refused::NotSignedIn)?;
        let offered = request.header("x-csrf-token").unwrap_or("");
        if !openssl::memcmp::eq(&digest(offered), &digest(&session.csrf)) {
            return Err(Refused::BadCsrf);
        }
        Ok(session.operator)
    }
}

/// Refuses a request whose `Origin` (sent by browsers on every POST) is not this host, and a
/// browser's own word that it comes from another site.
pub fn same_origin(request: &Request) -> Result<(), Refused> {
    if request.header("sec-fetch-site") == Some("cross-site") {
        return Err(Refused::OtherOrigin("Sec-Fetch-Site: cross-site".into()));
    }
    let Some(origin) = request.header("origin") else { return Ok(()) };
    let host = request.header("host").unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(Refused::OtherOrigin(crate::record::shown(origin)))
    }
}

/// The `Set-Cookie` value of a session (`None`: the cookie's removal).
pub fn set_cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_LIFETIME.as_secs()),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

fn cookie(request: &Request) -> Option<String> {
    request
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// A name fit for the audit log: printable, at most 64 characters, "operator" when none.
fn operator_name(name: Option<&str>) -> String {
    let cleaned: String = name.unwrap_or("").chars().filter(|c| !c.is_control()).take(64).collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        "operator".into()
    } else {
        cleaned.to_string()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).expect("the OpenSSL random generator");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&'static str, &str)]) -> Request {
        let mut map = hyper::header::HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().unwrap());
        }
        Request {
            method: hyper::Method::POST,
            path: "/api/v1/dead-letters/1/drop".into(),
            headers: map,
            body: Default::default(),
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn here() -> std::net::IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[test]
    fn bearer_token_and_session_with_csrf_are_the_only_ways_in() {
        let auth = Auth::new(Some(&Secret::new("0123456789abcdef-token")));
        assert_eq!(auth.authorize(&request(&[])).unwrap_err(), Refused::NotSignedIn);
        assert_eq!(auth.authorize(&request(&[("authorization", "Bearer nope")])).unwrap_err(), Refused::WrongToken);
        let who = auth.authorize(&request(&[("authorization", "Bearer 0123456789abcdef-token"), ("x-sitesync-operator", "li\t")]));
        assert_eq!(who.unwrap(), "li");

        let (id, session) = auth.sign_in("0123456789abcdef-token", "wang", here()).unwrap();
        let cookie = format!("{COOKIE}={id}");
        assert_eq!(auth.authorize(&request(&[("cookie", &cookie)])).unwrap_err(), Refused::BadCsrf);
        assert_eq!(auth.authorize(&request(&[("cookie", &cookie), ("x-csrf-token", "x")])).unwrap_err(), Refused::BadCsrf);
        let ok = request(&[("cookie", &cookie), ("x-csrf-token", &session.csrf), ("origin", "http://h:1"), ("host", "h:1")]);
        assert_eq!(auth.authorize(&ok).unwrap(), "wang");
        let other = request(&[("cookie", &cookie), ("x-csrf-token", &session.csrf), ("origin", "http://evil"), ("host", "h:1")]);
        assert!(matches!(auth.authorize(&other).unwrap_err(), Refused::OtherOrigin(_)));
        auth.sign_out(&request(&[("cookie", &cookie)]));
        assert_eq!(auth.authorize(&request(&[("cookie", &cookie), ("x-csrf-token", &session.csrf)])).unwrap_err(), Refused::NotSignedIn);
    }

    #[test]
    fn without_a_token_nothing_may_act_and_guessing_is_throttled() {
        let read_only = Auth::new(None);
        assert_eq!(read_only.authorize(&request(&[("authorization", "Bearer x")])).unwrap_err(), Refused::ActionsDisabled);
        assert_eq!(read_only.sign_in("", "x", here()).unwrap_err(), Refused::ActionsDisabled);
        let auth = Auth::new(Some(&Secret::new("0123456789abcdef-token")));
        for _ in 0..WRONG_TOKENS_PER_MINUTE {
            assert_eq!(auth.sign_in("guess", "x", here()).unwrap_err(), Refused::WrongToken);
        }
        // Even the right token waits: a guesser cannot tell which guess was right.
        assert_eq!(auth.sign_in("0123456789abcdef-token", "x", here()).unwrap_err(), Refused::Throttled);
        // Another address is not locked out by this one's guesses.
        let elsewhere: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        assert!(auth.sign_in("0123456789abcdef-token", "x", elsewhere).is_ok());
    }
}
