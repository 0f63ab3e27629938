//! Where things are in a TOML file: key paths to 1-based lines and back.
//!
//! serde gives us values, not positions, so every error would otherwise lack a
//! line. We parse each file a second time with `toml_edit::ImDocument`, which keeps
//! byte spans, and look keys up by the same key path the error names
//! (`connections.pg.url_env`, `mappings[2].destination`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

use super::error::ConfigError;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// `name` in `a.name.b`.
    Key(String),
    /// `2` in `mappings[2]`.
    Index(usize),
}

/// Render segments the way messages show them: `a.b[2].c`.
pub(crate) fn render_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Split a rendered key path back into segments. Keys containing `.` or `[`
/// cannot round-trip; they only occur in unknown keys, whose line then falls back
/// to the enclosing table's.
pub(crate) fn parse_path(path: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segments.push(Segment::Key(key.to_owned()));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            match stripped[..end].parse() {
                Ok(i) => segments.push(Segment::Index(i)),
                Err(_) => segments.push(Segment::Key(stripped[..end].to_owned())),
            }
            rest = &stripped[end + 1..];
        }
    }
    segments
}

/// The 1-based line holding byte `offset` of `text`.
pub(crate) fn line_of_offset(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// One source file: its path relative to the project root, its text, and (for
/// TOML files that parse) the span-keeping document used to find lines.
pub(crate) struct SourceFile {
    /// Path relative to the project root, as shown in messages.
    pub rel: PathBuf,
    /// The file's text.
    text: String,
    /// The span-keeping parse; `None` for non-TOML files and files that do not parse.
    doc: Option<ImDocument<String>>,
    /// Key paths some unknown key was probably a typo of (`connections.pg.type`
    /// for `typ`). A "missing required key" error there would only repeat the
    /// "did you mean" one, so it is left out.
    pub typo_targets: std::collections::BTreeSet<String>,
}

/// A node reached while walking a key path.
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn table_like(&self) -> Option<&'a dyn TableLike> {
        match *self {
            Node::Item(item) => item.as_table_like(),
            Node::Table(table) => Some(table),
            Node::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    /// Element `index` of an array of tables or an inline array, with its span.
    fn index(&self, index: usize) -> Option<(Node<'a>, Option<Range<usize>>)> {
        let array_value = |value: &'a Value| {
            value
                .as_array()
                .and_then(|a| a.get(index))
                .map(|v| (Node::Value(v), v.span()))
        };
        match *self {
            Node::Item(Item::ArrayOfTables(array)) => {
                array.get(index).map(|t| (Node::Table(t), t.span()))
            }
            Node::Item(Item::Value(value)) | Node::Value(value) => array_value(value),
            _ => None,
        }
    }
}

impl SourceFile {
    /// A TOML file; the span document is built when the text parses.
    pub fn toml(rel: impl Into<PathBuf>, text: String) -> Self {
        let doc = ImDocument::parse(text.clone()).ok();
        Self {
            rel: rel.into(),
            text,
            doc,
            typo_targets: Default::default(),
        }
    }

    /// A file that is not TOML (an SQL model) or could not be read.
    pub fn plain(rel: impl Into<PathBuf>, text: String) -> Self {
        Self {
            rel: rel.into(),
            text,
            doc: None,
            typo_targets: Default::default(),
        }
    }

    /// Whether the text parsed as TOML (false for syntax errors and non-TOML files).
    pub fn is_toml(&self) -> bool {
        self.doc.is_some()
    }

    /// The file's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The 1-based line of byte `offset`.
    pub fn line_of_offset(&self, offset: usize) -> usize {
        line_of_offset(&self.text, offset)
    }

    /// The line of the key at `key_path`. When the key itself is absent (a
    /// missing required key), the line of the closest enclosing key or table
    /// header is returned; `None` when nothing on the path exists.
    pub fn line(&self, key_path: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Item(doc.as_item());
        let mut best: Option<Range<usize>> = None;
        for segment in parse_path(key_path) {
            let next = match segment {
                Segment::Key(key) => node
                    .table_like()
                    .and_then(|t| t.get_key_value(&key))
                    .map(|(k, item)| (Node::Item(item), k.span().or_else(|| item.span()))),
                Segment::Index(i) => node.index(i),
            };
            let Some((next_node, span)) = next else { break };
            if span.is_some() {
                best = span;
            }
            node = next_node;
        }
        best.map(|span| self.line_of_offset(span.start))
    }

