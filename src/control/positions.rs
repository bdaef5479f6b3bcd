//! Where capture and apply are, as stored: capture's checkpoint (`capture_checkpoint`), apply's
//! next Kafka offsets (`apply_offsets`, also the echo marker) and the last transaction applied
//! per origin and GTID stream (`apply_progress`).

/// A transaction boundary of capture: reading may resume here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// GTID state after the transaction (see [`crate::position::GtidState`]).
    pub gtid: String,
    /// Binlog file.
    pub file: String,
    /// Position after the transaction in `file`.
    pub pos: u64,
    /// Commit time of the transaction, ms.
    pub source_ts_ms: i64,
}

impl Checkpoint {
    /// How many seconds of source time this checkpoint is behind `ahead` (0 when it is not).
    pub fn seconds_behind(&self, ahead: &Checkpoint) -> f64 {
        (ahead.source_ts_ms - self.source_ts_ms).max(0) as f64 / 1000.0
    }
}

/// The next offset apply reads of one topic partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to read.
    pub next: i64,
}

/// The last transaction applied of one origin's GTID stream (a MariaDB domain, a MySQL
/// server uuid): a transaction at or before it is a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Origin site.
    pub origin: String,
    /// GTID stream.
    pub stream: String,
    /// Sequence number in the stream.
    pub seq: u64,
    /// The transaction's GTID.
    pub gtid: String,
    /// Its commit time at the origin, ms.
    pub source_ts_ms: i64,
}
