//! Column classification: where each column of a model goes, decided once per run
//! from the probed columns and the pipeline's field transformations.
//!
//! Order of precedence, as in mParticle's user pipelines:
//! 1. the iterator column is never sent;
//! 2. an explicit mapping (`column` → destination, or `ignore`) wins;
//! 3. reserved identity names (case-insensitive; `customerid` and `customer_id`
//!    both mean `customer_id`) go to `user_identities`;
//! 4. `mpid` goes to the batch's `mpid`;
//! 5. reserved device-id names go to `device_info` (`mp_deviceid` to the top level);
//! 6. every other column is a user attribute named exactly as the column alias.
//!
//! Event pipelines (`pipeline_type = "events"`) follow the same order, except
//! that a column named after an event field (`event_type`, `event_name`,
//! `custom_event_type`, `timestamp_unixtime_ms` or `event_timestamp`,
//! `source_message_id`, `screen_name`, `currency_code`, `product_action`,
//! `transaction_id`, `total_amount` or `revenue`, `tax_amount`,
//! `shipping_amount`, `products`) fills that field, and every other column is
//! an event attribute (`events[].data.custom_attributes.<alias>`).

use std::collections::HashMap;

use crate::config::model::{
    Destination, EventField, Mapping, Pipeline, PipelineType, StaticValue, SyncMode,
};
use crate::mapping::identity::{DeviceIdType, IdentityType};
use crate::mapping::MappingError;
use crate::source::{ColumnInfo, ColumnKind};

/// What happens to one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Sent to this destination.
    Send(Destination),
    /// The incremental iterator: drives the window, never sent.
    Iterator,
    /// Dropped by an `ignore` mapping.
    Ignored,
}

/// One column and its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    /// Position in the record batch.
    pub index: usize,
    /// Column name as the database returned it.
    pub name: String,
    /// How its values are decoded.
    pub kind: ColumnKind,
    /// SQL type as reported, for display.
    pub sql_type: String,
    /// Where it goes.
    pub route: Route,
    /// Whether the route came from an explicit mapping.
    pub explicit: bool,
}

/// The compiled mapping of a pipeline over a model's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct MappingPlan {
    /// Every column, in result order.
    pub columns: Vec<ColumnPlan>,
    /// Constants written on every batch.
    pub statics: Vec<(Destination, StaticValue)>,
    /// Profiles or events.
    pub pipeline_type: PipelineType,
}

