//! Data plans: checking would-be events against the plan mParticle would
//! enforce, before anything is sent.
//!
//! The document is the JSON that mParticle's data plan editor exports: either
//! a whole plan (`{"data_plan_id", "data_plan_versions": [{"version",
//! "version_document"}]}`; the pipeline's `plan_version`, else the highest, is
//! used) or one version (`{"version", "version_document"}`). A version document
//! holds `data_points`, each with a `match` (`type` = `custom_event`,
//! `screen_view` or `product_action`, and `criteria`: `event_name` +
//! `custom_event_type`, `screen_name`, or `action`) and a `validator` of type
//! `json_schema` whose `definition.properties.data.properties.custom_attributes`
//! says which attributes exist (`properties`), which are `required`, their
//! `type` and allowed values (`enum`), and whether others are allowed
//! (`additionalProperties`).
//!
//! Rules, as reported:
//! - `unplanned_event`: no data point matches the event;
//! - `unplanned_attribute`: an attribute the point does not list, when it
//!   sets `additionalProperties: false`;
//! - `missing_attribute`: a `required` attribute is absent;
//! - `wrong_type`: a value not of the attribute's `type`;
//! - `value_not_allowed`: a value outside the attribute's `enum`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as J;

use crate::mapping::convert::Value;

/// Samples kept per rule for reports.
pub const SAMPLES_PER_RULE: usize = 5;

/// Every rule, in report order.
pub const RULES: &[&str] = &[
    "unplanned_event",
    "unplanned_attribute",
    "missing_attribute",
    "wrong_type",
    "value_not_allowed",
];

/// One broken rule of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Run row number.
    pub row: u64,
    /// The rule (one of [`RULES`]).
    pub rule: &'static str,
    /// What is wrong, naming the event and attribute.
    pub detail: String,
}

/// What a data point says about custom attributes.
#[derive(Debug, Clone, Default, PartialEq)]
struct AttributeRules {
    /// Known attributes: allowed JSON types (empty = any) and values (`None` = any).
    known: BTreeMap<String, (Vec<String>, Option<Vec<J>>)>,
    required: Vec<String>,
    /// `additionalProperties: false`.
    closed: bool,
}

/// One planned event.
#[derive(Debug, Clone, PartialEq)]
struct DataPoint {
    /// `custom_event`, `screen_view` or `product_action`.
    kind: String,
    /// Criteria, lower-cased keys → value as text.
    criteria: BTreeMap<String, String>,
    attributes: AttributeRules,
}

/// A loaded data plan version.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPlan {
    /// The version used.
    pub version: Option<u64>,
    points: Vec<DataPoint>,
}

/// What the check needs of an event.
pub struct EventView<'a> {
    /// `custom_event`, `commerce_event` or `screen_view`.
    pub event_type: &'a str,
    /// Event name (screen name of a screen view).
    pub event_name: Option<&'a str>,
    /// `custom_event_type`.
    pub custom_event_type: Option<&'a str>,
    /// Commerce: the product action.
    pub action: Option<&'a str>,
    /// Custom attributes.
    pub attributes: &'a [(Cow<'a, str>, Value<'a>)],
}

