//! Row filters (`filter = "is_temporary = 0 AND kind IN ('a', 'b')"`).
//!
//! A deliberately small SQL subset, evaluated by capture on the row images it decodes, so that
//! rows which do not match never leave their site. Grammar:
//!
//! ```text
//! expr  := and ("OR" and)*
//! and   := unary ("AND" unary)*
//! unary := "NOT" unary | "(" expr ")" | column op literal | column "IS" ["NOT"] "NULL"
//!        | column ["NOT"] "IN" "(" literal ("," literal)* ")"
//! op    := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
//! ```
//!
//! As in SQL, a comparison with NULL is unknown, and an unknown condition does not match.

use serde_json::{Map, Value};

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Both sides match.
    And(Box<Filter>, Box<Filter>),
    /// Either side matches.
    Or(Box<Filter>, Box<Filter>),
    /// Negation (unknown stays unknown).
    Not(Box<Filter>),
    /// `column op literal`.
    Compare(String, CompareOp, Literal),
    /// `column IS [NOT] NULL`.
    IsNull(String, bool),
    /// `column [NOT] IN (...)`.
    In(String, Vec<Literal>, bool),
}

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A number (integers and decimals).
    Number(f64),
    /// A quoted string.
    Text(String),
    /// NULL.
    Null,
}

/// A filter that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter does not parse at character {at}: {message}")]
pub struct FilterError {
    /// Character offset of the problem.
    pub at: usize,
    /// What was expected.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Number(f64),
    Text(String),
    Op(CompareOp),
    LParen,
    RParen,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at: usize, m: &str| FilterError { at, message: m.to_string() };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push((start, Token::LParen));
                i += 1
            }
            ')' => {
                out.push((start, Token::RParen));
                i += 1
            }
            ',' => {
                out.push((start, Token::Comma));
                i += 1
            }
            '=' => {
                out.push((start, Token::Op(CompareOp::Eq)));
                i += 1
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push((start, Token::Op(CompareOp::Ne)));
                i += 2
            }
            '<' => match chars.get(i + 1) {
                Some('=') => {
                    out.push((start, Token::Op(CompareOp::Le)));
                    i += 2
                }
                Some('>') => {
                    out.push((start, Token::Op(CompareOp::Ne)));
                    i += 2
                }
                _ => {
                    out.push((start, Token::Op(CompareOp::Lt)));
                    i += 1
                }
            },
            '>' => match chars.get(i + 1) {
                Some('=') => {
                    out.push((start, Token::Op(CompareOp::Ge)));
                    i += 2
                }
                _ => {
                    out.push((start, Token::Op(CompareOp::Gt)));
                    i += 1
                }
            },
            '\'' => {
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(start, "unterminated string literal")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            text.push('\'');
                            i += 2
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            text.push(*c);
                            i += 1
                        }
                    }
                }
                out.push((start, Token::Text(text)));
            }
            '`' => {
                // As MySQL quotes: a doubled backtick inside is one backtick of the name.
                let mut name = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(start, "unterminated `quoted` column name")),
                        Some('`') if chars.get(i + 1) == Some(&'`') => {
                            name.push('`');
                            i += 2
                        }
                        Some('`') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            name.push(*c);
                            i += 1
                        }
                    }
                }
                out.push((start, Token::Ident(name)));
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == 'e' || chars[i] == 'E') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = text.parse::<f64>().map_err(|_| err(start, &format!("`{text}` is not a number")))?;
                out.push((start, Token::Number(n)));
            }
            c if c.is_alphanumeric() || c == '_' => {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push((start, Token::Ident(chars[start..i].iter().collect())));
            }
            other => return Err(err(start, &format!("unexpected character `{other}`"))),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }
    fn at(&self) -> usize {
        self.tokens.get(self.pos).map(|(a, _)| *a).unwrap_or(self.len)
    }
    fn fail<T>(&self, message: &str) -> Result<T, FilterError> {
        Err(FilterError { at: self.at(), message: message.to_string() })
    }
    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expr(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.unary()?;
        while self.keyword("AND") {
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Filter, FilterError> {
        if self.keyword("NOT") {
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.pos += 1;
            let inner = self.expr()?;
            if self.peek() != Some(&Token::RParen) {
                return self.fail("expected `)`");
            }
            self.pos += 1;
            return Ok(inner);
        }
        let column = match self.peek() {
            Some(Token::Ident(c)) if !is_reserved(c) => c.clone(),
            _ => return self.fail("expected a column name"),
        };
        self.pos += 1;
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            if !self.keyword("NULL") {
                return self.fail("expected NULL after IS");
            }
            return Ok(Filter::IsNull(column, !negated));
        }
        let negated = self.keyword("NOT");
        if self.keyword("IN") {
            if self.peek() != Some(&Token::LParen) {
                return self.fail("expected `(` after IN");
            }
            self.pos += 1;
            let mut items = vec![self.literal()?];
            while self.peek() == Some(&Token::Comma) {
                self.pos += 1;
                items.push(self.literal()?);
            }
            if self.peek() != Some(&Token::RParen) {
                return self.fail("expected `)` closing IN");
            }
            self.pos += 1;
            return Ok(Filter::In(column, items, negated));
        }
        if negated {
            return self.fail("expected IN after NOT");
        }
        let op = match self.peek() {
            Some(Token::Op(op)) => *op,
            _ => return self.fail("expected a comparison (=, !=, <>, <, <=, >, >=), IS or IN"),
        };
        self.pos += 1;
        Ok(Filter::Compare(column, op, self.literal()?))
    }
    fn literal(&mut self) -> Result<Literal, FilterError> {
        let lit = match self.peek() {
            Some(Token::Number(n)) => Literal::Number(*n),
            Some(Token::Text(t)) => Literal::Text(t.clone()),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("NULL") => Literal::Null,
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("TRUE") => Literal::Number(1.0),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("FALSE") => Literal::Number(0.0),
            _ => return self.fail("expected a literal (number, 'text', NULL, TRUE or FALSE)"),
        };
        self.pos += 1;
        Ok(lit)
    }
}

