//! Validation of the small strings users give things: slugs, names, descriptions, tags.
//!
//! The limits are part of the API contract (README.md lists them) and live here, once.

use crate::Error;

/// Slugs (service ids, environment and category names): 1–40 characters, lowercase ASCII
/// letters, digits and `-`, starting with a letter or digit.
pub const SLUG_MAX: usize = 40;
/// Key aliases: 1–64 characters of letters, digits, space, `.`, `_`, `-`.
pub const ALIAS_MAX: usize = 64;
/// Display names (services, environments, categories, token names): 1–80 characters.
pub const NAME_MAX: usize = 80;
/// Free-text descriptions: up to 1,000 characters.
pub const DESCRIPTION_MAX: usize = 1000;
/// Owner (a person, team or e-mail address): up to 128 characters.
pub const OWNER_MAX: usize = 128;
/// At most 20 tags per key, each 1–40 characters of lowercase letters, digits and `.-_:`.
pub const TAGS_MAX: usize = 20;
pub const TAG_MAX: usize = 40;

/// A user-supplied value made safe to quote back in an error message: control characters
/// removed and cut to 60 characters. Never pass secret material here.
pub fn printable(value: &str) -> String {
    let cleaned: String = value.chars().filter(|c| !c.is_control()).take(60).collect();
    if value.chars().count() > 60 {
        format!("{cleaned}…")
    } else {
        cleaned
    }
}

pub fn slug(field: &'static str, value: &str) -> Result<String, Error> {
    let ok = !value.is_empty()
        && value.len() <= SLUG_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            "invalid_slug",
            format!(
                "{field} `{}` must be 1–{SLUG_MAX} characters of lowercase letters, digits and `-`, not starting with `-`",
                printable(value)
            ),
        ))
    }
}

pub fn alias(value: &str) -> Result<String, Error> {
    let value = value.trim();
    let ok = !value.is_empty()
        && value.chars().count() <= ALIAS_MAX
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            "invalid_alias",
            format!(
                "alias `{}` must be 1–{ALIAS_MAX} characters of letters, digits, space, `.`, `_` and `-`",
                printable(value)
            ),
        ))
    }
}

pub fn name(field: &'static str, value: &str) -> Result<String, Error> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > NAME_MAX || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            "invalid_name",
            format!("{field} must be 1–{NAME_MAX} printable characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Optional free text with a maximum length; empty becomes `None`.
pub fn text(field: &'static str, value: Option<&str>, max: usize) -> Result<Option<String>, Error> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.chars().count() > max {
        return Err(Error::invalid(
            "text_too_long",
            format!("{field} must be at most {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::invalid(
            "invalid_text",
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(Some(value.to_owned()))
}

/// Tags are normalised to lowercase, deduplicated and sorted.
pub fn tags(values: &[String]) -> Result<Vec<String>, Error> {
    if values.len() > TAGS_MAX {
        return Err(Error::invalid(
            "too_many_tags",
            format!("a key can have at most {TAGS_MAX} tags"),
        ));
    }
    let mut out = Vec::with_capacity(values.len());
    for raw in values {
        let tag = raw.trim().to_lowercase();
        let ok = !tag.is_empty()
            && tag.len() <= TAG_MAX
            && tag.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'-' | b'_' | b':')
            });
        if !ok {
            return Err(Error::invalid(
                "invalid_tag",
                format!(
                    "tag `{}` must be 1–{TAG_MAX} characters of lowercase letters, digits and `.-_:`",
                    printable(raw)
                ),
            ));
        }
        out.push(tag);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced() {
        assert!(slug("id", "alpha-vantage").is_ok());
        assert!(slug("id", "Alpha").is_err());
        assert!(slug("id", "").is_err());
        assert!(slug("id", "-x").is_err());
        assert!(slug("id", &"a".repeat(SLUG_MAX + 1)).is_err());
        assert_eq!(alias("  prod main ").ok().as_deref(), Some("prod main"));
        assert!(alias("").is_err());
        assert!(alias(&"a".repeat(ALIAS_MAX + 1)).is_err());
        assert!(alias("semi;colon").is_err());
        assert_eq!(text("description", Some("  "), 10).ok(), Some(None));
        assert!(text("description", Some(&"x".repeat(11)), 10).is_err());
        assert_eq!(
            tags(&["B".into(), "a".into(), "b".into()]).ok(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(tags(&["bad tag".into()]).is_err());
        assert!(tags(&vec!["x".to_owned(); TAGS_MAX + 1]).is_err());
    }

    #[test]
    fn printable_strips_control_characters_and_truncates() {
        assert_eq!(printable("a\nb"), "ab");
        assert_eq!(printable(&"x".repeat(100)).chars().count(), 61);
    }
}
