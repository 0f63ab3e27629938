//! The single-SELECT guard: a data model must be exactly one read-only query.
//!
//! This is a small hand-written tokenizer, not a SQL parser. A parser would
//! refuse valid models its grammar does not know; what the guard needs is only
//! to see the same *statement boundaries and bare words* as the database does.
//! The danger is a quoting or comment form on which the guard and the server
//! disagree: whatever the guard takes for a string or comment while the server
//! reads it as code (or the reverse) can hide a second statement.
//!
//! So the tokenizer is dialect-aware ([`check_select_for`]), and where a
//! server setting changes how text is split, the model must pass under *every*
//! reading the server could use:
//!
//! - **PostgreSQL / Redshift**: `'..'` with `''` (and, with
//!   `standard_conforming_strings = off` or on Redshift, `\'`) escapes; `E'..'`
//!   with backslash escapes; `$tag$..$tag$`; `/* */` comments that nest
//!   (PostgreSQL) or not (Redshift); `#` is an operator.
//! - **MySQL / MariaDB**: `'..'` and `".."` with and without backslash escapes
//!   (`NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES`); `#` comments; `--` is a comment
//!   only when followed by a space or control character; executable comments
//!   (`/*! .. */`, `/*M! .. */`) are refused; `$` is an identifier character,
//!   never a quote.
//! - **SQLite**: `'..'`, `".."`, `` `..` `` and `[..]`; no backslash escapes.
//! - **Snowflake**: `'..'` with backslash escapes, `$$..$$` (no tags), `//`
//!   comments; comments read both nested and not.
//! - **BigQuery**: `'..'`, `".."`, `` `..` `` with backslash escapes, triple
//!   quotes, `#` comments.
//!
//! What remains must be one statement starting with `SELECT`, `WITH` or `(` +
//! `SELECT`, with none of the write/DDL/session keywords anywhere as a bare
//! word. A harmless model can be refused when its readings disagree (MySQL's
//! `'it\'s'` reads differently without backslash escapes): write `''` instead.
//! The database session is read-only as well; this guard exists to give a
//! clear message early (at `wsync validate`) and to keep a second statement
//! away from paths where the session is not read-only (Redshift, COPY).

use crate::config::model::ConnectionKind;

/// Why a model was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct GuardError {
    /// What was found and how to fix it (lowercase, no trailing period).
    pub message: String,
    /// 1-based line of the offending token (1 for "empty model").
    pub line: usize,
}

/// Keywords refused as bare tokens anywhere in the model. `REPLACE` is handled
/// separately because it is also a common string function.
const FORBIDDEN: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "DROP", "CREATE", "ALTER", "TRUNCATE",
    "GRANT", "REVOKE", "COPY", "CALL", "EXEC", "EXECUTE", "DO", "LOCK", "VACUUM", "ATTACH",
    "DETACH", "PRAGMA", "INTO", "SET",
];

/// A significant token: a bare word, a semicolon, or any other punctuation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An unquoted identifier or keyword, uppercased.
    Word(String),
    /// `;`
    Semicolon,
    /// `(`
    Open,
    /// Anything else that is not skipped (operators, numbers, quoted items).
    Other,
}

/// One way a server may split text into tokens (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Lexing {
    /// `\` escapes the next character inside `'..'`.
    backslash_single: bool,
    /// `".."` is a string with `\` escapes (MySQL without `ANSI_QUOTES`);
    /// otherwise it is a quoted identifier with only `""` escapes.
    backslash_double: bool,
    /// `E'..'` is a string with `\` escapes (PostgreSQL).
    e_strings: bool,
    /// `$tag$..$tag$` is a string (PostgreSQL, Redshift).
    dollar_quotes: bool,
    /// `/* /* */ */` nests (PostgreSQL).
    nested_comments: bool,
    /// `#` starts a comment to the end of the line (MySQL).
    hash_comments: bool,
    /// `--` starts a comment only before whitespace, a control character or the
    /// end (MySQL); otherwise it always does.
    dash_dash_needs_space: bool,
    /// `/*! .. */` and `/*M! .. */` hold code the server runs (MySQL, MariaDB).
    executable_comments: bool,
    /// `[..]` is a quoted identifier (SQLite).
    bracket_identifiers: bool,
    /// `$` may start an identifier (MySQL).
    dollar_starts_word: bool,
    /// `$tag$` opens a string as `$$` does (PostgreSQL); otherwise only `$$`
    /// does (Snowflake).
    dollar_tags: bool,
    /// `//` starts a comment to the end of the line (Snowflake).
    slash_slash_comments: bool,
    /// `'''..'''` and `""".."""` are strings in which single quotes need no
    /// escape (BigQuery).
    triple_quotes: bool,
    /// `\` escapes the next character inside `` `..` `` (BigQuery).
    backslash_backtick: bool,
}

