//! The proxy's view of the vault at one instant, and every decision that needs only it:
//! which app token is presented, whether it may call this service from this address in
//! this environment, and which key to inject.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::Timestamp;
use keyward_core::alert::AlertSubject;
use keyward_core::app_token::{AppToken, AppTokenStatus};
use keyward_core::catalog::ServiceCatalog;
use keyward_core::id::{AppTokenId, KeyId};
use keyward_core::key::{Key, KeyStatus, KeyVersion};
use keyward_core::response::{Containment, Measure};
use keyward_core::service::ServiceDefinition;
use keyward_core::usage::{KeyFlag, PoolSetting, PoolStrategy};
use keyward_core::{Error, ErrorKind};
use keyward_crypto::token;

/// A key the proxy may inject, with its current version (still sealed).
#[derive(Debug)]
pub struct LiveKey {
    pub key: Key,
    pub current: KeyVersion,
    /// A second value while a guided rotation runs.
    pub alternate: Option<Alternate>,
    /// The flag stored for this key when the snapshot was built.
    pub flag: Option<KeyFlag>,
    /// Frozen by the graduated response (or by hand): never injected.
    pub frozen: bool,
}

/// A key's second value during a guided rotation (still sealed). Either way a value the
/// provider rejects (401/403) is followed by the other one within the same request, so
/// callers see no failure from a rotation.
#[derive(Debug, Clone)]
pub enum Alternate {
    /// The pending value, tried first by `percent`% of requests.
    Canary { version: KeyVersion, percent: u8 },
    /// The previous value, tried when the provider rejects the current one (the dual-key
    /// window).
    Fallback(KeyVersion),
}

/// The keys of one service in one environment, used in turn.
#[derive(Debug, Default)]
struct Pool {
    keys: Vec<Arc<LiveKey>>,
    next: AtomicUsize,
    strategy: PoolStrategy,
}

/// Where a request goes: the service, the environment, the key to inject, the token.
#[derive(Debug, Clone)]
pub struct Route<'a> {
    pub service: &'a ServiceDefinition,
    pub environment: String,
    /// The pool's active keys this token may use, starting at the pool's turn; the
    /// forwarder reorders them by strategy and health.
    pub candidates: Vec<Arc<LiveKey>>,
    pub strategy: PoolStrategy,
    pub token: Arc<AppToken>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    services: HashMap<String, ServiceDefinition>,
    /// By public id, the part of the token that is not secret.
    tokens: HashMap<String, Arc<AppToken>>,
    pools: HashMap<(String, String), Pool>,
    frozen_tokens: HashSet<AppTokenId>,
    /// Deleted keys still in their recovery window, per service and environment, most
    /// recently deleted first: never injected, but a call that finds no key where one of
    /// them was is someone still wanting it (`dormant_key_use`).
    recoverable: HashMap<(String, String), Vec<KeyId>>,
}

fn denied(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unauthenticated, code, message)
}

fn forbidden(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Forbidden, code, message)
}

fn frozen(message: impl Into<String>) -> Error {
    forbidden("frozen", message)
}

impl Snapshot {
    pub fn build(
        catalog: &ServiceCatalog,
        tokens: Vec<AppToken>,
        keys: Vec<(Key, KeyVersion)>,
        mut alternates: HashMap<KeyId, Alternate>,
        flags: Vec<KeyFlag>,
        pool_settings: &[PoolSetting],
        containments: &[Containment],
    ) -> Self {
        let mut frozen_keys = HashSet::new();
        let mut frozen_tokens = HashSet::new();
        let mut throttles = HashMap::new();
        for c in containments {
            match (&c.subject, c.measure) {
                (AlertSubject::Key(id), Measure::Freeze) => {
                    frozen_keys.insert(id.clone());
                }
                (AlertSubject::Token(id), Measure::Freeze) => {
                    frozen_tokens.insert(id.clone());
                }
                (AlertSubject::Token(id), Measure::Throttle(limit)) => {
                    throttles.insert(id.clone(), limit);
                }
                (AlertSubject::Key(_), Measure::Throttle(_)) => {}
            }
        }
        let mut flags: HashMap<KeyId, KeyFlag> =
            flags.into_iter().map(|f| (f.key_id.clone(), f)).collect();
        let mut pools: HashMap<(String, String), Pool> = HashMap::new();
        for (key, current) in keys {
            let flag = flags.remove(&key.id);
            let alternate = alternates.remove(&key.id);
            pools
                .entry((key.service_id.clone(), key.environment.clone()))
                .or_default()
                .keys
                .push(Arc::new(LiveKey {
                    frozen: frozen_keys.contains(&key.id),
                    key,
                    current,
                    alternate,
                    flag,
                }));
        }
        for setting in pool_settings {
            if let Some(pool) =
                pools.get_mut(&(setting.service_id.clone(), setting.environment.clone()))
            {
                pool.strategy = setting.strategy;
            }
        }
        Self {
            services: catalog.iter().map(|s| (s.id.clone(), s.clone())).collect(),
            tokens: tokens
                .into_iter()
                .map(|mut t| {
                    // A throttle is the token's rate limit while it lasts (a share of the
                    // configured one, so always the stricter).
                    if let Some(limit) = throttles.get(&t.id) {
                        t.rate_limit = Some(*limit);
                    }
                    (t.public_id.clone(), Arc::new(t))
                })
                .collect(),
            pools,
            frozen_tokens,
            recoverable: HashMap::new(),
        }
    }

