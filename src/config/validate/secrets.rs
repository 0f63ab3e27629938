//! Where secrets come from: exactly one of `KEY`, `KEY_env`, `KEY_file`, and the
//! `${VAR}` templates of inline values. Only located here; `resolve` reads them.

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

/// One piece of a `${VAR}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Text taken as written (`$${` already unescaped).
    Literal(String),
    /// The value of an environment variable.
    Var(String),
}

/// Where a secret comes from, not yet read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretSource {
    /// Written in the file, possibly with `${VAR}` parts.
    Inline(Vec<Part>),
    /// The whole value of an environment variable.
    Env(String),
    /// The trimmed contents of a file (absolute path).
    File(PathBuf),
}

/// A secret to resolve, with the key path its errors are reported at.
#[derive(Debug, Clone)]
pub(crate) struct PendingSecret {
    /// The key that was set (`connections.pg.url_env`).
    pub key_path: String,
    /// Where the value comes from.
    pub source: SecretSource,
}

/// Exactly one of `KEY`, `KEY_env`, `KEY_file` under `base`.
pub(super) fn secret(
    ctx: &mut Ctx<'_>,
    root: &Path,
    base: &str,
    key: &str,
    inline: &Option<String>,
    env: &Option<String>,
    file: &Option<String>,
) -> Option<PendingSecret> {
    let keys = [key.to_owned(), format!("{key}_env"), format!("{key}_file")];
    let set: Vec<usize> = [inline.is_some(), env.is_some(), file.is_some()]
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.then_some(i))
        .collect();
    let one_of = format!("set exactly one of {}, {} or {}", keys[0], keys[1], keys[2]);
    match set.as_slice() {
        [] => {
            ctx.missing(
                &format!("{base}.{key}"),
                format!("{one_of} (e.g. {key}_env = \"VARIABLE\")"),
            );
            None
        }
        [_, second, ..] => {
            ctx.push(
                &format!("{base}.{}", keys[*second]),
                format!("`{}` and `{}` are both set", keys[set[0]], keys[*second]),
                one_of,
            );
            None
        }
        [0] => {
            let key_path = format!("{base}.{key}");
            let value = inline.as_deref().unwrap_or_default();
            match parse_template(value) {
                Ok(parts) => Some(PendingSecret {
                    key_path,
                    source: SecretSource::Inline(parts),
                }),
                Err(problem) => {
                    ctx.push(&key_path, problem, "write ${NAME} to insert environment variable NAME, and $${ for a literal ${");
                    None
                }
            }
        }
        [1] => {
            let key_path = format!("{base}.{key}_env");
            let name = env.as_deref().unwrap_or_default();
            if valid_env_name(name) {
                Some(PendingSecret {
                    key_path,
                    source: SecretSource::Env(name.to_owned()),
                })
            } else {
                ctx.push(
                    &key_path,
                    format!("`{name}` is not a valid environment variable name"),
                    "use letters, digits and `_`, not starting with a digit (e.g. MP_API_SECRET)",
                );
                None
            }
        }
        _ => {
            let key_path = format!("{base}.{key}_file");
            let path = file.as_deref().unwrap_or_default();
            if path.trim().is_empty() {
                ctx.push(
                    &key_path,
                    "is empty",
                    "give the path of the file holding the value",
                );
                None
            } else {
                Some(PendingSecret {
                    key_path,
                    source: SecretSource::File(join_clean(root, Path::new(path))),
                })
            }
        }
    }
}

/// Whether `name` is a portable environment variable name.
pub(super) fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Split `${VAR}` references out of a value; `$${` is a literal `${`. Messages
/// never quote the value, which is a secret or holds one.
pub(crate) fn parse_template(value: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        literal.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            literal.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "has a `${` without a closing `}`".to_owned())?;
            let name = &tail[..end];
            if !valid_env_name(name) {
                return Err("has a `${…}` that is not a valid environment variable name".to_owned());
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &tail[end + 1..];
        } else {
            literal.push('$');
            rest = &after[1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}
