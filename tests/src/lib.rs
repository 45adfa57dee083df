//! The end-to-end test harness: a real `respawn-agent` process on a temporary configuration,
//! helpers to talk to it, a private MQTT broker per test ([`broker`]), an independent MQTT
//! client ([`mqtt`]), a real browser ([`webdriver`]), and waiting for a condition with a
//! timeout instead of sleeping.

pub mod broker;
pub mod chat;
pub mod faults;
pub mod mqtt;
pub mod pki;
pub mod sim;
pub mod webdriver;

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use respawn_agent::control::{self, Reply, Request};
use respawn_common::status::{ProcessState, ProcessStatus};
use tempfile::TempDir;

/// The `[mqtt]` section that points an agent at `broker`, with a quick heartbeat.
pub fn mqtt_section(broker: &broker::Broker) -> String {
    format!(
        "[mqtt]\nurl = \"{}\"\nheartbeat = \"1s\"\nkeep_alive = \"5s\"\n\n",
        broker.url()
    )
}

/// How long any condition in a test may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, at most `timeout`; panics naming `what` otherwise.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, timeout, check, String::new)
}

/// [`wait_for`], adding what `context` says to the failure message.
pub fn wait_for_or<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    match poll(timeout, &mut check) {
        Some(value) => value,
        None => panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        ),
    }
}

/// Polls `check` every 10 ms until it returns `Some`, for at most `timeout`; `None` after.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether this test can run here: `true` when the process is root. Otherwise the test is
/// skipped loudly (see [`skip`]).
pub fn runs_as_root(test: &str, why: &str) -> bool {
    nix::unistd::geteuid().is_root() || skip(test, &format!("needs root ({why})"))
}

/// Whether `python3` can import every one of `modules`; otherwise the test is skipped loudly
/// (see [`skip`]).
pub fn has_python_modules(test: &str, modules: &[&str]) -> bool {
    let imports = format!("import {}", modules.join(", "));
    let found = Command::new("python3")
        .args(["-c", &imports])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found
        || skip(
            test,
            &format!(
                "needs python3 with {} (pip install them)",
                modules.join(" and ")
            ),
        )
}

/// libfaketime (Debian's `faketime`), which makes a program's clock read another time while
/// its monotonic clock, which the agent's timers use, runs on; `None`, said as a skip,
/// without it.
pub fn faketime(test: &str) -> Option<&'static str> {
    static LIBRARY: OnceLock<Option<String>> = OnceLock::new();
    let library = LIBRARY.get_or_init(|| {
        let dirs = std::fs::read_dir("/usr/lib")
            .into_iter()
            .flatten()
            .flatten();
        let libraries = dirs.map(|dir| dir.path().join("faketime/libfaketime.so.1"));
        let found = libraries.into_iter().find(|library| library.exists());
        found.map(|library| library.to_string_lossy().into_owned())
    });
    if library.is_none() {
        skip(
            test,
            "libfaketime is not installed (apt-get install faketime)",
        );
    }
    library.as_deref()
}

/// The environment that makes a program's clock read a week ago, as a Pi's without a
/// real-time clock or NTP may ([`faketime`]).
pub fn clock_a_week_behind(test: &str) -> Option<[(&'static str, &'static str); 3]> {
    Some([
        ("LD_PRELOAD", faketime(test)?),
        ("FAKETIME", "-7d"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ])
}

/// Skips `test` loudly and returns `false`: a line on stderr, and a line in
/// `target/<profile>/skipped-tests` that counts the skips. When `RESPAWN_TEST_NO_SKIP` is set
/// (as `.ci/run` sets it) it fails instead: a skipped test never passes silently.
pub fn skip(test: &str, why: &str) -> bool {
    let message = format!("SKIPPED {test}: {why}");
    assert!(
        std::env::var_os("RESPAWN_TEST_NO_SKIP").is_none(),
        "{message}, and RESPAWN_TEST_NO_SKIP is set"
    );
    eprintln!("{message}");
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
    {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("skipped-tests"))
        {
            let _ = writeln!(file, "{message}");
        }
    }
    false
}

