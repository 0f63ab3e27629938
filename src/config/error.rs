//! Configuration errors: each one names the file, the key path and the line, and
//! says how to fix it.

use std::fmt;
use std::path::PathBuf;

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, relative to the project root where possible.
    pub file: PathBuf,
    /// Dotted key path inside the file (`feeds.main.pod`, `mappings[2].destination`);
    /// empty for whole-file problems.
    pub key_path: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if !self.key_path.is_empty() {
            write!(f, "{}: ", self.key_path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found while loading a project.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "- {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering() {
        let full = ConfigError {
            file: "schedules/users.toml".into(),
            key_path: "mappings[2].destination".into(),
            line: Some(14),
            message: "`emial` is not an mParticle identity type".into(),
            hint: Some("did you mean `email`?".into()),
        };
        let bare = ConfigError {
            file: "sql/users.sql".into(),
            key_path: String::new(),
            line: None,
            message: "data model is empty".into(),
            hint: None,
        };
        assert_eq!(
            ConfigErrors(vec![full, bare]).to_string(),
            "2 configuration errors:\n- schedules/users.toml:14: mappings[2].destination: `emial` is not an mParticle identity type\n  hint: did you mean `email`?\n- sql/users.sql: data model is empty\n"
        );
    }
}
