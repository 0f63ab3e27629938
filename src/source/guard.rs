//! The single-SELECT guard: a data model must be exactly one read-only query.
//!
//! This is a small hand-written tokenizer, not a SQL parser. It skips string
//! literals (`'..'` with `''` escapes), quoted identifiers (`".."`, `` `..` ``),
//! `--` and `/* */` comments and dollar-quoted strings (`$tag$..$tag$`), so words
//! and semicolons inside them never count. What remains must be one statement
//! starting with `SELECT`, `WITH` or `(` + `SELECT`, with none of the
//! write/DDL/session keywords anywhere as a bare word. Backslash escapes
//! (MySQL's `'it\'s'`) are deliberately not understood: reading them as plain
//! characters can only refuse a harmless model (write `''` instead), while
//! honouring them could hide a second statement from PostgreSQL, which treats
//! backslash as an ordinary character. The database session is
//! read-only as well; this guard exists to give a clear message early (at
//! `wsync validate`) rather than a database error mid-run.

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

/// Split `sql` into significant tokens with their 1-based line, skipping
/// whitespace, comments and every quoted form.
fn tokenize(sql: &str) -> Result<Vec<(Tok, usize)>, GuardError> {
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
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let end = find_seq(&chars, i + 2, &['*', '/']).ok_or_else(|| GuardError {
                    message: "unterminated /* comment: close it with */".into(),
                    line: start_line,
                })?;
                line += count_lines(i, end);
                i = end + 2;
            }
            '\'' | '"' | '`' => {
                // The closing quote doubled is an escaped quote, for all three forms.
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => {
                            return Err(GuardError {
                                message: format!(
                                    "unterminated {c}…{c} quoted text: close it with {c}"
                                ),
                                line: start_line,
                            })
                        }
                        Some(q) if *q == c => {
                            if chars.get(j + 1) == Some(&c) {
                                j += 2;
                            } else {
                                break;
                            }
                        }
                        Some(_) => j += 1,
                    }
                }
                line += count_lines(i, j);
                i = j + 1;
                out.push((Tok::Other, start_line));
            }
            '$' => {
                // `$tag$` or `$$` opens a dollar-quoted string; `$1` is a parameter.
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let tag_is_ident = chars.get(i + 1).is_some_and(|t| !t.is_ascii_digit());
                if chars.get(j) == Some(&'$') && (j == i + 1 || tag_is_ident) {
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
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '$')
                {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect::<String>().to_uppercase();
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

/// Index of the first occurrence of `seq` in `chars` at or after `from`.
fn find_seq(chars: &[char], from: usize, seq: &[char]) -> Option<usize> {
    if seq.is_empty() || chars.len() < seq.len() {
        return None;
    }
    (from..=chars.len() - seq.len()).find(|&k| chars[k..k + seq.len()] == *seq)
}

/// Check that `sql` is exactly one `SELECT` (or `WITH … SELECT`, or a
/// parenthesised `SELECT`). A trailing `;` and trailing comments are fine.
///
/// Refused: anything else, more than one statement, and any of the write, DDL or
/// session keywords (`INSERT`, `DROP`, `INTO`, `SET`, …, and `REPLACE INTO`) as a
/// bare word anywhere, because a CTE or a function call could hide them.
pub fn check_single_select(sql: &str) -> Result<(), GuardError> {
    let tokens = tokenize(sql)?;
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
        assert!(refused("SELECT $x$ abc").message.contains("unterminated"));
    }

    #[test]
    fn trailing_semicolons_are_stripped() {
        assert_eq!(strip_trailing_semicolon("  SELECT 1 ; ;\n"), "SELECT 1");
        assert_eq!(strip_trailing_semicolon("SELECT ';'"), "SELECT ';'");
    }
}
