//! What a record must be before any of it is applied, beyond its own shape (`record.rs`): its
//! entity is one the configuration names, the message key is the record's own, and its natural
//! key is the key columns of its row. A record that is not is a dead letter with the reason;
//! the stream goes on. Column names are checked against the local table where they are used
//! ([`super::TargetTable::column`]); values are bound, never written into SQL.
//!
//! Also what of a bad record is kept: the control tables' columns are bounded (an entity name
//! of 64 characters, a reason of 64 KiB), and a hostile record must not make storing its dead
//! letter fail, which would stop the stream.

use std::borrow::Cow;

use super::assemble::Incoming;
use super::writer::{EntityPlan, Plans};
use super::ApplyError;
use crate::config::Config;
use crate::record::{self, shown, ChangeRecord, Op, RecordKey};

/// The whole record of `inc`, vetted: unreadable, or not what the message key, the
/// configuration and the local tables say ([`message_key`], [`record`]), it is a definite error
/// (its transaction becomes dead letters).
pub(super) fn read(config: &Config, plans: &Plans, inc: &Incoming) -> Result<ChangeRecord, ApplyError> {
    let r = inc.record().map_err(super::unreadable_record)?;
    message_key(inc.key.as_deref(), &r)?;
    record(config, plans, &r)?;
    Ok(r)
}

/// Checks `r` against the configuration and the local tables (`plans`); see the module.
pub(super) fn record(config: &Config, plans: &Plans, r: &ChangeRecord) -> Result<(), ApplyError> {
    let entity = &r.sitesync.entity;
    if !config.entities.contains_key(entity) {
        return Err(ApplyError::Definite(format!(
            "entity `{}` is not in the configuration (a foreign producer, or an origin with a newer federation file: \
             deploy the same file here, then `sitesync dlq replay`)",
            shown(entity)
        )));
    }
    if let Some(plan) = plans.get(entity) {
        plan.vet_key(r)?;
    }
    Ok(())
}

/// Checks that the Kafka message key `key` is the record's own: its entity and natural key.
pub(super) fn message_key(key: Option<&[u8]>, r: &ChangeRecord) -> Result<(), ApplyError> {
    let bad = |why: String| ApplyError::Definite(format!("message key: {why}"));
    let key = key.ok_or_else(|| bad("none (expected {\"entity\":...,\"key\":{...}})".into()))?;
    // As capture writes it (the usual case, and cheaper than parsing), or equal as JSON.
    if key == record::key_bytes(&r.sitesync.entity, &r.sitesync.key) {
        return Ok(());
    }
    let key: RecordKey = record::parse(key).map_err(bad)?;
    if key.entity != r.sitesync.entity {
        return Err(bad(format!("names entity `{}`, the record `{}`", shown(&key.entity), shown(&r.sitesync.entity))));
    }
    if key.key != r.sitesync.key {
        return Err(bad(format!(
            "{} is not the record's key {}",
            shown(&serde_json::Value::Object(key.key).to_string()),
            shown(&serde_json::Value::Object(r.sitesync.key.clone()).to_string())
        )));
    }
    Ok(())
}

impl EntityPlan {
    /// Checks that `sitesync.key` is exactly this entity's key columns, with the values of the
    /// row (after the change; before it for a delete): parked changes wait behind rows by that
    /// key, so a key that is not the row's would let a change pass the one it must follow.
    pub(super) fn vet_key(&self, r: &ChangeRecord) -> Result<(), ApplyError> {
        let bad = |why: String| ApplyError::Definite(format!("`sitesync.key` of entity `{}`: {why}", self.name));
        let image = match r.op {
            Op::Delete => r.before.as_ref(),
            Op::Create | Op::Read | Op::Update => r.after.as_ref(),
        };
        let Some(image) = image else { return Err(bad("the record lacks its row image".into())) };
        let key = &r.sitesync.key;
        if let Some(column) = key.keys().find(|c| !self.key_columns.contains(c)) {
            return Err(bad(format!("`{}` is not a key column (the key is {})", shown(column), self.key_columns.join(", "))));
        }
        for column in &self.key_columns {
            let Some(value) = key.get(column) else { return Err(bad(format!("lacks key column `{column}`"))) };
            match image.get(column) {
                Some(v) if v == value => {}
                Some(v) => return Err(bad(format!("`{column}` is {}, the row's is {}", shown(&value.to_string()), shown(&v.to_string())))),
                None if self.config.exclude.contains(column) => {}
                None => return Err(bad(format!("the row lacks key column `{column}`"))),
            }
        }
        Ok(())
    }
}

/// The longest reason stored with a dead letter or a parked transaction (the columns are TEXT,
/// 65,535 bytes).
const MAX_REASON_BYTES: usize = 16 * 1024;

/// `reason` as the control tables can hold it: cut at [`MAX_REASON_BYTES`] on a character
/// boundary, saying so.
pub(super) fn fit_reason(reason: &str) -> Cow<'_, str> {
    if reason.len() <= MAX_REASON_BYTES {
        return Cow::Borrowed(reason);
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes in all)", &reason[..end], reason.len()))
}

/// The entity stored with a dead letter (VARCHAR(64)): a configured one as it is, another
/// cut to 64 characters (the record itself is kept whole).
pub(super) fn fit_entity(entity: &str) -> &str {
    match entity.char_indices().nth(64) {
        Some((end, _)) => &entity[..end],
        None => entity,
    }
}

/// The `entity` label of a metric: a configured entity, or `(unknown)`, so that a producer
/// inventing names cannot make the metrics grow without bound.
pub(super) fn entity_label<'a>(config: &Config, entity: &'a str) -> &'a str {
    if config.entities.contains_key(entity) || entity == "(unreadable)" {
        entity
    } else {
        "(unknown)"
    }
}
