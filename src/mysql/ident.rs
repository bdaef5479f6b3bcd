//! Identifiers in SQL: every table, column and database name that sitesync writes into a
//! statement goes through [`quote`], so that any name MySQL accepts (a backtick, a quote, a space
//! inside) is one identifier. Names still reach SQL only from the configuration or from the
//! server's own catalogue, never from a record.

/// `name` as a quoted MySQL identifier: in backticks, a backtick inside doubled.
pub fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' {
            out.push('`');
        }
        out.push(c);
    }
    out.push('`');
    out
}

/// `db`.`table`, both quoted.
pub fn qualified(db: &str, table: &str) -> String {
    format!("{}.{}", quote(db), quote(table))
}

/// Whether MySQL accepts `name` as a quoted table, column or database name: 1 to 64
/// characters of the Basic Multilingual Plane, no NUL, not ending in a space.
pub fn is_identifier(name: &str) -> bool {
    let count = name.chars().count();
    (1..=64).contains(&count) && !name.chars().any(|c| c == '\0' || c as u32 > 0xFFFF) && !name.ends_with(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backticks_are_doubled_and_other_characters_kept() {
        assert_eq!(quote("user"), "`user`");
        assert_eq!(quote("a`b"), "`a``b`");
        assert_eq!(quote("``"), "``````");
        assert_eq!(quote("it's \"x\""), "`it's \"x\"`");
        assert_eq!(qualified("d`b", "t"), "`d``b`.`t`");
    }

    #[test]
    fn names_mysql_accepts() {
        for ok in ["a`b", "id`x", "with space", "ünïcødé", "x'y\"z", "1", &"x".repeat(64)] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "trailing ", "nul\0", "😀", &"x".repeat(65)] {
            assert!(!is_identifier(bad), "{bad:?}");
        }
    }
}
