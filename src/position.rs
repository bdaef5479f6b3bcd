//! Binlog positions: GTID states of MariaDB (`domain-server-seq` per domain) and MySQL
//! (`uuid:1-7:9-10` interval sets), and the id of one transaction.
//!
//! Capture resumes from a [`GtidState`]; apply deduplicates with [`TxnId`]: within one stream
//! (a MariaDB domain, a MySQL server uuid) sequence numbers grow in commit order, so a transaction
//! whose sequence is not above the last applied one of its stream was applied already.

use std::collections::BTreeMap;
use std::fmt;

/// A GTID string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a valid GTID {what}: {reason}")]
pub struct GtidParseError {
    text: String,
    what: &'static str,
    reason: String,
}

fn parse_err(text: &str, what: &'static str, reason: impl Into<String>) -> GtidParseError {
    GtidParseError { text: text.to_string(), what, reason: reason.into() }
}

/// The set of transactions a reader has seen, in the server's own flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtidState {
    /// MariaDB: the last GTID per replication domain: domain -> (server id, sequence).
    MariaDb(BTreeMap<u32, (u32, u64)>),
    /// MySQL: executed GTID set: server uuid -> sorted, disjoint, inclusive intervals.
    MySql(BTreeMap<String, Vec<(u64, u64)>>),
}

impl GtidState {
    /// An empty MariaDB state.
    pub fn empty_mariadb() -> Self {
        GtidState::MariaDb(BTreeMap::new())
    }

    /// Parses `@@gtid_binlog_pos` (MariaDB) or `@@gtid_executed` (MySQL). The flavour decides,
    /// since an empty string is valid in both.
    pub fn parse(text: &str, mysql: bool) -> Result<Self, GtidParseError> {
        let parts = text.split(',').map(str::trim).filter(|p| !p.is_empty());
        if mysql {
            let mut set = BTreeMap::new();
            for part in parts {
                let (uuid, intervals) = part.split_once(':').ok_or_else(|| parse_err(text, "set", "expected uuid:interval"))?;
                if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    return Err(parse_err(text, "set", format!("`{uuid}` is not a server uuid")));
                }
                let mut ranges: Vec<(u64, u64)> = Vec::new();
                for interval in intervals.split(':') {
                    let (a, b) = match interval.split_once('-') {
                        Some((a, b)) => (a, b),
                        None => (interval, interval),
                    };
                    let a: u64 = a.parse().map_err(|_| parse_err(text, "set", format!("`{interval}` is not an interval")))?;
                    let b: u64 = b.parse().map_err(|_| parse_err(text, "set", format!("`{interval}` is not an interval")))?;
                    if a == 0 || b < a {
                        return Err(parse_err(text, "set", format!("`{interval}` is not an interval")));
                    }
                    ranges.push((a, b));
                }
                let entry: &mut Vec<(u64, u64)> = set.entry(uuid.to_ascii_lowercase()).or_default();
                for (a, b) in ranges {
                    insert_range(entry, a, b);
                }
            }
            Ok(GtidState::MySql(set))
        } else {
            let mut state = BTreeMap::new();
            for part in parts {
                let TxnId { stream, seq } = TxnId::parse(part)?;
                let mut it = part.split('-');
                let domain: u32 = stream.parse().map_err(|_| parse_err(text, "position", "bad domain"))?;
                let server: u32 = it.nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| parse_err(text, "position", "bad server id"))?;
                if state.insert(domain, (server, seq)).is_some() {
                    return Err(parse_err(text, "position", format!("domain {domain} appears twice")));
                }
            }
            Ok(GtidState::MariaDb(state))
        }
    }

    /// Records that the transaction `gtid` was read.
    pub fn advance(&mut self, gtid: &Gtid) {
        match (self, gtid) {
            (GtidState::MariaDb(state), Gtid::MariaDb { domain, server, seq }) => {
                state.insert(*domain, (*server, *seq));
            }
            (GtidState::MySql(set), Gtid::MySql { uuid, gno }) => {
                insert_range(set.entry(uuid.clone()).or_default(), *gno, *gno);
            }
            // A server cannot change flavour under a reader; keep the state as it is.
            _ => {}
        }
    }

    /// MySQL: whether `gno` of `uuid` is in the set (used by tests of resume with gaps).
    pub fn contains(&self, gtid: &Gtid) -> bool {
        match (self, gtid) {
            (GtidState::MariaDb(state), Gtid::MariaDb { domain, seq, .. }) => state.get(domain).is_some_and(|(_, s)| s >= seq),
            (GtidState::MySql(set), Gtid::MySql { uuid, gno }) => {
                set.get(uuid).is_some_and(|r| r.iter().any(|(a, b)| a <= gno && gno <= b))
            }
            _ => false,
        }
    }
}

/// Inserts [a, b] into sorted disjoint inclusive ranges, merging neighbours.
fn insert_range(ranges: &mut Vec<(u64, u64)>, a: u64, b: u64) {
    ranges.push((a, b));
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    *ranges = merged;
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GtidState::MariaDb(state) => {
                let parts: Vec<String> = state.iter().map(|(d, (s, n))| format!("{d}-{s}-{n}")).collect();
                f.write_str(&parts.join(","))
            }
            GtidState::MySql(set) => {
                let parts: Vec<String> = set
                    .iter()
                    .map(|(uuid, ranges)| {
                        let mut s = uuid.clone();
                        for (a, b) in ranges {
                            if a == b {
                                s.push_str(&format!(":{a}"));
                            } else {
                                s.push_str(&format!(":{a}-{b}"));
                            }
                        }
                        s
                    })
                    .collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// The GTID of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Gtid {
    /// MariaDB `domain-server-seq`.
    MariaDb {
        /// Replication domain.
        domain: u32,
        /// Originating server id.
        server: u32,
        /// Sequence number within the domain.
        seq: u64,
    },
    /// MySQL `uuid:gno`.
    MySql {
        /// Originating server uuid, lower case.
        uuid: String,
        /// Transaction number.
        gno: u64,
    },
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtid::MariaDb { domain, server, seq } => write!(f, "{domain}-{server}-{seq}"),
            Gtid::MySql { uuid, gno } => write!(f, "{uuid}:{gno}"),
        }
    }
}