impl Lexing {
    /// PostgreSQL with `standard_conforming_strings = on` (the default).
    const POSTGRES: Lexing = Lexing {
        backslash_single: false,
        backslash_double: false,
        e_strings: true,
        dollar_quotes: true,
        nested_comments: true,
        hash_comments: false,
        dash_dash_needs_space: false,
        executable_comments: false,
        bracket_identifiers: false,
        dollar_starts_word: false,
        dollar_tags: true,
        slash_slash_comments: false,
        triple_quotes: false,
        backslash_backtick: false,
    };
    /// MySQL with its default `sql_mode` (backslash escapes, `"` strings).
    const MYSQL: Lexing = Lexing {
        backslash_single: true,
        backslash_double: true,
        e_strings: false,
        dollar_quotes: false,
        nested_comments: false,
        hash_comments: true,
        dash_dash_needs_space: true,
        executable_comments: true,
        bracket_identifiers: false,
        dollar_starts_word: true,
        dollar_tags: false,
        slash_slash_comments: false,
        triple_quotes: false,
        backslash_backtick: false,
    };
    /// SQLite.
    const SQLITE: Lexing = Lexing {
        backslash_single: false,
        backslash_double: false,
        e_strings: false,
        dollar_quotes: false,
        nested_comments: false,
        hash_comments: false,
        dash_dash_needs_space: false,
        executable_comments: false,
        bracket_identifiers: true,
        dollar_starts_word: false,
        dollar_tags: false,
        slash_slash_comments: false,
        triple_quotes: false,
        backslash_backtick: false,
    };
    /// Snowflake: backslash escapes in `'..'`, `$$..$$`, `//` comments.
    const SNOWFLAKE: Lexing = Lexing {
        backslash_single: true,
        backslash_double: false,
        e_strings: false,
        dollar_quotes: true,
        nested_comments: false,
        hash_comments: false,
        dash_dash_needs_space: false,
        executable_comments: false,
        bracket_identifiers: false,
        dollar_starts_word: false,
        dollar_tags: false,
        slash_slash_comments: true,
        triple_quotes: false,
        backslash_backtick: false,
    };
    /// BigQuery (GoogleSQL): backslash escapes in every quoted form, triple
    /// quotes, `#` comments.
    const BIGQUERY: Lexing = Lexing {
        backslash_single: true,
        backslash_double: true,
        e_strings: false,
        dollar_quotes: false,
        nested_comments: false,
        hash_comments: true,
        dash_dash_needs_space: false,
        executable_comments: false,
        bracket_identifiers: false,
        dollar_starts_word: false,
        dollar_tags: false,
        slash_slash_comments: false,
        triple_quotes: true,
        backslash_backtick: true,
    };

    /// Every reading a server of `kind` may use, depending on its settings.
    fn readings(kind: ConnectionKind) -> Vec<Lexing> {
        let pg_off = Lexing {
            backslash_single: true,
            ..Self::POSTGRES
        };
        match kind {
            // `standard_conforming_strings` may be off in the server's config.
            ConnectionKind::Postgres => vec![Self::POSTGRES, pg_off],
            // Redshift forked from PostgreSQL 8.0: backslash escapes in plain
            // strings; be strict about comment nesting both ways.
            ConnectionKind::Redshift => vec![
                Self::POSTGRES,
                pg_off,
                Lexing {
                    nested_comments: false,
                    ..pg_off
                },
                Lexing {
                    nested_comments: false,
                    ..Self::POSTGRES
                },
            ],
            // `NO_BACKSLASH_ESCAPES` and `ANSI_QUOTES` change both quote forms.
            ConnectionKind::MySql => vec![
                Self::MYSQL,
                Lexing {
                    backslash_single: false,
                    backslash_double: false,
                    ..Self::MYSQL
                },
                Lexing {
                    backslash_double: false,
                    ..Self::MYSQL
                },
            ],
            ConnectionKind::Sqlite => vec![Self::SQLITE],
            // Whether Snowflake nests comments is not documented: both ways.
            ConnectionKind::Snowflake => vec![
                Self::SNOWFLAKE,
                Lexing {
                    nested_comments: true,
                    ..Self::SNOWFLAKE
                },
            ],
            ConnectionKind::BigQuery => vec![Self::BIGQUERY],
        }
    }
}

