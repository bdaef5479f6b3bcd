//! `${VAR}` expansion in every string of the file, from the environment.
//!
//! Expansion runs on parsed TOML values, not on the raw text, so a password holding a quote or
//! a newline cannot change the file's structure.

use super::ConfigProblem;

/// Replaces `${VAR}` in every string of `value`; returns one problem per missing variable.
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
            let end = body.find('}').ok_or_else(|| "unterminated `${` (expected `${NAME}`)".to_string())?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{name}}}` is not a valid variable name"));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
