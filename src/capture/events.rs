//! The binlog event types capture handles, by their code (MySQL's and MariaDB's; mysql_common
//! names only MySQL's).

/// A statement: BEGIN, COMMIT of non-transactional tables, DDL, SAVEPOINT, ...
pub const QUERY: u8 = 0x02;
/// The next events come from another file.
pub const ROTATE: u8 = 0x04;
/// The transaction committed.
pub const XID: u8 = 0x10;
/// The table (and its columns) the next rows events change.
pub const TABLE_MAP: u8 = 0x13;
/// Rows events, version 1 (MariaDB).
pub const WRITE_ROWS_V1: u8 = 0x17;
/// See [`WRITE_ROWS_V1`].
pub const UPDATE_ROWS_V1: u8 = 0x18;
/// See [`WRITE_ROWS_V1`].
pub const DELETE_ROWS_V1: u8 = 0x19;
/// The server is alive and has nothing new.
pub const HEARTBEAT: u8 = 0x1b;
/// Rows events, version 2 (MySQL).
pub const WRITE_ROWS: u8 = 0x1e;
/// See [`WRITE_ROWS`].
pub const UPDATE_ROWS: u8 = 0x1f;
/// See [`WRITE_ROWS`].
pub const DELETE_ROWS: u8 = 0x20;
/// MySQL's GTID: a transaction starts.
pub const MYSQL_GTID: u8 = 0x21;
/// MySQL's partial JSON update (`binlog_row_value_options=PARTIAL_JSON`): refused.
pub const PARTIAL_UPDATE_ROWS: u8 = 0x27;
/// MariaDB's GTID: a transaction starts.
pub const MARIADB_GTID: u8 = 0xa2;
/// MariaDB's compressed events (`log_bin_compress`), first and last code: refused rather than
/// lose rows.
pub const MARIADB_COMPRESSED_FIRST: u8 = 0xa5;
/// See [`MARIADB_COMPRESSED_FIRST`].
pub const MARIADB_COMPRESSED_LAST: u8 = 0xab;
