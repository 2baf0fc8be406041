//! What the key forms share: reading a key id from the path, the fields shown again after
//! a refusal (never a secret) and which field an error belongs to, tags and expiry dates as
//! typed.

use keyward_core::Error;
use keyward_core::id::KeyId;
use keyward_core::key::Key;

pub(crate) fn parse_id(id: &str) -> Result<KeyId, Error> {
    id.parse()
        .map_err(|_| Error::not_found("key_not_found", "there is no such key"))
}

/// What the edit form (or the rotate form) shows again after a refusal: what was typed
/// (never a secret) and the error, next to its field.
#[derive(Debug, Default, Clone)]
pub(crate) struct Typed {
    pub(crate) alias: String,
    pub(crate) description: String,
    pub(crate) owner: String,
    pub(crate) tags: String,
    pub(crate) criticality: String,
    pub(crate) expires: String,
    /// The guided-rotation form (never its secret).
    pub(crate) window_minutes: String,
    pub(crate) project: String,
    pub(crate) admin_key: String,
}

impl Typed {
    pub(crate) fn of(key: &Key) -> Self {
        Self {
            alias: key.alias.clone(),
            description: key.description.clone().unwrap_or_default(),
            owner: key.owner.clone().unwrap_or_default(),
            tags: key.tags.join(", "),
            criticality: key.criticality.as_str().to_owned(),
            expires: key
                .expires_at
                .map(|t| {
                    t.to_zoned_datetime(jiff::tz::TimeZone::UTC)
                        .date()
                        .to_string()
                })
                .unwrap_or_default(),
            ..Self::default()
        }
    }
}

/// A refused form on the key page: which form, what was typed, and why.
pub(crate) struct Refused {
    pub(crate) form: &'static str,
    pub(crate) typed: Typed,
    pub(crate) error: Error,
}

/// A day (`2026-12-31`) as the end of that day, UTC; empty is "no expiry".
pub(crate) fn expiry_of(day: &str) -> Result<Option<jiff::Timestamp>, Error> {
    match day.trim() {
        "" => Ok(None),
        day => day
            .parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| {
                d.at(23, 59, 59, 0)
                    .to_zoned_datetime(jiff::tz::TimeZone::UTC)
                    .ok()
            })
            .map(|z| Some(z.timestamp()))
            .ok_or_else(|| Error::invalid("invalid_expiry", "the expiry is not a date")),
    }
}

/// Comma-separated tags, trimmed and lower-cased.
pub(crate) fn tags_of(text: &str) -> Vec<String> {
    text.split(',')
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Which field an error code belongs to, so it can be shown next to it.
pub(crate) fn field_of(code: &str) -> &'static str {
    match code {
        c if c.starts_with("secret") => "secret",
        "invalid_alias" | "alias_taken" => "alias",
        "invalid_tag" | "too_many_tags" => "tags",
        "unknown_service" | "invalid_slug" => "service",
        "expires_at_in_past" | "invalid_expiry" => "expires",
        _ => "form",
    }
}
