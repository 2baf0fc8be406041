//! Human users and the rules for their names and passwords.

use jiff::Timestamp;

use crate::Error;
use crate::access::Role;
use crate::id::UserId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub username: String,
    /// Argon2id PHC string; never the password.
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: Timestamp,
    /// The user or token that created this account (`None`: the console — setup, the CLI).
    pub created_by_id: Option<String>,
    /// Has a confirmed second factor (derived by the store from the enrolment).
    pub mfa_enabled: bool,
    /// Where the user may sign in and work from (empty: anywhere the role allows).
    pub allowed_networks: Vec<ipnet::IpNet>,
}

pub const USERNAME_MAX: usize = 64;
/// ASVS 5 §6.2: at least 12 characters, at least 64 allowed, no composition rules.
pub const PASSWORD_MIN: usize = 12;
pub const PASSWORD_MAX: usize = 256;

pub fn validate_username(value: &str) -> Result<String, Error> {
    let value = value.trim();
    let ok = (1..=USERNAME_MAX).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            "invalid_username",
            format!("a username is 1–{USERNAME_MAX} characters of letters, digits and `._-@`"),
        ))
    }
}

/// Checks a new password against ASVS 5 §6.2: 12–256 characters (counted in characters, so
/// passphrases in any script work), no composition rules, and not a common password — the
/// list in `data/common-passwords.txt`, also with digits or symbols stuck on either end, a
/// short pattern repeated, or containing the username or "keyward".
pub fn check_password(password: &str, username: &str) -> Result<(), Error> {
    let len = password.chars().count();
    if len < PASSWORD_MIN {
        return Err(Error::invalid(
            "password_too_short",
            format!("a password needs at least {PASSWORD_MIN} characters"),
        ));
    }
    if len > PASSWORD_MAX {
        return Err(Error::invalid(
            "password_too_long",
            format!("a password can have at most {PASSWORD_MAX} characters"),
        ));
    }
    let lower = password.to_lowercase();
    let common = || {
        Error::invalid(
            "password_common",
            "this password is too common or too predictable; a few unrelated words make a good one",
        )
    };
    let core = lower.trim_matches(|c: char| {
        c.is_ascii_digit() || c.is_ascii_punctuation() || c.is_whitespace()
    });
    if is_common(&lower) || (core.chars().count() >= 4 && is_common(core)) || is_repetitive(&lower)
    {
        return Err(common());
    }
    let name = username.trim().to_lowercase();
    if (name.chars().count() >= 3 && lower.contains(&name)) || lower.contains("keyward") {
        return Err(Error::invalid(
            "password_contains_name",
            "a password may not contain the username or the product's name",
        ));
    }
    Ok(())
}

const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

fn is_common(candidate: &str) -> bool {
    static LIST: std::sync::LazyLock<std::collections::HashSet<&'static str>> =
        std::sync::LazyLock::new(|| {
            COMMON_PASSWORDS
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .collect()
        });
    LIST.contains(candidate)
}

/// A unit of up to four characters repeated (`aaaaaaaaaaaa`, `abcabcabcabc`), or a run of
/// consecutive characters (`123456789012`, `abcdefghijkl`).
fn is_repetitive(candidate: &str) -> bool {
    let chars: Vec<char> = candidate.chars().collect();
    let repeated = (1..=4).any(|unit| {
        chars.len() > unit && chars.iter().enumerate().all(|(i, c)| *c == chars[i % unit])
    });
    let consecutive = chars.windows(2).all(|w| {
        let (a, b) = (w[0] as u32, w[1] as u32);
        b == a + 1 || (w[0] == '9' && w[1] == '0')
    });
    repeated || consecutive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(password: &str) -> Option<&'static str> {
        check_password(password, "alice").err().map(|e| e.code)
    }

    #[test]
    fn length_is_the_only_composition_rule() {
        assert_eq!(code("short pass"), Some("password_too_short"));
        assert_eq!(code(&"x7".repeat(129)), Some("password_too_long"));
        // 64+ characters are allowed, any script, no required classes.
        assert_eq!(code(&"correct horse battery staple ".repeat(3)), None);
        assert_eq!(code("pferd batterie heftklammer"), None);
        assert_eq!(code("лошадь батарейка скрепка"), None);
    }

    #[test]
    fn common_and_predictable_passwords_are_refused() {
        for bad in [
            "qwerty123456",
            "1qaz2wsx3edc",
            "Password1234",
            "!!sunshine2024!!",
            "football12345",
            "aaaaaaaaaaaa",
            "abcabcabcabc",
            "123456789012",
            "abcdefghijklmn",
        ] {
            assert_eq!(code(bad), Some("password_common"), "{bad}");
        }
        assert_eq!(code("alice-loves-tea"), Some("password_contains_name"));
        assert_eq!(code("my keyward vault!"), Some("password_contains_name"));
        assert_eq!(code("tangerine violin orbit"), None);
    }
}
