//! What `on_delete = "unset_attributes"` keeps per key to reach its profile
//! again: the profile's address and the names of the attributes last sent.
//!
//! The address is the smallest part of the batch that still finds the
//! profile: the `mpid` alone when the batch has one; else, when every key
//! column is an identity, just those identities (the key's own values);
//! else every identity and device id of the batch. It is stored in a compact
//! binary form (a few bytes a key instead of ~75 of JSON), because the
//! snapshot keeps one per key:
//!
//! ```text
//! 0x01 member*          member = 0x01 mpid(i64 LE)
//!                                | 0x02 name value   (user_identities.<name>)
//!                                | 0x03 name value   (device_info.<name>)
//!                                | 0x04 value        (mp_deviceid)
//! name  = index into NAMES (one byte) | 0xFF text
//! value = text;  text = length (LEB128) then UTF-8
//! 0x00 json             anything else (a value that is not text), as JSON
//! ```
//!
//! `NAMES` may only grow at its end: snapshots on disk refer to its indexes.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::mapping::EncodedBatch;

/// The address as JSON text.
const FORMAT_JSON: u8 = 0;
/// The compact form.
const FORMAT_COMPACT: u8 = 1;
/// An identity or device id name not in [`NAMES`].
const NAME_INLINE: u8 = 0xFF;

/// Member tags of the compact form.
mod tag {
    pub const MPID: u8 = 1;
    pub const IDENTITY: u8 = 2;
    pub const DEVICE: u8 = 3;
    pub const MP_DEVICEID: u8 = 4;
}

/// Identity and device id names written as one byte. Append only.
const NAMES: [&str; 33] = [
    "customer_id",
    "email",
    "other",
    "other_id_2",
    "other_id_3",
    "other_id_4",
    "other_id_5",
    "other_id_6",
    "other_id_7",
    "other_id_8",
    "other_id_9",
    "other_id_10",
    "mobile_number",
    "phone_number_2",
    "phone_number_3",
    "facebook",
    "facebook_custom_audience_id",
    "google",
    "twitter",
    "microsoft",
    "yahoo",
    "android_uuid",
    "ios_advertising_id",
    "push_token",
    "ios_idfv",
    "android_advertising_id",
    "amp_id",
    "roku_advertising_id",
    "roku_publisher_id",
    "fire_advertising_id",
    "microsoft_advertising_id",
    "microsoft_publisher_id",
    "device_application_stamp",
];

/// A row's address and attribute names, gathered from its batches.
#[derive(Debug, Default)]
pub(super) struct Address {
    members: Option<Map<String, Value>>,
    names: BTreeSet<String>,
}

impl Address {
    /// Take one batch (part) of the row.
    pub(super) fn add(&mut self, batch: &EncodedBatch) {
        let Ok(Value::Object(v)) = serde_json::from_slice(&batch.json) else {
            return;
        };
        if let Some(Value::Object(attrs)) = v.get("user_attributes") {
            self.names.extend(attrs.keys().cloned());
        }
        if self.members.is_none() {
            let members = ["mpid", "user_identities", "device_info", "mp_deviceid"]
                .into_iter()
                .filter_map(|k| v.get(k).map(|m| (k.to_owned(), m.clone())))
                .collect();
            self.members = Some(members);
        }
    }

    /// (encoded address, attribute names as a JSON array). `key_identities`
    /// are the identity names of the key columns when every key column is
    /// an identity (else empty).
    pub(super) fn finish(self, key_identities: &[&str]) -> (Option<Vec<u8>>, Option<String>) {
        let address = self.members.map(|m| encode(&narrow(m, key_identities)));
        let names = serde_json::to_string(&self.names).ok();
        (address, names)
    }
}

