//! `[[mappings]]`: column, static and ignore mappings, destination paths and
//! static values.

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

/// mParticle's limit on a user attribute name.
pub(super) const MAX_ATTRIBUTE_NAME_CHARS: usize = 256;

/// `mapping_type`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum MappingKind {
    Column,
    Static,
    Ignore,
}
pub(super) const MAPPING_KINDS: &[(&str, MappingKind)] = &[
    ("column", MappingKind::Column),
    ("static", MappingKind::Static),
    ("ignore", MappingKind::Ignore),
];

pub(super) fn validate_mappings(
    ctx: &mut Ctx<'_>,
    raw: &[RawMapping],
    iterator: Option<&str>,
    pipeline_type: PipelineType,
) -> Vec<Mapping> {
    let mut out = Vec::new();
    // Lower-cased source column → index of the mapping that claimed it.
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    for (i, m) in raw.iter().enumerate() {
        let base = format!("mappings[{i}]");
        let kind = if let Some(k) = &m.mapping_type {
            ctx.choice(
                &format!("{base}.mapping_type"),
                k,
                "mapping type",
                MAPPING_KINDS,
            )
        } else {
            ctx.missing(
                &format!("{base}.mapping_type"),
                "add mapping_type = \"column\", \"static\" or \"ignore\"",
            );
            None
        };
        let Some(kind) = kind else { continue };
        let (kind_text, valid, wants_source, wants_destination, wants_value) = match kind {
            MappingKind::Column => (
                "column mappings",
                "column mappings use source and destination",
                true,
                true,
                false,
            ),
            MappingKind::Static => (
                "static mappings",
                "static mappings use value and destination",
                false,
                true,
                true,
            ),
            MappingKind::Ignore => (
                "ignore mappings",
                "ignore mappings use source only",
                true,
                false,
                false,
            ),
        };
        for (key, set, wanted) in [
            ("source", m.source.is_some(), wants_source),
            ("destination", m.destination.is_some(), wants_destination),
            ("value", m.value.is_some(), wants_value),
        ] {
            if set && !wanted {
                not_for(ctx, &format!("{base}.{key}"), key, kind_text, valid);
            } else if !set && wanted {
                let example = match key {
                    "source" => "source = \"column_name\"",
                    "destination" => "destination = \"user_attributes.name\"",
                    _ => "value = \"constant\"",
                };
                ctx.missing(&format!("{base}.{key}"), format!("add {example}"));
            }
        }
        let source = if wants_source {
            m.source.as_deref()
        } else {
            None
        };
        if let Some(source) = source {
            let key_path = format!("{base}.source");
            if source.trim().is_empty() {
                ctx.push(&key_path, "is empty", "name a column of the data model");
            } else if iterator.is_some_and(|it| it.eq_ignore_ascii_case(source)) {
                ctx.push(
                    &key_path,
                    format!("`{source}` is the sync's iterator_field, which is never sent, so it cannot be mapped or ignored"),
                    "remove this mapping, or select the column a second time under another alias",
                );
            } else if let Some(first) = sources.get(&source.to_lowercase()) {
                let line = ctx.file.line(&format!("mappings[{first}].source"));
                let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
                ctx.push(
                    &key_path,
                    format!("column `{source}` is already used by mappings[{first}]{at}"),
                    "keep one mapping per column; select it under another alias to send it twice",
                );
            } else {
                sources.insert(source.to_lowercase(), i);
            }
        }
        let destination = if wants_destination {
            m.destination.as_deref().and_then(|d| {
                parse_destination(d)
                    .and_then(|d| fits_pipeline_type(d, pipeline_type))
                    .map_err(|(message, hint)| {
                        ctx.push(&format!("{base}.destination"), message, hint);
                    })
                    .ok()
            })
        } else {
            None
        };
        let value = if wants_value {
            m.value
                .as_ref()
                .and_then(|v| static_value(ctx, &format!("{base}.value"), v, destination.as_ref()))
        } else {
            None
        };
        match (kind, source, destination, value) {
            (MappingKind::Column, Some(s), Some(d), _) => out.push(Mapping::Column {
                source: s.to_owned(),
                destination: d,
            }),
            (MappingKind::Static, _, Some(d), Some(v)) => out.push(Mapping::Static {
                value: v,
                destination: d,
            }),
            (MappingKind::Ignore, Some(s), _, _) => out.push(Mapping::Ignore {
                source: s.to_owned(),
            }),
            _ => {}
        }
    }
    out
}

pub(super) const DESTINATION_HINT: &str =
    "use user_attributes.<name>, user_identities.<identity>, device_info.<device id> or mpid (event pipelines: events[].event_type, events[].data.<field> or events[].data.custom_attributes.<name>)";