impl Gtid {
    /// Parses the MariaDB GTID event body: sequence u64 LE, domain u32 LE, flags u8.
    pub fn from_mariadb_event(body: &[u8], server: u32) -> Option<(Gtid, u8)> {
        let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
        let domain = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
        let flags = *body.get(12)?;
        Some((Gtid::MariaDb { domain, server, seq }, flags))
    }

    /// Formats a MySQL 16-byte sid as a uuid string.
    pub fn mysql_from_sid(sid: [u8; 16], gno: u64) -> Gtid {
        let h: String = sid.iter().map(|b| format!("{b:02x}")).collect();
        let uuid = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
        Gtid::MySql { uuid, gno }
    }
}

/// A transaction's place in its stream: applied transactions of a stream have growing `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnId {
    /// MariaDB domain id, or MySQL server uuid.
    pub stream: String,
    /// Sequence within the stream.
    pub seq: u64,
}

impl TxnId {
    /// Parses a transaction GTID as written in `transaction.id`: `0-1-42` or `uuid:42`.
    pub fn parse(text: &str) -> Result<TxnId, GtidParseError> {
        if let Some((uuid, gno)) = text.rsplit_once(':') {
            let seq = gno.parse().map_err(|_| parse_err(text, "transaction id", "bad transaction number"))?;
            if uuid.len() < 36 {
                return Err(parse_err(text, "transaction id", "bad server uuid"));
            }
            return Ok(TxnId { stream: uuid.to_ascii_lowercase(), seq });
        }
        let parts: Vec<&str> = text.split('-').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
            return Err(parse_err(text, "transaction id", "expected domain-server-sequence"));
        }
        let seq = parts[2].parse().map_err(|_| parse_err(text, "transaction id", "sequence out of range"))?;
        parts[1].parse::<u32>().map_err(|_| parse_err(text, "transaction id", "server id out of range"))?;
        parts[0].parse::<u32>().map_err(|_| parse_err(text, "transaction id", "domain out of range"))?;
        Ok(TxnId { stream: parts[0].to_string(), seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

    #[test]
    fn mysql_set_with_gaps_round_trips_and_keeps_the_gap() {
        let text = format!("{U}:1-7:9-10");
        let mut set = GtidState::parse(&text, true).unwrap();
        assert_eq!(set.to_string(), text);
        let eight = Gtid::MySql { uuid: U.into(), gno: 8 };
        assert!(!set.contains(&eight), "transaction 8 is not in {text} and must not be skipped");
        set.advance(&eight);
        assert_eq!(set.to_string(), format!("{U}:1-10"));
    }

    #[test]
    fn mysql_sets_merge_out_of_order_intervals() {
        let set = GtidState::parse(&format!("{U}:9-10:1-3:4"), true).unwrap();
        assert_eq!(set.to_string(), format!("{U}:1-4:9-10"));
        assert!(GtidState::parse("nonsense:1", true).is_err());
        assert!(GtidState::parse(&format!("{U}:5-2"), true).is_err());
    }

    #[test]
    fn mariadb_multi_domain_state_advances_per_domain() {
        let mut s = GtidState::parse("0-1-100,1-2-7", false).unwrap();
        s.advance(&Gtid::MariaDb { domain: 1, server: 2, seq: 8 });
        s.advance(&Gtid::MariaDb { domain: 3, server: 9, seq: 1 });
        assert_eq!(s.to_string(), "0-1-100,1-2-8,3-9-1");
        assert!(s.contains(&Gtid::MariaDb { domain: 0, server: 1, seq: 99 }));
        assert!(!s.contains(&Gtid::MariaDb { domain: 1, server: 2, seq: 9 }));
        assert_eq!(GtidState::parse("", false).unwrap(), GtidState::empty_mariadb());
        assert!(GtidState::parse("0-1-2,0-1-3", false).is_err());
    }

    #[test]
    fn parses_mariadb_gtid_event_bytes() {
        let mut body = 42u64.to_le_bytes().to_vec();
        body.extend_from_slice(&7u32.to_le_bytes());
        body.push(1);
        let (g, flags) = Gtid::from_mariadb_event(&body, 3).unwrap();
        assert_eq!(g.to_string(), "7-3-42");
        assert_eq!(flags, 1);
        assert!(Gtid::from_mariadb_event(&body[..5], 3).is_none());
    }

    #[test]
    fn transaction_ids_of_both_flavours() {
        assert_eq!(TxnId::parse("0-1-42").unwrap(), TxnId { stream: "0".into(), seq: 42 });
        assert_eq!(TxnId::parse(&format!("{U}:42")).unwrap(), TxnId { stream: U.into(), seq: 42 });
        assert!(TxnId::parse("0-1").is_err());
        assert!(TxnId::parse("x:1").is_err());
        let sid = [0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42, 0x95, 0x62];
        assert_eq!(Gtid::mysql_from_sid(sid, 5).to_string(), format!("{U}:5"));
    }
}