impl DataPlan {
    /// Read and parse a data plan document.
    pub fn load(path: &Path, version: Option<u32>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read data plan document {}: {e}", path.display()))?;
        Self::parse(&text, version).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse a data plan document (a plan or one version of it).
    pub fn parse(text: &str, version: Option<u32>) -> Result<Self, String> {
        let doc: J = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let (number, document) = if let Some(versions) = doc.get("data_plan_versions") {
            let versions = versions
                .as_array()
                .ok_or("`data_plan_versions` is not an array")?;
            let chosen = match version {
                Some(v) => versions
                    .iter()
                    .find(|d| d.get("version").and_then(J::as_u64) == Some(u64::from(v)))
                    .ok_or(format!("the plan has no version {v}"))?,
                None => versions
                    .iter()
                    .max_by_key(|d| d.get("version").and_then(J::as_u64).unwrap_or(0))
                    .ok_or("the plan has no versions")?,
            };
            (
                chosen.get("version").and_then(J::as_u64),
                chosen.get("version_document"),
            )
        } else {
            (
                doc.get("version").and_then(J::as_u64),
                doc.get("version_document").or(Some(&doc)),
            )
        };
        let points = document
            .and_then(|d| d.get("data_points"))
            .and_then(J::as_array)
            .ok_or("no `version_document.data_points` array")?;
        let points = points
            .iter()
            .enumerate()
            .map(|(i, p)| parse_point(p).map_err(|e| format!("data_points[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            version: number,
            points,
        })
    }

    /// The rules `event` breaks (empty when it is planned and fits).
    pub fn check(&self, event: &EventView<'_>, row: u64) -> Vec<Violation> {
        let describe = || match (event.event_type, event.event_name, event.action) {
            ("commerce_event", _, Some(a)) => format!("commerce event `{a}`"),
            (t, Some(n), _) => format!("{t} `{n}`"),
            (t, None, _) => t.to_owned(),
        };
        let Some(point) = self.points.iter().find(|p| p.matches(event)) else {
            return vec![Violation {
                row,
                rule: "unplanned_event",
                detail: format!("{} is not in the data plan", describe()),
            }];
        };
        let rules = &point.attributes;
        let mut out = Vec::new();
        for (name, value) in event.attributes {
            let Some((types, allowed)) = rules.known.get(name.as_ref()) else {
                if rules.closed {
                    out.push(Violation {
                        row,
                        rule: "unplanned_attribute",
                        detail: format!("{}: attribute `{name}` is not planned", describe()),
                    });
                }
                continue;
            };
            let json = as_json(value);
            if !types.is_empty() && !types.iter().any(|t| fits_type(&json, t)) {
                out.push(Violation {
                    row,
                    rule: "wrong_type",
                    detail: format!(
                        "{}: attribute `{name}` = {json} is not of type {}",
                        describe(),
                        types.join(" or ")
                    ),
                });
            } else if let Some(allowed) = allowed {
                if !allowed.iter().any(|a| same_value(a, &json)) {
                    out.push(Violation {
                        row,
                        rule: "value_not_allowed",
                        detail: format!(
                            "{}: attribute `{name}` = {json} is not one of {}",
                            describe(),
                            J::Array(allowed.clone())
                        ),
                    });
                }
            }
        }
        for name in &rules.required {
            if !event.attributes.iter().any(|(n, _)| n == name) {
                out.push(Violation {
                    row,
                    rule: "missing_attribute",
                    detail: format!("{}: required attribute `{name}` is missing", describe()),
                });
            }
        }
        out
    }
}

impl DataPoint {
    fn matches(&self, event: &EventView<'_>) -> bool {
        let criterion = |key: &str, value: Option<&str>| {
            self.criteria
                .get(key)
                .is_none_or(|want| value.is_some_and(|v| v.eq_ignore_ascii_case(want)))
        };
        match (self.kind.as_str(), event.event_type) {
            ("custom_event", "custom_event") => {
                criterion("event_name", event.event_name)
                    && criterion("custom_event_type", event.custom_event_type)
            }
            ("screen_view", "screen_view") => criterion("screen_name", event.event_name),
            ("product_action", "commerce_event") => criterion("action", event.action),
            _ => false,
        }
    }
}

fn parse_point(point: &J) -> Result<DataPoint, String> {
    let matcher = point.get("match").ok_or("no `match`")?;
    let kind = matcher
        .get("type")
        .and_then(J::as_str)
        .ok_or("no `match.type`")?
        .to_owned();
    let criteria = matcher
        .get("criteria")
        .and_then(J::as_object)
        .map(|c| {
            c.iter()
                .filter_map(|(k, v)| {
                    let text = match v {
                        J::String(s) => s.clone(),
                        J::Null => return None,
                        other => other.to_string(),
                    };
                    Some((k.to_lowercase(), text))
                })
                .collect()
        })
        .unwrap_or_default();
    let attributes = point
        .pointer("/validator/definition/properties/data/properties/custom_attributes")
        .map(parse_attributes)
        .unwrap_or_default();
    Ok(DataPoint {
        kind,
        criteria,
        attributes,
    })
}

fn parse_attributes(schema: &J) -> AttributeRules {
    let known = schema
        .get("properties")
        .and_then(J::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, p)| {
                    let types = match p.get("type") {
                        Some(J::String(t)) => vec![t.clone()],
                        Some(J::Array(ts)) => ts
                            .iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect(),
                        _ => Vec::new(),
                    };
                    let allowed = p.get("enum").and_then(J::as_array).cloned();
                    (name.clone(), (types, allowed))
                })
                .collect()
        })
        .unwrap_or_default();
    let required = schema
        .get("required")
        .and_then(J::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    AttributeRules {
        known,
        required,
        closed: schema.get("additionalProperties") == Some(&J::Bool(false)),
    }
}

