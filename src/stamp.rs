//! Last-writer-wins stamps: a total order on the versions of one row that every site computes
//! alike, and that respects causality.
//!
//! An entity with `conflict = { version_column = "mtime" }` keeps, per row, the version its
//! application wrote. Versions alone do not order changes well: LIMS2 writes whole seconds, so a
//! change made at site A on top of one that just arrived from C often carries the same version,
//! and breaking that tie by site id would throw A's change away although A made it knowing C's.
//! Comparing the incoming before image with the local row is not enough either: a third site
//! may receive A's change before C's, and would then let C's change win.
//!
//! So every change carries a stamp `(version, depth, site)`, a Lamport clock per row: the
//! origin's capture computes it from the stamp of the last version of the row that its applier
//! wrote ([`Stamp::after`]): a larger version starts at depth 0, an equal (or, with clocks
//! apart, a smaller) one goes one deeper. A change made on top of one received therefore always
//! orders after it, concurrent changes order by version, then depth, then site id, and every
//! site that has seen the same changes holds the same winner, in whatever order they arrived.
//!
//! Stamps travel in the record (`sitesync.stamp`), are kept per row in the control table
//! `row_versions` with the version column's value and a digest of the row they belong to, and
//! decide in [`Stamp::loses_to`]. A site's own application's later change of a row is told from
//! the version its applier wrote by the digest, and stamped alike by capture and apply
//! ([`of_row`]); successive changes by one site of one row do not stack depth (apply could not
//! tell them apart), so two of them whose version goes down in between may order wrongly.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A change's place in the order of one row's versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The version, as text (numbers compare as numbers, other values as text).
    pub version: String,
    /// How many changes with this version were made on top of one another.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
    /// The site whose application made the change.
    pub site: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Stamp {
    /// A stamp of `version` at depth 0.
    pub fn new(version: impl Into<String>, site: impl Into<String>) -> Self {
        Stamp { version: version.into(), depth: 0, site: site.into() }
    }

    /// The stamp of a change that `site` made with `version` on top of the row version stamped
    /// `base` (None: nothing known before it): ordered after `base` in any case.
    pub fn after(base: Option<&Stamp>, version: &str, site: &str) -> Stamp {
        match base {
            Some(base) if compare_versions(version, &base.version) != Ordering::Greater => {
                Stamp { version: base.version.clone(), depth: base.depth.saturating_add(1), site: site.to_string() }
            }
            _ => Stamp::new(version, site),
        }
    }

    /// The total order: version, then depth, then site id.
    pub fn order(&self, other: &Stamp) -> Ordering {
        compare_versions(&self.version, &other.version).then(self.depth.cmp(&other.depth)).then_with(|| self.site.cmp(&other.site))
    }

    /// Whether a change stamped `self` loses to the row version stamped `local`. An equal stamp
    /// is the same site's next change within one version: it is applied.
    pub fn loses_to(&self, local: &Stamp) -> bool {
        self.order(local) == Ordering::Less
    }
}

/// What is known of a row's stamp (the control table `row_versions`, and capture's memory of
/// it): the stamp of the version it holds (or held when it was deleted), and the version
/// column's value that stamp belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    /// The stamp (its site is who wrote the version).
    pub stamp: Stamp,
    /// The version column's value as written with it: a row still holding this value holds
    /// this stamp's version.
    pub row_version: String,
    /// The row was deleted (a tombstone).
    pub deleted: bool,
    /// A digest of the whole row as the applier wrote it (None: not known): a row that differs
    /// from it was written since by this site's application, even with the same version.
    pub content: Option<String>,
}

/// The stamp of a row at `site` whose version column holds `version` (and, where known,
/// whose digest is `content`), given what is recorded of it: the recorded stamp while the row
/// is still as recorded; otherwise `site`'s application wrote it, on top of what was
/// recorded. Capture stamps each change of its application by this rule applied to the row
/// the change leaves, and apply compares incoming changes with the local row by it, so both
/// see the same stamp for the same row.
pub fn of_row(version: &str, content: Option<&str>, recorded: Option<&VersionEntry>, site: &str) -> Stamp {
    match recorded {
        Some(e)
            if !e.deleted && e.row_version == version && (content.is_none() || e.content.is_none() || e.content.as_deref() == content) =>
        {
            e.stamp.clone()
        }
        Some(e) => Stamp::after(Some(&e.stamp), version, site),
        None => Stamp::new(version, site),
    }
}

/// Orders two versions: numerically when both are numbers, else as text (dates compare
/// correctly as `YYYY-MM-DD HH:MM:SS` text).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    // Exact first: BIGINT versions beyond 2^53 would compare equal as floats.
    if let (Ok(x), Ok(y)) = (a.parse::<i128>(), b.parse::<i128>()) {
        return x.cmp(&y);
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.cmp(b),
    }
}

/// A version column's value in a record, as text (the form `row_versions` keeps).
pub fn version_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A row's identity in `row_versions`: its key values as text, in key order, as a JSON array.
pub fn row_key_of_texts(texts: impl IntoIterator<Item = String>) -> String {
    Value::Array(texts.into_iter().map(Value::String).collect()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(version: &str, depth: u32, site: &str) -> Stamp {
        Stamp { version: version.into(), depth, site: site.into() }
    }

    #[test]
    fn versions_compare_as_numbers_or_text() {
        use Ordering::*;
        assert_eq!(compare_versions("10", "9"), Greater);
        assert_eq!(compare_versions("2024-01-02 00:00:00", "2024-01-01 23:59:59"), Greater);
        assert_eq!(compare_versions("5", "5.0"), Equal);
        assert_eq!(compare_versions("9007199254740993", "9007199254740992"), Greater);
    }

    #[test]
    fn a_change_made_on_top_of_another_orders_after_it_whatever_its_version() {
        let c = s("100", 0, "c");
        // Same second: one deeper, so it beats c and anything concurrent with c at depth 0.
        let a = Stamp::after(Some(&c), "100", "a");
        assert_eq!(a, s("100", 1, "a"));
        assert!(c.loses_to(&a) && !a.loses_to(&c));
        assert!(s("100", 0, "z").loses_to(&a), "a concurrent change of the same second loses to one made knowing c");
        // A clock behind: the version went down, the stamp does not.
        assert_eq!(Stamp::after(Some(&c), "99", "a"), s("100", 1, "a"));
        // A later second starts again at depth 0.
        assert_eq!(Stamp::after(Some(&c), "101", "a"), s("101", 0, "a"));
        assert_eq!(Stamp::after(None, "7", "a"), s("7", 0, "a"));
    }

    #[test]
    fn the_issues_reordering_converges_at_every_site() {
        // C creates p (T); A receives it and renames it within the same second; B receives A's
        // rename before C's create. Every order of arrival ends with A's rename.
        let c = s("1700000000", 0, "c");
        let a = Stamp::after(Some(&c), "1700000000", "a");
        for order in [[&c, &a], [&a, &c]] {
            let mut local: Option<&Stamp> = None;
            for incoming in order {
                if local.is_none_or(|l| !incoming.loses_to(l)) {
                    local = Some(incoming);
                }
            }
            assert_eq!(local, Some(&a));
        }
    }

    #[test]
    fn stamps_travel_compactly() {
        assert_eq!(serde_json::to_string(&s("5", 0, "a")).unwrap(), r#"{"version":"5","site":"a"}"#);
        assert_eq!(serde_json::from_str::<Stamp>(r#"{"version":"5","depth":2,"site":"a"}"#).unwrap(), s("5", 2, "a"));
    }
}
