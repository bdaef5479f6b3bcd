//! What capture and apply both know about MySQL and MariaDB, independent of either: character
//! sets and text encodings, quoting identifiers, type names, and tables as `information_schema`
//! describes them, session settings and statement sizes. Imports nothing of capture, apply or control.

pub mod charset;
pub mod dsn;
pub mod ident;
pub mod schema;
pub mod session;
pub mod types;

pub use ident::{qualified, quote};