/// The smallest part of `members` that still addresses the profile.
fn narrow(mut members: Map<String, Value>, key_identities: &[&str]) -> Map<String, Value> {
    if let Some(mpid) = members.remove("mpid") {
        return Map::from_iter([("mpid".to_owned(), mpid)]);
    }
    if key_identities.is_empty() {
        return members;
    }
    let Some(Value::Object(identities)) = members.get("user_identities") else {
        return members;
    };
    let kept: Map<String, Value> = identities
        .iter()
        .filter(|(name, _)| key_identities.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    // A key identity the mapping left out (an invalid value): keep it all.
    if kept.len() != key_identities.len() {
        return members;
    }
    Map::from_iter([("user_identities".to_owned(), Value::Object(kept))])
}

/// The stored form of an address.
pub(super) fn encode(members: &Map<String, Value>) -> Vec<u8> {
    compact(members).unwrap_or_else(|| {
        let mut out = vec![FORMAT_JSON];
        out.extend(Value::Object(members.clone()).to_string().into_bytes());
        out
    })
}

/// The compact form, `None` when a value is not of the expected type.
fn compact(members: &Map<String, Value>) -> Option<Vec<u8>> {
    let mut out = vec![FORMAT_COMPACT];
    for (member, value) in members {
        match (member.as_str(), value) {
            ("mpid", Value::Number(n)) => {
                out.push(tag::MPID);
                out.extend(n.as_i64()?.to_le_bytes());
            }
            ("user_identities" | "device_info", Value::Object(entries)) => {
                let t = if member == "user_identities" {
                    tag::IDENTITY
                } else {
                    tag::DEVICE
                };
                for (name, value) in entries {
                    out.push(t);
                    if let Some(i) = NAMES.iter().position(|n| n == name) {
                        out.push(u8::try_from(i).ok()?);
                    } else {
                        out.push(NAME_INLINE);
                        put_text(&mut out, name);
                    }
                    put_text(&mut out, value.as_str()?);
                }
            }
            ("mp_deviceid", Value::String(s)) => {
                out.push(tag::MP_DEVICEID);
                put_text(&mut out, s);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The address members (batch fields) of a stored address.
pub(super) fn decode(bytes: &[u8]) -> Option<Map<String, Value>> {
    let (format, mut rest) = bytes.split_first()?;
    match *format {
        FORMAT_JSON => match serde_json::from_slice(rest) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        },
        FORMAT_COMPACT => {
            let mut members = Map::new();
            while let Some((t, tail)) = rest.split_first() {
                rest = tail;
                match *t {
                    tag::MPID => {
                        let (n, tail) = rest.split_first_chunk::<8>()?;
                        rest = tail;
                        members.insert("mpid".into(), Value::from(i64::from_le_bytes(*n)));
                    }
                    tag::IDENTITY | tag::DEVICE => {
                        let (&code, tail) = rest.split_first()?;
                        rest = tail;
                        let name = if code == NAME_INLINE {
                            take_text(&mut rest)?
                        } else {
                            (*NAMES.get(usize::from(code))?).to_owned()
                        };
                        let value = take_text(&mut rest)?;
                        let member = if *t == tag::IDENTITY {
                            "user_identities"
                        } else {
                            "device_info"
                        };
                        let entry = members
                            .entry(member)
                            .or_insert_with(|| Value::Object(Map::new()));
                        if let Value::Object(entries) = entry {
                            entries.insert(name, Value::String(value));
                        }
                    }
                    tag::MP_DEVICEID => {
                        let value = take_text(&mut rest)?;
                        members.insert("mp_deviceid".into(), Value::String(value));
                    }
                    _ => return None,
                }
            }
            Some(members)
        }
        _ => None,
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut n = text.len();
    loop {
        let low = u8::try_from(n & 0x7F).unwrap_or(0);
        n >>= 7;
        if n == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(text.as_bytes());
}

fn take_text(rest: &mut &[u8]) -> Option<String> {
    let mut n = 0usize;
    let mut shift = 0u32;
    loop {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        n |= usize::from(b & 0x7F).checked_shl(shift)?;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    if rest.len() < n {
        return None;
    }
    let (text, tail) = rest.split_at(n);
    *rest = tail;
    String::from_utf8(text.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn members(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn compact_addresses_round_trip() {
        let long = "x".repeat(300);
        for v in [
            json!({"mpid": -8_123_456_789_i64}),
            json!({"user_identities": {"customer_id": "c1", "email": "u1@example.com"}}),
            json!({"user_identities": {"other_id_10": "o", "my_id": long},
                   "device_info": {"ios_idfv": "A-B"}, "mp_deviceid": "d-1"}),
            json!({}),
        ] {
            let m = members(v);
            let bytes = encode(&m);
            assert_eq!(bytes[0], FORMAT_COMPACT, "{m:?}");
            assert_eq!(decode(&bytes), Some(m));
        }
    }

    #[test]
    fn a_value_that_is_not_text_is_kept_as_json() {
        let m = members(json!({"user_identities": {"customer_id": 7}}));
        let bytes = encode(&m);
        assert_eq!(bytes[0], FORMAT_JSON);
        assert_eq!(decode(&bytes), Some(m));
        assert_eq!(decode(&[9, 1, 2]), None);
        assert_eq!(decode(&[FORMAT_COMPACT, tag::IDENTITY, 0, 5, b'a']), None);
    }

    #[test]
    fn an_address_keeps_the_mpid_or_the_key_identities_only() {
        let all = members(json!({
            "user_identities": {"customer_id": "c1", "email": "u1@example.com"},
            "device_info": {"ios_idfv": "A"}
        }));
        assert_eq!(
            narrow(all.clone(), &["customer_id"]),
            members(json!({"user_identities": {"customer_id": "c1"}}))
        );
        // The key is not an identity: everything stays.
        assert_eq!(narrow(all.clone(), &[]), all);
        // A key identity missing from the batch: everything stays.
        assert_eq!(narrow(all.clone(), &["other"]), all);
        let mut with_mpid = all;
        with_mpid.insert("mpid".into(), json!(42));
        assert_eq!(
            narrow(with_mpid, &["customer_id"]),
            members(json!({"mpid": 42}))
        );
        // 'c1' as the key's identity: 6 bytes.
        let bytes = encode(&members(json!({"user_identities": {"customer_id": "c1"}})));
        assert_eq!(bytes, [1, 2, 0, 2, b'c', b'1']);
    }
}
