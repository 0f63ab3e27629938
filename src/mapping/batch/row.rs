//! One row's cells routed to their places (identities, device ids,
//! attributes, event fields), with the NULL policy and the value limits
//! applied: the row's parts, before they are encoded.

use std::borrow::Cow;

use crate::config::model::{Destination, LimitPolicy, NullPolicy, StaticValue};
use crate::mapping::convert::{int_value, Cell, ColumnReader, Value};
use crate::mapping::identity::is_uuid;
use crate::mapping::limits::{self, reason};
use crate::mapping::plan::Route;

use super::{Adjustment, Mapper, RejectReason, RowParts};

impl Mapper {
    pub(super) fn map_row<'a>(
        &'a self,
        readers: &[ColumnReader<'a>],
        row: usize,
    ) -> Result<RowParts<'a>, (RejectReason, String)> {
        let mut parts = RowParts::default();
        for (index, (column, reader)) in self.plan.columns.iter().zip(readers).enumerate() {
            let Route::Send(destination) = &column.route else {
                continue;
            };
            // Tag this column's adjustments, whichever way the match below exits.
            let tag = |parts: &mut RowParts<'_>| {
                let missing = parts.adjustments.len() - parts.adjustment_columns.len();
                parts
                    .adjustment_columns
                    .extend(std::iter::repeat_n(Some(index), missing));
            };
            match reader.cell(row) {
                Cell::Null => {
                    if let (Destination::Attribute(name), NullPolicy::Delete) =
                        (destination, self.null_policy)
                    {
                        if let Some(name) = self.attribute_name(name, &mut parts.adjustments) {
                            parts.deleted.push(name);
                        }
                    }
                }
                Cell::Unrepresentable(_) => parts
                    .adjustments
                    .push(Adjustment::Dropped(reason::NON_FINITE_NUMBER)),
                Cell::Value(value) => {
                    let left_out = reader.list_elements_left_out(row);
                    for _ in 0..left_out {
                        parts
                            .adjustments
                            .push(Adjustment::Dropped(reason::LIST_NULL_ENTRY));
                    }
                    let placed = self.place(destination, value, &column.name, &mut parts);
                    tag(&mut parts);
                    placed?;
                }
            }
            tag(&mut parts);
        }
        for (destination, value) in &self.plan.statics {
            let value = match value {
                StaticValue::String(s) => Value::Str(Cow::Borrowed(s.as_str())),
                StaticValue::Integer(i) => int_value(*i),
                StaticValue::Float(f) => Value::Float(*f),
                StaticValue::Bool(b) => Value::Bool(*b),
            };
            self.place(destination, value, "static mapping", &mut parts)?;
            let missing = parts.adjustments.len() - parts.adjustment_columns.len();
            parts
                .adjustment_columns
                .extend(std::iter::repeat_n(None, missing));
        }
        if parts.identities.is_empty() && parts.mpid.is_none() && parts.devices.is_empty() {
            return Err((
                RejectReason::NoIdentity,
                "no user identity, mpid or device id: every one was NULL or empty".to_owned(),
            ));
        }
        Ok(parts)
    }

    pub(super) fn place<'a>(
        &'a self,
        destination: &'a Destination,
        value: Value<'a>,
        column: &str,
        parts: &mut RowParts<'a>,
    ) -> Result<(), (RejectReason, String)> {
        match destination {
            Destination::Identity(t) => {
                let text = value.to_text();
                if !text.is_empty() {
                    parts.identities.push((*t, text));
                }
            }
            Destination::Device(t) => {
                let text = value.to_text();
                if t.requires_uuid() && !text.is_empty() && !is_uuid(&text) {
                    parts
                        .adjustments
                        .push(Adjustment::Dropped(reason::INVALID_DEVICE_ID));
                } else if !text.is_empty() {
                    parts.devices.push((*t, text));
                }
            }
            Destination::Mpid => {
                let text = value.to_text();
                let mpid = match value {
                    Value::Int(i) => Some(i),
                    Value::Str(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                };
                match mpid {
                    Some(m) => parts.mpid = Some(m),
                    None => {
                        return Err((
                            RejectReason::InvalidMpid,
                            format!("column `{column}`: `{text}` is not a 64-bit integer mpid"),
                        ))
                    }
                }
            }
            Destination::Attribute(name) => {
                let Some(name) = self.attribute_name(name, &mut parts.adjustments) else {
                    return Ok(());
                };
                if let Some(value) = self.limit_value(value, &mut parts.adjustments) {
                    parts.attributes.push((name, value));
                }
            }
            Destination::Event(field) => {
                if let Some(value) = self.limit_value(value, &mut parts.adjustments) {
                    parts.event_fields.push((*field, value));
                }
            }
            Destination::EventAttribute(name) => {
                let Some(name) = self.attribute_name(name, &mut parts.adjustments) else {
                    return Ok(());
                };
                match value {
                    // The schema's event attribute values are scalars.
                    Value::List(_) => parts
                        .adjustments
                        .push(Adjustment::Dropped(reason::LIST_IN_EVENT_ATTRIBUTE)),
                    value => {
                        if let Some(value) = self.limit_value(value, &mut parts.adjustments) {
                            parts.event_attributes.push((name, value));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The attribute name after the 256-character limit, or `None` when the
    /// policy drops it.
    pub(super) fn attribute_name<'a>(
        &self,
        name: &'a str,
        adjustments: &mut Vec<Adjustment>,
    ) -> Option<Cow<'a, str>> {
        if !limits::exceeds_chars(name, limits::MAX_ATTRIBUTE_NAME_CHARS) {
            return Some(Cow::Borrowed(name));
        }
        match self.limit_policy {
            LimitPolicy::Truncate => {
                adjustments.push(Adjustment::Truncated(reason::NAME_TOO_LONG));
                Some(Cow::Borrowed(limits::truncate_chars(
                    name,
                    limits::MAX_ATTRIBUTE_NAME_CHARS,
                )))
            }
            LimitPolicy::Reject => {
                adjustments.push(Adjustment::Dropped(reason::NAME_TOO_LONG));
                None
            }
        }
    }

    /// The value after the string and list limits, or `None` when the policy drops it.
    pub(super) fn limit_value<'a>(
        &self,
        value: Value<'a>,
        adjustments: &mut Vec<Adjustment>,
    ) -> Option<Value<'a>> {
        let truncate = self.limit_policy == LimitPolicy::Truncate;
        match value {
            Value::Str(s) if limits::exceeds_chars(&s, limits::MAX_ATTRIBUTE_VALUE_CHARS) => {
                if truncate {
                    adjustments.push(Adjustment::Truncated(reason::VALUE_TOO_LONG));
                    let cut = limits::truncate_chars(&s, limits::MAX_ATTRIBUTE_VALUE_CHARS);
                    Some(Value::Str(Cow::Owned(cut.to_owned())))
                } else {
                    adjustments.push(Adjustment::Dropped(reason::VALUE_TOO_LONG));
                    None
                }
            }
            Value::List(mut items) => {
                if items.len() > limits::MAX_LIST_ENTRIES {
                    if !truncate {
                        adjustments.push(Adjustment::Dropped(reason::LIST_TOO_LONG));
                        return None;
                    }
                    adjustments.push(Adjustment::Truncated(reason::LIST_TOO_LONG));
                    items.truncate(limits::MAX_LIST_ENTRIES);
                }
                for item in &mut items {
                    if limits::exceeds_chars(item, limits::MAX_LIST_ENTRY_CHARS) {
                        if !truncate {
                            adjustments.push(Adjustment::Dropped(reason::LIST_ENTRY_TOO_LONG));
                            return None;
                        }
                        adjustments.push(Adjustment::Truncated(reason::LIST_ENTRY_TOO_LONG));
                        let cut = limits::truncate_chars(item, limits::MAX_LIST_ENTRY_CHARS).len();
                        item.truncate(cut);
                    }
                }
                Some(Value::List(items))
            }
            other => Some(other),
        }
    }
}
