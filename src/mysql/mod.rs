//! What capture and apply both know about MySQL and MariaDB, independent of either: character
//! sets and text encodings, quoting identifiers. Imports nothing of capture, apply or control.

pub mod charset;
pub mod ident;

pub use ident::{qualified, quote};
