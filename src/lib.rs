//! sitesync: keeps chosen tables in step between sites' MySQL/MariaDB databases through Kafka.
//!
//! Layout (README.md says more): [`config`] (the federation file), `capture` (binlog -> Kafka),
//! `apply` (Kafka -> local database), [`record`] (the change record), `position` (GTIDs),
//! `control` (sitesync's own tables), `kafka` (client configuration), `mysql` (what capture
//! and apply both know of MySQL), [`telemetry`] (metrics and HTTP), [`stamp`] (last-writer-wins
//! order), `preflight` (server settings), `channel` (requests between sites on the control topic),
//! `verify` (comparing sites through it), `check`, and
//! [`commands`] (one function per command). Exported: what the binary and the tests use.

mod apply;
mod capture;
mod channel;
mod check;
pub mod cli;
pub mod commands;
pub mod config;
mod console;
mod control;
mod endpoints;
mod http;
mod join;
mod kafka;
mod mysql;
mod position;
mod preflight;
pub mod record;
mod shutdown;
pub mod stamp;
pub mod telemetry;
mod verify;
