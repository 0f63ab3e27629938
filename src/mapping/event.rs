//! Rows → events, for event pipelines (`pipeline_type = "events"`).
//!
//! Each row is one event of one user. `Mapper::encode_event` checks the row
//! against the batch schema's rules for its event type and writes the event's
//! JSON; `Mapper::group_chunk_events` then puts the events of one user into
//! that user's batches, so a user with 40 purchases in a chunk costs one batch,
//! not 40.
//!
//! # Grouping, memory and order
//!
//! Events are grouped within one spool chunk (chunks are bounded in bytes, so
//! memory is too): a user whose rows span several chunks gets one batch per
//! chunk. Sorting the model by user (`ORDER BY customer_id, event_time`) makes
//! that rare. Batches come out in the order of their first row, and a batch's
//! key is that row (part 0), so mapping the same chunk again (a resumed spool)
//! gives the same batches, keys and `source_request_id`s.
//!
//! # Event types (the official batch schema's rules)
//!
//! - `custom_event` (the default when there is no `event_type`): needs
//!   `event_name`; `custom_event_type` defaults to `other` and must be one of
//!   [`CUSTOM_EVENT_TYPES`].
//! - `commerce_event`: needs `product_action` (one of [`PRODUCT_ACTIONS`]);
//!   takes `transaction_id`, `total_amount` (revenue), `tax_amount`,
//!   `shipping_amount`, `products` (a JSON array of product objects),
//!   `currency_code`, an optional `event_name` and a `custom_event_type` of
//!   [`COMMERCE_EVENT_TYPES`].
//! - `screen_view`: needs `screen_name` (or `event_name`, used as the screen name).
//!
//! A row that breaks these rules is rejected (`invalid_event`) with the rule
//! in its detail. Fields that do not apply to the row's type are left out and
//! counted (`not_for_event_type`).
//!
//! # Time and identity of an event
//!
//! `timestamp_unixtime_ms` is exact: timestamps are microseconds, floored to the
//! millisecond; dates are midnight UTC; integers are taken as milliseconds.
//! `source_message_id` is the column's value when it is a UUID, else a UUID
//! derived from it; without such a column it is derived from the user and the
//! event's content, so re-sending a row gives the same id and mParticle keeps
//! one copy. (Two rows identical in user and every event field are then one
//! event: add an id column to keep them apart.)
//!
//! # Historical events
//!
//! An event older than 30 days (before [`Mapper::as_of`] − 30 days) goes in a
//! historical batch, sent to `/v2/bulkevents/historical`; every other event in
//! a batch for `/v2/bulkevents`. The historical endpoint drops batches with an
//! event younger than 72 hours or without a timestamp, which this split can
//! never produce.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;

use sha2::{Digest, Sha256};

use crate::config::model::EventField;
use crate::mapping::batch::{
    id_hasher, id_hex, write_members, Adjustment, EncodedBatch, MapStats, MappedChunk, Mapper,
    RejectReason, RowParts,
};
use crate::mapping::convert::Value;
use crate::mapping::data_plan::EventView;
use crate::mapping::identity::{is_uuid, DeviceIdType};
use crate::mapping::json::{write_str, write_value};
use crate::mapping::limits::{self, reason};

/// Events older than this (30 days, in ms) go to the historical endpoint.
pub const HISTORICAL_AGE_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// The event types a row can be.
pub const EVENT_TYPES: &[&str] = &["custom_event", "commerce_event", "screen_view"];

/// `custom_event_type` of a custom event (the schema's enum).
pub const CUSTOM_EVENT_TYPES: &[&str] = &[
    "navigation",
    "location",
    "search",
    "transaction",
    "user_content",
    "user_preference",
    "social",
    "other",
    "media",
];

/// `custom_event_type` of a commerce event (the schema's enum).
pub const COMMERCE_EVENT_TYPES: &[&str] = &[
    "navigation",
    "location",
    "search",
    "transaction",
    "user_content",
    "user_preference",
    "social",
    "other",
    "media",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "checkout_option",
    "click",
    "view_detail",
    "purchase",
    "refund",
    "promotion_view",
    "promotion_click",
    "add_to_wishlist",
    "remove_from_wishlist",
    "impression",
    "attribution",
    "consent_granted",
    "consent_denied",
];