/// Waits up to `timeout` for `child` to exit.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone.
pub fn wait_gone(pid: u32, what: &str) {
    wait_for(&format!("{what} (pid {pid}) to be gone"), TIMEOUT, || {
        (!alive(pid)).then_some(())
    });
}

/// Waits for a file a child writes (a pid, a marker) and returns its trimmed content.
pub fn wait_for_file(path: &Path) -> String {
    wait_for(
        &format!("{} to be written", path.display()),
        TIMEOUT,
        || {
            let text = std::fs::read_to_string(path).ok()?;
            text.ends_with('\n').then(|| text.trim().to_owned())
        },
    )
}

/// Reads a pid written by a child, once complete.
pub fn wait_for_pid(path: &Path) -> u32 {
    let text = wait_for_file(path);
    text.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{} holds no pid: {text:?}", path.display()))
}

/// Cleanup, not a test step: kills what is left in the cgroup `dir` (v2) and removes it once
/// the kernel has let go of it, trying for 5 s; one that stays is left behind.
pub fn remove_cgroup(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let _ = poll(Duration::from_secs(5), || std::fs::remove_dir(dir).ok());
}

/// What `respawn-agent check FILE` says of `config`.
pub fn check(config: &Path) -> std::process::Output {
    Command::new(agent_binary())
        .arg("check")
        .arg(config)
        .output()
        .expect("respawn-agent check runs")
}

/// Sets the extended attribute `name` of `path` (std has no call for it; Python has).
pub fn set_xattr(path: &Path, name: &str, value: &str) {
    let script = "import os, sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode())";
    let set = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .args([name, value])
        .status()
        .expect("python3 runs");
    assert!(set.success(), "set {name} on {}", path.display());
}

/// The extended attribute `name` of `path`, if it has it.
pub fn xattr(path: &Path, name: &str) -> Option<String> {
    let script = "import os, sys; print(os.getxattr(sys.argv[1], sys.argv[2]).decode())";
    let got = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(name)
        .output()
        .expect("python3 runs");
    got.status
        .success()
        .then(|| String::from_utf8_lossy(&got.stdout).trim().to_owned())
}

/// Writes `key` to `dir/NAME.key`, mode 0600 as `respawnctl keygen` makes it; its path.
pub fn key_file(dir: &Path, key: &respawn_common::signing::SigningKey) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{}.key", key.name()));
    std::fs::write(&path, key.to_file()).expect("write the key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod the key");
    path
}

