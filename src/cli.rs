//! The command line (DESIGN.md's contract).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Multi-site MySQL/MariaDB replicator: binlog change capture to Kafka, idempotent apply at
/// every routed site.
#[derive(Debug, Parser)]
#[command(name = "sitesync", version)]
pub struct Cli {
    /// The federation file.
    #[arg(long, env = "SITESYNC_CONFIG", global = true, default_value = "sitesync.toml")]
    pub config: PathBuf,
    /// Which site this process is.
    #[arg(long, env = "SITESYNC_SITE", global = true)]
    pub site: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Preflight: server settings, grants, Kafka, topics, control tables. Exit 1 on any FAIL.
    Check,
    /// Create the control tables and the site topics (idempotent).
    Init {
        /// Also move capture's start to the server's current position, dropping the stored
        /// one (after the binlog it needed was purged; re-seed with `snapshot` afterwards).
        /// Stop capture first.
        #[arg(long)]
        reset_position: bool,
    },
    /// Capture + apply + HTTP in one process, until SIGTERM or SIGINT.
    Run,
    /// Capture alone.
    Capture,
    /// Apply alone.
    Apply,
    /// Positions, lag per origin, dead letters.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Publish the rows that exist now (op "r"), consistently with the binlog, through the
    /// running capture of this site; shows progress until done.
    Snapshot {
        /// Only these entities (default: all configured).
        #[arg(long = "entity")]
        entities: Vec<String>,
        /// Do not wait for the snapshot to finish.
        #[arg(long)]
        no_wait: bool,
        /// Publish the tables' current rows, received ones included, to their export topics
        /// (`[export]`) instead of the site topic: the export stream's history.
        #[arg(long)]
        export: bool,
    },
    /// Go on with entities whose capture stopped alone (see `status`), from where each stopped,
    /// once the cause is fixed.
    Resume {
        /// Only these entities (default: every stopped one).
        #[arg(long = "entity")]
        entities: Vec<String>,
    },
    /// Compare entity contents by natural key between this site and others; exit 1 on any
    /// difference.
    Verify {
        /// Only these entities (default: all).
        #[arg(long = "entity")]
        entities: Vec<String>,
        /// Only against these origins (default: every site this one receives from).
        #[arg(long = "against")]
        against: Vec<String>,
        /// Have the origins republish the rows that differ, through the pipeline.
        #[arg(long)]
        repair: bool,
        /// Open every site's database from here instead of asking through Kafka (needs every
        /// site's password; compares both directions; cannot repair).
        #[arg(long, conflicts_with = "repair")]
        direct: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Asks the origins routed here for their history (a site joining the federation, or an
    /// entity newly routed here), shows progress per origin, and waits until it is applied.
    Join {
        /// Only these entities (default: every entity routed here).
        #[arg(long = "entity")]
        entities: Vec<String>,
        /// Only from these origins (default: every origin routed here).
        #[arg(long = "from")]
        from: Vec<String>,
    },
    /// Forgets a site that left the federation (removed from the file): its offsets, progress,
    /// identity links, parked transactions, dead letters and verifications here. Its rows stay.
    Forget {
        /// The departed site's id.
        #[arg(value_name = "SITE")]
        departed: String,
    },
    /// The dead letters.
    Dlq {
        /// What to do with them.
        #[command(subcommand)]
        action: DlqAction,
    },
}

/// `sitesync dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List the dead letters.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Apply dead letters again (all, or one): those that apply are removed, the others stay
    /// with their reason. Exit 1 if any still fails.
    Replay {
        /// Only this one.
        id: Option<u64>,
    },
    /// Delete one dead letter.
    Drop {
        /// Its id.
        id: u64,
    },
}