/// `product_action.action` (the schema's enum, `remove_from_wish_list` as spelled there).
pub const PRODUCT_ACTIONS: &[&str] = &[
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "checkout_option",
    "click",
    "view_detail",
    "purchase",
    "refund",
    "add_to_wishlist",
    "remove_from_wish_list",
];

/// One mapped row's event, before grouping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// 1-based run row number.
    pub row: u64,
    /// The batch members that say whose event it is: environment, mpid,
    /// identities, device ids, context (each after a `,`, the first without).
    pub user: Vec<u8>,
    /// The event object's JSON.
    pub event: Vec<u8>,
    /// Older than 30 days.
    pub historical: bool,
}

type Invalid = (RejectReason, String);

fn invalid(message: String) -> Invalid {
    (RejectReason::InvalidEvent, message)
}

impl Mapper {
    /// Check and write one row's event.
    pub(crate) fn encode_event(
        &self,
        parts: &mut RowParts<'_>,
        row: u64,
        stats: &mut MapStats,
    ) -> Result<EventRow, Invalid> {
        let text = |parts: &RowParts<'_>, field: EventField| {
            parts
                .event_fields
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, v)| v.to_text())
                .filter(|t| !t.is_empty())
        };
        let event_type = text(&*parts, EventField::EventType)
            .map_or(Cow::Borrowed("custom_event"), |t| {
                Cow::Owned(t.to_lowercase())
            });
        if !EVENT_TYPES.contains(&event_type.as_ref()) {
            return Err(invalid(format!(
                "event_type `{event_type}` is not one wsync sends ({})",
                EVENT_TYPES.join(", ")
            )));
        }
        let commerce = event_type == "commerce_event";
        let screen = event_type == "screen_view";
        let mut name = text(&*parts, EventField::EventName);
        let mut custom_type = text(&*parts, EventField::CustomEventType).map(|t| t.to_lowercase());
        let screen_name = text(&*parts, EventField::ScreenName);
        let action = text(&*parts, EventField::ProductAction).map(|t| t.to_lowercase());
        match event_type.as_ref() {
            "custom_event" => {
                if name.is_none() {
                    return Err(invalid(
                        "a custom_event needs an event_name (schema: required)".to_owned(),
                    ));
                }
                let t = custom_type.get_or_insert_with(|| "other".to_owned());
                if !CUSTOM_EVENT_TYPES.contains(&t.as_str()) {
                    return Err(invalid(format!(
                        "custom_event_type `{t}` is not one of {}",
                        CUSTOM_EVENT_TYPES.join(", ")
                    )));
                }
            }
            "commerce_event" => {
                let Some(a) = &action else {
                    return Err(invalid(
                        "a commerce_event needs a product_action (schema: product_action.action is required)".to_owned(),
                    ));
                };
                if !PRODUCT_ACTIONS.contains(&a.as_str()) {
                    return Err(invalid(format!(
                        "product_action `{a}` is not one of {}",
                        PRODUCT_ACTIONS.join(", ")
                    )));
                }
                if let Some(t) = &custom_type {
                    if !COMMERCE_EVENT_TYPES.contains(&t.as_str()) {
                        return Err(invalid(format!(
                            "custom_event_type `{t}` is not one of the commerce event's {}",
                            COMMERCE_EVENT_TYPES.join(", ")
                        )));
                    }
                }
            }
            _ => {
                if screen_name.is_none() && name.is_none() {
                    return Err(invalid(
                        "a screen_view needs a screen_name (schema: required)".to_owned(),
                    ));
                }
            }
        }
        // A screen view's name is its screen name (its event_name, failing that).
        let screen_label = if screen {
            screen_name.clone().or(name.take())
        } else {
            None
        };
        if screen {
            custom_type = None;
        }

        // mParticle keeps 100 attributes per event; the rest are dropped here,
        // counted, rather than by mParticle, silently.
        let excess = parts
            .event_attributes
            .len()
            .saturating_sub(limits::MAX_ATTRIBUTES_PER_EVENT);
        parts
            .event_attributes
            .truncate(limits::MAX_ATTRIBUTES_PER_EVENT);
        for _ in 0..excess {
            parts
                .adjustments
                .push(Adjustment::Dropped(reason::TOO_MANY_EVENT_ATTRIBUTES));
            parts.adjustment_columns.push(None);
        }

        // The event's data members, but the source_message_id.
        let mut data = Vec::with_capacity(256);
        if let Some(n) = &name {
            member(&mut data, "event_name");
            let cut = limits::truncate_chars(n, limits::MAX_ATTRIBUTE_NAME_CHARS);
            if cut.len() < n.len() {
                parts
                    .adjustments
                    .push(Adjustment::Truncated(reason::NAME_TOO_LONG));
                parts.adjustment_columns.push(None);
            }
            write_str(&mut data, cut);
        }
        if let Some(t) = &custom_type {
            member(&mut data, "custom_event_type");
            write_str(&mut data, t);
        }
        if let Some(label) = &screen_label {
            member(&mut data, "screen_name");
            write_str(&mut data, label);
        }
        let mut timestamp = None;
        for (field, value) in &parts.event_fields {
            if *field == EventField::Timestamp {
                timestamp = Some(timestamp_ms(value).ok_or_else(|| {
                    invalid(format!(
                        "timestamp_unixtime_ms: `{}` is not a timestamp, a date or integer milliseconds",
                        value.to_text()
                    ))
                })?);
            }
        }
        if let Some(ms) = timestamp {
            member(&mut data, "timestamp_unixtime_ms");
            let _ = write!(data, "{ms}");
        }
        let mut not_for_type = 0;
        if commerce {
            if let Some(code) = text(&*parts, EventField::CurrencyCode) {
                member(&mut data, "currency_code");
                write_str(&mut data, &code);
            }
            if let Some(on_screen) = &screen_name {
                member(&mut data, "screen_name");
                write_str(&mut data, on_screen);
            }
            member(&mut data, "product_action");
            data.extend_from_slice(b"{\"action\":");
            write_str(&mut data, action.as_deref().unwrap_or_default());
            for (field, key) in [
                (EventField::TransactionId, "transaction_id"),
                (EventField::TotalAmount, "total_amount"),
                (EventField::TaxAmount, "tax_amount"),
                (EventField::ShippingAmount, "shipping_amount"),
                (EventField::Products, "products"),
            ] {
                let Some((_, value)) = parts.event_fields.iter().find(|(f, _)| *f == field) else {
                    continue;
                };
                data.push(b',');
                write_str(&mut data, key);
                data.push(b':');
                match field {
                    EventField::TransactionId => write_str(&mut data, &value.to_text()),
                    EventField::Products => write_products(&mut data, &value.to_text())
                        .map_err(|m| invalid(format!("products: {m}")))?,
                    _ => write_number(&mut data, value)
                        .map_err(|m| invalid(format!("{key}: {m}")))?,
                }
            }
            data.push(b'}');
        } else {
            not_for_type = parts
                .event_fields
                .iter()
                .filter(|(f, _)| {
                    matches!(
                        f,
                        EventField::CurrencyCode
                            | EventField::ProductAction
                            | EventField::TransactionId
                            | EventField::TotalAmount
                            | EventField::TaxAmount
                            | EventField::ShippingAmount
                            | EventField::Products
                    ) || (*f == EventField::ScreenName && !screen)
                })
                .count();
        }
        if !parts.event_attributes.is_empty() {
            member(&mut data, "custom_attributes");
            data.push(b'{');
            for (i, (key, value)) in parts.event_attributes.iter().enumerate() {
                if i > 0 {
                    data.push(b',');
                }
                write_str(&mut data, key);
                data.push(b':');
                write_value(&mut data, value);
            }
            data.push(b'}');
        }

        // Whose event: the same members a profile batch opens with.
        let mut user = Vec::with_capacity(128);
        user.extend_from_slice(b"\"environment\":");
        write_str(&mut user, self.environment().as_str());
        if let Some(mpid) = parts.mpid {
            let _ = write!(user, ",\"mpid\":{mpid}");
        }
        if !parts.identities.is_empty() {
            user.extend_from_slice(b",\"user_identities\":{");
            write_members(
                &mut user,
                parts
                    .identities
                    .iter()
                    .map(|(t, v)| (t.as_str(), v.as_str())),
            );
            user.push(b'}');
        }
        let devices = || {
            parts
                .devices
                .iter()
                .filter(|(t, _)| *t != DeviceIdType::MpDeviceId)
        };
        if devices().next().is_some() {
            user.extend_from_slice(b",\"device_info\":{");
            write_members(&mut user, devices().map(|(t, v)| (t.as_str(), v.as_str())));
            user.push(b'}');
        }
        if let Some((_, id)) = parts
            .devices
            .iter()
            .find(|(t, _)| *t == DeviceIdType::MpDeviceId)
        {
            user.extend_from_slice(b",\"mp_deviceid\":");
            write_str(&mut user, id);
        }
        user.extend_from_slice(&self.context);

        let message_id = match text(&*parts, EventField::SourceMessageId) {
            Some(id) if is_uuid(&id) => id.to_lowercase(),
            Some(id) => {
                let mut h = id_hasher(&self.pipeline_id);
                h.update(b"source_message_id\0");
                h.update(id.as_bytes());
                uuid_from(h)
            }
            None => {
                let mut h = id_hasher(&self.pipeline_id);
                h.update(&user);
                h.update([0u8]);
                h.update(event_type.as_bytes());
                h.update([0u8]);
                h.update(&data);
                uuid_from(h)
            }
        };
        let mut event = Vec::with_capacity(data.len() + 96);
        event.extend_from_slice(b"{\"event_type\":");
        write_str(&mut event, &event_type);
        event.extend_from_slice(b",\"data\":{\"source_message_id\":");
        write_str(&mut event, &message_id);
        if !data.is_empty() {
            event.push(b',');
            event.extend_from_slice(&data);
        }
        event.extend_from_slice(b"}}");

        let fixed = batch_fixed_bytes(&user);
        if fixed + event.len() > limits::MAX_BATCH_BYTES {
            return Err((
                RejectReason::BatchTooLarge,
                format!(
                    "the event takes {} bytes in its batch; a batch may take {}",
                    fixed + event.len(),
                    limits::MAX_BATCH_BYTES
                ),
            ));
        }

        if let Some(plan) = &self.data_plan {
            let view = EventView {
                event_type: &event_type,
                event_name: name.as_deref().or(screen_label.as_deref()),
                custom_event_type: custom_type.as_deref(),
                action: action.as_deref(),
                attributes: &parts.event_attributes,
            };
            let violations = plan.check(&view, row);
            if !violations.is_empty() {
                let detail = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.rule, v.detail))
                    .collect::<Vec<_>>()
                    .join("; ");
                for v in violations {
                    *stats.plan_violations.entry(v.rule).or_default() += 1;
                    let samples = stats.plan_samples.entry(v.rule).or_default();
                    if samples.len() < crate::mapping::data_plan::SAMPLES_PER_RULE {
                        samples.push(v);
                    }
                }
                if self.plan_blocks {
                    return Err((RejectReason::DataPlan, detail));
                }
                stats.plan_flagged_rows += 1;
            }
        }

        for _ in 0..not_for_type {
            parts
                .adjustments
                .push(Adjustment::Dropped(reason::NOT_FOR_EVENT_TYPE));
            parts.adjustment_columns.push(None);
        }
        let historical = timestamp.is_some_and(|ms| ms < self.historical_before_ms);
        if historical {
            stats.events.historical += 1;
        } else {
            stats.events.recent += 1;
        }
        Ok(EventRow {
            row,
            user,
            event,
            historical,
        })
    }

    /// Event pipelines: group the chunk's events into each user's batches.
    pub(crate) fn group_chunk_events(&self, out: &mut MappedChunk, stats: &mut MapStats) {
        if out.events.is_empty() {
            return;
        }
        let batches = group(&self.pipeline_id, std::mem::take(&mut out.events));
        stats.batches += batches.len() as u64;
        for b in &batches {
            if b.historical {
                stats.events.historical_batches += 1;
            } else {
                stats.events.recent_batches += 1;
            }
        }
        out.batches = batches;
    }
}