/// A running `respawn-agent` with its own directory, configuration and state.
pub struct TestAgent {
    child: Child,
    dir: Option<TempDir>,
    log: Arc<Mutex<String>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl TestAgent {
    /// Starts an agent on `processes` (TOML `[[process]]` tables), in a new directory.
    pub fn start(processes: &str) -> Self {
        Self::start_in(
            tempfile::tempdir().expect("a temporary directory"),
            processes,
        )
    }

    /// Starts an agent with the id `id` instead of `test`.
    pub fn start_as(id: &str, processes: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = format!("[agent]\nid = \"{id}\"\nstate_dir = \"state\"\nallow_unsigned_commands = true\n\n{processes}");
        Self::launch(dir, &config, "info")
    }

    /// Starts an agent in `dir`, which may hold the state of an earlier agent (and, from
    /// [`TestAgent::kill_hard`], its leftovers for the new agent to clean up).
    pub fn start_in(dir: impl Into<TempDir>, processes: &str) -> Self {
        Self::launch(dir.into(), processes, "info")
    }

    /// As [`TestAgent::start_in`], but returns at once, before the agent answers (while it
    /// stops what an earlier agent left, say).
    pub fn start_in_unready(dir: impl Into<TempDir>, processes: &str) -> Self {
        let command = Command::new(agent_binary());
        Self::launch_unready(command, dir.into(), processes, "info", &[])
    }

    /// Starts an agent that does not forward its children's output to its log, for tests that
    /// produce floods of it.
    pub fn start_quiet(processes: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self::launch(dir, processes, "info,respawn::output=off")
    }

    /// Starts an agent with `env` added to its environment, as a service manager would.
    pub fn start_with_env(processes: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self::launch_with(dir, processes, "info", env)
    }

    /// Starts the agent program `agent` through `wrapper`: an emulator (such as
    /// `["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]`) for a cross-built agent, or
    /// `["ip", "netns", "exec", NAME]` for an agent in a network namespace.
    pub fn start_wrapped<S: AsRef<std::ffi::OsStr>>(
        wrapper: &[S],
        agent: &Path,
        processes: &str,
    ) -> Self {
        let (program, args) = wrapper.split_first().expect("a wrapper command");
        let mut command = Command::new(program);
        command.args(args).arg(agent);
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self::launch_program(command, dir, processes, "info", &[])
    }

    /// Starts an agent that runs as `account` instead of root, in a directory it may write.
    pub fn start_as_account(account: &str, processes: &str) -> Self {
        use std::os::unix::{fs::PermissionsExt, process::CommandExt};
        let user = nix::unistd::User::from_name(account)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no account {account:?}"));
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("open the directory to the account");
        let mut command = Command::new(agent_binary());
        // std drops root's supplementary groups with the switch.
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        Self::launch_program(command, dir, processes, "info", &[])
    }

    fn launch(dir: TempDir, processes: &str, log_filter: &str) -> Self {
        Self::launch_with(dir, processes, log_filter, &[])
    }

    fn launch_with(dir: TempDir, processes: &str, log_filter: &str, env: &[(&str, &str)]) -> Self {
        Self::launch_program(
            Command::new(agent_binary()),
            dir,
            processes,
            log_filter,
            env,
        )
    }

    fn launch_program(
        command: Command,
        dir: TempDir,
        processes: &str,
        log_filter: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let agent = Self::launch_unready(command, dir, processes, log_filter, env);
        // While it stops what an earlier run left, the socket answers that it is starting.
        wait_for(
            "the agent's control socket to answer a status",
            TIMEOUT,
            || {
                let reply =
                    control::request(&agent.socket(), &Request::Status, Duration::from_secs(2));
                reply
                    .ok()
                    .filter(|reply| matches!(reply, Reply::Status { .. }))
            },
        );
        agent
    }

    fn launch_unready(
        mut command: Command,
        dir: TempDir,
        processes: &str,
        log_filter: &str,
        env: &[(&str, &str)],
    ) -> Self {
        write_config(dir.path(), processes);
        command
            .arg("--config")
            .arg(config_path(dir.path()))
            .current_dir(dir.path())
            .env("RESPAWN_LOG", log_filter)
            .envs(env.iter().copied());
        let (child, log, log_reader) = spawn_logged(command, "respawn-agent");
        Self {
            child,
            dir: Some(dir),
            log,
            log_reader,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the directory").path()
    }

    pub fn config_path(&self) -> PathBuf {
        config_path(self.dir())
    }

    /// Replaces the `[[process]]` tables of the configuration file (for reload tests).
    pub fn rewrite_config(&self, processes: &str) {
        write_config(self.dir(), processes);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn socket(&self) -> PathBuf {
        self.dir().join("state/agent.sock")
    }

    pub fn request(&self, request: Request) -> Reply {
        control::request(&self.socket(), &request, TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "request {request:?} failed: {e}\nagent log:\n{}",
                self.log()
            )
        })
    }

    pub fn statuses(&self) -> Vec<ProcessStatus> {
        match self.request(Request::Status) {
            Reply::Status { processes, .. } => processes,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn status(&self, name: &str) -> ProcessStatus {
        self.try_status(name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    fn try_status(&self, name: &str) -> Option<ProcessStatus> {
        self.statuses().into_iter().find(|p| p.name == name)
    }

    /// Waits until `name`'s status satisfies `check` and returns that status.
    pub fn wait_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&ProcessStatus) -> bool,
    ) -> ProcessStatus {
        wait_for_or(
            &format!("{name} to be {what}"),
            TIMEOUT,
            || self.try_status(name).filter(|s| check(s)),
            || {
                format!(
                    "last status: {:#?}\nagent log:\n{}",
                    self.try_status(name),
                    self.log()
                )
            },
        )
    }

    /// Waits until `name` is running and returns its pid.
    pub fn wait_running(&self, name: &str) -> u32 {
        self.wait_until(name, "running", |s| s.state == ProcessState::Running)
            .pid
            .expect("a running process has a pid")
    }

    /// Waits until `name` runs with a pid other than `old`.
    pub fn wait_restarted(&self, name: &str, old: u32) -> u32 {
        self.wait_until(name, "running again", |s| {
            s.state == ProcessState::Running && s.pid.is_some_and(|p| p != old)
        })
        .pid
        .expect("a running process has a pid")
    }

    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn wait_for_log(&self, needle: &str) {
        wait_for_or(
            &format!("{needle:?} in the agent's log"),
            TIMEOUT,
            || self.log().contains(needle).then_some(()),
            || format!("the agent's log:\n{}", self.log()),
        );
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal the agent");
    }

    /// Waits for the agent to exit by itself, and for the rest of its log.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let status = wait_child(&mut self.child, TIMEOUT)
            .unwrap_or_else(|| panic!("the agent did not exit\nagent log:\n{}", self.log()));
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        status
    }

    /// Stops the agent as systemd does (SIGTERM), checks that it exited in good order, and
    /// hands back its directory for the next agent.
    pub fn shut_down(mut self) -> TempDir {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit();
        assert!(
            status.success(),
            "the agent exited with {status}\nagent log:\n{}",
            self.log()
        );
        self.dir.take().expect("the directory")
    }

    /// Stops `name` as `respawn-agent stop` does, and checks that it stopped.
    pub fn stop_process(&self, name: &str) {
        let reply = self.request(Request::Stop {
            process: name.into(),
        });
        assert!(
            matches!(
                reply,
                Reply::Done {
                    outcome: control::Outcome::Stopped,
                    ..
                }
            ),
            "stop {name}: {reply:?}"
        );
    }

    /// Kills the agent with SIGKILL, leaving its children running as after a crash; what is
    /// left can be handed to a new agent.
    pub fn kill_hard(mut self) -> Crashed {
        let orphans = children_of(self.pid());
        let cgroups = orphans
            .iter()
            .filter_map(|&pid| cgroup_of(pid as u32))
            .collect();
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(Signal::SIGKILL);
        }
        let _ = self.child.wait();
        Crashed {
            dir: self.dir.take(),
            orphans,
            cgroups,
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // A graceful stop; then the second signal, which kills the children at once; then
        // SIGKILL for an agent that is stuck.
        let pid = Pid::from_raw(self.child.id() as i32);
        for (signal, wait) in [
            (Signal::SIGTERM, 2),
            (Signal::SIGTERM, 5),
            (Signal::SIGKILL, 5),
        ] {
            let _ = kill(pid, signal);
            if wait_child(&mut self.child, Duration::from_secs(wait)).is_some() {
                return;
            }
        }
    }
}

/// What a SIGKILLed agent leaves: its directory, and its children, which outlive it as after
/// a real crash. Given to [`TestAgent::start_in`], the new agent must deal with them; dropped,
/// their process groups are killed here, so that no test leaves processes behind.
pub struct Crashed {
    dir: Option<TempDir>,
    orphans: Vec<i32>,
    /// The cgroups the orphans are in, when the agent used cgroups.
    cgroups: Vec<PathBuf>,
}

impl From<Crashed> for TempDir {
    fn from(mut crashed: Crashed) -> TempDir {
        crashed.orphans.clear();
        crashed.cgroups.clear();
        crashed.dir.take().expect("the directory")
    }
}

impl Drop for Crashed {
    fn drop(&mut self) {
        for &group in &self.orphans {
            let _ = nix::sys::signal::killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
        // Cleanup, not a test step: the cgroups the dead agent made go too, once the kernel
        // has let go of them (a bounded number of tries).
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
            let Some(base) = cgroup.parent().filter(|b| {
                b.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("respawn-"))
            }) else {
                continue;
            };
            for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with("proc.") {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
            let _ = std::fs::remove_dir(base);
        }
    }
}

/// The cgroup v2 directory of process `pid`, when it is in one the agent made (`proc.<name>`).
fn cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let leaf = Path::new(path).file_name()?.to_str()?;
    if !leaf.starts_with("proc.") {
        return None;
    }
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|mount| Path::new(mount).join(path.trim_start_matches('/')))
        .find(|dir| dir.is_dir())
}

