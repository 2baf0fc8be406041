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
    use keyward_core::access::Permission;
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .enum_values(Some(Permission::ALL.iter().map(|p| p.as_str()))),
        )
        .build()
}
