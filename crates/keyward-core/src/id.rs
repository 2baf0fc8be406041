//! Typed identifiers.
//!
//! Ids are ULIDs with a type prefix (`key_01JD…`): sortable by creation time (good for
//! cursor pagination and index locality), unguessable in their random part, and impossible
//! to confuse between kinds because the prefix is checked when parsing.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::{Error, Randomness};

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate(now: Timestamp, random: &dyn Randomness) -> Self {
                let millis = u64::try_from(now.as_millisecond()).unwrap_or(0);
                let ulid = Ulid::from_parts(millis, random.u128());
                Self(format!("{}{}", $prefix, ulid))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                s.strip_prefix($prefix)
                    .and_then(|rest| Ulid::from_string(rest).ok())
                    .map(|ulid| Self(format!("{}{}", $prefix, ulid)))
                    .ok_or_else(|| {
                        Error::invalid(
                            "invalid_id",
                            format!("`{}` is not a valid {} id (expected `{}` followed by 26 characters)",
                                crate::label::printable(s), $what, $prefix),
                        )
                    })
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// A stored third-party API key (all its versions share it).
    KeyId, "key_", "key"
);
prefixed_id!(
    /// A management API token (not the secret: the public handle).
    TokenId, "tok_", "token"
);
prefixed_id!(
    /// An app token (the handle; the secret is never stored).
    AppTokenId, "atk_", "app token"
);
prefixed_id!(
    /// A human user.
    UserId, "usr_", "user"
);
prefixed_id!(
    /// A request for approval of one sensitive operation.
    ApprovalId, "apr_", "approval"
);
prefixed_id!(
    /// A grant of a role to a user for part of the vault.
    GrantId, "grt_", "grant"
);
prefixed_id!(
    /// One guided rotation of a key's value.
    RotationId, "rot_", "rotation"
);
prefixed_id!(
    /// A notification webhook.
    WebhookId, "whk_", "webhook"
);
prefixed_id!(
    /// One notification on its way to one webhook.
    DeliveryId, "dlv_", "delivery"
);
prefixed_id!(
    /// An anomaly alert about a key or an app token.
    AlertId, "alr_", "alert"
);
prefixed_id!(
    /// A mute of alerts about a key or an app token.
    MuteId, "mut_", "mute"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(u8);
    impl Randomness for Fixed {
        fn fill(&self, dest: &mut [u8]) {
            dest.fill(self.0);
        }
    }

    #[test]
    fn ids_round_trip_and_check_their_prefix() {
        let id = KeyId::generate(Timestamp::UNIX_EPOCH, &Fixed(7));
        assert!(id.as_str().starts_with("key_"));
        assert_eq!(id.as_str().parse::<KeyId>().ok(), Some(id.clone()));
        assert!(
            id.as_str()
                .replace("key_", "tok_")
                .parse::<KeyId>()
                .is_err()
        );
        assert!("key_not-a-ulid".parse::<KeyId>().is_err());
        assert!("".parse::<KeyId>().is_err());
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let early = KeyId::generate(Timestamp::UNIX_EPOCH, &Fixed(255));
        let late = KeyId::generate(Timestamp::from_second(1).unwrap_or_default(), &Fixed(0));
        assert!(early < late);
    }
}