/// Opens the data member `key` (after a comma unless it is the first).
fn member(data: &mut Vec<u8>, key: &str) {
    if !data.is_empty() {
        data.push(b',');
    }
    write_str(data, key);
    data.push(b':');
}

/// Bytes of an event batch of `user` with no events:
/// `{"source_request_id":"…",` user `,"events":[]}`.
fn batch_fixed_bytes(user: &[u8]) -> usize {
    r#"{"source_request_id":"","#.len() + 32 + user.len() + r#","events":[]}"#.len()
}

/// Group events by user (and endpoint) in order of each group's first row,
/// each group cut into batches of at most 128 KiB, sorted by first row.
pub(crate) fn group(pipeline_id: &str, rows: Vec<EventRow>) -> Vec<EncodedBatch> {
    let mut index: HashMap<(&[u8], bool), usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let g = *index
            .entry((r.user.as_slice(), r.historical))
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[g].push(i);
    }
    let mut batches = Vec::new();
    for members in groups {
        let first = &rows[members[0]];
        let fixed = batch_fixed_bytes(&first.user);
        let mut current: Vec<usize> = Vec::new();
        let mut size = fixed;
        for i in members {
            let len = rows[i].event.len() + usize::from(!current.is_empty());
            if !current.is_empty() && size + len > limits::MAX_BATCH_BYTES {
                batches.push(encode_batch(pipeline_id, &rows, &current));
                current.clear();
                size = fixed;
            }
            size += rows[i].event.len() + usize::from(!current.is_empty());
            current.push(i);
        }
        if !current.is_empty() {
            batches.push(encode_batch(pipeline_id, &rows, &current));
        }
    }
    batches.sort_by_key(|b| b.row);
    batches
}