    /// The deleted keys still in their recovery window (`Snapshot::dormant_key`).
    #[must_use]
    pub fn with_recoverable(mut self, mut deleted: Vec<Key>) -> Self {
        deleted.sort_by_key(|k| std::cmp::Reverse(k.deleted_at));
        for key in deleted {
            self.recoverable
                .entry((key.service_id, key.environment))
                .or_default()
                .push(key.id);
        }
        self
    }

    /// A live key by id.
    pub fn live_key(&self, id: &KeyId) -> Option<&Arc<LiveKey>> {
        self.pools
            .values()
            .find_map(|p| p.keys.iter().find(|k| k.key.id == *id))
    }

    /// Whether a key is in the snapshot (live).
    pub fn has_key(&self, id: &KeyId) -> bool {
        self.live_key(id).is_some()
    }

    /// Ids of every token in the snapshot.
    pub fn token_ids(&self) -> impl Iterator<Item = &keyward_core::id::AppTokenId> {
        self.tokens.values().map(|t| &t.id)
    }

    pub fn service(&self, id: &str) -> Result<&ServiceDefinition, Error> {
        self.services.get(id).ok_or_else(|| {
            Error::not_found(
                "service_not_found",
                format!(
                    "there is no service `{}`",
                    keyward_core::label::printable(id)
                ),
            )
        })
    }

    /// Checks a presented app token. Unknown, malformed, expired and revoked tokens all
    /// answer `invalid_token`; the hash comparison is constant-time.
    pub fn authenticate(
        &self,
        presented: &str,
        now: Timestamp,
        source: IpAddr,
    ) -> Result<Arc<AppToken>, Error> {
        let invalid = || {
            denied(
                "invalid_token",
                "the app token is unknown, malformed, expired or revoked",
            )
        };
        let parsed = token::parse(token::APP_PREFIX, presented).ok_or_else(invalid)?;
        let record = self.tokens.get(&parsed.public_id).ok_or_else(invalid)?;
        if !parsed.matches(&record.secret_hash) || record.status(now) != AppTokenStatus::Active {
            return Err(invalid());
        }
        if !record.allows_address(source) {
            return Err(forbidden(
                "network_not_allowed",
                format!("app token {} may not be used from {source}", record.id),
            ));
        }
        if self.frozen_tokens.contains(&record.id) {
            return Err(frozen(format!(
                "app token {} is frozen after an alert; lifting the freeze needs an approval",
                record.id
            )));
        }
        Ok(record.clone())
    }

    /// The idle key a refused call asked for, for the usage record: the disabled key behind
    /// `key_disabled`, or the deleted (still recoverable) key behind `no_key_available`. A
    /// key that should be idle is still wanted by someone (`dormant_key_use`).
    pub fn dormant_key(
        &self,
        refusal: &str,
        token: &AppToken,
        service_id: &str,
        environment: Option<&str>,
        now: Timestamp,
    ) -> Option<KeyId> {
        let environment = environment.or(token.environments.first().map(String::as_str))?;
        let pool = (service_id.to_owned(), environment.to_owned());
        let wanted = |id: &KeyId| token.key_ids.is_empty() || token.key_ids.contains(id);
        match refusal {
            "key_disabled" => self
                .pools
                .get(&pool)?
                .keys
                .iter()
                .filter(|k| wanted(&k.key.id))
                .find(|k| k.key.status(now) == KeyStatus::Disabled)
                .map(|k| k.key.id.clone()),
            "no_key_available" => self
                .recoverable
                .get(&pool)?
                .iter()
                .find(|id| wanted(id))
                .cloned(),
            _ => None,
        }
    }

