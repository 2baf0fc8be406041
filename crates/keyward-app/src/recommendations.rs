//! Recommendations: the last 30 days of the shared day rollups, the keys the actor may
//! read, their compliance (the same value elsewhere) and the price table, judged by
//! `keyward_core::recommend`. Models are looked at only by someone who reads the whole
//! vault (a model's sums cross keys).

use std::collections::HashMap;

use jiff::SignedDuration;
use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::key::Key;
use keyward_core::recommend::{KeyMonth, LOOKBACK_DAYS, ModelMonth, Recommendation, recommend};
use keyward_core::usage::{Granularity, UsageGrouping, UsageQuery, UsageTotals};

use crate::actor::Actor;
use crate::app::App;

impl App {
    pub async fn recommendations(&self, actor: &Actor) -> Result<Vec<Recommendation>, Error> {
        let now = self.now();
        let from = Granularity::Day.bucket_start(
            now.checked_sub(SignedDuration::from_hours(24 * LOOKBACK_DAYS))
                .unwrap_or(now),
        );
        let query = UsageQuery::new(from, now, Granularity::Day, None, None, None)?;
        let per_key = self.usage_by_key(actor, &query).await?;
        let keys: Vec<Key> = self
            .all_keys(actor)
            .await?
            .into_iter()
            .filter(|k| k.deleted_at.is_none())
            .collect();
        let same_value: HashMap<String, Vec<String>> = self
            .compliance(actor)
            .await?
            .into_iter()
            .map(|c| {
                let elsewhere = c
                    .same_value
                    .iter()
                    .filter(|s| s.environment != c.key.environment)
                    .map(|s| format!("{} ({})", s.alias, s.environment))
                    .collect();
                (c.key.id.to_string(), elsewhere)
            })
            .collect();
        let months: Vec<KeyMonth<'_>> = keys
            .iter()
            .map(|key| {
                let buckets = per_key
                    .get(key.id.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let mut month = UsageTotals::default();
                let mut days = Vec::new();
                let mut day = from;
                while day < now {
                    let totals = buckets
                        .iter()
                        .find(|b| b.start == day)
                        .map(|b| b.totals)
                        .unwrap_or_default();
                    month += totals;
                    days.push((totals.requests, totals.credits));
                    day = Granularity::Day.next_bucket(day);
                }
                KeyMonth {
                    key,
                    month,
                    days,
                    same_value_elsewhere: same_value
                        .get(key.id.as_str())
                        .cloned()
                        .unwrap_or_default(),
                }
            })
            .collect();
        let pricing = self.proxy.pricing();
        let models = if actor.access.reach(Permission::KeysRead).is_everywhere() {
            let mut sums: std::collections::BTreeMap<String, UsageTotals> = Default::default();
            for (model, bucket) in self
                .store
                .usage_grouped(&query, UsageGrouping::Model)
                .await?
            {
                *sums.entry(model).or_default() += bucket.totals;
            }
            let mut models = Vec::new();
            for (model, month) in sums {
                let Some((service, _)) = pricing
                    .services()
                    .find(|(s, _)| pricing.listed(s, &model).is_some())
                else {
                    continue;
                };
                models.push(ModelMonth {
                    service: service.clone(),
                    model,
                    month,
                });
            }
            models
        } else {
            Vec::new()
        };
        Ok(recommend(&months, &models, pricing, now))
    }
}
