//! `keyward`: self-hosted API key vault and key-injecting proxy.

fn main() -> std::process::ExitCode {
    keyward_server::cli::main()
}
