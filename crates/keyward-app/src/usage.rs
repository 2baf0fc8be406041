//! Usage: the proxy's events written in batches (records, rollups, last use, flags),
//! quota and budget counters restored at start-up, usage queries limited to what the caller
//! may read, and pruning past the retention period.

use jiff::Timestamp;
use keyward_core::access::Permission;
use keyward_core::guided_rotation::RotationTraffic;
use keyward_core::id::{AppTokenId, KeyId};
use keyward_core::usage::{
    KeyFlag, Outcome, UsageBucket, UsageGrouping, UsageHeadline, UsageQuery,
};
use keyward_core::{Error, ErrorKind};
use keyward_proxy::ProxyEvent;

use crate::actor::Actor;
use crate::app::App;

impl App {
    /// Writes a batch of proxy events: usage records (with their rollups), the latest
    /// use per key and per token, and key flags raised or cleared.
    pub async fn record_events(&self, events: Vec<ProxyEvent>) -> Result<(), Error> {
        let mut records = Vec::new();
        let mut flags: std::collections::HashMap<KeyId, Option<KeyFlag>> =
            std::collections::HashMap::new();
        let mut rotations: std::collections::HashMap<KeyId, RotationTraffic> =
            std::collections::HashMap::new();
        for event in events {
            match event {
                ProxyEvent::Usage(record) => records.push(*record),
                ProxyEvent::Flag(flag) => {
                    flags.insert(flag.key_id.clone(), Some(flag));
                }
                ProxyEvent::FlagCleared(key) => {
                    flags.insert(key, None);
                }
                ProxyEvent::Rotation(key, seen) => {
                    rotations.entry(key).or_default().add(&seen);
                }
            }
        }
        let mut keys: std::collections::HashMap<&KeyId, Timestamp> =
            std::collections::HashMap::new();
        let mut tokens: std::collections::HashMap<&AppTokenId, Timestamp> =
            std::collections::HashMap::new();
        for r in &records {
            // A key was used if the call reached the provider with it.
            if let Some(key) = r
                .key_id
                .as_ref()
                .filter(|_| !matches!(r.outcome, Outcome::Refused | Outcome::Failed))
            {
                let k = keys.entry(key).or_insert(r.at);
                *k = (*k).max(r.at);
            }
            if let Some(token) = &r.token_id {
                let t = tokens.entry(token).or_insert(r.at);
                *t = (*t).max(r.at);
            }
        }
        let keys: Vec<_> = keys.into_iter().map(|(id, at)| (id.clone(), at)).collect();
        let tokens: Vec<_> = tokens
            .into_iter()
            .map(|(id, at)| (id.clone(), at))
            .collect();
        self.store.record_usage(&records).await?;
        self.store.record_key_use(&keys).await?;
        self.store.record_app_token_use(&tokens).await?;
        let raised: Vec<KeyFlag> = flags.values().flatten().cloned().collect();
        if !raised.is_empty() {
            self.store.set_key_flags(&raised).await?;
        }
        for (key, flag) in flags {
            if flag.is_none() {
                self.store.clear_key_flag(&key).await?;
            }
        }
        let rotations: Vec<(KeyId, RotationTraffic)> = rotations.into_iter().collect();
        self.store.add_rotation_traffic(&rotations).await?;
        // The usage is written whatever the watcher makes of it.
        if let Err(e) = self.watch_sightings(&records).await {
            tracing::warn!(error = %e, "could not judge new networks, models and endpoints; the calls are recorded");
        }
        Ok(())
    }

    /// Restores quota and budget counters from the hourly usage sums (start-up): everything
    /// since the start of last month covers every calendar window and budget period.
    pub async fn restore_meters(&self) -> Result<(), Error> {
        let now = self.now();
        let since = now
            .checked_sub(jiff::SignedDuration::from_hours(32 * 24))
            .unwrap_or(now);
        self.proxy
            .seed_meters(self.store.hourly_use_since(since).await?);
        Ok(())
    }

    /// Usage of one key the actor may read, or of everything for someone who reads
    /// everywhere (sums across keys would tell about keys outside a grant's scope).
    pub async fn usage(
        &self,
        actor: &Actor,
        query: &UsageQuery,
    ) -> Result<Vec<UsageBucket>, Error> {
        self.ensure_usage_reach(actor, query).await?;
        self.store.usage(query).await
    }