fn encode_batch(pipeline_id: &str, rows: &[EventRow], members: &[usize]) -> EncodedBatch {
    let head = &rows[members[0]];
    let mut body = Vec::new();
    body.extend_from_slice(&head.user);
    body.extend_from_slice(b",\"events\":[");
    for (n, &i) in members.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&rows[i].event);
    }
    body.push(b']');
    // As for profile batches: the id hashes the batch as it reads without it.
    let mut hasher = id_hasher(pipeline_id);
    hasher.update(b"{");
    hasher.update(&body);
    hasher.update(b"}");
    let id = id_hex(hasher);
    let mut json = Vec::with_capacity(body.len() + 60);
    json.extend_from_slice(b"{\"source_request_id\":\"");
    json.extend_from_slice(id.as_bytes());
    json.extend_from_slice(b"\",");
    json.extend_from_slice(&body);
    json.push(b'}');
    EncodedBatch {
        row: head.row,
        part: 0,
        source_request_id: id,
        json,
        historical: head.historical,
    }
}

/// Whether a batch (as sent) is for the historical endpoint: it has events,
/// and every one is timestamped more than 30 days before `now_ms`.
pub fn is_historical_batch(json: &[u8], now_ms: i64) -> bool {
    let Ok(batch) = serde_json::from_slice::<serde_json::Value>(json) else {
        return false;
    };
    let Some(events) = batch.get("events").and_then(serde_json::Value::as_array) else {
        return false;
    };
    !events.is_empty()
        && events.iter().all(|e| {
            e.pointer("/data/timestamp_unixtime_ms")
                .and_then(serde_json::Value::as_i64)
                .is_some_and(|ms| ms < now_ms - HISTORICAL_AGE_MS)
        })
}

