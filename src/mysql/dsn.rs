//! A site's `mysql` URL, with the TLS parameters MySQL's own client knows (`ssl-mode`, `ssl-ca`,
//! `ssl-cert`, `ssl-key`), turned into the options of both drivers sitesync uses: `mysql_async`
//! (binlog stream, snapshots, reference lookups, probes) and `sqlx` (apply, control state,
//! verify). One parser, so every connection a site opens is encrypted the same way.
//!
//! The default is `preferred`, as in MySQL's client: encrypted whenever the server offers TLS,
//! plaintext against a server without certificates (the local stack), and the server's
//! certificate is not checked. `sitesync check` says so for every connection; production URLs
//! should say `ssl-mode=verify_identity` (or `verify_ca`) with `ssl-ca`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use mysql_async::{ClientIdentity, Opts, OptsBuilder, SslOpts};
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};

/// How much TLS a connection asks for (MySQL's `--ssl-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never encrypted.
    Disabled,
    /// Encrypted when the server offers TLS; the certificate is not checked.
    Preferred,
    /// Always encrypted; the certificate is not checked.
    Required,
    /// Encrypted, the certificate signed by `ssl-ca` (or a system root); any host name.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host of the URL.
    VerifyIdentity,
}

impl SslMode {
    /// The value as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disabled => "disabled",
            SslMode::Preferred => "preferred",
            SslMode::Required => "required",
            SslMode::VerifyCa => "verify_ca",
            SslMode::VerifyIdentity => "verify_identity",
        }
    }

    /// Whether the server's certificate is checked.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyIdentity)
    }

    /// Whether a connection without TLS is refused.
    pub fn requires(self) -> bool {
        !matches!(self, SslMode::Disabled | SslMode::Preferred)
    }
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // MySQL's spellings, any case, `-` or `_`.
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "disabled" => Ok(SslMode::Disabled),
            "preferred" => Ok(SslMode::Preferred),
            "required" => Ok(SslMode::Required),
            "verify_ca" => Ok(SslMode::VerifyCa),
            "verify_identity" => Ok(SslMode::VerifyIdentity),
            other => Err(format!("ssl-mode={other:?} is not one of disabled, preferred, required, verify_ca, verify_identity")),
        }
    }
}

/// The TLS part of a site's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// `ssl-mode` (default `preferred`).
    pub mode: SslMode,
    /// `ssl-ca`: PEM file of the certificate authorities the server's certificate is checked against.
    pub ca: Option<PathBuf>,
    /// `ssl-cert`: PEM file of this client's certificate (servers that require X509).
    pub cert: Option<PathBuf>,
    /// `ssl-key`: PEM file of the client certificate's private key (PKCS#8).
    pub key: Option<PathBuf>,
}

