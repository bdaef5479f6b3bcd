//! Source transactions from messages: a topic partition carries each transaction's records in
//! order, numbered 1, 2, ... (`transaction.total_order`), the last one flagged. This module puts
//! them together, with no I/O, so that a transaction is applied whole or not at all:
//! - a record numbered 1 again, or of another transaction, before the last one arrived means
//!   capture restarted and publishes the transaction again from its start: the incomplete copy
//!   is discarded;
//! - a record whose transaction's first record never arrived is dropped (and reported);
//! - an unreadable message stands alone, or inside the transaction around it, and becomes a
//!   dead letter when that completes.

use std::collections::HashMap;

use crate::position::TxnId;
use crate::record::{self, ChangeRecord, RecordHead};

/// One consumed message: its bytes and the head that places it in its source transaction. The
/// whole record is read when it is applied, so a transaction still arriving waits as compact
/// message bytes (100,000 rows: tens of MB, not the several hundred its parsed rows take).
pub(super) struct Incoming {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub head: Result<RecordHead, String>,
}

impl Incoming {
    /// The whole record.
    pub fn record(&self) -> Result<ChangeRecord, String> {
        ChangeRecord::from_slice(self.value.as_deref()).map_err(|e| e.to_string())
    }

    /// The entity the record names, for counting.
    pub fn entity(&self) -> String {
        self.head.as_ref().map(|h| h.entity.clone()).unwrap_or_else(|_| "(unreadable)".into())
    }
}

/// A source transaction whose every record arrived (or a lone undecodable message).
pub(super) struct CompleteTxn {
    pub topic: String,
    pub partition: i32,
    pub origin: String,
    /// Its GTID, parsed and as text; `None` for snapshot chunks and catch-up transactions,
    /// which are never taken for duplicates.
    pub txn: Option<(TxnId, String)>,
    pub source_ts_ms: i64,
    pub records: Vec<Incoming>,
}

impl CompleteTxn {
    /// The offset after its last record.
    pub fn next_offset(&self) -> i64 {
        self.records.last().map(|r| r.offset + 1).unwrap_or(0)
    }

    /// Whether this is a chunk of a snapshot (rows as they were, not changes).
    pub fn is_snapshot(&self) -> bool {
        self.records.first().and_then(|r| r.head.as_ref().ok()).is_some_and(|h| record::is_snapshot_transaction(&h.transaction_id))
    }
}

/// Records of a transaction still arriving, per topic partition.
#[derive(Default)]
struct Partial {
    id: Option<String>,
    last_order: u64,
    records: Vec<Incoming>,
}

/// What one message did.
#[derive(Default)]
pub(super) struct Pushed {
    /// The transaction it completed.
    pub complete: Option<CompleteTxn>,
    /// Records of an incomplete copy discarded (a transaction published again from its start).
    pub discarded: usize,
    /// The message itself, dropped: its transaction's first record never arrived.
    pub dropped: Option<Incoming>,
}

/// Transactions still arriving, per topic partition.
#[derive(Default)]
pub(super) struct Assembler {
    partials: HashMap<(String, i32), Partial>,
}

impl Assembler {
    /// Takes the next message of `topic`/`partition` (the topic of site `origin`).
    pub fn push(&mut self, topic: &str, partition: i32, origin: &str, incoming: Incoming) -> Pushed {
        let mut pushed = Pushed::default();
        let partial = self.partials.entry((topic.to_string(), partition)).or_default();
        let (id, order, last) = match &incoming.head {
            Ok(h) => (Some(h.transaction_id.clone()), h.total_order, h.last_in_transaction),
            // An unreadable message cannot say which transaction it belongs to: it stands alone
            // and becomes a dead letter when the transaction around it (if any) completes.
            Err(_) => (partial.id.clone(), partial.last_order, partial.id.is_none()),
        };
        if incoming.head.is_ok() && !partial.records.is_empty() && (partial.id != id || order != partial.last_order + 1) {
            pushed.discarded = partial.records.len();
            partial.records.clear();
        }
        if incoming.head.is_ok() && partial.records.is_empty() && order != 1 {
            partial.id = None;
            partial.last_order = 0;
            pushed.dropped = Some(incoming);
            return pushed;
        }
        partial.id = id;
        partial.last_order = order;
        partial.records.push(incoming);
        if !last {
            return pushed;
        }
        let records = std::mem::take(&mut partial.records);
        partial.id = None;
        partial.last_order = 0;
        let first_ok = records.iter().find_map(|r| r.head.as_ref().ok());
        let txn = first_ok.and_then(|h| TxnId::parse(&h.transaction_id).ok().map(|t| (t, h.transaction_id.clone())));
        let source_ts_ms = first_ok.map(|h| h.ts_ms).unwrap_or(0);
        pushed.complete = Some(CompleteTxn { topic: topic.to_string(), partition, origin: origin.to_string(), txn, source_ts_ms, records });
        pushed
    }