    /// Sums over many keys would tell about keys outside a grant's scope: a query is for
    /// one key the actor may read, or by someone who reads everywhere.
    async fn ensure_usage_reach(&self, actor: &Actor, query: &UsageQuery) -> Result<(), Error> {
        match &query.key_id {
            Some(key) => self.key(actor, key).await.map(drop),
            None if !actor.access.reach(Permission::KeysRead).is_everywhere() => Err(Error::new(
                ErrorKind::Forbidden,
                "out_of_scope",
                "your grants cover only part of the vault: ask for one key's usage (`key=`) or split it by key",
            )),
            None => Ok(()),
        }
    }

    /// Usage split by one dimension: by key, the keys the actor may read; by anything else,
    /// for one key they may read or for someone who reads everywhere (as [`App::usage`]).
    pub async fn usage_grouped(
        &self,
        actor: &Actor,
        query: &UsageQuery,
        by: UsageGrouping,
    ) -> Result<Vec<(String, Vec<UsageBucket>)>, Error> {
        if by == UsageGrouping::Key && query.key_id.is_none() {
            return Ok(self.usage_by_key(actor, query).await?.into_iter().collect());
        }
        self.ensure_usage_reach(actor, query).await?;
        let mut out: std::collections::BTreeMap<String, Vec<UsageBucket>> = Default::default();
        for (group, bucket) in self.store.usage_grouped(query, by).await? {
            out.entry(group).or_default().push(bucket);
        }
        Ok(out.into_iter().collect())
    }

    /// Usage per key (sparklines, "by key" tables): all keys for someone who reads
    /// everywhere, otherwise only the keys their grants let them read.
    pub async fn usage_by_key(
        &self,
        actor: &Actor,
        query: &UsageQuery,
    ) -> Result<std::collections::BTreeMap<String, Vec<UsageBucket>>, Error> {
        let rows = self.store.usage_grouped(query, UsageGrouping::Key).await?;
        self.per_visible_key(actor, rows).await
    }

    /// Requests, failures and cost per key the actor may read and per bucket: what lists
    /// and sparklines show, at a fraction of `usage_by_key`'s work.
    pub async fn usage_headlines_by_key(
        &self,
        actor: &Actor,
        query: &UsageQuery,
    ) -> Result<std::collections::BTreeMap<String, Vec<UsageHeadline>>, Error> {
        let rows = self
            .store
            .usage_headlines(query, UsageGrouping::Key)
            .await?;
        self.per_visible_key(actor, rows).await
    }

    /// Rows per key id, keeping only the keys the actor may read.
    async fn per_visible_key<T>(
        &self,
        actor: &Actor,
        rows: Vec<(String, T)>,
    ) -> Result<std::collections::BTreeMap<String, Vec<T>>, Error> {
        let visible: Option<std::collections::HashSet<String>> =
            if actor.access.reach(Permission::KeysRead).is_everywhere() {
                None
            } else {
                // Every page: a grant may cover more keys than one page holds.
                let keys = self.all_keys(actor).await?;
                Some(keys.into_iter().map(|k| k.id.to_string()).collect())
            };
        let mut out: std::collections::BTreeMap<String, Vec<T>> = Default::default();
        for (key, row) in rows {
            if visible.as_ref().is_none_or(|v| v.contains(&key)) {
                out.entry(key).or_default().push(row);
            }
        }
        Ok(out)
    }

    /// Deletes usage records past the retention period, minute rollups past
    /// `MINUTE_ROLLUPS_KEPT_DAYS`, and hour and day rollups past `rollup_retention_days`;
    /// returns how many records went. A run that removes something is audited
    /// (`usage.prune`, by the system); the first instance to run it each hour does the work.
    pub async fn prune_usage(&self) -> Result<u64, Error> {
        let now = self.now();
        let days_ago = |days: i64| {
            now.saturating_sub(jiff::SignedDuration::from_hours(days * 24))
                .unwrap_or(Timestamp::MIN)
        };
        let records_before = days_ago(i64::from(self.usage_retention_days));
        let rollups_before = self
            .rollup_retention_days
            .map(|days| days_ago(i64::from(days)));
        let (records, rollups) = self
            .store
            .prune_usage(
                records_before,
                days_ago(keyward_core::rollup::MINUTE_ROLLUPS_KEPT_DAYS),
                rollups_before,
            )
            .await?;
        if records > 0 || rollups > 0 {
            self.record_retention(
                "usage.prune",
                "usage",
                serde_json::json!({
                    "records": records, "records_before": records_before.to_string(),
                    "rollup_rows": rollups,
                    "rollups_before": rollups_before.map(|t| t.to_string()),
                }),
            )
            .await?;
        }
        Ok(records)
    }
}