/// A bad `mysql` URL. Never holds the URL itself (it may carry a password).
#[derive(Debug, thiserror::Error)]
pub enum DsnError {
    /// Not a URL, or a parameter the drivers do not know.
    #[error("{0}")]
    Url(String),
    /// A TLS parameter with a bad value or without its partner.
    #[error("{0}")]
    Tls(String),
    /// A certificate or key file that cannot be read or parsed.
    #[error("{param}={}: {reason}", path.display())]
    File {
        /// The URL parameter naming the file.
        param: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

/// A site's `mysql` URL, split into what the drivers parse and the TLS settings sitesync applies.
#[derive(Clone)]
pub struct Dsn {
    /// The URL without the TLS parameters.
    plain: String,
    /// The TLS settings.
    pub tls: Tls,
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dsn").field("tls", &self.tls).finish_non_exhaustive()
    }
}

impl Dsn {
    /// Parses `url` (`mysql://user:password@host:port/db?ssl-mode=...&ssl-ca=...`).
    pub fn parse(url: &str) -> Result<Dsn, DsnError> {
        let mut parsed = url::Url::parse(url).map_err(|e| DsnError::Url(format!("not a URL ({e})")))?;
        if parsed.scheme() != "mysql" {
            return Err(DsnError::Url(format!("the scheme is {:?}, not mysql://", parsed.scheme())));
        }
        let mut tls = Tls { mode: SslMode::Preferred, ca: None, cert: None, key: None };
        let mut rest: Vec<(String, String)> = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match k.to_ascii_lowercase().replace('_', "-").as_str() {
                "ssl-mode" | "sslmode" => tls.mode = v.parse().map_err(DsnError::Tls)?,
                "ssl-ca" | "sslca" => tls.ca = Some(nonempty("ssl-ca", &v)?),
                "ssl-cert" | "sslcert" => tls.cert = Some(nonempty("ssl-cert", &v)?),
                "ssl-key" | "sslkey" => tls.key = Some(nonempty("ssl-key", &v)?),
                _ => rest.push((k.into_owned(), v.into_owned())),
            }
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(DsnError::Tls("ssl-cert and ssl-key go together: give both or neither".into()));
        }
        if tls.mode == SslMode::Disabled && (tls.ca.is_some() || tls.cert.is_some()) {
            return Err(DsnError::Tls("ssl-mode=disabled with ssl-ca/ssl-cert: say which one you mean".into()));
        }
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(rest);
        }
        let dsn = Dsn { plain: parsed.into(), tls };
        // Both drivers must accept what remains, so that a bad parameter is a start-up error.
        Opts::from_url(&dsn.plain).map_err(|e| DsnError::Url(e.to_string()))?;
        MySqlConnectOptions::from_str(&dsn.plain).map_err(|e| DsnError::Url(e.to_string()))?;
        Ok(dsn)
    }

    /// The host the URL names (what `verify_identity` checks the certificate against).
    pub fn host(&self) -> String {
        url::Url::parse(&self.plain).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default()
    }

    /// `mysql_async` options with TLS. `None` for `disabled`; with `preferred` the caller falls
    /// back to [`Dsn::async_plain`] when the server offers no TLS (see [`connect`]).
    pub fn async_tls(&self) -> Result<Option<Opts>, DsnError> {
        let plain = Opts::from_url(&self.plain).map_err(|e| DsnError::Url(e.to_string()))?;
        if self.tls.mode == SslMode::Disabled {
            return Ok(None);
        }
        let mut ssl = SslOpts::default()
            .with_danger_accept_invalid_certs(!self.tls.mode.verifies())
            .with_danger_skip_domain_validation(self.tls.mode != SslMode::VerifyIdentity);
        if let Some(ca) = &self.tls.ca {
            let pem = read("ssl-ca", ca)?;
            openssl::x509::X509::stack_from_pem(&pem).ok().filter(|certs| !certs.is_empty()).ok_or_else(|| DsnError::File {
                param: "ssl-ca",
                path: ca.clone(),
                reason: "holds no PEM certificate".into(),
            })?;
            ssl = ssl.with_root_certs(vec![pem.into()]);
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            ssl = ssl.with_client_identity(Some(client_identity(cert, key)?));
        }
        // Over a Unix socket mysql_async skips TLS; keep to the TCP address the URL names.
        Ok(Some(OptsBuilder::from_opts(plain).ssl_opts(ssl).prefer_socket(false).into()))
    }

    /// `mysql_async` options without TLS.
    pub fn async_plain(&self) -> Result<Opts, DsnError> {
        Opts::from_url(&self.plain).map_err(|e| DsnError::Url(e.to_string()))
    }

    /// `sqlx` options with the same TLS settings.
    pub fn sqlx(&self) -> Result<MySqlConnectOptions, DsnError> {
        let mut o = MySqlConnectOptions::from_str(&self.plain).map_err(|e| DsnError::Url(e.to_string()))?;
        o = o.ssl_mode(match self.tls.mode {
            SslMode::Disabled => MySqlSslMode::Disabled,
            SslMode::Preferred => MySqlSslMode::Preferred,
            SslMode::Required => MySqlSslMode::Required,
            SslMode::VerifyCa => MySqlSslMode::VerifyCa,
            SslMode::VerifyIdentity => MySqlSslMode::VerifyIdentity,
        });
        if let Some(ca) = &self.tls.ca {
            read("ssl-ca", ca)?;
            o = o.ssl_ca(ca);
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            read("ssl-cert", cert)?;
            read("ssl-key", key)?;
            o = o.ssl_client_cert(cert).ssl_client_key(key);
        }
        Ok(o)
    }
}

fn nonempty(param: &'static str, value: &str) -> Result<PathBuf, DsnError> {
    if value.is_empty() {
        return Err(DsnError::Tls(format!("{param} is empty")));
    }
    Ok(PathBuf::from(value))
}

fn read(param: &'static str, path: &Path) -> Result<Vec<u8>, DsnError> {
    std::fs::read(path).map_err(|e| DsnError::File { param, path: path.to_path_buf(), reason: e.to_string() })
}

/// mysql_async's native TLS takes a client identity as PKCS#12 only: built in memory from the
/// PEM files MySQL users have.
fn client_identity(cert: &Path, key: &Path) -> Result<ClientIdentity, DsnError> {
    let bad = |param: &'static str, path: &Path, e: openssl::error::ErrorStack| DsnError::File {
        param,
        path: path.to_path_buf(),
        reason: format!("not a PEM {} ({e})", if param == "ssl-key" { "private key" } else { "certificate" }),
    };
    let certs = openssl::x509::X509::stack_from_pem(&read("ssl-cert", cert)?).map_err(|e| bad("ssl-cert", cert, e))?;
    let Some((leaf, chain)) = certs.split_first() else {
        return Err(DsnError::File { param: "ssl-cert", path: cert.to_path_buf(), reason: "holds no PEM certificate".into() });
    };
    let pkey = openssl::pkey::PKey::private_key_from_pem(&read("ssl-key", key)?).map_err(|e| bad("ssl-key", key, e))?;
    let mut stack = openssl::stack::Stack::new().map_err(|e| bad("ssl-cert", cert, e))?;
    for c in chain {
        stack.push(c.clone()).map_err(|e| bad("ssl-cert", cert, e))?;
    }
    let archive = openssl::pkcs12::Pkcs12::builder()
        .name("sitesync")
        .pkey(&pkey)
        .cert(leaf)
        .ca(stack)
        .build2("")
        .and_then(|p| p.to_der())
        .map_err(|e| DsnError::File { param: "ssl-key", path: key.to_path_buf(), reason: format!("does not match ssl-cert ({e})") })?;
    Ok(ClientIdentity::new(archive.into()).with_password(""))
}

