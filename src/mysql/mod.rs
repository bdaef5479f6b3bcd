//! What capture and apply both know about MySQL and MariaDB, independent of either: character
//! sets and text encodings. Imports nothing of capture, apply or control.

pub mod charset;
