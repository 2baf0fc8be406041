//! Schemas the OpenAPI document cannot derive from a type: the names of built-in roles and
//! of permissions, as enums (for `#[schema(schema_with = …)]`).

/// The schema of a built-in role: one of the names `Role::ALL` has (for `schema_with`).
pub fn role_schema() -> utoipa::openapi::schema::Object {
    use keyward_core::access::Role;
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(Role::ALL.iter().map(|r| r.as_str())))
        .build()
}

/// The schema of a permission set: names from `Permission::ALL` (for `schema_with`).
pub fn permissions_schema() -> utoipa::openapi::schema::Array {
    permissions(false)
}

/// Permissions, or `null` for "unchanged" (an update).
pub fn optional_permissions_schema() -> utoipa::openapi::schema::Array {
    permissions(true)
}

fn permissions(nullable: bool) -> utoipa::openapi::schema::Array {
    use keyward_core::access::Permission;
    let array = if nullable {
        ArrayBuilder::new().schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
    } else {
        ArrayBuilder::new()
    };
    array
        .items(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .enum_values(Some(Permission::ALL.iter().map(|p| p.as_str()))),
        )
        .build()
}

use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, Object, ObjectBuilder, Schema, SchemaType, Type,
};

/// A string, or `null` where the field is optional.
fn text(nullable: bool) -> ObjectBuilder {
    if nullable {
        ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    } else {
        ObjectBuilder::new().schema_type(Type::String)
    }
}

/// An object that takes no fields but those listed (the bodies' `deny_unknown_fields`).
fn closed(nullable: bool) -> ObjectBuilder {
    let object = if nullable {
        ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
    } else {
        ObjectBuilder::new().schema_type(Type::Object)
    };
    object.additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn integer(minimum: u64, maximum: u64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(minimum as f64))
        .maximum(Some(maximum as f64))
}

/// Where a grant or token applies: `{"categories": [...], "environments": [...]}`, a
/// missing (or `null`) list meaning all.
pub fn scope_schema() -> Object {
    let ids = || {
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(text(false))
    };
    closed(false)
        .property("categories", ids())
        .property("environments", ids())
        .description(Some(
            "`{\"categories\": [...], \"environments\": [...]}`; a missing list means all.",
        ))
        .build()
}

/// A key's criticality, optional.
pub fn criticality_schema() -> Object {
    text(true)
        .enum_values(Some(["low", "medium", "high", "critical"]))
        .build()
}

/// Provider limits the proxy holds a key to (at most 10).
pub fn limits_schema() -> utoipa::openapi::schema::Array {
    limits(false)
}

/// [`limits_schema`], or `null` for "unchanged".
pub fn optional_limits_schema() -> utoipa::openapi::schema::Array {
    limits(true)
}

fn limits(nullable: bool) -> utoipa::openapi::schema::Array {
    let limit = closed(false)
        .property("max", integer(1, u64::from(u32::MAX)))
        .property(
            "unit",
            text(false).enum_values(Some(["requests", "credits", "tokens", "symbols"])),
        )
        .property("window_seconds", integer(1, 31 * 86_400))
        .required("max")
        .required("unit")
        .required("window_seconds");
    let array = if nullable {
        ArrayBuilder::new().schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
    } else {
        ArrayBuilder::new()
    };
    array
        .items(limit)
        .max_items(Some(keyward_core::service::LIMITS_MAX))
        .build()
}

/// A key's own rotation rule, or `null` for its category's.
pub fn rotation_rule_schema() -> Object {
    closed(true)
        .property("max_age_days", integer(1, u64::from(u16::MAX)))
        .property("remind_days", integer(0, u64::from(u16::MAX)))
        .required("max_age_days")
        .build()
}

/// How a pool picks its next key.
pub fn strategy_schema() -> Object {
    text(false)
        .enum_values(Some(["round_robin", "least_used", "quota_aware"]))
        .build()
}

fn one_of(names: &'static [&'static str]) -> Object {
    text(false).enum_values(Some(names.iter().copied())).build()
}

/// A key status, as a filter.
pub fn key_status_schema() -> Object {
    one_of(&["active", "disabled", "expired", "revoked", "deleted"])
}

/// An audit outcome, as a filter.
pub fn outcome_schema() -> Object {
    one_of(&["success", "failure", "denied"])
}

/// An approval request's status, as a filter.
pub fn approval_status_schema() -> Object {
    one_of(&[
        "pending",
        "approved",
        "denied",
        "executed",
        "cancelled",
        "review_required",
        "reviewed",
    ])
}

/// A usage series' bucket size.
pub fn granularity_schema() -> Object {
    one_of(&["minute", "hour", "day", "week", "month"])
}

/// A budget's period.
pub fn period_schema() -> Object {
    one_of(&["day", "month"])
}