fn is_reserved(word: &str) -> bool {
    ["AND", "OR", "NOT", "IS", "IN", "NULL"].iter().any(|w| w.eq_ignore_ascii_case(word))
}

impl Filter {
    /// Parses a filter expression.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, pos: 0, len: text.chars().count() };
        let filter = parser.expr()?;
        if parser.pos != parser.tokens.len() {
            return parser.fail("unexpected text after the end of the condition");
        }
        Ok(filter)
    }

    /// Every column the filter reads.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                a.collect_columns(out);
                b.collect_columns(out);
            }
            Filter::Not(a) => a.collect_columns(out),
            Filter::Compare(c, ..) | Filter::IsNull(c, _) | Filter::In(c, ..) => out.push(c),
        }
    }

    /// Whether `row` matches (unknown does not match).
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        self.eval(row) == Some(true)
    }

    /// Three-valued evaluation: `None` is SQL's unknown.
    fn eval(&self, row: &Map<String, Value>) -> Option<bool> {
        match self {
            Filter::And(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Filter::Or(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Filter::Not(a) => a.eval(row).map(|v| !v),
            Filter::IsNull(c, is_null) => {
                let null = row.get(c).is_none_or(Value::is_null);
                Some(null == *is_null)
            }
            Filter::Compare(c, op, lit) => compare(row.get(c)?, lit).map(|ord| match op {
                CompareOp::Eq => ord.is_eq(),
                CompareOp::Ne => ord.is_ne(),
                CompareOp::Lt => ord.is_lt(),
                CompareOp::Le => ord.is_le(),
                CompareOp::Gt => ord.is_gt(),
                CompareOp::Ge => ord.is_ge(),
            }),
            Filter::In(c, items, negated) => {
                let value = row.get(c)?;
                let mut unknown = false;
                for item in items {
                    match compare(value, item) {
                        Some(std::cmp::Ordering::Equal) => return Some(!negated),
                        None => unknown = true,
                        _ => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(*negated)
                }
            }
        }
    }
}

/// Compares a record value with a literal; `None` when either is NULL or they cannot compare.
fn compare(value: &Value, lit: &Literal) -> Option<std::cmp::Ordering> {
    match (value, lit) {
        (Value::Null, _) | (_, Literal::Null) => None,
        (Value::Number(n), Literal::Number(l)) => n.as_f64()?.partial_cmp(l),
        (Value::Bool(b), Literal::Number(l)) => (*b as u8 as f64).partial_cmp(l),
        // DECIMAL values travel as strings: compare them as numbers.
        (Value::String(s), Literal::Number(l)) => s.parse::<f64>().ok()?.partial_cmp(l),
        (Value::String(s), Literal::Text(t)) => Some(s.as_str().cmp(t.as_str())),
        (Value::Number(n), Literal::Text(t)) => n.as_f64()?.partial_cmp(&t.parse::<f64>().ok()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn matches_simple_and_compound_conditions() {
        let f = Filter::parse("is_temporary = 0 AND (kind IN ('a', 'b') OR name IS NULL)").unwrap();
        assert!(f.matches(&row(json!({"is_temporary": 0, "kind": "a", "name": "x"}))));
        assert!(f.matches(&row(json!({"is_temporary": 0, "kind": "z", "name": null}))));
        assert!(!f.matches(&row(json!({"is_temporary": 1, "kind": "a", "name": "x"}))));
        assert_eq!(f.columns(), vec!["is_temporary", "kind", "name"]);
    }

    #[test]
    fn quoted_names_take_doubled_backticks_as_mysql_does() {
        let f = Filter::parse("`a``b` = 1 AND `it's` = 'x'").unwrap();
        assert_eq!(f.columns(), vec!["a`b", "it's"]);
        assert!(f.matches(&row(json!({"a`b": 1, "it's": "x"}))));
        assert!(Filter::parse("`a``b = 1").is_err(), "unterminated");
    }

    #[test]
    fn null_comparison_is_unknown_and_does_not_match() {
        let f = Filter::parse("is_temporary = 0").unwrap();
        assert!(!f.matches(&row(json!({"is_temporary": null}))));
        let not = Filter::parse("NOT is_temporary = 1").unwrap();
        assert!(!not.matches(&row(json!({"is_temporary": null}))));
    }

    #[test]
    fn decimal_strings_compare_as_numbers() {
        let f = Filter::parse("price >= 10.5").unwrap();
        assert!(f.matches(&row(json!({"price": "10.50"}))));
        assert!(!f.matches(&row(json!({"price": "9.99"}))));
    }

    #[test]
    fn reports_where_it_fails() {
        let e = Filter::parse("is_temporary = ").unwrap_err();
        assert_eq!(e.at, 15);
        assert!(Filter::parse("a = 1 b").is_err());
        assert!(Filter::parse("'x' = a").is_err());
        assert!(Filter::parse("a = 'open").is_err());
    }
}
