//! Small pieces several pages show alike: a key's status as a word and a badge, relative
//! times, what a provider's flag means, and a key's impact in one line.

use jiff::{SignedDuration, Timestamp};
use keyward_core::key::{Key, KeyStatus};
use keyward_core::usage::{KeyFlag, KeyFlagKind};
use maud::{Markup, html};

use super::chart::usd;

/// Keys expiring within this many days show as expiring.
const EXPIRING_DAYS: i64 = 30;

/// The status a person reads: the stored one, refined by expiry and the proxy's flags.
pub(crate) fn display_status(key: &Key, now: Timestamp, flag: Option<&KeyFlag>) -> &'static str {
    match key.status(now) {
        KeyStatus::Deleted => "deleted",
        KeyStatus::Revoked => "revoked",
        KeyStatus::Disabled => "disabled",
        KeyStatus::Expired => "expired",
        KeyStatus::Active => match flag.map(|f| f.kind) {
            Some(KeyFlagKind::Rejected) => "rejected",
            Some(KeyFlagKind::QuotaLimited) => "quota_limited",
            None if key.expires_at.is_some_and(|at| {
                at.duration_since(now) < SignedDuration::from_hours(24 * EXPIRING_DAYS)
            }) =>
            {
                "expiring"
            }
            None => "active",
        },
    }
}

pub(crate) fn status_badge(word: &str) -> Markup {
    let text = word.replace('_', "-");
    html! { span class={ "badge " (word) } { (text) } }
}

pub(crate) fn relative(now: Timestamp, at: Option<Timestamp>) -> Markup {
    let Some(at) = at else {
        return html! { span class="muted" { "never" } };
    };
    let secs = now.duration_since(at).as_secs();
    let text = match secs {
        -60..0 => "soon".to_owned(),
        -3_600..0 => format!("in {} min", -secs / 60),
        -86_400..0 => format!("in {} h", -secs / 3_600),
        ..0 => format!("in {} d", -secs / 86_400),
        0..60 => "just now".to_owned(),
        60..3_600 => format!("{} min ago", secs / 60),
        3_600..86_400 => format!("{} h ago", secs / 3_600),
        _ => format!("{} d ago", secs / 86_400),
    };
    html! { time datetime=(at.to_string()) title=(at.to_string()) { (text) } }
}

pub(crate) fn flag_word(kind: keyward_core::usage::KeyFlagKind) -> &'static str {
    match kind {
        keyward_core::usage::KeyFlagKind::Rejected => "rejected by the provider",
        keyward_core::usage::KeyFlagKind::QuotaLimited => "quota-limited",
    }
}

/// A new value becomes the current version at once (guided rotation with a dual-key window
/// is its own flow); the provider is asked first, and a value it rejects is not stored.
/// The impact assessment in one line, for the rotation forms.
pub(crate) fn impact_line(impact: &keyward_app::Impact) -> Markup {
    html! {
        p class="small impact-line" data-impact {
            strong { "Impact: " }
            (impact.tokens.len()) " app " (if impact.tokens.len() == 1 { "token" } else { "tokens" }) " use it · "
            (impact.last_7_days.requests) " requests in 7 days (" (usd(impact.last_7_days.cost_nanos)) ") · "
            (impact.other_active_keys) " other active " (if impact.other_active_keys == 1 { "key" } else { "keys" }) " in its pool"
        }
    }
}