impl MappingPlan {
    /// Classify `columns` for `pipeline`. Fails when a mapping names a column the
    /// model does not return, when two columns would write the same place, or when
    /// a column's type cannot go where it is mapped.
    pub fn new(columns: &[ColumnInfo], pipeline: &Pipeline) -> Result<Self, MappingError> {
        let plan_error = |message: String, hint: &str| MappingError::Plan {
            pipeline: pipeline.id.clone(),
            file: pipeline.path.clone(),
            message,
            hint: hint.to_owned(),
        };
        let available = || {
            columns
                .iter()
                .map(|c| format!("`{}`", c.name))
                .collect::<Vec<_>>()
                .join(", ")
        };

        let iterator = match &pipeline.sync_mode {
            SyncMode::Incremental { iterator_field, .. } => Some(iterator_field.to_lowercase()),
            SyncMode::Full => None,
        };
        if let Some(it) = &iterator {
            if !columns.iter().any(|c| c.name.to_lowercase() == *it) {
                return Err(plan_error(
                    format!(
                        "sync_mode.iterator_field `{it}` is not a column of data model `{}` (columns: {})",
                        pipeline.data_model,
                        available()
                    ),
                    "select the iterator column in the model SQL, or fix `iterator_field`",
                ));
            }
        }

        let mut explicit: HashMap<String, Option<Destination>> = HashMap::new();
        let mut statics = Vec::new();
        for (i, mapping) in pipeline.mappings.iter().enumerate() {
            match mapping {
                Mapping::Column {
                    source,
                    destination,
                } => {
                    explicit.insert(source.to_lowercase(), Some(destination.clone()));
                }
                Mapping::Ignore { source } => {
                    explicit.insert(source.to_lowercase(), None);
                }
                Mapping::Static { value, destination } => {
                    statics.push((destination.clone(), value.clone()));
                    continue;
                }
            }
            let (Mapping::Column { source, .. } | Mapping::Ignore { source }) = mapping else {
                continue;
            };
            if !columns.iter().any(|c| c.name.eq_ignore_ascii_case(source)) {
                return Err(plan_error(
                    format!(
                        "mappings[{i}].source `{source}` is not a column of data model `{}` (columns: {})",
                        pipeline.data_model,
                        available()
                    ),
                    "check the spelling against the model's column aliases, or remove the mapping",
                ));
            }
        }

        let mut planned = Vec::with_capacity(columns.len());
        for (index, column) in columns.iter().enumerate() {
            let lower = column.name.to_lowercase();
            let (route, is_explicit) = if iterator.as_deref() == Some(lower.as_str()) {
                (Route::Iterator, false)
            } else if let Some(choice) = explicit.get(&lower) {
                (choice.clone().map_or(Route::Ignored, Route::Send), true)
            } else {
                let destination = match pipeline.pipeline_type {
                    PipelineType::UserAttributes => implicit_destination(&column.name),
                    PipelineType::Events => implicit_event_destination(&column.name),
                };
                (Route::Send(destination), false)
            };
            if let Route::Send(destination) = &route {
                check_kind_fits(column, destination).map_err(|m| {
                    plan_error(
                        m,
                        "cast the column in the model SQL, or map it to a user attribute",
                    )
                })?;
                check_type_fits(pipeline.pipeline_type, destination).map_err(|m| {
                    plan_error(
                        m,
                        "set pipeline_type to match, or change the mapping's destination",
                    )
                })?;
            }
            planned.push(ColumnPlan {
                index,
                name: column.name.clone(),
                kind: column.kind.clone(),
                sql_type: column.sql_type.clone(),
                route,
                explicit: is_explicit,
            });
        }

        // Two writers for one place would make the batch depend on column order.
        let mut seen: HashMap<String, String> = HashMap::new();
        let writers = planned
            .iter()
            .filter_map(|c| match &c.route {
                Route::Send(d) => Some((destination_path(d), format!("column `{}`", c.name))),
                _ => None,
            })
            .chain(
                statics
                    .iter()
                    .map(|(d, _)| (destination_path(d), "a static mapping".to_owned())),
            );
        for (path, writer) in writers {
            if let Some(first) = seen.insert(path.clone(), writer.clone()) {
                return Err(plan_error(
                    format!("{first} and {writer} both write `{path}`"),
                    "rename one of the columns with an alias, or add an `ignore` mapping for one",
                ));
            }
        }

        // Without anything to resolve a profile by, every row would be rejected
        // as `no_identity`: a configuration error, said before any row is read.
        let resolves = planned
            .iter()
            .filter_map(|c| match &c.route {
                Route::Send(d) => Some(d),
                Route::Iterator | Route::Ignored => None,
            })
            .chain(statics.iter().map(|(d, _)| d))
            .any(|d| {
                matches!(
                    d,
                    Destination::Identity(_) | Destination::Mpid | Destination::Device(_)
                )
            });
        if !resolves {
            return Err(plan_error(
                format!(
                    "data model `{}` has no identity column: nothing goes to `user_identities`, `mpid` or `device_info`, so every row would be rejected as `no_identity` (columns: {})",
                    pipeline.data_model,
                    available()
                ),
                "return a column named after an identity (`customer_id`, `email`, …) or `mpid` from the model, alias one (`user_key AS customer_id`), or map a column to `user_identities.<type>`",
            ));
        }

        if pipeline.pipeline_type == PipelineType::Events {
            let names_event = planned
                .iter()
                .filter_map(|c| match &c.route {
                    Route::Send(d) => Some(d),
                    Route::Iterator | Route::Ignored => None,
                })
                .chain(statics.iter().map(|(d, _)| d))
                .any(|d| {
                    matches!(
                        d,
                        Destination::Event(
                            EventField::EventName
                                | EventField::ScreenName
                                | EventField::ProductAction
                        )
                    )
                });
            if !names_event {
                return Err(plan_error(
                    format!(
                        "event pipeline: data model `{}` has no `event_name`, `screen_name` or `product_action` column, so no row could make an event (columns: {})",
                        pipeline.data_model,
                        available()
                    ),
                    "return an `event_name` column (custom events), a `product_action` column (commerce events) or a `screen_name` column (screen views), or map one with a field mapping",
                ));
            }
        }

        Ok(Self {
            columns: planned,
            statics,
            pipeline_type: pipeline.pipeline_type,
        })
    }
}