/// Event fields belong to event pipelines, user attributes to user-data ones.
fn fits_pipeline_type(
    destination: Destination,
    pipeline_type: PipelineType,
) -> Result<Destination, (String, String)> {
    let event = matches!(
        destination,
        Destination::Event(_) | Destination::EventAttribute(_)
    );
    match (pipeline_type, &destination) {
        (PipelineType::UserAttributes, _) if event => Err((
            "event fields can only be written by an event pipeline".to_owned(),
            "set pipeline_type = \"events\", or map the column to user_attributes.<name>"
                .to_owned(),
        )),
        (PipelineType::Events, Destination::Attribute(_)) => Err((
            "an event pipeline sends events, not user attributes".to_owned(),
            "map the column to events[].data.custom_attributes.<name>, or sync user attributes with a user_attributes pipeline".to_owned(),
        )),
        _ => Ok(destination),
    }
}

/// A destination path; the error is `(message, hint)`.
pub(crate) fn parse_destination(path: &str) -> Result<Destination, (String, String)> {
    if path == "mpid" {
        return Ok(Destination::Mpid);
    }
    if let Some(rest) = path.strip_prefix("events[].") {
        if let Some(field) = EventField::from_path(path) {
            return Ok(Destination::Event(field));
        }
        if let Some(name) = rest.strip_prefix("data.custom_attributes.") {
            let count = name.chars().count();
            return if name.is_empty() {
                Err((
                    "the event attribute name is empty".to_owned(),
                    "write events[].data.custom_attributes.<name>".to_owned(),
                ))
            } else if count > MAX_ATTRIBUTE_NAME_CHARS {
                Err((
                    format!("the event attribute name is {count} characters long; mParticle allows at most {MAX_ATTRIBUTE_NAME_CHARS}"),
                    "use a shorter name".to_owned(),
                ))
            } else {
                Ok(Destination::EventAttribute(name.to_owned()))
            };
        }
        let all: Vec<&str> = EventField::ALL.into_iter().map(EventField::path).collect();
        return Err((
            format!("`{path}` is not an event field wsync can fill"),
            choices_hint(path, &all),
        ));
    }
    let Some((section, name)) = path.split_once('.') else {
        return Err((
            format!("`{path}` is not a destination"),
            DESTINATION_HINT.to_owned(),
        ));
    };
    match section {
        "user_attributes" => {
            let count = name.chars().count();
            if name.is_empty() {
                Err((
                    "the user attribute name is empty".to_owned(),
                    "write user_attributes.<name>".to_owned(),
                ))
            } else if count > MAX_ATTRIBUTE_NAME_CHARS {
                Err((
                    format!("the user attribute name is {count} characters long; mParticle allows at most {MAX_ATTRIBUTE_NAME_CHARS}"),
                    "use a shorter name".to_owned(),
                ))
            } else {
                Ok(Destination::Attribute(name.to_owned()))
            }
        }
        "user_identities" => IdentityType::from_destination(name)
            .map(Destination::Identity)
            .ok_or_else(|| {
                let all: Vec<&str> = IdentityType::all()
                    .into_iter()
                    .map(IdentityType::as_str)
                    .collect();
                (
                    format!("`{name}` is not an mParticle identity type"),
                    choices_hint(name, &all),
                )
            }),
        "device_info" => DeviceIdType::from_column(name)
            .map(Destination::Device)
            .ok_or_else(|| {
                let all: Vec<&str> = DeviceIdType::ALL
                    .into_iter()
                    .map(DeviceIdType::as_str)
                    .collect();
                (
                    format!("`{name}` is not an mParticle device id"),
                    choices_hint(name, &all),
                )
            }),
        _ => Err((
            format!("`{path}` is not a destination"),
            DESTINATION_HINT.to_owned(),
        )),
    }
}

pub(super) fn choices_hint(value: &str, all: &[&str]) -> String {
    match suggest::closest(value, all.iter().copied()) {
        Some(best) => format!("did you mean `{best}`? use one of: {}", suggest::list(all)),
        None => format!("use one of: {}", suggest::list(all)),
    }
}

pub(super) fn static_value(
    ctx: &mut Ctx<'_>,
    key_path: &str,
    value: &toml::Value,
    destination: Option<&Destination>,
) -> Option<StaticValue> {
    let parsed = match value {
        toml::Value::String(s) => StaticValue::String(s.clone()),
        toml::Value::Integer(i) => StaticValue::Integer(*i),
        toml::Value::Float(f) if f.is_finite() => StaticValue::Float(*f),
        toml::Value::Float(_) => {
            ctx.push(
                key_path,
                "must be a finite number",
                "JSON has no NaN or infinity; use a string or a number",
            );
            return None;
        }
        toml::Value::Boolean(b) => StaticValue::Bool(*b),
        other => {
            ctx.push(
                key_path,
                format!(
                    "a static value must be a string, integer, float or boolean, not {}",
                    other.type_str()
                ),
                "quote it to send it as a string",
            );
            return None;
        }
    };
    if destination == Some(&Destination::Mpid) && !matches!(parsed, StaticValue::Integer(_)) {
        ctx.push(
            key_path,
            "mpid must be an integer",
            "write the mpid unquoted, e.g. value = 8004211113417232015",
        );
        return None;
    }
    Some(parsed)
}