    /// Picks the key for a token calling `service_id`, in the requested environment or the
    /// token's default (its first).
    pub fn route<'a>(
        &'a self,
        token: Arc<AppToken>,
        service_id: &str,
        environment: Option<&str>,
        now: Timestamp,
        expiry_grace: std::time::Duration,
    ) -> Result<Route<'a>, Error> {
        let service = self.service(service_id)?;
        if !token.services.iter().any(|s| s == service_id) {
            return Err(forbidden(
                "token_out_of_scope",
                format!("app token {} may not call {service_id}", token.id),
            ));
        }
        let environment =
            match environment {
                Some(env) if token.environments.iter().any(|e| e == env) => env.to_owned(),
                Some(env) => {
                    return Err(forbidden(
                        "token_out_of_scope",
                        format!(
                            "app token {} may not use environment `{}`",
                            token.id,
                            keyward_core::label::printable(env)
                        ),
                    ));
                }
                None => token.environments.first().cloned().ok_or_else(|| {
                    forbidden("token_out_of_scope", "the token has no environment")
                })?,
            };
        let pool = self
            .pools
            .get(&(service_id.to_owned(), environment.clone()));
        let candidates: Vec<&Arc<LiveKey>> = pool
            .map(|p| {
                p.keys
                    .iter()
                    .filter(|k| token.key_ids.is_empty() || token.key_ids.contains(&k.key.id))
                    .collect()
            })
            .unwrap_or_default();
        let grace =
            jiff::SignedDuration::try_from(expiry_grace).unwrap_or(jiff::SignedDuration::MAX);
        let active: Vec<&Arc<LiveKey>> = candidates
            .iter()
            .copied()
            .filter(|k| !k.frozen)
            .filter(|k| match k.key.status(now) {
                KeyStatus::Active => true,
                // Expired, but inside the configured grace period: still injected (with a
                // warning), after every key that has not expired.
                KeyStatus::Expired => k
                    .key
                    .expires_at
                    .is_some_and(|at| at.saturating_add(grace).is_ok_and(|end| now < end)),
                _ => false,
            })
            .collect();
        if active.is_empty() {
            if candidates.iter().any(|k| k.frozen) {
                return Err(frozen(format!(
                    "the {service_id} key for {environment} is frozen after an alert; lifting the freeze needs an approval"
                )));
            }
            let revoked = candidates
                .iter()
                .any(|k| k.key.status(now) == KeyStatus::Revoked);
            return Err(match candidates.first().map(|k| k.key.status(now)) {
                Some(_) if revoked => forbidden(
                    "key_revoked",
                    format!(
                        "the {service_id} key for {environment} was revoked; ask an administrator for a new one"
                    ),
                ),
                None => Error::not_found(
                    "no_key_available",
                    format!(
                        "there is no {service_id} key for environment {environment} that this token may use"
                    ),
                ),
                Some(KeyStatus::Expired) => forbidden(
                    "key_expired",
                    format!("the {service_id} key for {environment} has expired"),
                ),
                Some(_) => forbidden(
                    "key_disabled",
                    format!("the {service_id} key for {environment} is disabled"),
                ),
            });
        }
        let turn = pool.map_or(0, |p| p.next.fetch_add(1, Ordering::Relaxed));
        let first = turn % active.len();
        let mut candidates: Vec<Arc<LiveKey>> = (0..active.len())
            .map(|i| active[(first + i) % active.len()].clone())
            .collect();
        candidates.sort_by_key(|k| k.key.expires_at.is_some_and(|at| at <= now));
        Ok(Route {
            service,
            environment,
            candidates,
            strategy: pool.map(|p| p.strategy).unwrap_or_default(),
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::app_token::parse_network;
    use keyward_core::catalog::builtin_services;
    use keyward_core::id::{AppTokenId, KeyId};
    use keyward_core::key::{Criticality, SealedSecret, VersionState};
    use keyward_crypto::OsRandomness;

    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn key(service: &str, env: &str, n: u8) -> (Key, KeyVersion) {
        let id = KeyId::generate(ts(i64::from(n)), &OsRandomness);
        let key = Key {
            id: id.clone(),
            service_id: service.into(),
            environment: env.into(),
            alias: format!("k{n}"),
            description: None,
            owner: None,
            tags: vec![],
            criticality: Criticality::Medium,
            enabled: true,
            expires_at: None,
            current_version: 1,
            current_hint: "…".into(),
            created_by: "t".into(),
            created_at: ts(0),
            updated_at: ts(0),
            last_used_at: None,
            deleted_at: None,
            deleted_by: None,
            revoked: None,
            rotated_at: ts(0),
            rotation_rule: None,
            limits: vec![],
            budget: None,
        };
        let version = KeyVersion {
            key_id: id,
            version: 1,
            state: VersionState::Current,
            hint: "…".into(),
            sealed: SealedSecret {
                algorithm: "a".into(),
                kek_id: "k".into(),
                wrapped_dek: vec![],
                nonce: vec![],
                ciphertext: vec![n],
            },
            created_by: "t".into(),
            created_at: ts(0),
        };
        (key, version)
    }

    fn app_token(services: &[&str], envs: &[&str]) -> (AppToken, String) {
        let issued = token::issue(token::APP_PREFIX, &OsRandomness);
        let record = AppToken {
            id: AppTokenId::generate(ts(0), &OsRandomness),
            public_id: issued.public_id,
            name: "app".into(),
            secret_hash: issued.secret_hash,
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            environments: envs.iter().map(|s| (*s).to_owned()).collect(),
            key_ids: vec![],
            allowed_networks: vec![],
            rate_limit: None,
            budget: None,
            created_by: "t".into(),
            created_at: ts(0),
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        };
        (
            record,
            secrecy::ExposeSecret::expose_secret(&issued.token).to_owned(),
        )
    }

    fn catalog() -> ServiceCatalog {
        ServiceCatalog::assemble(builtin_services().expect("catalog"), vec![], &[])
    }

    const NO_GRACE: std::time::Duration = std::time::Duration::ZERO;
    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn tokens_are_checked_by_hash_status_and_network() {
        let (token, secret) = app_token(&["openai"], &["production"]);
        let (mut revoked, revoked_secret) = app_token(&["openai"], &["production"]);
        revoked.revoked_at = Some(ts(1));
        let (mut fenced, fenced_secret) = app_token(&["openai"], &["production"]);
        fenced.allowed_networks = vec![parse_network("10.0.0.0/8").expect("net")];
        let snapshot = Snapshot::build(
            &catalog(),
            vec![token, revoked, fenced],
            vec![],
            HashMap::new(),
            vec![],
            &[],
            &[],
        );
        assert!(snapshot.authenticate(&secret, ts(2), HOME).is_ok());
        let code = |s: &str| {
            snapshot
                .authenticate(s, ts(2), HOME)
                .map(|_| ())
                .map_err(|e| e.code)
        };
        assert_eq!(code(&revoked_secret), Err("invalid_token"));
        assert_eq!(
            code(&format!("{}x", &secret[..secret.len() - 1])),
            Err("invalid_token")
        );
        assert_eq!(code("sk-proj-not-a-keyward-token"), Err("invalid_token"));
        assert_eq!(code(&fenced_secret), Err("network_not_allowed"));
        assert!(
            snapshot
                .authenticate(&fenced_secret, ts(2), "10.9.8.7".parse().expect("ip"))
                .is_ok()
        );
    }

    #[test]
    fn routes_respect_scope_environment_and_key_state() {
        let (token, _) = app_token(&["openai", "finnhub"], &["production", "staging"]);
        let token = Arc::new(token);
        let (a, va) = key("openai", "production", 1);
        let (b, vb) = key("openai", "production", 2);
        let (mut off, voff) = key("finnhub", "production", 3);
        off.enabled = false;
        let (mut old, vold) = key("finnhub", "staging", 4);
        old.expires_at = Some(ts(1));
        let snapshot = Snapshot::build(
            &catalog(),
            vec![],
            vec![(a.clone(), va), (b.clone(), vb), (off, voff), (old, vold)],
            HashMap::new(),
            vec![],
            &[],
            &[],
        );

        let first = snapshot
            .route(token.clone(), "openai", None, ts(5), NO_GRACE)
            .expect("route");
        let second = snapshot
            .route(token.clone(), "openai", None, ts(5), NO_GRACE)
            .expect("route");
        assert_eq!(
            first.environment, "production",
            "the token's first environment is its default"
        );
        assert_ne!(
            first.candidates[0].key.id, second.candidates[0].key.id,
            "a pool is used in turn"
        );
        assert_eq!(first.candidates.len(), 2, "the rest of the pool follows");

        let code = |service: &str, env: Option<&str>| {
            snapshot
                .route(token.clone(), service, env, ts(5), NO_GRACE)
                .map(|_| ())
                .map_err(|e| e.code)
        };
        assert_eq!(code("anthropic", None), Err("token_out_of_scope"));
        assert_eq!(
            code("openai", Some("development")),
            Err("token_out_of_scope")
        );
        assert_eq!(code("openai", Some("staging")), Err("no_key_available"));
        assert_eq!(code("finnhub", None), Err("key_disabled"));
        assert_eq!(code("finnhub", Some("staging")), Err("key_expired"));
        // Within a grace period an expired key is still routed (after live ones).
        let graced = snapshot
            .route(
                token.clone(),
                "finnhub",
                Some("staging"),
                ts(5),
                std::time::Duration::from_secs(10),
            )
            .expect("inside the grace period");
        assert_eq!(graced.candidates.len(), 1);
        assert_eq!(
            snapshot
                .route(
                    token.clone(),
                    "finnhub",
                    Some("staging"),
                    ts(5),
                    std::time::Duration::from_secs(3),
                )
                .map(|_| ())
                .map_err(|e| e.code),
            Err("key_expired"),
            "past the grace period"
        );
        assert_eq!(code("nope", None), Err("service_not_found"));

        let pinned = Arc::new(AppToken {
            key_ids: vec![b.id.clone()],
            ..(*token).clone()
        });
        for _ in 0..3 {
            assert_eq!(
                snapshot
                    .route(pinned.clone(), "openai", None, ts(5), NO_GRACE)
                    .expect("route")
                    .candidates[0]
                    .key
                    .id,
                b.id
            );
        }
    }

    fn containment(subject: AlertSubject, measure: Measure) -> Containment {
        Containment {
            subject,
            measure,
            alert: None,
            reason: "test".into(),
            by: "t".into(),
            at: ts(0),
        }
    }

    #[test]
    fn frozen_keys_and_tokens_are_refused_and_a_throttle_is_the_tokens_rate_limit() {
        let (token, secret) = app_token(&["openai", "finnhub"], &["production"]);
        let (cold, cold_secret) = app_token(&["openai"], &["production"]);
        let (slow, slow_secret) = app_token(&["openai"], &["production"]);
        let (a, va) = key("openai", "production", 1);
        let (b, vb) = key("openai", "production", 2);
        let (c, vc) = key("finnhub", "production", 3);
        let limit = keyward_core::app_token::RateLimit {
            requests: 2,
            per_seconds: 60,
        };
        let snapshot = Snapshot::build(
            &catalog(),
            vec![token, cold.clone(), slow.clone()],
            vec![(a.clone(), va), (b.clone(), vb), (c.clone(), vc)],
            HashMap::new(),
            vec![],
            &[],
            &[
                containment(AlertSubject::Key(a.id.clone()), Measure::Freeze),
                containment(AlertSubject::Key(c.id.clone()), Measure::Freeze),
                containment(AlertSubject::Token(cold.id.clone()), Measure::Freeze),
                containment(
                    AlertSubject::Token(slow.id.clone()),
                    Measure::Throttle(limit),
                ),
            ],
        );
        let err = snapshot
            .authenticate(&cold_secret, ts(2), HOME)
            .expect_err("frozen");
        assert_eq!((err.kind, err.code), (ErrorKind::Forbidden, "frozen"));
        let slow = snapshot
            .authenticate(&slow_secret, ts(2), HOME)
            .expect("throttled, not frozen");
        assert_eq!(slow.rate_limit, Some(limit));
        let token = snapshot.authenticate(&secret, ts(2), HOME).expect("token");
        for _ in 0..3 {
            let route = snapshot
                .route(token.clone(), "openai", None, ts(5), NO_GRACE)
                .expect("the pool's other key");
            assert_eq!(route.candidates.len(), 1);
            assert_eq!(
                route.candidates[0].key.id, b.id,
                "the frozen key is never injected"
            );
        }
        let err = snapshot
            .route(token, "finnhub", None, ts(5), NO_GRACE)
            .expect_err("only a frozen key");
        assert_eq!(err.code, "frozen");
    }
}