/// Where a column of this name goes when no mapping says otherwise.
pub fn implicit_destination(name: &str) -> Destination {
    if let Some(identity) = IdentityType::from_column(name) {
        Destination::Identity(identity)
    } else if name.eq_ignore_ascii_case("mpid") {
        Destination::Mpid
    } else if let Some(device) = DeviceIdType::from_column(name) {
        Destination::Device(device)
    } else {
        Destination::Attribute(name.to_owned())
    }
}

/// Where a column of this name goes in an event pipeline when no mapping says
/// otherwise: identities as for user data, event fields by name, the rest to
/// the event's custom attributes.
pub fn implicit_event_destination(name: &str) -> Destination {
    match implicit_destination(name) {
        Destination::Attribute(name) => match EventField::from_column(&name) {
            Some(field) => Destination::Event(field),
            None => Destination::EventAttribute(name),
        },
        other => other,
    }
}

/// The batch path of a destination (`user_identities.email`, `user_attributes.ltv`).
pub fn destination_path(destination: &Destination) -> String {
    match destination {
        Destination::Event(field) => field.path().to_owned(),
        Destination::EventAttribute(name) => format!("events[].data.custom_attributes.{name}"),
        Destination::Identity(t) => format!("user_identities.{}", t.as_str()),
        Destination::Device(DeviceIdType::MpDeviceId) => "mp_deviceid".to_owned(),
        Destination::Device(t) => format!("device_info.{}", t.as_str()),
        Destination::Mpid => "mpid".to_owned(),
        Destination::Attribute(name) => format!("user_attributes.{name}"),
    }
}

/// Event destinations only in event pipelines, user attributes only in user ones.
fn check_type_fits(pipeline_type: PipelineType, destination: &Destination) -> Result<(), String> {
    let event = matches!(
        destination,
        Destination::Event(_) | Destination::EventAttribute(_)
    );
    match (pipeline_type, destination) {
        (PipelineType::UserAttributes, _) if event => Err(format!(
            "`{}` is an event field, and this is a user_attributes pipeline",
            destination_path(destination)
        )),
        (PipelineType::Events, Destination::Attribute(name)) => Err(format!(
            "`user_attributes.{name}`: an event pipeline sends events, not user attributes"
        )),
        _ => Ok(()),
    }
}

