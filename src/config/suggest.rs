//! "Did you mean …?": the closest valid name to a misspelt one.

/// Edit distance (insertions, deletions, substitutions and swaps of two
/// neighbouring chars, the commonest typo), counted in chars.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `input` (case-insensitively), if it is close enough
/// to be a plausible typo: at most a third of the input's length away (and at
/// least one edit allowed), or else the only candidate `input` abbreviates.
pub(crate) fn closest<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = input.to_lowercase();
    let limit = (lower.chars().count() / 3).max(1);
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    let near = candidates
        .iter()
        .map(|c| (distance(&lower, &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    // Abbreviations (`prod` for `production`) are far by edit distance but
    // unambiguous when exactly one candidate starts with them.
    near.or_else(|| {
        let mut prefixed = candidates
            .iter()
            .filter(|c| lower.chars().count() >= 3 && c.to_lowercase().starts_with(&lower));
        match (prefixed.next(), prefixed.next()) {
            (Some(only), None) => Some(*only),
            _ => None,
        }
    })
}

/// `a, b, c` for a hint, or `(none)`.
pub(crate) fn list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "(none)".to_owned();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_transpositions_and_typos() {
        let keys = ["type", "iterator_field", "iterator_data_type", "from"];
        assert_eq!(closest("iterator_feild", keys), Some("iterator_field"));
        assert_eq!(
            closest("iterator_datatype", keys),
            Some("iterator_data_type")
        );
        assert_eq!(closest("tpye", keys), Some("type"));
        assert_eq!(closest("typ", keys), Some("type"));
        assert_eq!(closest("completely_else", keys), None);
        assert_eq!(
            closest("prod", ["development", "production"]),
            Some("production")
        );
        assert_eq!(closest("iterator", keys), None, "ambiguous prefix");
    }

    #[test]
    fn distances() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
        assert_eq!(distance("feild", "field"), 1);
    }

    #[test]
    fn lists() {
        assert_eq!(list(&["a", "b"]), "a, b");
        assert_eq!(list::<&str>(&[]), "(none)");
    }
}
