//! `${...}` expansion in every string of the file: `${VAR}` from the environment,
//! `${file:/path}` from a file (a secret mounted by Docker, Kubernetes or an operator) and
//! `${credential:NAME}` from systemd's credentials (`$CREDENTIALS_DIRECTORY/NAME`, a unit's
//! `LoadCredential=`). `$$` is a literal `$`.
//!
//! Expansion runs on parsed TOML values, not on the raw text, so a password holding a quote or
//! a newline cannot change the file's structure; what a file or variable holds is taken as it
//! is (a `$` in a password is not expanded again). Error messages name the variable, path or
//! credential, never what it holds.

use std::path::Path;

use super::ConfigProblem;

/// Replaces `${...}` in every string of `value`; returns one problem per source that fails.
pub(super) fn expand_env(value: &mut toml::Value, env: &dyn Fn(&str) -> Option<String>) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    walk(value, String::new(), env, &mut problems);
    problems
}

fn walk(value: &mut toml::Value, key: String, env: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<ConfigProblem>) {
    match value {
        toml::Value::String(s) => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(ConfigProblem { key, message }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{key}[{i}]"), env, problems);
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let path = if key.is_empty() { k.clone() } else { format!("{key}.{k}") };
                walk(v, path, env, problems);
            }
        }
        _ => {}
    }
}

/// The forms, for messages.
const FORMS: &str = "`${VAR}`, `${file:/path}` or `${credential:NAME}`";

/// Expands one string. `$$` is a literal `$`.
pub(super) fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| format!("unterminated `${{` (expected {FORMS})"))?;
            out.push_str(&resolve(&body[..end], env)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of one `${...}` body.
fn resolve(body: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if let Some(path) = body.strip_prefix("file:") {
        if !Path::new(path).is_absolute() {
            return Err(format!("`${{file:{path}}}`: the path must be absolute, as in `${{file:/run/secrets/sitesync}}`"));
        }
        return read_secret(Path::new(path), &format!("secret file {path}"));
    }
    if let Some(name) = body.strip_prefix("credential:") {
        // systemd's credential names: no path separators, not `.` or `..`.
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return Err(format!("`${{credential:{name}}}` is not a valid credential name"));
        }
        let dir = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()).ok_or_else(|| {
            format!(
                "`${{credential:{name}}}` needs CREDENTIALS_DIRECTORY, which is not set: run sitesync as a systemd unit with \
                 `LoadCredential={name}:/path` (or `SetCredentialEncrypted=`), or use `${{file:/path}}`"
            )
        })?;
        let path = Path::new(&dir).join(name);
        return read_secret(&path, &format!("systemd credential {name} ({})", path.display()));
    }
    if body.is_empty() || !body.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`${{{body}}}` is not a valid variable name (expected {FORMS})"));
    }
    env(body).ok_or_else(|| format!("environment variable {body} is not set"))
}

/// A secret's text: the whole file less one trailing newline (`\n` or `\r\n`). `what` names it
/// in errors, which never show its content.
fn read_secret(path: &Path, what: &str) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{what} is missing ({e})"),
        _ => format!("{what} is unreadable ({e})"),
    })?;
    let mut text = String::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}
