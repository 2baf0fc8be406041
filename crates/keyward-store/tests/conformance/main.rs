//! One conformance suite, run against every backend, in one file per store (as
//! `src/queries/`): each case becomes a test in `<store>::sqlite::` and in
//! `<store>::postgres::` (a fresh database per test). This file holds the shared fixtures
//! and the two macros that run a case on both backends.

use std::collections::BTreeSet;
use std::sync::Arc;

use keyward_core::access::{CustomRole, Grant, Permission, PermissionSet, Role, RoleRef, Scope};
use keyward_core::app_token::{Budget, BudgetPeriod};
use keyward_core::audit::{
    ActorKind, AuditDraft, AuditFilter, AuditOutcome, BreakKind, ChainBreak, ChainVerifier,
    VerifyReport,
};
use keyward_core::guided_rotation::{Advance, Probe, ProbeRecord, Rotation, RotationTraffic};
use keyward_core::id::{AppTokenId, ApprovalId, GrantId, KeyId, RotationId, TokenId, UserId};
use keyward_core::key::{
    Criticality, Key, KeyArea, KeyFilter, KeyStatus, KeyVersion, PageRequest, SealedSecret,
    VersionState,
};
use keyward_core::master_key::MasterKeyRecord;
use keyward_core::mfa::MfaEnrolment;
use keyward_core::ports::Store;
use keyward_core::service::{Category, Environment};
use keyward_core::service::{Limit, LimitUnit};
use keyward_core::session::Session;
use keyward_core::token::ManagementToken;
use keyward_core::usage::{
    CacheOutcome, Granularity, HourlyUse, KeyFlag, KeyFlagKind, Outcome, PoolSetting, PoolStrategy,
    Subject, TokenUsage, UsageGrouping, UsageQuery, UsageRecord, UsageTotals,
};
use keyward_core::user::User;
use keyward_core::{ErrorKind, Randomness, Timestamp};
use keyward_store::testing::TestDatabase;

#[derive(Debug)]
struct Counter(std::sync::atomic::AtomicU64);
impl Randomness for Counter {
    fn fill(&self, dest: &mut [u8]) {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (i, b) in dest.iter_mut().enumerate() {
            *b = n.to_le_bytes()[i % 8] ^ (i as u8);
        }
    }
}

fn rng() -> Counter {
    Counter(std::sync::atomic::AtomicU64::new(1))
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).expect("timestamp")
}

fn sealed(kek: &str, marker: u8) -> SealedSecret {
    SealedSecret {
        algorithm: "test-alg".into(),
        kek_id: kek.into(),
        wrapped_dek: vec![0, marker, 255, 0],
        nonce: vec![marker; 12],
        ciphertext: vec![0, 1, 2, marker, 0],
    }
}

fn new_key(id: KeyId, service: &str, env: &str, alias: &str, at: i64) -> (Key, KeyVersion) {
    let key = Key {
        id: id.clone(),
        service_id: service.into(),
        environment: env.into(),
        alias: alias.into(),
        description: Some(format!("{alias} description")),
        owner: Some("team-data".into()),
        tags: vec!["prod".into(), "team:data".into()],
        criticality: Criticality::High,
        enabled: true,
        expires_at: None,
        current_version: 1,
        current_hint: "sk-…0001".into(),
        created_by: "tester".into(),
        created_at: ts(at),
        updated_at: ts(at),
        last_used_at: None,
        deleted_at: None,
        deleted_by: None,
        revoked: None,
        rotated_at: ts(at),
        rotation_rule: None,
        limits: vec![],
        budget: None,
    };
    let version = KeyVersion {
        key_id: id,
        version: 1,
        state: VersionState::Current,
        hint: "sk-…0001".into(),
        sealed: sealed("kek_a", 1),
        created_by: "tester".into(),
        created_at: ts(at),
    };
    (key, version)
}

async fn add(
    store: &Arc<dyn Store>,
    r: &Counter,
    service: &str,
    env: &str,
    alias: &str,
    at: i64,
) -> Key {
    let (key, version) = new_key(KeyId::generate(ts(at), r), service, env, alias, at);
    store.insert_key(&key, &version).await.expect("insert");
    key
}

fn usage(
    at: i64,
    key: Option<&KeyId>,
    token: Option<&AppTokenId>,
    outcome: Outcome,
) -> UsageRecord {
    UsageRecord {
        at: ts(at),
        token_id: token.cloned(),
        key_id: key.cloned(),
        service_id: "openai".into(),
        environment: Some("production".into()),
        method: "POST".into(),
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        outcome,
        error_code: None,
        latency_ms: 12,
        request_bytes: 100,
        response_bytes: 900,
        cache: CacheOutcome::None,
        retries: 0,
        model: Some("gpt-5.4-mini".into()),
        tokens: TokenUsage {
            input: 10,
            cached_input: 5,
            cache_write: 1,
            output: 20,
        },
        credits: 1,
        cost_nanos: 1_500,
        answer: None,
        unpriced: false,
        source: None,
        saved_credits: 0,
    }
}

macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::TestDatabase::sqlite();
                    super::$case(db.store().await).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = super::TestDatabase::postgres().await else { return };
                    let store = db.store().await;
                    super::$case(store.clone()).await;
                    store.close().await;
                }
            )+
        }
    };
}

/// Cases that also need the database itself (to tamper with it behind the store's back).
macro_rules! conformance_with_db {
    ($($case:ident),+ $(,)?) => {
        mod sqlite_raw {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::TestDatabase::sqlite();
                    super::$case(&db, db.store().await).await;
                }
            )+
        }
        mod postgres_raw {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = super::TestDatabase::postgres().await else { return };
                    let store = db.store().await;
                    super::$case(&db, store.clone()).await;
                    store.close().await;
                }
            )+
        }
    };
}

mod access;
mod alerts;
mod approvals;
mod audit;
mod backup;
mod catalog;
mod health;
mod keys;
mod mfa;
mod notifications;
mod rotations;
mod sessions;
mod tls;
mod tokens;
mod usage;
mod vault;