/// The pids whose parent is `pid` (each of an agent's children leads its own process group).
fn children_of(pid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // After the command name, which may hold spaces: state, then the parent.
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Starts `command` with its stderr collected into a string, as a log to search.
fn spawn_logged(
    mut command: Command,
    what: &str,
) -> (
    Child,
    Arc<Mutex<String>>,
    Option<std::thread::JoinHandle<()>>,
) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let log = Arc::new(Mutex::new(String::new()));
    let reader = child.stderr.take().map(|stderr| {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        })
    });
    (child, log, reader)
}

/// `respawnctl alerts` running against a broker, with its log collected.
pub struct Alerter {
    /// Locked only to look at or end it: whether it exited is checked from `&self`.
    child: Mutex<Child>,
    log: Arc<Mutex<String>>,
}

impl Alerter {
    /// Starts `respawnctl --broker URL alerts --config CONFIG` and waits until it watches.
    pub fn start(broker: &broker::Broker, config: &Path) -> Self {
        let alerter = Self::launch(broker, config);
        alerter.wait_for_log("watching the fleet for alerts");
        alerter
    }

    /// Starts `respawnctl --broker URL alerts --config CONFIG`, whether its broker is there
    /// or not.
    pub fn launch(broker: &broker::Broker, config: &Path) -> Self {
        Self::launch_with(broker, config, &[])
    }

