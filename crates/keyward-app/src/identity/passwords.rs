//! Password hashing, capped and off the async threads.
//!
//! Argon2id costs ~19 MiB and tens of milliseconds per check, so [`Passwords`] runs checks
//! on blocking threads, at most a few at once (a burst of sign-ins queues, briefly, instead
//! of exhausting memory), and checks an unknown username against a dummy hash so that it
//! answers exactly like a wrong password — same status, body and time.

use std::sync::Arc;
use std::time::Duration;

use keyward_core::{Error, ErrorKind, Randomness};
use keyward_crypto::password;
use secrecy::SecretString;
use tokio::sync::Semaphore;

/// How many password hashes run at once.
pub const HASH_CONCURRENCY: usize = 2;
/// How long a sign-in waits for a free hashing slot before it is turned away.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// The capped password hasher.
#[derive(Debug)]
pub struct Passwords {
    slots: Arc<Semaphore>,
    /// The hash an unknown username is checked against; never matches anything.
    dummy: String,
}

impl Passwords {
    pub fn new(concurrency: usize, random: &dyn Randomness) -> Result<Self, Error> {
        let mut unguessable = [0u8; 32];
        random.fill(&mut unguessable);
        let dummy = password::hash(&SecretString::from(format!("{unguessable:?}")), random)?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy,
        })
    }

    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let busy = || {
            Error::new(
                ErrorKind::Unavailable,
                "busy",
                "too many sign-ins at once; try again in a moment",
            )
        };
        tokio::time::timeout(HASH_QUEUE_WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())
    }

    pub async fn hash(
        &self,
        secret: SecretString,
        random: Arc<dyn Randomness>,
    ) -> Result<String, Error> {
        let _slot = self.slot().await?;
        tokio::task::spawn_blocking(move || password::hash(&secret, &*random))
            .await
            .map_err(|e| Error::internal(format!("password hashing stopped: {e}")))?
            .map_err(Error::from)
    }

    /// Whether `secret` matches `phc`; with `None` (no such user) the dummy hash is checked
    /// and the answer is `false`, in the same time.
    pub async fn verify(&self, secret: SecretString, phc: Option<String>) -> Result<bool, Error> {
        let _slot = self.slot().await?;
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.clone());
        let matched = tokio::task::spawn_blocking(move || password::verify(&secret, &phc))
            .await
            .map_err(|e| Error::internal(format!("password check stopped: {e}")))?;
        Ok(known && matched)
    }
}