/// How a connection turned out: encrypted or not, the TLS version and cipher the server reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    /// `Ssl_version` of the session (empty when not encrypted).
    pub version: String,
    /// `Ssl_cipher` of the session.
    pub cipher: String,
}

/// Opens a `mysql_async` connection as the URL asks: with `preferred`, falls back to plaintext
/// when the server offers no TLS (and only then).
pub async fn connect(dsn: &Dsn) -> Result<mysql_async::Conn, mysql_async::Error> {
    let opts = resolve(dsn).await?;
    mysql_async::Conn::new(opts).await
}

/// The `mysql_async` options to use for every connection of this process: with `preferred`,
/// one probe connection decides whether the server offers TLS.
pub async fn resolve(dsn: &Dsn) -> Result<Opts, mysql_async::Error> {
    let bad = |e: DsnError| mysql_async::Error::Other(e.to_string().into());
    let plain = dsn.async_plain().map_err(bad)?;
    let Some(tls) = dsn.async_tls().map_err(bad)? else {
        return Ok(plain);
    };
    if dsn.tls.mode != SslMode::Preferred {
        return Ok(tls);
    }
    match mysql_async::Conn::new(tls.clone()).await {
        Ok(conn) => {
            let _ = conn.disconnect().await;
            Ok(tls)
        }
        Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)) => Ok(plain),
        Err(e) => Err(e),
    }
}

/// What the server says about this session's encryption.
pub async fn encryption(conn: &mut mysql_async::Conn) -> Result<Encryption, mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    let rows: Vec<(String, String)> = conn.query("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')").await?;
    let get = |name: &str| rows.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    Ok(Encryption { version: get("Ssl_version"), cipher: get("Ssl_cipher") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url_and_the_rest_stays() {
        let d = Dsn::parse("mysql://u:p%40ss@db.example:3306/lims?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem").unwrap();
        assert_eq!(d.tls.mode, SslMode::VerifyIdentity);
        assert_eq!(d.tls.ca.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(d.plain, "mysql://u:p%40ss@db.example:3306/lims");
        assert_eq!(d.host(), "db.example");
        let d = Dsn::parse("mysql://u@h/db?ssl_mode=required&prefer_socket=false").unwrap();
        assert_eq!(d.tls.mode, SslMode::Required);
        assert_eq!(d.plain, "mysql://u@h/db?prefer_socket=false");
        assert_eq!(Dsn::parse("mysql://u@h/db").unwrap().tls.mode, SslMode::Preferred, "the default");
    }

    #[test]
    fn bad_tls_parameters_are_named_and_the_password_is_not() {
        let e = Dsn::parse("mysql://u:secret@h/db?ssl-mode=sometimes").unwrap_err().to_string();
        assert!(e.contains("ssl-mode=\"sometimes\"") && !e.contains("secret"), "{e}");
        let e = Dsn::parse("mysql://u:secret@h/db?ssl-cert=/c.pem").unwrap_err().to_string();
        assert!(e.contains("ssl-cert and ssl-key"), "{e}");
        let e = Dsn::parse("mysql://u:secret@h/db?ssl-mode=disabled&ssl-ca=/ca.pem").unwrap_err().to_string();
        assert!(e.contains("disabled"), "{e}");
        let e = Dsn::parse("mysql://u:secret@h/db?sslfoo=1").unwrap_err().to_string();
        assert!(e.contains("sslfoo") && !e.contains("secret"), "{e}");
        let e = Dsn::parse("postgres://u:secret@h/db").unwrap_err().to_string();
        assert!(e.contains("postgres") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let d = Dsn::parse("mysql://u@h/db?ssl-mode=verify_ca&ssl-ca=/nonexistent/ca.pem").unwrap();
        let e = d.async_tls().unwrap_err().to_string();
        assert!(e.starts_with("ssl-ca=/nonexistent/ca.pem: "), "{e}");
        assert!(d.sqlx().unwrap_err().to_string().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn modes_say_what_they_check() {
        assert!(!SslMode::Preferred.verifies() && !SslMode::Preferred.requires());
        assert!(SslMode::Required.requires() && !SslMode::Required.verifies());
        assert!(SslMode::VerifyCa.verifies() && SslMode::VerifyIdentity.verifies());
        let d = Dsn::parse("mysql://u@h/db?ssl-mode=disabled").unwrap();
        assert!(d.async_tls().unwrap().is_none());
    }
}
