use keyward_core::Randomness;

/// The operating system's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandomness;

impl Randomness for OsRandomness {
    fn fill(&self, dest: &mut [u8]) {
        // The OS RNG failing is unrecoverable and must never degrade into predictable bytes.
        #[expect(
            clippy::expect_used,
            reason = "no safe fallback exists for a broken OS RNG"
        )]
        getrandom::fill(dest).expect("the operating system's random number generator failed");
    }
}
