//! What a notification is about — a key's category and environment — which decides who may
//! hear of it.

/// What an event is about, so subscriptions can filter on it: the category of the key's
/// service and the key's environment (both absent for events about no key).
#[derive(Debug, Clone, Copy, Default)]
pub struct About<'a> {
    pub category: Option<&'a str>,
    pub environment: Option<&'a str>,
}

impl<'a> About<'a> {
    pub fn key(category: Option<&'a str>, environment: &'a str) -> Self {
        Self {
            category,
            environment: Some(environment),
        }
    }
}