/// A UUID (RFC 9562 version 8: custom) from the first 128 bits of the hash.
fn uuid_from(hasher: Sha256) -> String {
    let mut b: [u8; 16] = [0; 16];
    b.copy_from_slice(&hasher.finalize()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Milliseconds since 1970, exactly: integers as milliseconds, RFC 3339
/// timestamps floored to the millisecond, dates at midnight UTC.
pub fn timestamp_ms(value: &Value<'_>) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::Str(s) => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                return Some(i);
            }
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Some(t.timestamp_millis());
            }
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp_millis())
        }
        Value::Float(_) | Value::Bool(_) | Value::List(_) => None,
    }
}

/// An amount: a JSON number (exact decimal text is written as it is).
fn write_number(out: &mut Vec<u8>, value: &Value<'_>) -> Result<(), String> {
    match value {
        Value::Int(_) | Value::Float(_) => {
            write_value(out, value);
            Ok(())
        }
        Value::Str(s) => {
            let t = s.trim();
            let literal = !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
                && t.parse::<f64>().is_ok_and(f64::is_finite)
                && serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| v.is_number());
            if literal {
                out.extend_from_slice(t.as_bytes());
                Ok(())
            } else {
                Err(format!("`{t}` is not a number"))
            }
        }
        other => Err(format!("`{}` is not a number", other.to_text())),
    }
}

