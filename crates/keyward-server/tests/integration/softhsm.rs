//! A SoftHSM2 token of its own, for a test or a benchmark: a configuration file naming a
//! token directory under `dir` (pass it as `SOFTHSM2_CONF`), and a token initialised there.
//! Shared by `tests/integration/hsm.rs` and `benches/proxy.rs` (through `#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's SoftHSM2 module (`apt-get install -y softhsm2`).
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Whether the module and `softhsm2-util` are installed.
pub fn installed() -> bool {
    Path::new(MODULE).exists()
        && Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Initialises a token labelled `label` (user PIN `pin`) in its own directory under `dir`;
/// returns the configuration file to pass as `SOFTHSM2_CONF`.
pub fn init_token(dir: &Path, label: &str, so_pin: &str, pin: &str) -> PathBuf {
    let tokens = dir.join("softhsm/tokens");
    std::fs::create_dir_all(&tokens).expect("token directory");
    let conf = dir.join("softhsm/softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .expect("SoftHSM2 configuration");
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            pin,
        ])
        .output()
        .expect("softhsm2-util runs");
    assert!(
        init.status.success(),
        "softhsm2-util --init-token: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    conf
}