/// Split `sql` into significant tokens with their 1-based line, skipping
/// whitespace, comments and every quoted form, as a server reading `sql` with
/// `lx` would.
fn tokenize(sql: &str, lx: Lexing) -> Result<Vec<(Tok, usize)>, GuardError> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut line = 1usize;
    let mut i = 0usize;
    // Advance over `chars[from..to]`, counting newlines.
    let count_lines =
        |from: usize, to: usize| chars[from..to].iter().filter(|c| **c == '\n').count();
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '-' if chars.get(i + 1) == Some(&'-')
                && (!lx.dash_dash_needs_space
                    || chars
                        .get(i + 2)
                        .is_none_or(|n| n.is_whitespace() || n.is_control())) =>
            {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if lx.slash_slash_comments && chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\'' | '"'
                if lx.triple_quotes
                    && chars.get(i + 1) == Some(&c)
                    && chars.get(i + 2) == Some(&c) =>
            {
                // `'''..'''`: ends at the next unescaped triple quote.
                let mut j = i + 3;
                loop {
                    match chars.get(j) {
                        None => {
                            return Err(GuardError {
                                message: format!(
                                    "unterminated {c}{c}{c}…{c}{c}{c} quoted text: close it with {c}{c}{c}"
                                ),
                                line: start_line,
                            })
                        }
                        Some('\\') => j += 2,
                        Some(q)
                            if *q == c
                                && chars.get(j + 1) == Some(&c)
                                && chars.get(j + 2) == Some(&c) =>
                        {
                            break
                        }
                        Some(_) => j += 1,
                    }
                }
                line += count_lines(i, j.min(chars.len()));
                i = j + 3;
                out.push((Tok::Other, start_line));
            }
            '#' if lx.hash_comments => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let executable = chars.get(i + 2) == Some(&'!')
                    || (chars.get(i + 2) == Some(&'M') && chars.get(i + 3) == Some(&'!'));
                if lx.executable_comments && executable {
                    return Err(GuardError {
                        message: "executable comments (/*! … */) are not allowed in a model: \
                                  the server runs their text; write it as plain SQL"
                            .into(),
                        line: start_line,
                    });
                }
                let end =
                    comment_end(&chars, i + 2, lx.nested_comments).ok_or_else(|| GuardError {
                        message: "unterminated /* comment: close it with */".into(),
                        line: start_line,
                    })?;
                line += count_lines(i, end);
                i = end;
            }
            '\'' | '"' | '`' | '[' if c != '[' || lx.bracket_identifiers => {
                let close = if c == '[' { ']' } else { c };
                let backslash = match c {
                    '\'' => lx.backslash_single,
                    '"' => lx.backslash_double,
                    '`' => lx.backslash_backtick,
                    _ => false,
                };
                let j = quoted_end(&chars, i, close, backslash)?;
                line += count_lines(i, j);
                i = j + 1;
                out.push((Tok::Other, start_line));
            }
            '$' if lx.dollar_quotes => {
                // `$tag$` or `$$` opens a dollar-quoted string; `$1` is a parameter.
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let tag_is_ident = chars.get(i + 1).is_some_and(|t| !t.is_ascii_digit());
                if chars.get(j) == Some(&'$') && (j == i + 1 || (tag_is_ident && lx.dollar_tags)) {
                    let tag: Vec<char> = chars[i..=j].to_vec();
                    let end = find_seq(&chars, j + 1, &tag).ok_or_else(|| GuardError {
                        message: format!(
                            "unterminated dollar-quoted string: close it with {}",
                            tag.iter().collect::<String>()
                        ),
                        line: start_line,
                    })?;
                    line += count_lines(i, end);
                    i = end + tag.len();
                } else {
                    i = j.max(i + 1);
                }
                out.push((Tok::Other, start_line));
            }
            ';' => {
                out.push((Tok::Semicolon, line));
                i += 1;
            }
            '(' => {
                out.push((Tok::Open, line));
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' || (c == '$' && lx.dollar_starts_word) => {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '$')
                {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect::<String>().to_uppercase();
                if lx.e_strings && word == "E" && chars.get(j) == Some(&'\'') {
                    // `E'..'`: an escape string, where `\'` does not close it.
                    let end = quoted_end(&chars, j, '\'', true)?;
                    line += count_lines(i, end);
                    i = end + 1;
                    out.push((Tok::Other, start_line));
                    continue;
                }
                out.push((Tok::Word(word), line));
                i = j;
            }
            c if c.is_ascii_digit() => {
                // Numbers (including `1e5`, `0x1F`) are one token so their letters are not words.
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || chars[j] == '.' || chars[j] == '_')
                {
                    j += 1;
                }
                out.push((Tok::Other, line));
                i = j;
            }
            _ => {
                out.push((Tok::Other, line));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Index of the closing `close` of the quoted item opened at `open`: a doubled
/// `close` is an escaped one, and so is any character after `\` when `backslash`.
fn quoted_end(
    chars: &[char],
    open: usize,
    close: char,
    backslash: bool,
) -> Result<usize, GuardError> {
    let mut j = open + 1;
    loop {
        match chars.get(j) {
            None => {
                let o = chars[open];
                let line = 1 + chars[..open].iter().filter(|c| **c == '\n').count();
                return Err(GuardError {
                    message: format!("unterminated {o}…{close} quoted text: close it with {close}"),
                    line,
                });
            }
            Some('\\') if backslash => j += 2,
            Some(q) if *q == close => {
                // SQLite's `[..]` has no escape: its first `]` closes it.
                if close != ']' && chars.get(j + 1) == Some(&close) {
                    j += 2;
                } else {
                    return Ok(j);
                }
            }
            Some(_) => j += 1,
        }
    }
}

/// Index just after the `*/` closing a comment whose text starts at `from`,
/// counting nested `/* */` pairs when `nested`.
fn comment_end(chars: &[char], from: usize, nested: bool) -> Option<usize> {
    let mut depth = 1usize;
    let mut k = from;
    while k + 1 < chars.len() {
        match (chars[k], chars[k + 1]) {
            ('*', '/') => {
                depth -= 1;
                k += 2;
                if depth == 0 {
                    return Some(k);
                }
            }
            ('/', '*') if nested => {
                depth += 1;
                k += 2;
            }
            _ => k += 1,
        }
    }
    None
}

/// Index of the first occurrence of `seq` in `chars` at or after `from`.
fn find_seq(chars: &[char], from: usize, seq: &[char]) -> Option<usize> {
    if seq.is_empty() || chars.len() < seq.len() {
        return None;
    }
    (from..=chars.len() - seq.len()).find(|&k| chars[k..k + seq.len()] == *seq)
}

/// Check that `sql` is exactly one `SELECT` (or `WITH … SELECT`, or a
/// parenthesised `SELECT`) for a server of `kind`, under every way that server
/// may split it into tokens (see the module docs). A trailing `;` and trailing
/// comments are fine.
///
/// Refused: anything else, more than one statement, and any of the write, DDL or
/// session keywords (`INSERT`, `DROP`, `INTO`, `SET`, …, and `REPLACE INTO`) as a
/// bare word anywhere, because a CTE or a function call could hide them.
pub fn check_select_for(sql: &str, kind: ConnectionKind) -> Result<(), GuardError> {
    for lexing in Lexing::readings(kind) {
        check_tokens(&tokenize(sql, lexing)?)?;
    }
    Ok(())
}

/// [`check_select_for`] when the dialect is not known yet: `Ok` when `sql` passes
/// for at least one dialect, else the PostgreSQL reading's error. This is only an
/// early check; the warehouse checks again with its own dialect
/// ([`check_select_for`]) before it sends the model anywhere.
pub fn check_single_select(sql: &str) -> Result<(), GuardError> {
    let first = check_select_for(sql, ConnectionKind::Postgres);
    if first.is_ok() {
        return first;
    }
    for kind in [
        ConnectionKind::Redshift,
        ConnectionKind::MySql,
        ConnectionKind::Sqlite,
        ConnectionKind::Snowflake,
        ConnectionKind::BigQuery,
    ] {
        if check_select_for(sql, kind).is_ok() {
            return Ok(());
        }
    }
    first
}

/// The statement-level rules over one reading's tokens.
fn check_tokens(tokens: &[(Tok, usize)]) -> Result<(), GuardError> {
    let Some((first, first_line)) = tokens.first() else {
        return Err(GuardError {
            message: "the model is empty (or only comments): write one SELECT statement".into(),
            line: 1,
        });
    };
    let starts_ok = match first {
        Tok::Word(w) => w == "SELECT" || w == "WITH",
        Tok::Open => tokens
            .iter()
            .skip_while(|(t, _)| *t == Tok::Open)
            .find(|_| true)
            .is_some_and(|(t, _)| matches!(t, Tok::Word(w) if w == "SELECT" || w == "WITH")),
        _ => false,
    };
    if !starts_ok {
        let found = match first {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Semicolon => "`;`".to_owned(),
            _ => "a symbol".to_owned(),
        };
        return Err(GuardError {
            message: format!(
                "the model starts with {found}; a model must be one SELECT (or WITH … SELECT) statement"
            ),
            line: *first_line,
        });
    }
    for (k, (tok, line)) in tokens.iter().enumerate() {
        match tok {
            Tok::Semicolon => {
                if let Some((_, next_line)) =
                    tokens[k + 1..].iter().find(|(t, _)| *t != Tok::Semicolon)
                {
                    return Err(GuardError {
                        message:
                            "more than one statement: a model must be a single SELECT; remove \
                                  everything after the `;`"
                                .into(),
                        line: *next_line,
                    });
                }
            }
            Tok::Word(w) if FORBIDDEN.contains(&w.as_str()) => {
                return Err(GuardError {
                    message: format!(
                        "`{w}` is not allowed in a model: models are read-only SELECTs; remove it \
                         (quote it as \"{}\" if it is a column name)",
                        w.to_lowercase()
                    ),
                    line: *line,
                });
            }
            Tok::Word(w) if w == "REPLACE" => {
                if matches!(tokens.get(k + 1), Some((Tok::Word(n), _)) if n == "INTO") {
                    return Err(GuardError {
                        message: "`REPLACE INTO` is not allowed in a model: models are read-only \
                                  SELECTs; remove it"
                            .into(),
                        line: *line,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `sql` without surrounding whitespace and without trailing semicolons, so it can
/// be wrapped in `SELECT * FROM (…) AS m`. A `;` ending a trailing `--` comment
/// is removed too, which is harmless (the wrapper puts the model on its own lines,
/// so the comment still ends at the newline).
pub fn strip_trailing_semicolon(sql: &str) -> &str {
    let mut s = sql.trim();
    while let Some(rest) = s.strip_suffix(';') {
        s = rest.trim_end();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) {
        assert_eq!(check_single_select(sql), Ok(()), "{sql}");
    }

    fn refused(sql: &str) -> GuardError {
        match check_single_select(sql) {
            Err(e) => e,
            Ok(()) => panic!("expected refusal: {sql}"),
        }
    }

    #[test]
    fn plain_selects_and_ctes_are_allowed() {
        ok("SELECT 1");
        ok("select id, email from users;");
        ok("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b");
        ok("(SELECT 1) UNION ALL (SELECT 2)");
        ok("SELECT replace(email, 'a', 'b') AS e FROM users");
        ok("SELECT $1::int, $$it's; DELETE$$ AS body, $tag$ DROP; $tag$ AS x");
    }

    #[test]
    fn keywords_and_semicolons_inside_strings_and_comments_are_allowed() {
        ok("SELECT 'DELETE FROM x; DROP TABLE y' AS s, 'it''s' AS q");
        ok("SELECT \"delete\", `insert` FROM t");
        ok("SELECT 1 /* ; DROP TABLE x */ AS one");
        ok("SELECT 1 AS one -- ; delete everything");
        ok("SELECT 1\n-- trailing comment\n");
        ok("SELECT 1;\n-- done; really\n");
    }

    #[test]
    fn second_statement_is_refused() {
        let e = refused("SELECT 1;\nDROP TABLE x");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("more than one statement"), "{e}");
        refused("SELECT 1; SELECT 2");
    }

    #[test]
    fn write_keywords_are_refused_anywhere() {
        let e = refused("SELECT *\nINTO t FROM x");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("INTO"), "{e}");
        refused("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
        refused("SELECT set_config('a','b',false), 1 FROM t FOR UPDATE");
        refused("REPLACE INTO t VALUES (1)");
        refused("SELECT 1 FROM t; REPLACE INTO t VALUES (1)");
        refused("INSERT INTO t VALUES (1)");
        refused("PRAGMA table_info(t)");
        refused("SET search_path = x");
    }

    #[test]
    fn empty_and_comment_only_are_refused() {
        assert!(refused("").message.contains("empty"));
        assert!(refused("  -- nothing\n/* here */ ")
            .message
            .contains("empty"));
        refused(";");
    }

    #[test]
    fn unterminated_quotes_are_refused() {
        assert!(refused("SELECT 'abc").message.contains("unterminated"));
        assert!(refused("SELECT 1 /* abc").message.contains("unterminated"));
        assert!(refused_for(ConnectionKind::Postgres, "SELECT $x$ abc")
            .message
            .contains("unterminated"));
    }

    fn refused_for(kind: ConnectionKind, sql: &str) -> GuardError {
        match check_select_for(sql, kind) {
            Err(e) => e,
            Ok(()) => panic!("expected refusal on {}: {sql}", kind.as_str()),
        }
    }

    fn ok_for(kind: ConnectionKind, sql: &str) {
        assert_eq!(
            check_select_for(sql, kind),
            Ok(()),
            "{}: {sql}",
            kind.as_str()
        );
    }

    const ALL: [ConnectionKind; 6] = [
        ConnectionKind::Postgres,
        ConnectionKind::Redshift,
        ConnectionKind::MySql,
        ConnectionKind::Sqlite,
        ConnectionKind::Snowflake,
        ConnectionKind::BigQuery,
    ];

    #[test]
    fn guard_snowflake_and_bigquery_quoting_bypasses_are_refused() {
        use ConnectionKind::{BigQuery, Snowflake};
        // Snowflake: `\'` escapes, `//` comments, `$a$` is not a quote.
        refused_for(Snowflake, r"SELECT 'a\'' ; DROP TABLE t; --'");
        ok_for(Snowflake, r"SELECT 'it\'s' AS x");
        refused_for(Snowflake, "SELECT 1 AS x // '\n; DROP TABLE t; -- '");
        refused_for(Snowflake, "SELECT $a$; DROP TABLE t; $a$");
        ok_for(Snowflake, "SELECT $$it's; DROP$$ AS body, 1 // ; DROP\n");
        // BigQuery: triple quotes, `#` comments, backslashes in backticks.
        refused_for(BigQuery, "SELECT '''a''' ; DROP TABLE t; --'");
        refused_for(BigQuery, "SELECT 1 AS x # '\n; DROP TABLE t; -- '");
        refused_for(BigQuery, r"SELECT 1 AS `a\`` ; DROP TABLE t; --`");
        ok_for(BigQuery, "SELECT '''it's; DROP''' AS s, `p.d.t` # ; DROP\n");
    }

    #[test]
    fn guard_backslash_escape_bypass_is_refused() {
        // The issue's example: `E'\''` is one quote to PostgreSQL, so `DROP` is code.
        let sql = r"SELECT E'\'' AS x ; DROP TABLE t; --'";
        for kind in [
            ConnectionKind::Postgres,
            ConnectionKind::Redshift,
            ConnectionKind::MySql,
        ] {
            // PostgreSQL sees a second statement; MySQL, reading `--'` as two
            // minus signs and a quote, an unterminated string: refused either way.
            let e = refused_for(kind, sql);
            assert!(
                e.message.contains("more than one statement") || e.message.contains("unterminated"),
                "{e}"
            );
        }
        refused_for(
            ConnectionKind::Postgres,
            r"SELECT e'\'' ; DELETE FROM t; --'",
        );
        // MySQL strings (both quote forms) honour backslashes by default.
        refused_for(
            ConnectionKind::MySql,
            r"SELECT 'a\' ; DROP TABLE t; -- ' AS x",
        );
        refused_for(
            ConnectionKind::MySql,
            r#"SELECT "a\" ; DROP TABLE t; -- " AS x"#,
        );
        // PostgreSQL with standard_conforming_strings = off does too.
        refused_for(
            ConnectionKind::Postgres,
            r"SELECT 'a\' ; DROP TABLE t; -- ' AS x",
        );
        // A backslash that escapes nothing dangerous stays fine everywhere.
        for kind in ALL {
            ok_for(kind, r"SELECT '\d+' AS pattern, 'C:\temp' AS p");
        }
        ok_for(
            ConnectionKind::Postgres,
            r"SELECT E'\\n' AS nl, E'it\'s' AS q",
        );
        ok_for(
            ConnectionKind::Postgres,
            "SELECT name FROM e WHERE e.x = 'y'",
        );
    }

    #[test]
    fn guard_mysql_hash_comment_bypass_is_refused() {
        // MySQL: `#` comments out the quote that would hide the second statement.
        let sql = "SELECT 1 AS x # '\n; DROP TABLE t; -- '";
        let e = refused_for(ConnectionKind::MySql, sql);
        assert_eq!(e.line, 2, "{e}");
        // PostgreSQL: `#` is an operator, so a `#` "comment" cannot hide a `;`.
        refused_for(
            ConnectionKind::Postgres,
            "SELECT 1 # 2 AS x -- \n; DROP TABLE t",
        );
        ok_for(ConnectionKind::MySql, "SELECT 1 AS x # ; DROP TABLE t\n");
        ok_for(ConnectionKind::Postgres, "SELECT 5 # 3 AS xor");
    }

    #[test]
    fn guard_mysql_dash_dash_needs_a_space() {
        // `1 --1` is `1 - -1` in MySQL, not a comment.
        refused_for(ConnectionKind::MySql, "SELECT 1 --1; DROP TABLE t");
        ok_for(ConnectionKind::MySql, "SELECT 1 -- ; DROP TABLE t");
        ok_for(ConnectionKind::MySql, "SELECT 1 --\t; DROP TABLE t");
    }

    #[test]
    fn guard_mysql_executable_comments_are_refused() {
        let e = refused_for(ConnectionKind::MySql, "SELECT 1 /*! ; DROP TABLE t */");
        assert!(e.message.contains("executable"), "{e}");
        refused_for(
            ConnectionKind::MySql,
            "SELECT 1 /*M!100000 ; DROP TABLE t */",
        );
        ok_for(
            ConnectionKind::MySql,
            "SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1",
        );
    }

    #[test]
    fn guard_mysql_dollar_is_not_a_quote() {
        // `$a$` is an identifier in MySQL, not a dollar-quoted string.
        refused_for(ConnectionKind::MySql, "SELECT 1 AS $a$; DROP TABLE t; $a$");
        ok_for(
            ConnectionKind::Postgres,
            "SELECT $a$; DROP TABLE t; $a$ AS body",
        );
    }

    #[test]
    fn guard_postgres_nested_comment_bypass_is_refused() {
        // PostgreSQL nests comments: the quote is inside the comment, `;` outside.
        let sql = "SELECT 1 /* /* */ ' */ ; DROP TABLE t; -- '";
        refused_for(ConnectionKind::Postgres, sql);
        refused_for(ConnectionKind::Redshift, sql);
        ok_for(
            ConnectionKind::Postgres,
            "SELECT 1 /* a /* b */ ; c */ AS one",
        );
    }

    #[test]
    fn guard_sqlite_bracket_identifier_bypass_is_refused() {
        // SQLite reads `[']` as an identifier, so the quote opens nothing.
        let sql = "SELECT 1 AS [']; DROP TABLE t; --']";
        refused_for(ConnectionKind::Sqlite, sql);
        ok_for(ConnectionKind::Sqlite, "SELECT 1 AS [a;b], [delete] FROM t");
        // In PostgreSQL `[` is a subscript and `'..'` inside it a string.
        ok_for(ConnectionKind::Postgres, "SELECT (ARRAY['a]'])[1] AS x");
    }

    #[test]
    fn guard_unknown_dialect_passes_when_one_dialect_does() {
        assert_eq!(check_single_select("SELECT 1 # 2"), Ok(()));
        // MySQL reads it either way (NO_BACKSLASH_ESCAPES), so MySQL refuses
        // it; Snowflake and BigQuery always honour the backslash.
        assert_eq!(check_single_select(r"SELECT 'it\'s' AS x"), Ok(()));
        assert!(check_select_for(r"SELECT 'it\'s' AS x", ConnectionKind::MySql).is_err());
        assert!(check_single_select("SELECT 1; DROP TABLE t").is_err());
        // No reading of the issue's example is a single statement except
        // SQLite's, where `E` is a column name.
        assert_eq!(
            check_single_select(r"SELECT E'\'' AS x ; DROP TABLE t; --'"),
            Ok(())
        );
    }

    #[test]
    fn trailing_semicolons_are_stripped() {
        assert_eq!(strip_trailing_semicolon("  SELECT 1 ; ;\n"), "SELECT 1");
        assert_eq!(strip_trailing_semicolon("SELECT ';'"), "SELECT ';'");
    }
}