fn check_kind_fits(column: &ColumnInfo, destination: &Destination) -> Result<(), String> {
    let scalar_id = !matches!(column.kind, ColumnKind::List(_) | ColumnKind::Bytes);
    let number = matches!(
        column.kind,
        ColumnKind::Int
            | ColumnKind::UInt
            | ColumnKind::Float32
            | ColumnKind::Float64
            | ColumnKind::Decimal
    );
    let event_ok = match destination {
        Destination::Event(EventField::Timestamp) => Some((
            matches!(
                column.kind,
                ColumnKind::Timestamp
                    | ColumnKind::TimestampTz
                    | ColumnKind::Date
                    | ColumnKind::Int
                    | ColumnKind::Text
            ),
            "the event time must be a timestamp, a date, or integer milliseconds since 1970",
        )),
        Destination::Event(
            EventField::TotalAmount | EventField::TaxAmount | EventField::ShippingAmount,
        ) => Some((number, "amounts must be numbers")),
        Destination::Event(EventField::Products) => Some((
            matches!(column.kind, ColumnKind::Json | ColumnKind::Text),
            "products must be a JSON array of product objects",
        )),
        Destination::Event(_) | Destination::EventAttribute(_) => Some((
            scalar_id,
            "event fields and attributes must be single text, number or boolean values",
        )),
        _ => None,
    };
    if let Some((ok, why)) = event_ok {
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "column `{}` ({}) cannot go to `{}`: {why}",
                column.name,
                column.sql_type,
                destination_path(destination),
            ))
        };
    }
    let ok = match destination {
        Destination::Attribute(_) => true,
        Destination::Event(_) | Destination::EventAttribute(_) => true,
        Destination::Identity(_) | Destination::Device(_) => scalar_id,
        Destination::Mpid => matches!(
            column.kind,
            ColumnKind::Int | ColumnKind::UInt | ColumnKind::Text | ColumnKind::Decimal
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "column `{}` ({}) cannot go to `{}`: {}",
            column.name,
            column.sql_type,
            destination_path(destination),
            if matches!(destination, Destination::Mpid) {
                "mpid must be a 64-bit integer"
            } else {
                "identities must be single text or number values"
            }
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::model::{
        Environment, InputProtection, IteratorDataType, LimitPolicy, NullPolicy, Schedule,
    };

    pub(crate) fn pipeline(mappings: Vec<Mapping>, sync_mode: SyncMode) -> Pipeline {
        Pipeline {
            id: "users".into(),
            name: "users".into(),
            path: PathBuf::from("schedules/users.toml"),
            connection: "wh".into(),
            data_model: "users".into(),
            feed: None,
            environment: Environment::Development,
            sync_mode,
            schedule: Schedule::OnDemand,
            paused: false,
            input_protection: InputProtection::CreateAndUpdate,
            null_policy: NullPolicy::Skip,
            limit_policy: LimitPolicy::Truncate,
            mappings,
            retry_dead_letters: true,
            write_batches: false,
            max_rejected_pct: None,
            diff: None,
            export: None,
            pipeline_type: PipelineType::UserAttributes,
            data_plan: None,
        }
    }

    fn col(name: &str, kind: ColumnKind) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            sql_type: "T".into(),
            kind,
            decimal: None,
        }
    }

    #[test]
    fn implicit_rules() {
        let columns = vec![
            col("CustomerID", ColumnKind::Text),
            col("Email", ColumnKind::Text),
            col("MPID", ColumnKind::Int),
            col("ios_idfv", ColumnKind::Text),
            col("mp_deviceid", ColumnKind::Text),
            col("$firstname", ColumnKind::Text),
            col("updated_at", ColumnKind::TimestampTz),
        ];
        let p = pipeline(
            vec![],
            SyncMode::Incremental {
                iterator_field: "UPDATED_AT".into(),
                iterator_data_type: IteratorDataType::TimestampTz,
                from: None,
                lag: 0,
                time_zone: chrono_tz::UTC,
            },
        );
        let plan = MappingPlan::new(&columns, &p).unwrap();
        let routes: Vec<_> = plan.columns.iter().map(|c| c.route.clone()).collect();
        assert_eq!(
            routes,
            vec![
                Route::Send(Destination::Identity(IdentityType::CustomerId)),
                Route::Send(Destination::Identity(IdentityType::Email)),
                Route::Send(Destination::Mpid),
                Route::Send(Destination::Device(DeviceIdType::IosIdfv)),
                Route::Send(Destination::Device(DeviceIdType::MpDeviceId)),
                Route::Send(Destination::Attribute("$firstname".into())),
                Route::Iterator,
            ]
        );
    }

    #[test]
    fn explicit_mappings_override() {
        let columns = vec![
            col("first", ColumnKind::Text),
            col("email", ColumnKind::Text),
            col("secret", ColumnKind::Text),
            col("customer_id", ColumnKind::Text),
        ];
        let p = pipeline(
            vec![
                Mapping::Column {
                    source: "FIRST".into(),
                    destination: Destination::Attribute("$firstname".into()),
                },
                Mapping::Column {
                    source: "email".into(),
                    destination: Destination::Attribute("contact_email".into()),
                },
                Mapping::Ignore {
                    source: "secret".into(),
                },
                Mapping::Static {
                    value: StaticValue::String("warehouse".into()),
                    destination: Destination::Attribute("source".into()),
                },
            ],
            SyncMode::Full,
        );
        let plan = MappingPlan::new(&columns, &p).unwrap();
        assert_eq!(
            plan.columns[0].route,
            Route::Send(Destination::Attribute("$firstname".into()))
        );
        assert_eq!(
            plan.columns[1].route,
            Route::Send(Destination::Attribute("contact_email".into()))
        );
        assert_eq!(plan.columns[2].route, Route::Ignored);
        assert_eq!(plan.statics.len(), 1);
    }

    #[test]
    fn model_without_identity_column_is_a_config_error() {
        let columns = vec![
            col("plan", ColumnKind::Text),
            col("ltv", ColumnKind::Float64),
        ];
        let err = MappingPlan::new(&columns, &pipeline(vec![], SyncMode::Full))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data model `users` has no identity column"),
            "{err}"
        );
        assert!(err.contains("columns: `plan`, `ltv`"), "{err}");
        assert!(err.contains("hint: "), "{err}");

        // An identity moved away by a mapping counts as gone…
        let columns = vec![
            col("email", ColumnKind::Text),
            col("plan", ColumnKind::Text),
        ];
        let moved = pipeline(
            vec![Mapping::Column {
                source: "email".into(),
                destination: Destination::Attribute("contact".into()),
            }],
            SyncMode::Full,
        );
        assert!(MappingPlan::new(&columns, &moved).is_err());
        // …and `mpid`, a device id or a mapping to an identity are enough.
        for (name, mappings) in [
            ("mpid", vec![]),
            ("push_token", vec![]),
            (
                "user_key",
                vec![Mapping::Column {
                    source: "user_key".into(),
                    destination: Destination::Identity(IdentityType::CustomerId),
                }],
            ),
        ] {
            let columns = vec![col(name, ColumnKind::Text), col("plan", ColumnKind::Text)];
            MappingPlan::new(&columns, &pipeline(mappings, SyncMode::Full))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let columns = vec![
            col("email", ColumnKind::Text),
            col("e_mail", ColumnKind::Text),
        ];
        let p = pipeline(
            vec![Mapping::Column {
                source: "e_mail".into(),
                destination: Destination::Identity(IdentityType::Email),
            }],
            SyncMode::Full,
        );
        let err = MappingPlan::new(&columns, &p).unwrap_err().to_string();
        assert!(
            err.contains("column `email` and column `e_mail` both write `user_identities.email`"),
            "{err}"
        );

        let p = pipeline(
            vec![Mapping::Ignore {
                source: "nope".into(),
            }],
            SyncMode::Full,
        );
        let err = MappingPlan::new(&columns, &p).unwrap_err().to_string();
        assert!(
            err.contains("mappings[0].source `nope` is not a column"),
            "{err}"
        );

        let columns = vec![col("email", ColumnKind::List(Box::new(ColumnKind::Text)))];
        let err = MappingPlan::new(&columns, &pipeline(vec![], SyncMode::Full))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot go to `user_identities.email`"),
            "{err}"
        );
    }
}
