//! The `respawn-agent` binary; the command line lives in [`respawn_agent::cli`] so that tests
//! can build the very same program.

fn main() -> std::process::ExitCode {
    respawn_agent::cli::main()
}
