//! The `respawnctl` binary; the command line lives in [`respawn_controller::cli`] so that tests
//! can build the very same program.

fn main() -> std::process::ExitCode {
    respawn_controller::cli::main()
}
