//! The `respawn-agent` program, built inside this package so that the end-to-end tests always
//! run the current code (cargo provides its path as `CARGO_BIN_EXE_respawn-agent-under-test`).

fn main() -> std::process::ExitCode {
    respawn_agent::cli::main()
}
