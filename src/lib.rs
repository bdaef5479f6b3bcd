//! sitesync: keeps chosen tables in step between sites' MySQL/MariaDB databases through Kafka.
//!
//! Layout: [`config`] (the federation file), [`capture`] (binlog -> Kafka), [`apply`]
//! (Kafka -> local database), [`record`] (the change record), [`position`] (GTIDs),
//! [`control`] (sitesync's own tables), [`kafka`] (client configuration), [`mysql`] (what capture and apply both know of MySQL), [`telemetry`]
//! (metrics and HTTP), [`stamp`] (last-writer-wins order), [`preflight`] (server settings), [`verify`] (comparing sites),
//! [`commands`] (one function per command).

pub mod apply;
pub mod capture;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod kafka;
pub mod mysql;
pub mod position;
pub mod preflight;
pub mod record;
pub mod shutdown;
pub mod stamp;
pub mod telemetry;
pub mod verify;
