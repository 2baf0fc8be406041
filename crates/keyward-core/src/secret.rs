//! Rules for a key's secret value before it is sealed: shape checks, the masked-value trap
//! and the non-secret hint (`sk-…WXYZ`) that is all anyone sees afterwards.
//!
//! The plaintext only ever passes through here inside a [`SecretString`]; nothing in this
//! module copies it into an error message, and the hint reveals at most a structural prefix
//! and the last four characters.

use secrecy::{ExposeSecret, SecretString};

use crate::Error;
use crate::service::ServiceDefinition;

/// Longest secret accepted (JWT-style keys can be long; anything bigger is a mistake).
pub const SECRET_MAX: usize = 4096;

/// Characters and sequences that appear in masked renderings of a key, never in a key.
const MASK_MARKERS: [&str; 5] = ["…", "...", "***", "•", "●"];

/// Trims surrounding whitespace (copy-paste) and refuses values that cannot be a key:
/// empty, too long, containing whitespace or control characters, or a masked hint.
pub fn normalize(raw: &SecretString) -> Result<SecretString, Error> {
    let value = raw.expose_secret().trim();
    if value.is_empty() {
        return Err(Error::invalid("secret_empty", "the secret is empty"));
    }
    if value.len() > SECRET_MAX {
        return Err(Error::invalid(
            "secret_too_long",
            format!("the secret must be at most {SECRET_MAX} bytes"),
        ));
    }
    if MASK_MARKERS.iter().any(|m| value.contains(m)) {
        return Err(Error::invalid(
            "secret_masked",
            "the secret looks like a masked hint (it contains `…`, `...`, `***` or bullets), not a key; paste the full key",
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            "secret_malformed",
            "the secret must not contain spaces, line breaks or control characters",
        ));
    }
    Ok(SecretString::from(value.to_owned()))
}

/// Checks the key against the service's format rule unless `force` is set.
pub fn check_format(
    service: &ServiceDefinition,
    value: &SecretString,
    force: bool,
) -> Result<(), Error> {
    if force {
        return Ok(());
    }
    let Some(format) = service.key_format_regex()? else {
        return Ok(());
    };
    if format.is_match(value.expose_secret()) {
        Ok(())
    } else {
        let expected = service
            .key_format_description
            .as_deref()
            .unwrap_or("the service's key format");
        Err(Error::invalid(
            "secret_format_mismatch",
            format!(
                "this does not look like a {} key (expected: {expected}); send \"force\": true to store it anyway",
                service.name
            ),
        ))
    }
}

/// The hint shown instead of the value: the service's public prefix (if any) and, for keys
/// long enough that it leaves ample secret entropy, the last four characters.
pub fn hint(service: &ServiceDefinition, value: &SecretString) -> Result<String, Error> {
    let value = value.expose_secret();
    let prefix = match service.public_prefix.as_deref() {
        Some(pattern) => regex::Regex::new(&format!("^(?:{pattern})"))
            .map_err(|e| Error::internal(format!("bad public_prefix for {}: {e}", service.id)))?
            .find(value)
            .map(|m| m.as_str())
            .filter(|p| p.len() + 8 <= value.len())
            .unwrap_or(""),
        None => "",
    };
    let chars: Vec<char> = value.chars().collect();
    let shown = match chars.len() {
        0..8 => 0,
        8..16 => 2,
        _ => 4,
    };
    let tail: String = chars[chars.len() - shown..].iter().collect();
    Ok(format!("{prefix}…{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::builtin_services;

    fn service(id: &str) -> ServiceDefinition {
        builtin_services()
            .expect("catalog")
            .into_iter()
            .find(|s| s.id == id)
            .expect("service exists")
    }

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    #[test]
    fn masked_values_are_refused() {
        for masked in ["sk-…WXYZ", "sk-...WXYZ", "sk-****WXYZ", "••••WXYZ"] {
            assert_eq!(
                normalize(&s(masked)).map(|_| ()).map_err(|e| e.code),
                Err("secret_masked")
            );
        }
    }

    #[test]
    fn whitespace_is_trimmed_but_not_accepted_inside() {
        assert_eq!(
            normalize(&s("  abc \n"))
                .map(|v| v.expose_secret().to_owned())
                .ok()
                .as_deref(),
            Some("abc")
        );
        assert!(normalize(&s("ab c")).is_err());
        assert!(normalize(&s("   ")).is_err());
        assert!(normalize(&s(&"x".repeat(SECRET_MAX + 1))).is_err());
    }

    #[test]
    fn format_checks_follow_the_catalog_and_can_be_forced() {
        let openai = service("openai");
        let good = s(&format!("sk-proj-{}", "A1b2".repeat(20)));
        assert!(check_format(&openai, &good, false).is_ok());
        let bad = s("not-a-key");
        let err = check_format(&openai, &bad, false).map_err(|e| e.code);
        assert_eq!(err, Err("secret_format_mismatch"));
        assert!(check_format(&openai, &bad, true).is_ok());
        let av = service("alpha-vantage");
        assert!(check_format(&av, &s("ABCDEFGH12345678"), false).is_ok());
        assert!(check_format(&av, &s("abcdefgh12345678"), false).is_err());
    }

    #[test]
    fn hints_show_prefix_and_last_four_only() {
        let openai = service("openai");
        let key = format!("sk-proj-{}WXYZ", "a".repeat(60));
        assert_eq!(
            hint(&openai, &s(&key)).ok().as_deref(),
            Some("sk-proj-…WXYZ")
        );
        let finnhub = service("finnhub");
        assert_eq!(
            hint(&finnhub, &s("abcdefghij0123456789")).ok().as_deref(),
            Some("…6789")
        );
        assert_eq!(
            hint(&finnhub, &s("abcdefghij")).ok().as_deref(),
            Some("…ij")
        );
        assert_eq!(hint(&finnhub, &s("short")).ok().as_deref(), Some("…"));
    }
}