fn as_json(value: &Value<'_>) -> J {
    match value {
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.to_string()),
        Value::List(items) => J::Array(items.iter().cloned().map(J::String).collect()),
    }
}

/// Whether `value` is of JSON Schema type `t` (an integral float is an integer).
fn fits_type(value: &J, t: &str) -> bool {
    match t {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

fn same_value(a: &J, b: &J) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"{
      "data_plan_id": "purchases",
      "data_plan_versions": [
        {"version": 1, "version_document": {"data_points": []}},
        {"version": 2, "version_document": {"data_points": [
          {"description": "A purchase",
           "match": {"type": "product_action", "criteria": {"action": "purchase"}},
           "validator": {"type": "json_schema", "definition": {"properties": {"data": {"properties": {
             "custom_attributes": {"additionalProperties": false, "required": ["store"],
               "properties": {"store": {"type": "string", "enum": ["web", "app"]},
                              "items": {"type": "integer"}}}}}}}}},
          {"match": {"type": "custom_event", "criteria": {"event_name": "Renewal", "custom_event_type": "transaction"}},
           "validator": {"type": "json_schema", "definition": {}}}
        ]}}
      ]
    }"#;

    fn view<'a>(
        event_type: &'a str,
        name: Option<&'a str>,
        action: Option<&'a str>,
        attributes: &'a [(Cow<'a, str>, Value<'a>)],
    ) -> EventView<'a> {
        EventView {
            event_type,
            event_name: name,
            custom_event_type: Some("transaction"),
            action,
            attributes,
        }
    }

    fn rules(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.rule).collect()
    }

    #[test]
    fn the_latest_version_is_used_unless_one_is_named() {
        assert_eq!(DataPlan::parse(PLAN, None).unwrap().version, Some(2));
        let v1 = DataPlan::parse(PLAN, Some(1)).unwrap();
        assert_eq!(v1.points.len(), 0);
        assert!(DataPlan::parse(PLAN, Some(7))
            .unwrap_err()
            .contains("no version 7"));
    }

    #[test]
    fn each_rule_is_caught() {
        let plan = DataPlan::parse(PLAN, None).unwrap();
        let good = [(Cow::Borrowed("store"), Value::Str("web".into()))];
        assert!(plan
            .check(&view("commerce_event", None, Some("purchase"), &good), 1)
            .is_empty());
        assert!(plan
            .check(&view("custom_event", Some("renewal"), None, &[]), 1)
            .is_empty());
        assert_eq!(
            rules(&plan.check(&view("custom_event", Some("Signup"), None, &[]), 1)),
            ["unplanned_event"]
        );
        assert_eq!(
            rules(&plan.check(&view("commerce_event", None, Some("refund"), &good), 1)),
            ["unplanned_event"]
        );
        let bad = [
            (Cow::Borrowed("store"), Value::Str("kiosk".into())),
            (Cow::Borrowed("items"), Value::Str("two".into())),
            (Cow::Borrowed("coupon"), Value::Str("X".into())),
        ];
        assert_eq!(
            rules(&plan.check(&view("commerce_event", None, Some("purchase"), &bad), 3)),
            ["value_not_allowed", "wrong_type", "unplanned_attribute"]
        );
        let missing = [(Cow::Borrowed("items"), Value::Int(2))];
        let v = plan.check(&view("commerce_event", None, Some("purchase"), &missing), 4);
        assert_eq!(rules(&v), ["missing_attribute"]);
        assert_eq!(v[0].row, 4);
        assert!(v[0].detail.contains("`store`"), "{}", v[0].detail);
    }

    #[test]
    fn a_single_version_document_is_accepted() {
        let doc = r#"{"version": 3, "version_document": {"data_points": [
            {"match": {"type": "screen_view", "criteria": {"screen_name": "Home"}}}]}}"#;
        let plan = DataPlan::parse(doc, None).unwrap();
        assert_eq!(plan.version, Some(3));
        assert!(plan
            .check(&view("screen_view", Some("Home"), None, &[]), 1)
            .is_empty());
        assert!(DataPlan::parse("{}", None).is_err());
    }
}