/// `products`: a JSON array of product objects, with the schema's types
/// (`id`, `name` strings; `price`, `quantity`, `total_product_amount`
/// numbers; `position`, `added_to_cart_time_ms` integers; `custom_attributes`
/// an object of strings).
fn write_products(out: &mut Vec<u8>, text: &str) -> Result<(), String> {
    use serde_json::Value as J;
    let parsed: J = serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): `{text}`"))?;
    let J::Array(items) = &parsed else {
        return Err(format!("expected a JSON array of products, got `{text}`"));
    };
    for (i, item) in items.iter().enumerate() {
        let J::Object(product) = item else {
            return Err(format!("products[{i}] is not an object"));
        };
        for (key, v) in product {
            let ok = match key.as_str() {
                "id" | "name" => v.is_string(),
                "price" | "quantity" | "total_product_amount" => v.is_number() || v.is_null(),
                "position" | "added_to_cart_time_ms" => v.is_i64() || v.is_null(),
                "custom_attributes" => {
                    v.is_null() || v.as_object().is_some_and(|m| m.values().all(J::is_string))
                }
                "brand" | "category" | "variant" | "coupon_code" => {
                    !(v.is_array() || v.is_object())
                }
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "products[{i}].{key} = {v} does not fit the schema's Product"
                ));
            }
        }
    }
    out.extend_from_slice(&serde_json::to_vec(&parsed).map_err(|e| e.to_string())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use serde_json::{json, Value as J};

    use super::*;
    use crate::config::model::{PipelineType, SyncMode};
    use crate::mapping::{MapStats, MappingPlan, RejectedRow};
    use crate::source::{ColumnInfo, ColumnKind};

    /// 2026-01-01T00:00:00Z in ms: the mapper's "now" in these tests.
    const NOW_MS: i64 = 1_767_225_600_000;
    const DAY_MS: i64 = 86_400_000;

    fn column(name: &str, kind: ColumnKind, array: ArrayRef) -> (ColumnInfo, ArrayRef) {
        (
            ColumnInfo {
                name: name.into(),
                sql_type: "T".into(),
                kind,
                decimal: None,
            },
            array,
        )
    }

    fn text(name: &str, values: Vec<Option<&str>>) -> (ColumnInfo, ArrayRef) {
        column(name, ColumnKind::Text, Arc::new(StringArray::from(values)))
    }

    fn time(name: &str, ms: Vec<Option<i64>>) -> (ColumnInfo, ArrayRef) {
        let micros: Vec<Option<i64>> = ms.into_iter().map(|m| m.map(|m| m * 1000 + 999)).collect();
        column(
            name,
            ColumnKind::TimestampTz,
            Arc::new(TimestampMicrosecondArray::from(micros).with_timezone("UTC")),
        )
    }

    fn map(
        columns: Vec<(ColumnInfo, ArrayRef)>,
    ) -> (Vec<(EncodedBatch, J)>, Vec<RejectedRow>, MapStats) {
        let mut p = crate::mapping::plan::tests::pipeline(Vec::new(), SyncMode::Full);
        p.pipeline_type = PipelineType::Events;
        let infos: Vec<ColumnInfo> = columns.iter().map(|(c, _)| c.clone()).collect();
        let chunk = RecordBatch::try_new(
            crate::source::arrow_schema(&infos),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap();
        let mapper = Mapper::new(MappingPlan::new(&infos, &p).unwrap(), &p)
            .as_of(chrono::DateTime::from_timestamp_millis(NOW_MS).unwrap());
        let mut stats = MapStats::default();
        let out = mapper.map_chunk(&chunk, 1, &mut stats).unwrap();
        let batches = out
            .batches
            .into_iter()
            .map(|b| {
                let v: J = serde_json::from_slice(&b.json).unwrap();
                assert_eq!(v["source_request_id"], json!(b.source_request_id));
                (b, v)
            })
            .collect();
        (batches, out.rejected, stats)
    }

    #[test]
    fn a_users_events_share_one_batch_in_row_order() {
        let (batches, rejected, stats) = map(vec![
            text("customer_id", vec![Some("a"), Some("b"), Some("a"), None]),
            text(
                "event_name",
                vec![Some("open"), Some("open"), Some("close"), Some("x")],
            ),
            time(
                "event_timestamp",
                vec![
                    Some(NOW_MS - 1000),
                    Some(NOW_MS),
                    Some(NOW_MS - 5),
                    Some(NOW_MS),
                ],
            ),
            text("plan", vec![Some("gold"), None, Some("gold"), None]),
        ]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].reason, RejectReason::NoIdentity);
        assert_eq!(batches.len(), 2);
        assert_eq!((batches[0].0.row, batches[1].0.row), (1, 2));
        let a = &batches[0].1;
        assert_eq!(a["user_identities"], json!({"customer_id": "a"}));
        let events = a["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["event_type"], "custom_event");
        assert_eq!(events[0]["data"]["event_name"], "open");
        assert_eq!(events[0]["data"]["custom_event_type"], "other");
        // Exact: 999 µs past the millisecond are floored away, nothing rounded.
        assert_eq!(
            events[0]["data"]["timestamp_unixtime_ms"],
            json!(NOW_MS - 1000)
        );
        assert_eq!(
            events[0]["data"]["custom_attributes"],
            json!({"plan": "gold"})
        );
        assert_eq!(events[1]["data"]["event_name"], "close");
        assert!(is_uuid(
            events[0]["data"]["source_message_id"].as_str().unwrap()
        ));
        assert_ne!(
            events[0]["data"]["source_message_id"],
            events[1]["data"]["source_message_id"]
        );
        assert_eq!(stats.batches, 2);
        assert_eq!(stats.rows_mapped, 3);
        assert_eq!((stats.events.recent, stats.events.historical), (3, 0));
    }

    #[test]
    fn events_older_than_30_days_get_their_own_historical_batch() {
        let (batches, _, stats) = map(vec![
            text("customer_id", vec![Some("a"), Some("a"), Some("a")]),
            text("event_name", vec![Some("e"), Some("e"), Some("e")]),
            time(
                "event_timestamp",
                vec![Some(NOW_MS - 31 * DAY_MS), Some(NOW_MS - 29 * DAY_MS), None],
            ),
        ]);
        let shape: Vec<(u64, bool, usize)> = batches
            .iter()
            .map(|(b, v)| (b.row, b.historical, v["events"].as_array().unwrap().len()))
            .collect();
        // Without a timestamp an event is never historical (the endpoint would drop it).
        assert_eq!(shape, [(1, true, 1), (2, false, 2)]);
        assert_eq!(stats.events.historical, 1);
        assert_eq!(stats.events.historical_batches, 1);
        assert!(is_historical_batch(&batches[0].0.json, NOW_MS));
        assert!(!is_historical_batch(&batches[1].0.json, NOW_MS));
    }

    #[test]
    fn ids_are_deterministic_and_taken_from_a_uuid_column() {
        let columns = || {
            vec![
                text("customer_id", vec![Some("a"), Some("b")]),
                text("event_name", vec![Some("e"), Some("e")]),
                text(
                    "source_message_id",
                    vec![
                        Some("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
                        Some("order-7"),
                    ],
                ),
            ]
        };
        let (first, _, _) = map(columns());
        let (again, _, _) = map(columns());
        assert_eq!(
            first.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
            again.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()
        );
        assert_eq!(
            first[0].1["events"][0]["data"]["source_message_id"],
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        let derived = first[1].1["events"][0]["data"]["source_message_id"]
            .as_str()
            .unwrap();
        assert!(is_uuid(derived), "{derived}");
    }

    #[test]
    fn commerce_events_carry_a_product_action() {
        let (batches, rejected, _) = map(vec![
            text("customer_id", vec![Some("a"), Some("b"), Some("c")]),
            text("event_type", vec![Some("commerce_event"); 3]),
            text(
                "product_action",
                vec![Some("purchase"), Some("buy"), Some("Refund")],
            ),
            text("transaction_id", vec![Some("t1"), Some("t2"), Some("t3")]),
            column(
                "revenue",
                ColumnKind::Int,
                Arc::new(Int64Array::from(vec![Some(42), Some(1), None])),
            ),
            text(
                "products",
                vec![
                    Some(r#"[{"id":"sku1","name":"Hat","price":21,"quantity":2}]"#),
                    None,
                    None,
                ],
            ),
        ]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].row, 2);
        assert_eq!(rejected[0].reason, RejectReason::InvalidEvent);
        assert!(
            rejected[0].detail.contains("`buy`"),
            "{}",
            rejected[0].detail
        );
        assert_eq!(
            batches[0].1["events"][0]["data"]["product_action"],
            json!({"action": "purchase", "transaction_id": "t1", "total_amount": 42,
                   "products": [{"id": "sku1", "name": "Hat", "price": 21, "quantity": 2}]})
        );
        assert_eq!(
            batches[1].1["events"][0]["data"]["product_action"]["action"],
            "refund"
        );
    }

    #[test]
    fn rows_that_break_the_schema_are_rejected_with_the_rule() {
        let (batches, rejected, _) = map(vec![
            text(
                "customer_id",
                vec![Some("a"), Some("b"), Some("c"), Some("d")],
            ),
            text(
                "event_type",
                vec![
                    Some("custom_event"),
                    Some("session_start"),
                    Some("custom_event"),
                    Some("screen_view"),
                ],
            ),
            text("event_name", vec![None, Some("x"), Some("x"), Some("Home")]),
            text(
                "custom_event_type",
                vec![None, None, Some("shopping"), None],
            ),
        ]);
        let details: Vec<&str> = rejected.iter().map(|r| r.detail.as_str()).collect();
        assert_eq!(rejected.len(), 3, "{details:?}");
        assert!(details[0].contains("needs an event_name"));
        assert!(details[1].contains("`session_start`"));
        assert!(details[2].contains("`shopping`"));
        assert_eq!(
            batches[0].1["events"][0]["data"],
            json!({"source_message_id": batches[0].1["events"][0]["data"]["source_message_id"],
                   "screen_name": "Home"})
        );
    }

    #[test]
    fn an_event_keeps_100_attributes() {
        let mut columns = vec![
            text("customer_id", vec![Some("a")]),
            text("event_name", vec![Some("e")]),
        ];
        let names: Vec<String> = (0..102).map(|i| format!("a{i:03}")).collect();
        for name in &names {
            columns.push(text(name, vec![Some("v")]));
        }
        let (batches, _, stats) = map(columns);
        let attributes = batches[0].1["events"][0]["data"]["custom_attributes"]
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(attributes.len(), 100);
        assert!(attributes.contains_key("a099") && !attributes.contains_key("a100"));
        assert_eq!(stats.values_dropped[reason::TOO_MANY_EVENT_ATTRIBUTES], 2);
    }

    #[test]
    fn timestamps_are_exact_milliseconds() {
        assert_eq!(
            timestamp_ms(&Value::Int(1_700_000_000_123)),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            timestamp_ms(&Value::Str("2024-05-01T10:30:00.123999Z".into())),
            Some(1_714_559_400_123)
        );
        assert_eq!(
            timestamp_ms(&Value::Str("1969-12-31T23:59:59.999500Z".into())),
            Some(-1)
        );
        assert_eq!(
            timestamp_ms(&Value::Str("2024-05-01".into())),
            Some(1_714_521_600_000)
        );
        assert_eq!(timestamp_ms(&Value::Str("yesterday".into())), None);
        assert_eq!(timestamp_ms(&Value::Float(1.5)), None);
    }
}
