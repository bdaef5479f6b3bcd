//! `sitesync dlq replay`: dead letters applied again once their cause is fixed.

use super::*;
use crate::record::shown;

/// What `sitesync dlq replay` did with one dead letter.
#[derive(Debug)]
pub struct Replayed {
    /// Dead letter id.
    pub id: u64,
    /// `None` when applied (and removed), else why it still fails (it stays).
    pub failure: Option<String>,
}

/// Applies dead letters again (all, or the one with `only`), oldest first: the letters of one
/// source transaction together in one local transaction with the echo marker. Those that apply
/// are removed, the others stay.
pub async fn replay(config: &Config, site: &str, only: Option<u64>) -> Result<Vec<Replayed>, ApplyError> {
    let site_cfg = config.site(site).map_err(|e| ApplyError::Config(e.to_string()))?;
    let pool = control::connect(site, site_cfg.mysql.expose(), 2).await?;
    let control = Control::new(pool.clone(), &config.federation.control_database);
    let origins = config.origins_of(site);
    let plans = load_plans(config, site, &pool, &origins).await?;
    // One letter is read alone: the others may hold large values.
    let letters: Vec<_> = match only {
        Some(id) => control.dead_letter(id).await?.into_iter().collect(),
        None => control.list_dead_letters().await?,
    };
    if let (Some(id), true) = (only, letters.is_empty()) {
        return Err(ApplyError::Config(format!("no dead letter {id} at site {site}")));
    }
    // The letters of one source transaction replay together, in one local transaction.
    // (dead-letter id, the record or why it is unreadable, its reason)
    type Letter = (u64, Result<ChangeRecord, String>, String);
    let mut groups: Vec<(String, Vec<Letter>)> = Vec::new();
    for d in letters {
        let origin = d.origin.clone();
        // Vetted as when it arrived: a bad record stays a dead letter. A transaction that held
        // an unreadable record can never be applied whole, so none of its records is.
        let parsed = ChangeRecord::from_slice(d.value.as_deref()).map_err(|e| e.to_string()).and_then(|r| {
            if let Some(o) = origin.as_deref().filter(|o| *o != r.sitesync.origin) {
                return Err(format!("record says origin `{}` but arrived on the topic of site `{o}`", shown(&r.sitesync.origin)));
            }
            // A letter keeps its message key (those of parked transactions have none): one
            // that arrived without a key is still without.
            if d.key.is_some() || d.reason.starts_with("message key") {
                vet::message_key(d.key.as_deref(), &r).map_err(|e| e.to_string())?;
            }
            vet::record(config, &plans, &r).map_err(|e| e.to_string())?;
            if d.reason == PART_OF_UNREADABLE {
                return Err(format!("{PART_OF_UNREADABLE}, which cannot be applied: drop them together"));
            }
            Ok(r)
        });
        let origin = origin.or_else(|| parsed.as_ref().ok().map(|r| r.sitesync.origin.clone())).unwrap_or_default();
        // Grouped by source transaction, even where the record itself is unreadable but its
        // head is not: its transaction's other letters then fail with it.
        let txn = match &parsed {
            Ok(r) => Some(r.transaction.id.clone()),
            Err(_) => RecordHead::from_slice(d.value.as_deref()).ok().map(|h| h.transaction_id),
        };
        let group = match txn {
            Some(txn) => format!("{origin}|{txn}"),
            None => format!("letter {}", d.id),
        };
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, members)) => members.push((d.id, parsed, origin)),
            None => groups.push((group, vec![(d.id, parsed, origin)])),
        }
    }
    let mut out = Vec::new();
    for (_, members) in groups {
        let failure = replay_group(config, site, &pool, &control, &plans, &members).await?;
        out.extend(members.iter().map(|(id, _, _)| Replayed { id: *id, failure: failure.clone() }));
    }
    Ok(out)
}

/// Applies one source transaction's dead letters in one local transaction; why not, if not.
async fn replay_group(
    config: &Config,
    site: &str,
    pool: &sqlx::MySqlPool,
    control: &Control,
    plans: &Plans,
    members: &[(u64, Result<ChangeRecord, String>, String)],
) -> Result<Option<String>, ApplyError> {
    let mut tx = pool.begin().await.map_err(ApplyError::Database)?;
    control.write_marker(&mut tx).await.map_err(ApplyError::Database)?;
    for (id, parsed, origin) in members {
        let r = match parsed {
            Ok(r) => r,
            Err(e) => return Ok(Some(format!("letter {id}: {e}"))),
        };
        match plans.get(&r.sitesync.entity) {
            Some(plan) if r.sitesync.is_for(site) && config.routes_entity(origin, site, &r.sitesync.entity) => {
                if let Err(e) = plan.apply(&mut tx, origin, r, plans).await {
                    return Ok(Some(e.to_string()));
                }
            }
            _ => return Ok(Some(format!("entity `{}` is not routed from {origin} to {site}", r.sitesync.entity))),
        }
        control.delete_dead_letter(&mut tx, *id).await.map_err(ApplyError::Database)?;
    }
    tx.commit().await.map_err(ApplyError::Database)?;
    Ok(None)
}