    /// The key path of the innermost key whose value contains byte `offset`; used
    /// to name the key of a serde type error, which only carries a span.
    pub fn key_path_at(&self, offset: usize) -> String {
        let Some(doc) = self.doc.as_ref() else {
            return String::new();
        };
        let mut path = Vec::new();
        find_offset(Node::Item(doc.as_item()), offset, &mut path);
        render_path(&path)
    }

    /// An error in this file at `key_path` (line looked up here).
    pub fn error(
        &self,
        key_path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.rel.clone(),
            key_path: key_path.to_owned(),
            line: self.line(key_path),
            message: message.into(),
            hint,
        }
    }

    /// An error about the whole file (no key path), at an optional line.
    pub fn file_error(
        &self,
        line: Option<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.rel.clone(),
            key_path: String::new(),
            line,
            message: message.into(),
            hint,
        }
    }
}

/// Depth-first search for the key whose value span contains `offset`; pushes the
/// path to it onto `path` and returns whether it found one.
fn find_offset(node: Node<'_>, offset: usize, path: &mut Vec<Segment>) -> bool {
    let contains = |span: Option<Range<usize>>| span.is_some_and(|s| s.contains(&offset));
    if let Some(table) = node.table_like() {
        for (key, item) in table.iter() {
            path.push(Segment::Key(key.to_owned()));
            let key_span = table.get_key_value(key).and_then(|(k, _)| k.span());
            let in_value = match item {
                // A table's span is its header only, so look inside.
                Item::Table(_) | Item::ArrayOfTables(_) => false,
                _ => contains(item.span()) || contains(key_span),
            };
            if find_offset(Node::Item(item), offset, path) || in_value {
                return true;
            }
            path.pop();
        }
        return false;
    }
    let mut i = 0;
    while let Some((child, span)) = node.index(i) {
        path.push(Segment::Index(i));
        if find_offset(child, offset, path) || contains(span) {
            return true;
        }
        path.pop();
        i += 1;
    }
    false
}

/// `path` relative to `root` when it lies below it, else unchanged.
pub(crate) fn relative_to(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root)
        .map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"# comment
[state]
url = "sqlite://x.db"

[connections.pg]
type = "postgres"
url_env = "PG"

[[mappings]]
mapping_type = "column"

[[mappings]]
mapping_type = "static"
destination = "mpid"
value = 1

[sync_mode]
type = "incremental"
inline = { a = 1, b = [10, 20] }
"#;

    #[test]
    fn key_paths_map_to_lines() {
        let f = SourceFile::toml("f.toml", DOC.to_owned());
        assert_eq!(f.line("state"), Some(2));
        assert_eq!(f.line("state.url"), Some(3));
        assert_eq!(f.line("connections.pg"), Some(5));
        assert_eq!(f.line("connections.pg.url_env"), Some(7));
        assert_eq!(f.line("mappings[0].mapping_type"), Some(10));
        assert_eq!(f.line("mappings[1].destination"), Some(14));
        assert_eq!(f.line("sync_mode.inline.b"), Some(19));
        // Missing keys fall back to the closest ancestor.
        assert_eq!(f.line("connections.pg.chunk_rows"), Some(5));
        assert_eq!(f.line("mappings[1].source"), Some(12));
        assert_eq!(f.line("nothing"), None);
    }

    #[test]
    fn offsets_map_back_to_key_paths() {
        let f = SourceFile::toml("f.toml", DOC.to_owned());
        let at = |needle: &str| DOC.find(needle).unwrap_or(0);
        assert_eq!(f.key_path_at(at("\"PG\"")), "connections.pg.url_env");
        assert_eq!(f.key_path_at(at("value = 1") + 8), "mappings[1].value");
        assert_eq!(f.key_path_at(at("20")), "sync_mode.inline.b[1]");
        assert_eq!(f.key_path_at(0), "");
    }

    #[test]
    fn offsets_to_lines() {
        assert_eq!(line_of_offset("a\nb\nc", 0), 1);
        assert_eq!(line_of_offset("a\nb\nc", 2), 2);
        assert_eq!(line_of_offset("a\nb\nc", 4), 3);
        assert_eq!(line_of_offset("a\n", 99), 2);
    }

    #[test]
    fn paths_round_trip() {
        let p = parse_path("mappings[2].destination");
        assert_eq!(
            p,
            vec![
                Segment::Key("mappings".into()),
                Segment::Index(2),
                Segment::Key("destination".into())
            ]
        );
        assert_eq!(render_path(&p), "mappings[2].destination");
        assert_eq!(
            render_path(&parse_path("feeds.main.api_key")),
            "feeds.main.api_key"
        );
    }
}
