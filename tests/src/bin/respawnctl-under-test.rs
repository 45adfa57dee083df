//! The `respawnctl` program, built inside this package so that cargo builds it, from the
//! current code, before this package's integration tests run; the harness finds it beside them.

fn main() -> std::process::ExitCode {
    respawn_controller::cli::main()
}