    /// As [`Alerter::launch`], with `options` of respawnctl's before `alerts` (credentials).
    pub fn launch_with(broker: &broker::Broker, config: &Path, options: &[&str]) -> Self {
        let mut command = Command::new(respawnctl_binary());
        command
            .arg("--broker")
            .arg(broker.url())
            .args(options)
            .args(["alerts", "--config"])
            .arg(config)
            .env_remove("RESPAWN_BROKER")
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .env("NO_COLOR", "1");
        let (child, log, _reader) = spawn_logged(command, "respawnctl alerts");
        Self {
            child: Mutex::new(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for `needle` in its log; fails at once if it exits.
    pub fn wait_for_log(&self, needle: &str) {
        wait_for_or(
            &format!("{needle:?} in the alerter's log"),
            TIMEOUT,
            || {
                let exited = self.child().try_wait();
                if let Ok(Some(status)) = exited {
                    panic!("the alerter exited ({status}):\n{}", self.log());
                }
                self.log().contains(needle).then_some(())
            },
            || format!("alerter log:\n{}", self.log()),
        );
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops it as systemd would (SIGTERM) and waits for it to exit.
    pub fn stop(self) -> ExitStatus {
        let mut child = self.child();
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        wait_child(&mut child, TIMEOUT).expect("the alerter exits on SIGTERM")
    }
}

impl Drop for Alerter {
    fn drop(&mut self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A program that cargo builds for this package: beside the running program (the benchmark
/// and the simulator), or one level above it (the integration tests, in `deps/`).
fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running program's path");
    let beside = exe.with_file_name(name);
    let above = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name));
    [Some(beside), above]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is missing beside {}: build it with cargo (cargo test, or cargo build -p respawn-tests)", exe.display()))
}

/// The agent program built for these tests.
pub fn agent_binary() -> PathBuf {
    built_binary("respawn-agent-under-test")
}

/// The agent's embedded broker on its own (`respawn-test-broker`).
pub fn test_broker_binary() -> PathBuf {
    built_binary("respawn-test-broker")
}

/// The fleet simulator (`respawn-sim`).
pub fn sim_binary() -> PathBuf {
    built_binary("respawn-sim")
}

/// The respawnctl program built for these tests.
pub fn respawnctl_binary() -> PathBuf {
    built_binary("respawnctl-under-test")
}

/// What a run of respawnctl produced.
#[derive(Debug)]
pub struct CtlOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// respawnctl running in the background (`logs -f`, `events`), its output read as it comes.
pub struct RunningCtl {
    child: Child,
    stdout: Arc<Mutex<Vec<(Instant, String)>>>,
    stderr: Arc<Mutex<String>>,
    /// The threads that read its output: done once they met the end of it.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl RunningCtl {
    /// Starts respawnctl against `broker` with `args`, isolated from the user's configuration.
    pub fn start(broker: &broker::Broker, args: &[&str]) -> Self {
        Self::start_at(&broker.url(), args)
    }

    /// Starts respawnctl against the broker at `url`, which need not answer.
    pub fn start_at(url: &str, args: &[&str]) -> Self {
        let mut child = ctl_command_at(url, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("respawnctl starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                    lines.push((Instant::now(), line));
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let text = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut text = text.lock().unwrap_or_else(|e| e.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
            }));
        }
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far, with when it was read.
    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until it printed at least `n` lines; returns them all.
    pub fn wait_lines(&self, n: usize) -> Vec<String> {
        wait_for_or(
            &format!("respawnctl to print {n} lines"),
            TIMEOUT,
            || {
                let lines = self.lines();
                (lines.len() >= n).then(|| lines.into_iter().map(|(_, l)| l).collect())
            },
            || format!("printed: {:?}\nstderr: {}", self.lines(), self.stderr()),
        )
    }

    /// Waits until it exits by itself, and all it wrote is read; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.wait_status().code()
    }

    /// Waits until it exits by itself or dies, and all it wrote is read; how it ended.
    pub fn wait_status(&mut self) -> std::process::ExitStatus {
        let (child, stdout, stderr) = (&mut self.child, &self.stdout, &self.stderr);
        let status = wait_for_or(
            "respawnctl to exit",
            TIMEOUT,
            || child.try_wait().ok().flatten(),
            || {
                let out = stdout.lock().map(|l| l.len()).unwrap_or_default();
                let err = stderr.lock().map(|e| e.clone()).unwrap_or_default();
                format!("{out} lines printed; stderr: {err}")
            },
        );
        // Its exit comes before the readers meet the end of its output: what it wrote last
        // may still be in the pipes.
        self.wait_output_read();
        status
    }

    fn wait_output_read(&self) {
        wait_for("respawnctl's output read to its end", TIMEOUT, || {
            self.readers.iter().all(|r| r.is_finished()).then_some(())
        });
    }

    /// Ctrl-C, and its exit code once it is gone (within the tests' timeout).
    pub fn interrupt(mut self) -> Option<i32> {
        self.interrupt_status().code()
    }

    /// Ctrl-C, and how it ended once it is gone (within the tests' timeout).
    pub fn interrupt_status(&mut self) -> std::process::ExitStatus {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        self.wait_status()
    }
}

impl Drop for RunningCtl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The misbehaving program of the health tests (`respawn-test-app`).
pub fn test_app_binary() -> PathBuf {
    built_binary("respawn-test-app")
}

/// respawnctl against the broker at `url` with `args`, isolated from the user's
/// configuration, with no terminal.
fn ctl_command_at(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(respawnctl_binary());
    command
        .arg("--broker")
        .arg(url)
        .args(args)
        .env_remove("RESPAWN_BROKER")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs respawnctl against `broker` with `args`, isolated from the user's configuration.
pub fn respawnctl(broker: &broker::Broker, args: &[&str]) -> CtlOutput {
    respawnctl_at(&broker.url(), args)
}

/// Runs respawnctl with `args` and a broker URL where none may answer (a command that must
/// not need one), isolated from the user's configuration.
pub fn respawnctl_at(url: &str, args: &[&str]) -> CtlOutput {
    let output = ctl_command_at(url, args).output().expect("respawnctl runs");
    CtlOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn config_path(dir: &Path) -> PathBuf {
    dir.join("agent.toml")
}

/// Agents in tests take unsigned commands unless a test brings its own `[agent]` table: the
/// signature tests do, the others test other things.
fn write_config(dir: &Path, processes: &str) {
    // A configuration that brings its own [agent] table is written as it is.
    let config = if processes.trim_start().starts_with("[agent]") {
        processes.to_owned()
    } else {
        format!("[agent]\nid = \"test\"\nstate_dir = \"state\"\nallow_unsigned_commands = true\n\n{processes}")
    };
    let config = match CONTAINMENT.get() {
        Some(mode) => config.replacen(
            "[agent]\n",
            &format!("[agent]\ncontainment = \"{mode}\"\n"),
            1,
        ),
        None => config,
    };
    std::fs::write(config_path(dir), config).expect("write the configuration");
}

thread_local! {
    /// The `[agent] containment` of the agents this thread's test starts (`None`: the
    /// default, `auto`).
    static CONTAINMENT: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// The containment the agents this thread's test starts are set to, if any.
pub fn containment() -> Option<&'static str> {
    CONTAINMENT.get()
}

/// Runs `test` with the agents it starts set to `containment = "{mode}"`.
pub fn with_containment<T>(mode: &'static str, test: impl FnOnce() -> T) -> T {
    CONTAINMENT.set(Some(mode));
    test()
}

/// Runs each named test twice: with a cgroup per process (`cgroup::NAME`, which needs root
/// and is skipped loudly without it) and with process groups only (`process_group::NAME`, the
/// fallback where cgroups cannot be managed). The functions named carry no `#[test]`.
#[macro_export]
macro_rules! on_both_containments {
    ($($test:ident),+ $(,)?) => {
        mod cgroup {
            $(
                #[test]
                fn $test() {
                    if $crate::runs_as_root(concat!("cgroup::", stringify!($test)), "cgroups are made as root") {
                        $crate::with_containment("cgroup", super::$test)
                    }
                }
            )+
        }
        mod process_group {
            $(
                #[test]
                fn $test() {
                    $crate::with_containment("process-group", super::$test)
                }
            )+
        }
    };
}

/// Runs each named test twice: against Mosquitto (`mosquitto::NAME`) and against the agent's
/// embedded broker (`embedded::NAME`), which must honour the same protocol. The functions
/// named carry no `#[test]` of their own.
#[macro_export]
macro_rules! on_both_brokers {
    ($($test:ident),+ $(,)?) => {
        mod mosquitto {
            $(
                #[test]
                fn $test() {
                    $crate::broker::with_kind($crate::broker::Kind::Mosquitto, super::$test)
                }
            )+
        }
        mod embedded {
            $(
                #[test]
                fn $test() {
                    $crate::broker::with_kind($crate::broker::Kind::Embedded, super::$test)
                }
            )+
        }
    };
}