    /// The commit time of the oldest transaction still arriving on the topics `of_origin` says
    /// yes to (for the lag: it is not applied yet).
    pub fn oldest_waiting(&self, of_origin: impl Fn(&str) -> bool) -> Option<i64> {
        self.partials
            .iter()
            .filter(|((topic, _), _)| of_origin(topic))
            .filter_map(|(_, p)| p.records.first().and_then(|r| r.head.as_ref().ok()).map(|h| h.ts_ms))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: i64, txn: &str, order: u64, last: bool) -> Incoming {
        let head = RecordHead {
            origin: "a".into(),
            entity: "user".into(),
            transaction_id: txn.into(),
            total_order: order,
            last_in_transaction: last,
            ts_ms: 1_000 + offset,
        };
        Incoming { offset, key: None, value: None, head: Ok(head) }
    }

    fn unreadable(offset: i64) -> Incoming {
        Incoming { offset, key: None, value: None, head: Err("not JSON".into()) }
    }

    #[test]
    fn a_transaction_completes_with_its_last_record_and_not_before() {
        let mut a = Assembler::default();
        assert!(a.push("t", 0, "a", message(0, "0-1-5", 1, false)).complete.is_none());
        assert_eq!(a.oldest_waiting(|t| t == "t"), Some(1_000));
        let done = a.push("t", 0, "a", message(1, "0-1-5", 2, true)).complete.expect("complete");
        assert_eq!(done.records.len(), 2);
        assert_eq!(done.next_offset(), 2);
        assert_eq!(done.txn.as_ref().map(|(id, text)| (id.seq, text.as_str())), Some((5, "0-1-5")));
        assert_eq!(done.source_ts_ms, 1_000);
        assert_eq!(a.oldest_waiting(|_| true), None, "nothing waits");
    }

    #[test]
    fn partitions_assemble_apart() {
        let mut a = Assembler::default();
        a.push("t", 0, "a", message(0, "0-1-5", 1, false));
        let other = a.push("t", 1, "a", message(0, "0-1-9", 1, true)).complete.expect("partition 1's own transaction");
        assert_eq!(other.partition, 1);
        assert!(a.push("t", 0, "a", message(1, "0-1-5", 2, true)).complete.is_some());
    }

    #[test]
    fn a_transaction_published_again_from_its_start_replaces_the_incomplete_copy() {
        let mut a = Assembler::default();
        a.push("t", 0, "a", message(0, "0-1-5", 1, false));
        a.push("t", 0, "a", message(1, "0-1-5", 2, false));
        let again = a.push("t", 0, "a", message(2, "0-1-5", 1, false));
        assert_eq!(again.discarded, 2);
        let done = a.push("t", 0, "a", message(3, "0-1-5", 2, true)).complete.expect("complete");
        assert_eq!(done.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn a_record_whose_start_never_arrived_is_dropped() {
        let mut a = Assembler::default();
        let pushed = a.push("t", 0, "a", message(7, "0-1-5", 3, true));
        assert!(pushed.complete.is_none());
        assert_eq!(pushed.dropped.map(|d| d.offset), Some(7));
        // The next transaction is unaffected.
        assert!(a.push("t", 0, "a", message(8, "0-1-6", 1, true)).complete.is_some());
    }

    #[test]
    fn an_unreadable_message_stands_alone_or_goes_with_the_transaction_around_it() {
        let mut a = Assembler::default();
        let alone = a.push("t", 0, "a", unreadable(0)).complete.expect("alone");
        assert!(alone.txn.is_none() && alone.records.len() == 1);
        a.push("t", 0, "a", message(1, "0-1-5", 1, false));
        assert!(a.push("t", 0, "a", unreadable(2)).complete.is_none(), "inside a transaction it waits for its end");
        let done = a.push("t", 0, "a", message(3, "0-1-5", 2, true)).complete.expect("complete");
        assert_eq!(done.records.len(), 3);
        assert!(done.records[1].head.is_err());
    }

    #[test]
    fn snapshot_and_catch_up_transactions_have_no_gtid_to_be_duplicates_of() {
        let mut a = Assembler::default();
        let snap = a.push("t", 0, "a", message(0, "snapshot-1-2-user-1", 1, true)).complete.unwrap();
        assert!(snap.is_snapshot() && snap.txn.is_none());
        let again = a.push("t", 0, "a", message(1, "catchup-0-1-5", 1, true)).complete.unwrap();
        assert!(!again.is_snapshot() && again.txn.is_none());
    }
}
