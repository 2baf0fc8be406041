//! What depends on a key, shown before it is deleted, disabled or revoked.

use jiff::Timestamp;
use keyward_core::Error;
use keyward_core::app_token::AppToken;
use keyward_core::id::KeyId;
use keyward_core::key::{Key, KeyFilter, PageRequest};
use keyward_core::usage::UsageQuery;

use crate::actor::Actor;
use crate::app::App;

/// What depends on a key (see [`App::impact`]).
#[derive(Debug, Clone)]
pub struct Impact {
    pub key: Key,
    /// Active app tokens the proxy would inject this key for.
    pub tokens: Vec<AppToken>,
    pub last_7_days: keyward_core::usage::UsageTotals,
    pub last_30_days: keyward_core::usage::UsageTotals,
    pub last_used_at: Option<Timestamp>,
    /// Other active keys of the same service and environment (that the caller may see).
    pub other_active_keys: usize,
}

impl App {
    /// What depends on a key, shown before it is deleted, disabled or revoked: the active
    /// app tokens that can use it, its traffic and cost over 7 and 30 days, its last use,
    /// and how many other active keys in its pool could take its traffic.
    pub async fn impact(&self, actor: &Actor, id: &KeyId) -> Result<Impact, Error> {
        let key = self.key(actor, id).await?;
        let now = self.now();
        let tokens = self
            .app_tokens(actor)
            .await?
            .into_iter()
            .filter(|t| {
                t.status(now) == keyward_core::app_token::AppTokenStatus::Active && t.may_use(&key)
            })
            .collect();
        let totals = |days: i64| async move {
            let from = now - jiff::SignedDuration::from_hours(24 * days);
            let query = UsageQuery::new(
                from,
                now,
                keyward_core::usage::Granularity::Hour,
                Some(id.clone()),
                None,
                None,
            )?;
            let mut sum = keyward_core::usage::UsageTotals::default();
            for bucket in self.store.usage(&query).await? {
                sum += bucket.totals;
            }
            Ok::<_, Error>(sum)
        };
        let last_7_days = totals(7).await?;
        let last_30_days = totals(30).await?;
        let pool = self
            .list_keys(
                actor,
                KeyFilter {
                    service_ids: Some(vec![key.service_id.clone()]),
                    environment: Some(key.environment.clone()),
                    status: Some(keyward_core::key::KeyStatus::Active),
                    ..KeyFilter::default()
                },
                None,
                PageRequest::new(None, Some(PageRequest::MAX_LIMIT))?,
            )
            .await?;
        let other_active_keys = pool.items.iter().filter(|k| k.id != key.id).count();
        Ok(Impact {
            last_used_at: key.last_used_at,
            key,
            tokens,
            last_7_days,
            last_30_days,
            other_active_keys,
        })
    }
}
