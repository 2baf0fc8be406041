//! Path patterns of the catalog's rules (cache, credits, answers).

use serde::{Deserialize, Serialize};

use crate::Error;

/// A path pattern: exact (`/query`), or a prefix when it ends in `*` (`/v2/aggs/*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PathPattern(pub String);

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.0,
        }
    }

    pub(crate) fn validate(&self, what: &str) -> Result<(), Error> {
        if self.0.starts_with('/') && self.0.len() <= 512 {
            Ok(())
        } else {
            Err(Error::invalid(
                "invalid_path_pattern",
                format!("{what} paths must start with `/` and be at most 512 characters"),
            ))
        }
    }
}
