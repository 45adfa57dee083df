//! A daemon that double-forks into a session of its own is stopped with the program that
//! started it — after a crash, a stop, the agent's shutdown, and after the agent itself was
//! killed — found by its cgroup, or without cgroups by its run's `RESPAWN_INVOCATION`; and
//! what the kernel knows reaches the reports: CPU and memory while a process runs, an
//! out-of-memory kill when it ends.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use respawn_agent::control::Request;
use respawn_common::messages::{AgentState, Event, EventKind, ProcessReport};
use respawn_common::status::{ExitStatus, ProcessState};
use respawn_tests::broker::{free_port, Broker};
use respawn_tests::mqtt::Observer;
use respawn_tests::{
    alive, mqtt_section, runs_as_root, skip, test_app_binary, wait_for, wait_gone, TestAgent,
    TIMEOUT,
};

/// `opener` starts a daemon the way old init scripts do — a double fork and `setsid`, so that
/// it is in neither its session nor its process group — which holds `port`; then it runs
/// `then`. Each run appends its pid to `runs`, each daemon its pid to `daemons`, and a daemon
/// that cannot take the port says so in `daemon.log`.
fn opener(port: u16, then: &str) -> String {
    let app = test_app_binary();
    format!(
        r#"
        [[process]]
        name = "opener"
        command = ["sh", "-c", "(setsid sh -c 'echo $$ >> daemons; exec {app} --tcp {port}' >> daemon.log 2>&1 &); echo $$ >> runs; {then}"]
        backoff = {{ initial = "10ms", max = "10ms" }}
        stop_timeout = "2s"
        "#,
        app = app.display()
    )
}

fn pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits for the `n`th daemon and returns its pid.
fn daemon(dir: &Path, n: usize) -> u32 {
    wait_for(&format!("daemon #{n}"), TIMEOUT, || {
        pids(&dir.join("daemons")).get(n - 1).copied()
    })
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Kills the daemons a failed test may leave behind: nothing else would.
struct Daemons(PathBuf);

impl Drop for Daemons {
    fn drop(&mut self) {
        for pid in pids(&self.0.join("daemons")) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Without cgroups, the daemon is found by the run's `RESPAWN_INVOCATION`, which it inherits.
fn after_a_crash_the_next_run_finds_the_port_free() {
    let port = free_port();
    let agent = TestAgent::start(&opener(port, "sleep 0.3; exit 1"));
    let _cleanup = Daemons(agent.dir().to_owned());
    let first = daemon(agent.dir(), 1);
    // Four runs, each of whose daemon must take the port the one before held.
    daemon(agent.dir(), 4);
    wait_gone(first, "the first run's daemon");
    let log = std::fs::read_to_string(agent.dir().join("daemon.log")).unwrap_or_default();
    assert!(
        !log.contains("AddrInUse"),
        "a daemon outlived its run and kept the port:\n{log}"
    );
}

/// The classic mistake under a supervisor: a program that forks into the background and exits
/// 0. Its daemon goes with its cgroup (or its run), and the log says why, and what to do.
fn a_program_that_daemonizes_and_exits_is_told_to_run_in_the_foreground() {
    // As a real daemonizer does, it exits once its daemon has started.
    let started_then_exit = "while [ ! -s daemons ]; do sleep 0.01; done; exit 0";
    let config = opener(free_port(), started_then_exit) + "restart = \"never\"\n";
    let agent = TestAgent::start(&config);
    let _cleanup = Daemons(agent.dir().to_owned());
    let place = match respawn_tests::containment() == Some("cgroup") {
        true => "in its cgroup, which are stopped with it",
        false => "that had left its process group, which are killed with it",
    };
    agent.wait_for_log(&format!(
        "the main process exited 0 and left processes running {place}"
    ));
    assert!(
        agent.log().contains("must be run in the foreground"),
        "{}",
        agent.log()
    );
    wait_gone(daemon(agent.dir(), 1), "the daemon");
}

/// What a main process leaves when it ends by itself gets its `stop_signal` first, as under
/// systemd's `KillMode=control-group`: a helper can flush and go. The log says it.
#[test]
fn what_a_crash_leaves_behind_gets_its_stop_signal() {
    if !runs_as_root("what_a_crash_leaves_behind_gets_its_stop_signal", "cgroups") {
        return;
    }
    respawn_tests::with_containment("cgroup", || {
        let agent = TestAgent::start(
            r#"
            [[process]]
            name = "leaver"
            command = ["sh", "-c", "setsid sh -c 'trap \"echo flushed > got-signal; exit 0\" HUP; echo $$ > helper; while :; do sleep 0.05; done' & while [ ! -s helper ]; do sleep 0.01; done; exit 1"]
            restart = "never"
            stop_signal = "HUP"
            "#,
        );
        let helper: u32 = respawn_tests::wait_for_file(&agent.dir().join("helper"))
            .parse()
            .unwrap();
        assert_eq!(
            respawn_tests::wait_for_file(&agent.dir().join("got-signal")),
            "flushed",
            "the helper had its stop signal, not SIGKILL"
        );
        wait_gone(helper, "the helper");
        agent.wait_for_log(
            "the main process ended and left processes running in its cgroup, which are stopped with it",
        );
        assert!(
            !agent
                .log()
                .contains("did not end in time on its stop signal"),
            "{}",
            agent.log()
        );
    });
}

/// While what it left is stopped, the process reads as stopping with no pid, locally and in
/// its retained state, not as running with the pid of its dead main process; its exit is
/// told once that is done.
#[test]
fn while_what_a_crash_left_is_stopped_the_process_reads_as_stopping() {
    if !runs_as_root(
        "while_what_a_crash_left_is_stopped_the_process_reads_as_stopping",
        "cgroups",
    ) {
        return;
    }
    respawn_tests::with_containment("cgroup", || {
        let broker = Broker::start();
        let observer = Observer::connect(&broker, &["respawn/v1/test/proc/leaver"]);
        let agent = TestAgent::start(&format!(
            r#"{}
            [[process]]
            name = "leaver"
            command = ["sh", "-c", "setsid sh -c 'trap \"\" TERM; echo $$ > helper; while :; do sleep 0.05; done' & while [ ! -s helper ]; do sleep 0.01; done; exit 3"]
            restart = "never"
            stop_timeout = "3s"
            "#,
            mqtt_section(&broker)
        ));
        let stopping = agent.wait_until("leaver", "stopping what it left", |s| {
            s.state == ProcessState::Stopping
        });
        assert_eq!(stopping.pid, None, "{stopping:?}");
        let states =
            |messages: &[respawn_tests::mqtt::Message]| -> Vec<(ProcessState, Option<u32>)> {
                let reports = messages.iter();
                let reports = reports
                    .filter_map(|m| serde_json::from_slice::<ProcessReport>(&m.payload).ok());
                reports.map(|r| (r.status.state, r.status.pid)).collect()
            };
        let told = observer.wait("the exit told after the stopping", |messages| {
            let states = states(messages);
            states
                .last()
                .is_some_and(|(s, _)| *s == ProcessState::Stopped)
                .then_some(states)
        });
        let told: Vec<_> = told
            .into_iter()
            .filter(|(s, _)| *s != ProcessState::Starting)
            .collect();
        assert!(
            matches!(
                told.as_slice(),
                [
                    ..,
                    (ProcessState::Running, Some(_)),
                    (ProcessState::Stopping, None),
                    (ProcessState::Stopped, None)
                ]
            ),
            "{told:?}"
        );
        let exit = agent.status("leaver").last_exit.expect("its exit");
        assert_eq!(exit.status, ExitStatus::Code { code: 3 });
    });
}

/// One that ignores it is killed once its `stop_timeout` is up, and the next run starts only
/// then: never two of them at once.
#[test]
fn what_a_crash_leaves_behind_is_killed_at_its_stop_timeout() {
    if !runs_as_root(
        "what_a_crash_leaves_behind_is_killed_at_its_stop_timeout",
        "cgroups",
    ) {
        return;
    }
    respawn_tests::with_containment("cgroup", || {
        // Each run starts a helper that ignores TERM and waits for it; each helper notes any
        // earlier one still alive.
        let helper = r#"trap \"\" TERM; for p in $(cat helpers 2>/dev/null); do kill -0 $p 2>/dev/null && echo $p >> overlap; done; echo $$ >> helpers; while :; do sleep 0.05; done"#;
        let agent = TestAgent::start(&format!(
            r#"
            [[process]]
            name = "leaver"
            command = ["sh", "-c", "n=$(cat helpers 2>/dev/null | wc -l); setsid sh -c '{helper}' & while [ $(cat helpers 2>/dev/null | wc -l) -le $n ]; do sleep 0.01; done; exit 1"]
            backoff = {{ initial = "10ms", max = "10ms" }}
            stop_timeout = "1s"
            "#
        ));
        let helpers = agent.dir().join("helpers");
        let first = wait_for("the first helper", TIMEOUT, || {
            pids(&helpers).first().copied()
        });
        agent.wait_for_log("did not end in time on its stop signal; sending it SIGKILL");
        wait_gone(first, "the first helper");
        wait_for("a third helper", TIMEOUT, || pids(&helpers).get(2).copied());
        let overlap = std::fs::read_to_string(agent.dir().join("overlap")).unwrap_or_default();
        assert!(overlap.is_empty(), "a helper outlived its run: {overlap}");
        let _ = agent.request(Request::Stop {
            process: "leaver".into(),
        });
    });
}

fn a_stop_a_shutdown_and_a_killed_agent_leave_no_daemon() {
    let port = free_port();
    let config = opener(port, "exec sleep 1000");

    // kill -9 of the agent: the daemon outlives it, and the next agent stops it before
    // it starts the program again.
    let agent = TestAgent::start(&config);
    let _cleanup = Daemons(agent.dir().to_owned());
    let first = daemon(agent.dir(), 1);
    wait_for("the daemon to listen", TIMEOUT, || {
        listening(port).then_some(())
    });
    let crashed = agent.kill_hard();
    assert!(alive(first), "the daemon outlives a SIGKILLed agent");
    let agent = TestAgent::start_in(crashed, &config);
    let _cleanup = Daemons(agent.dir().to_owned());
    agent.wait_for_log("stopping what an earlier run of the agent left running");
    let second = daemon(agent.dir(), 2);
    wait_gone(first, "the daemon a killed agent left");
    wait_for("the new daemon to listen", TIMEOUT, || {
        (alive(second) && listening(port)).then_some(())
    });

    // respawn-agent stop
    agent.stop_process("opener");
    wait_gone(second, "the daemon after a stop");
    assert!(!listening(port), "the port is free after the stop");

    // The agent's shutdown (SIGTERM)
    agent.request(Request::Start {
        process: "opener".into(),
    });
    let third = daemon(agent.dir(), 3);
    let log = std::fs::read_to_string(agent.dir().join("daemon.log")).unwrap_or_default();
    assert!(!log.contains("AddrInUse"), "{log}");
    drop(agent);
    wait_gone(third, "the daemon after the agent's shutdown");
}

/// An agent killed while it stops what a crash left leaves the next agent the run's record:
/// the next agent stops what is left and reports the run as ended unseen, not as a stop of
/// the leftover under its own pid.
#[test]
fn an_agent_killed_while_it_stops_what_a_crash_left_leaves_the_next_one_the_run() {
    if !runs_as_root(
        "an_agent_killed_while_it_stops_what_a_crash_left_leaves_the_next_one_the_run",
        "cgroups",
    ) {
        return;
    }
    respawn_tests::with_containment("cgroup", || {
        // The helper ignores its stop signal while `hold` exists: the first agent is killed
        // while it waits for it.
        let files = tempfile::tempdir().unwrap();
        let (hold, helpers) = (files.path().join("hold"), files.path().join("helpers"));
        std::fs::write(&hold, "").unwrap();
        let config = format!(
            r#"
            [[process]]
            name = "leaver"
            command = ["sh", "-c", "setsid sh -c 'trap \"[ -e {hold} ] || exit 0\" TERM; echo $$ >> {helpers}; while :; do sleep 0.05; done' & while [ ! -s {helpers} ]; do sleep 0.01; done; exit 1"]
            restart = "never"
            "#,
            hold = hold.display(),
            helpers = helpers.display()
        );
        let agent = TestAgent::start(&config);
        let helper = wait_for("the helper", TIMEOUT, || pids(&helpers).first().copied());
        let _cleanup = Killed(helper);
        agent.wait_for_log("the main process ended and left processes running in its cgroup");
        let crashed = agent.kill_hard();
        assert!(alive(helper), "the helper outlives the agent");
        std::fs::remove_file(&hold).unwrap();
        let agent = TestAgent::start_in(crashed, &config);
        agent.wait_for_log("had ended unseen");
        wait_gone(helper, "what the crash left");
        assert!(
            !agent.log().contains(&format!("pid={helper}")),
            "the leftover is not reported as the run: {}",
            agent.log()
        );
    });
}

/// A daemon whose program ended while no agent ran is found all the same — by its cgroup, or
/// without cgroups by its run's `RESPAWN_INVOCATION` — and stopped before the program starts
/// again; the run is reported as ended unseen, not as stopped under the daemon's pid.
fn a_daemon_whose_program_ended_with_the_agent_is_stopped_by_the_next_agent() {
    let config = opener(free_port(), "exec sleep 1000");
    let agent = TestAgent::start(&config);
    let _cleanup = Daemons(agent.dir().to_owned());
    let first = daemon(agent.dir(), 1);
    let program = wait_for("the program's pid", TIMEOUT, || {
        pids(&agent.dir().join("runs")).first().copied()
    });
    let crashed = agent.kill_hard();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(program as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_gone(program, "the program");
    assert!(
        alive(first),
        "the daemon outlives its program and the agent"
    );
    let agent = TestAgent::start_in(crashed, &config);
    let _cleanup = Daemons(agent.dir().to_owned());
    agent.wait_for_log("had ended unseen");
    wait_gone(
        first,
        "the daemon of a program that ended while no agent ran",
    );
    daemon(agent.dir(), 2);
    assert!(!agent.log().contains("exited as asked"), "{}", agent.log());
}

/// A daemon that clears its environment escapes its run without cgroups; the agent, whose it
/// becomes as subreaper, stops it when it shuts down all the same (SIGTERM first, so that it
/// can clean up), rather than leave it to init beside the next agent's programs. (In a
/// cgroup it is stopped with its program, which may end first: then it is killed at once.)
fn a_daemon_that_escaped_everything_is_killed_at_the_shutdown() {
    let started = tempfile::tempdir().unwrap();
    let (pid_file, got) = (started.path().join("daemon"), started.path().join("got"));
    let agent = TestAgent::start(&format!(
        "[[process]]\nname = \"escaper\"\ncommand = [\"sh\", \"-c\", \"(setsid env -i sh -c 'trap \\\"echo TERM > {got}; exit 0\\\" TERM; echo $$ > {pid}; while :; do sleep 0.05; done' &); exec sleep 1000\"]\n",
        pid = pid_file.display(),
        got = got.display()
    ));
    let daemon: u32 = wait_for("the daemon", TIMEOUT, || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    assert!(alive(daemon));
    let _cleanup = Killed(daemon);
    drop(agent);
    wait_gone(daemon, "the daemon after the agent's shutdown");
    if respawn_tests::containment() == Some("process-group") {
        assert_eq!(
            std::fs::read_to_string(&got).unwrap_or_default().trim(),
            "TERM",
            "the daemon had SIGTERM before SIGKILL"
        );
    }
}

/// Without cgroups, a daemon that cleared its environment cannot be told to be its run's: it
/// runs on once its program has ended, and the agent names it then, rather than only at its
/// shutdown.
#[test]
fn a_daemon_no_run_can_be_told_to_own_is_named_when_its_program_ends() {
    respawn_tests::with_containment("process-group", || {
        let started = tempfile::tempdir().unwrap();
        let pid_file = started.path().join("daemon");
        let agent = TestAgent::start(&format!(
            "[[process]]\nname = \"leaver\"\nrestart = \"never\"\ncommand = [\"sh\", \"-c\", \"(setsid env -i sh -c 'echo $$ > {pid}; exec sleep 1000' &); while [ ! -s {pid} ]; do sleep 0.01; done; exit 1\"]\n",
            pid = pid_file.display()
        ));
        let daemon: u32 = wait_for("the daemon", TIMEOUT, || {
            std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        });
        let _cleanup = Killed(daemon);
        agent.wait_for_log(&format!("pids=[{daemon}]"));
        let log = agent.log();
        assert!(log.contains("no run can be told to own"), "{log}");
        assert!(alive(daemon), "it is not the run's to stop");
        drop(agent);
        wait_gone(daemon, "the daemon after the agent's shutdown");
    });
}

/// Without cgroups, what a program leaves is killed when it ends, and is not named besides as
/// a process no run can be told to own: while the kernel tears down its memory, its
/// environment reads empty, but it was the run's. Both ways: a daemon that left the process
/// group (killed with the run's tag), and a worker in the group (killed with the group). A
/// new-user run saw the first named so after 2 of 4 stops, a review pointed at the second.
/// Their memory is large, so that their end takes long enough to be seen every time.
#[test]
fn what_is_killed_with_its_run_is_not_named_as_nobodys() {
    respawn_tests::with_containment("process-group", || {
        let hoard = "import os, time; hoard = b'x' * (512 << 20); open(os.environ['PIDS'], 'w').write(str(os.getpid())); time.sleep(1000)";
        for (how, start) in [("a daemon", "setsid python3"), ("a worker", "python3")] {
            let started = tempfile::tempdir().unwrap();
            let pid_file = started.path().join("leftover");
            let agent = TestAgent::start(&format!(
                "[[process]]\nname = \"leaver\"\nrestart = \"never\"\nenv = {{ PIDS = \"{pid}\" }}\ncommand = [\"sh\", \"-c\", \"({start} -c \\\"{hoard}\\\" &); while [ ! -s {pid} ]; do sleep 0.01; done; exit 1\"]\n",
                pid = pid_file.display()
            ));
            let leftover: u32 = wait_for(how, TIMEOUT, || {
                std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
            });
            let _cleanup = Killed(leftover);
            wait_gone(leftover, how);
            agent.wait_for_log("exited; no restart");
            let log = agent.log();
            assert!(!log.contains("no run can be told to own"), "{how}: {log}");
        }
    });
}

/// Kills a process a failed test may leave behind.
struct Killed(u32);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A cgroup made for the agent before it starts, as systemd makes a unit's with
/// `Delegate=yes`; removed with what the agent made in it once the agent is gone.
struct Delegated(PathBuf);

impl Drop for Delegated {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                respawn_tests::remove_cgroup(&entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn cgroup_path(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn in_a_delegated_cgroup_the_agent_moves_into_a_leaf_and_its_programs_beside_it() {
    if !runs_as_root(
        "in_a_delegated_cgroup_the_agent_moves_into_a_leaf_and_its_programs_beside_it",
        "cgroups",
    ) {
        return;
    }
    let name = format!("respawn-delegated-{}", std::process::id());
    let delegated = Delegated(Path::new("/sys/fs/cgroup/unified").join(&name));
    std::fs::create_dir(&delegated.0).expect("a cgroup for the agent");
    // What systemd 251 and newer mark a unit's cgroup with for `Delegate=yes`.
    respawn_tests::set_xattr(&delegated.0, "trusted.delegate", "1");
    let enter = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
        delegated.0.display()
    );
    let agent = TestAgent::start_wrapped(
        &["sh", "-c", &enter],
        &respawn_tests::agent_binary(),
        "[[process]]\nname = \"worker\"\ncommand = [\"sleep\", \"1000\"]\n",
    );
    let worker = agent.wait_running("worker");
    assert_eq!(cgroup_path(agent.pid()), format!("/{name}/agent"));
    assert_eq!(cgroup_path(worker), format!("/{name}/proc.worker"));
    match agent.request(Request::Status) {
        respawn_agent::control::Reply::Status { containment, .. } => {
            assert_eq!(containment.as_deref(), Some("cgroup"))
        }
        other => panic!("{other:?}"),
    }
    drop(agent);
    wait_gone(worker, "the worker after the agent's shutdown");
    drop(delegated);
}

#[test]
fn root_in_a_cgroup_not_delegated_to_it_keeps_its_programs_apart_from_another_agents() {
    let test = "root_in_a_cgroup_not_delegated_to_it_keeps_its_programs_apart_from_another_agents";
    if !runs_as_root(test, "cgroups") {
        return;
    }
    // A login session's scope: root may write in it, but systemd delegated it to nobody, and
    // two agents started from one shell share it.
    let name = format!("respawn-session-{}", std::process::id());
    let session = Delegated(Path::new("/sys/fs/cgroup/unified").join(&name));
    std::fs::create_dir(&session.0).expect("a cgroup for the session");
    let enter = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
        session.0.display()
    );
    let web = "[[process]]\nname = \"web\"\ncommand = [\"sleep\", \"1000\"]\n";
    let first =
        TestAgent::start_wrapped(&["sh", "-c", &enter], &respawn_tests::agent_binary(), web);
    let first_web = first.wait_running("web");
    let second =
        TestAgent::start_wrapped(&["sh", "-c", &enter], &respawn_tests::agent_binary(), web);
    let second_web = second.wait_running("web");
    assert_eq!(
        cgroup_path(first.pid()),
        format!("/{name}"),
        "the agent stays where it was"
    );
    let (first_cgroup, second_cgroup) = (cgroup_path(first_web), cgroup_path(second_web));
    for cgroup in [&first_cgroup, &second_cgroup] {
        assert!(
            cgroup.starts_with(&format!("/{name}/respawn-test-")) && cgroup.ends_with("/proc.web"),
            "{cgroup}"
        );
    }
    assert_ne!(first_cgroup, second_cgroup);
    second.request(Request::Stop {
        process: "web".to_owned(),
    });
    wait_gone(second_web, "the second agent's web after its stop");
    assert_eq!(
        first.wait_running("web"),
        first_web,
        "the first agent's web runs on"
    );
    drop((first, second));
    wait_gone(first_web, "the first agent's web after its shutdown");
    drop(session);
}

/// Makes a cgroup `worker` in its own, and a worker in it; moves another worker to the cgroup
/// `$1` elsewhere; each worker notes the TERM it gets in `got`, and says its pid in `workers`.
/// On its own TERM it waits (5 s at most) for both workers to note theirs, as a master waits
/// for its workers.
const NESTER: &str = r#"
trap 'for i in $(seq 100); do [ "$(wc -l < got)" -ge 2 ] && break; sleep 0.05; done; exit 0' TERM
mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
own=$mount$(sed -n 's/^0:://p' /proc/self/cgroup)
worker='sleep 1000 & wait'
noted='trap "echo TERM >> got; exit 0" TERM'
mkdir "$own/worker"
sh -c "$noted; echo \$\$ > $own/worker/cgroup.procs; echo \$\$ >> workers; $worker" &
sh -c "$noted; echo \$\$ > $1/cgroup.procs; echo \$\$ >> workers; $worker" &
sleep 1000 & wait
"#;

/// `text` as a script in a temporary directory, kept while the directory is.
fn script(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("program.sh");
    std::fs::write(&script, text).unwrap();
    (dir, script)
}

/// A cgroup that no program of the agent's is in, removed at the end (`name` tells the tests'
/// apart).
fn elsewhere(name: &str) -> Delegated {
    let elsewhere = Delegated(
        Path::new("/sys/fs/cgroup/unified")
            .join(format!("respawn-elsewhere-{}-{name}", std::process::id())),
    );
    std::fs::create_dir(&elsewhere.0).unwrap();
    elsewhere
}

/// A cgroup elsewhere for [`NESTER`]'s second worker, and the program's configuration.
fn nester_elsewhere(name: &str) -> (Delegated, tempfile::TempDir, String) {
    let (scripts, script) = script(NESTER);
    let elsewhere = elsewhere(name);
    let config = format!(
        "[[process]]\nname = \"nest\"\ncommand = [\"sh\", \"{}\", \"{}\"]\n",
        script.display(),
        elsewhere.0.display()
    );
    (elsewhere, scripts, config)
}

/// The pids of [`NESTER`]'s two workers, once both have said them.
fn nested_workers(dir: &Path) -> Vec<u32> {
    wait_for("both workers", TIMEOUT, || {
        let text = std::fs::read_to_string(dir.join("workers")).ok()?;
        let pids: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        (pids.len() == 2).then_some(pids)
    })
}

/// Asserts that each of [`NESTER`]'s workers noted one stop signal.
fn each_worker_had_its_stop_signal(dir: &Path) {
    let got = std::fs::read_to_string(dir.join("got")).unwrap_or_default();
    assert_eq!(
        got.lines().count(),
        2,
        "each worker had its stop signal: {got:?}"
    );
}

#[test]
fn a_stop_reaches_the_cgroups_a_program_makes_and_those_its_processes_move_to() {
    let test = "a_stop_reaches_the_cgroups_a_program_makes_and_those_its_processes_move_to";
    if !runs_as_root(test, "cgroups") {
        return;
    }
    let (_elsewhere, _scripts, config) = nester_elsewhere("stop");
    let agent = TestAgent::start(&config);
    let main = agent.wait_running("nest");
    let workers = nested_workers(agent.dir());
    let own = cgroup_path(main);
    agent.request(Request::Stop {
        process: "nest".to_owned(),
    });
    for pid in workers.iter().copied().chain([main]) {
        wait_gone(pid, "a process of the stopped program");
    }
    each_worker_had_its_stop_signal(agent.dir());
    let dir = Path::new("/sys/fs/cgroup/unified").join(own.trim_start_matches('/'));
    wait_for("the program's cgroups removed", TIMEOUT, || {
        (!dir.exists()).then_some(())
    });
}

/// A program whose processes note each TERM they get in `got` and go on: the main process
/// (`$2`), a worker in a cgroup of the program's own and one in the cgroup `$1` elsewhere,
/// each saying its pid in `workers`; with `$3` = `moved`, the main process moves itself to
/// `$1` too. Their output goes nowhere: a write to the pipe of an agent that is gone would
/// end them before their trap runs.
const NOTER: &str = r#"
exec > /dev/null 2>&1
mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
own=$mount$(sed -n 's/^0:://p' /proc/self/cgroup)
mkdir "$own/worker"
note='while :; do sleep 0.05; done'
sh -c "trap 'echo nested >> got' TERM; echo \$\$ > $own/worker/cgroup.procs; echo \$\$ >> workers; $note" &
sh -c "trap 'echo elsewhere >> got' TERM; echo \$\$ > $1/cgroup.procs; echo \$\$ >> workers; $note" &
[ "$3" = moved ] && echo $$ > "$1/cgroup.procs"
trap "echo $2 >> got" TERM
while :; do sleep 0.05; done
"#;

/// After the agent itself was killed, the next agent stops what its run left in a cgroup
/// elsewhere too, found by the run's invocation id, as an ordinary stop reaches it by the
/// process group: each process gets the stop signal once, and SIGKILL at the stop timeout. A
/// main process that moved itself out of its cgroup is found so, and its stop is told under
/// its own pid.
#[test]
fn after_a_crash_the_next_agent_stops_what_the_run_moved_to_a_cgroup_elsewhere() {
    let test = "after_a_crash_the_next_agent_stops_what_the_run_moved_to_a_cgroup_elsewhere";
    if !runs_as_root(test, "cgroups") {
        return;
    }
    respawn_tests::with_containment("cgroup", || {
        let (_scripts, script) = script(NOTER);
        let elsewhere = elsewhere("crash");
        let program = |name: &str, moved: &str| {
            format!(
                "[[process]]\nname = \"{name}\"\ncommand = [\"sh\", \"{}\", \"{}\", \"{name}\", \"{moved}\"]\nstop_timeout = \"1s\"\n",
                script.display(),
                elsewhere.0.display()
            )
        };
        let config = program("stays", "") + &program("moves", "moved");
        let agent = TestAgent::start(&config);
        let mains = [agent.wait_running("stays"), agent.wait_running("moves")];
        let workers: Vec<u32> = wait_for("four workers", TIMEOUT, || {
            let text = std::fs::read_to_string(agent.dir().join("workers")).ok()?;
            let pids: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
            (pids.len() == 4).then_some(pids)
        });
        let everyone: Vec<u32> = workers.iter().copied().chain(mains).collect();
        let _cleanup = everyone.iter().map(|&pid| Killed(pid)).collect::<Vec<_>>();
        let moved = format!("/{}", elsewhere.0.file_name().unwrap().to_string_lossy());
        wait_for("the main process that moves, moved", TIMEOUT, || {
            cgroup_path(mains[1]).ends_with(&moved).then_some(())
        });
        let crashed = agent.kill_hard();
        assert!(
            everyone.iter().all(|&pid| alive(pid)),
            "all outlive the agent"
        );
        let agent = TestAgent::start_in(crashed, &config);
        for pid in &everyone {
            wait_gone(*pid, "a process the killed agent's run left");
        }
        let got = std::fs::read_to_string(agent.dir().join("got")).unwrap_or_default();
        let mut got: Vec<&str> = got.lines().collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "elsewhere",
                "elsewhere",
                "moves",
                "nested",
                "nested",
                "stays"
            ],
            "one stop signal each"
        );
        let log = agent.log();
        for (name, pid) in ["stays", "moves"].iter().zip(mains) {
            assert!(
                log.lines().any(|l| l
                    .contains("stopping what an earlier run of the agent left running")
                    && l.contains(&format!("process={name}"))
                    && l.contains(&format!("pid={pid}"))),
                "{name}'s stop told under its own pid:\n{log}"
            );
        }
        assert!(!log.contains("had ended unseen"), "{log}");
    });
}

/// A v1 memory cgroup with a limit, which the supervised program enters: the kernel's OOM
/// killer then ends it for real. (This machine has no memory controller on cgroup v2, so the
/// agent learns of it as it would on a Pi without one: the machine's count of OOM kills and a
/// SIGKILL the agent did not send.)
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn make(name: &str, limit: u64) -> Option<Self> {
        let dir = Path::new("/sys/fs/cgroup/memory").join(name);
        std::fs::create_dir(&dir).ok()?;
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
        Some(Self(dir))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Cleanup, not a test step: whatever is left is killed, and the directory goes once
        // the kernel has let go of it (a bounded number of tries).
        for pid in pids(&self.0.join("cgroup.procs")) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        respawn_tests::remove_cgroup(&self.0);
    }
}

fn an_oom_kill_is_reported_as_such() {
    let test = "an_oom_kill_is_reported_as_such";
    if !runs_as_root(test, "memory cgroups are made as root") {
        return;
    }
    let name = format!("respawn-oom-{}", std::process::id());
    let Some(memcg) = MemoryCgroup::make(&name, 64 * 1024 * 1024) else {
        skip(
            test,
            "no cgroup v1 memory controller to make an OOM kill with",
        );
        return;
    };
    let broker = Broker::start();
    let observer = Observer::connect(
        &broker,
        &["respawn/v1/test/event", "respawn/v1/test/proc/hog"],
    );
    let app = test_app_binary();
    let agent = TestAgent::start(&format!(
        "{}[[process]]\nname = \"hog\"\ncommand = [\"sh\", \"-c\", \"echo $$ > {}/cgroup.procs && exec {} --grow\"]\nbackoff = {{ initial = \"1h\", max = \"1h\" }}\n",
        mqtt_section(&broker),
        memcg.0.display(),
        app.display()
    ));
    let status = agent.wait_until("hog", "killed", |s| s.last_exit.is_some());
    let exit = status.last_exit.expect("an exit");
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.describe(), "killed by the kernel: out of memory");
    observer.wait_json("an exited event that says OOM", |e: &Event| {
        matches!(
            e.kind,
            EventKind::Exited {
                oom_killed: true,
                ..
            }
        )
    });
    observer.wait_json("a retained state that says OOM", |r: &ProcessReport| {
        r.status.last_exit.as_ref().is_some_and(|e| e.oom_killed)
    });
    agent.wait_for_log("killed by the kernel: out of memory");
    drop(agent);
}

fn cpu_and_memory_appear_and_move() {
    let broker = Broker::start();
    let observer = Observer::connect(
        &broker,
        &["respawn/v1/test/state", "respawn/v1/test/proc/+"],
    );
    let app = test_app_binary();
    let agent = TestAgent::start(&format!(
        "{}[[process]]\nname = \"busy\"\ncommand = [\"{app}\", \"--spin\"]\n\n[[process]]\nname = \"hog\"\ncommand = [\"{app}\", \"--grow\"]\n",
        mqtt_section(&broker),
        app = app.display()
    ));
    let birth = observer.wait_json("the birth", |s: &AgentState| s.containment.is_some());
    let expected = respawn_tests::containment().unwrap_or("cgroup");
    assert_eq!(birth.containment.as_deref(), Some(expected));
    // respawn-agent status samples at each request, but not a program that has barely begun:
    // it shows a tenth of a megabyte, which the heartbeat would keep until its next one.
    let measured = agent.wait_until("hog", "measured", |s| s.usage.is_some());
    let age = SystemTime::now().duration_since(measured.since);
    assert!(
        age.as_ref()
            .is_ok_and(|age| *age >= Duration::from_millis(900)),
        "measured {age:?} after its start"
    );
    let busy = agent.wait_until("busy", "using a core", |s| {
        s.usage
            .as_ref()
            .and_then(|u| u.cpu_percent)
            .is_some_and(|cpu| cpu > 30.0)
    });
    assert!(busy.usage.expect("usage").cpu_seconds > 0.0);
    let first = agent
        .wait_until("hog", "measured", |s| s.usage.is_some())
        .usage
        .expect("usage")
        .memory_bytes;
    agent.wait_until("hog", "growing", |s| {
        s.usage
            .as_ref()
            .is_some_and(|u| u.memory_bytes > first + 50_000_000)
    });
    // The retained state, refreshed with the heartbeat.
    observer.wait_json("usage in the retained state", |r: &ProcessReport| {
        r.status.name == "hog"
            && r.status
                .usage
                .as_ref()
                .is_some_and(|u| u.memory_bytes > 50_000_000)
    });
}

/// The workers of a pre-fork server share most of their memory with it: counted once, as
/// `memory.current` does, not once per worker, which a `max_memory` measured from `/proc`
/// would take for four times the use.
fn shared_pages_count_once() {
    let workers = tempfile::tempdir().unwrap();
    let program = format!(
        "import os, time\nshared = bytearray(os.urandom(1 << 20) * 60)\nfor _ in range(3):\n    if os.fork() == 0:\n        open(os.path.join({:?}, str(os.getpid())), 'w').close()\n        break\ntime.sleep(1000)\n",
        workers.path().display().to_string()
    );
    let agent = TestAgent::start(&format!(
        "[[process]]\nname = \"prefork\"\ncommand = [\"python3\", \"-c\", {program:?}]\n"
    ));
    wait_for("three workers", TIMEOUT, || {
        let count = std::fs::read_dir(workers.path()).map_or(0, |dir| dir.count());
        (count == 3).then_some(())
    });
    // Each `status` measures afresh.
    let status = agent.wait_until("prefork", "measured", |s| s.usage.is_some());
    let memory = status.usage.expect("usage").memory_bytes;
    assert!(
        (60_000_000..150_000_000).contains(&memory),
        "60 MB shared by four processes counted as {memory} bytes"
    );
}

/// A stop signals the process group and, with cgroups, the cgroup's processes outside it:
/// each process gets the stop signal once. A second one makes many programs skip their
/// graceful stop; with cgroups the group's processes had it twice, when the first was taken
/// before the second came (a race: each of eight stops may show it).
fn each_process_gets_the_stop_signal_once() {
    let app = test_app_binary();
    let agent = TestAgent::start(&format!(
        r#"
        [[process]]
        name = "counter"
        command = ["{}", "--count-term"]
        stop_timeout = "300ms"
        "#,
        app.display()
    ));
    let (counting, terms) = (agent.dir().join("counting"), agent.dir().join("terms"));
    for run in 1..=8 {
        let pid = agent.wait_running("counter");
        wait_for("the handler", TIMEOUT, || counting.exists().then_some(()));
        let _ = std::fs::remove_file(&counting);
        agent.request(Request::Restart {
            process: "counter".to_owned(),
        });
        // It does not end on SIGTERM: it is killed at its stop timeout, having counted.
        wait_gone(pid, "the counter, killed at its stop timeout");
        let counted = std::fs::read_to_string(&terms).unwrap_or_default();
        assert_eq!(counted, "1", "SIGTERMs in run {run}");
        std::fs::remove_file(&terms).expect("the count of the run");
    }
}

respawn_tests::on_both_containments!(
    each_process_gets_the_stop_signal_once,
    shared_pages_count_once,
    a_daemon_that_escaped_everything_is_killed_at_the_shutdown,
    after_a_crash_the_next_run_finds_the_port_free,
    a_program_that_daemonizes_and_exits_is_told_to_run_in_the_foreground,
    a_stop_a_shutdown_and_a_killed_agent_leave_no_daemon,
    a_daemon_whose_program_ended_with_the_agent_is_stopped_by_the_next_agent,
    an_oom_kill_is_reported_as_such,
    cpu_and_memory_appear_and_move
);

/// `check` says where `max_memory` is only measured: a program that grows fast passes it by
/// far before the agent sees it.
#[test]
fn check_notes_a_memory_limit_the_kernel_will_not_enforce() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let text = format!(
        "[agent]\ncontainment = \"process-group\"\nstate_dir = \"{}\"\n\n[[process]]\nname = \"grower\"\ncommand = [\"sleep\", \"1000\"]\nmax_memory = \"100MB\"\n\n[[process]]\nname = \"plain\"\ncommand = [\"sleep\", \"1000\"]\n",
        dir.path().join("state").display()
    );
    std::fs::write(&config, text).unwrap();
    let out = respawn_tests::check(&config);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("note: [[process]] \"grower\": max_memory is measured every 5s here, not enforced by the kernel (containment = \"process-group\")"),
        "{said}"
    );
    assert!(!said.contains("\"plain\": max_memory"), "{said}");
}

/// A program whose main process ends on its stop signal, leaving two workers that ignore it:
/// one in its cgroup, one that moved itself to the cgroup `$1` elsewhere but stayed in the
/// process group. Each says its pid in `workers`, the one in the cgroup first.
const DEAF_WORKERS: &str = r#"
exec > /dev/null 2>&1
deaf='trap "" TERM; while :; do sleep 0.05; done'
sh -c "echo \$\$ >> workers; $deaf" &
while [ ! -s workers ]; do sleep 0.01; done
sh -c "echo \$\$ > $1/cgroup.procs; echo \$\$ >> workers; $deaf" &
sleep 1000 & wait
"#;

/// A stop waits for the processes of its program's cgroup until its `stop_timeout`, and then
/// kills what is left (the stop says so); what left the cgroup but not the process group,
/// which the cgroup's kill would not reach, is killed as the main process ends (found by a
/// review: when a stop first waited for the whole cgroup, such a worker outlived the stop).
#[test]
fn a_stop_kills_at_its_deadline_what_its_main_process_left() {
    let test = "a_stop_kills_at_its_deadline_what_its_main_process_left";
    if !runs_as_root(test, "cgroups") {
        return;
    }
    respawn_tests::with_containment("cgroup", || {
        let (_scripts, script) = script(DEAF_WORKERS);
        let elsewhere = elsewhere("deaf");
        let agent = TestAgent::start(&format!(
            "[[process]]\nname = \"deaf\"\ncommand = [\"sh\", \"{}\", \"{}\"]\nstop_timeout = \"8s\"\n",
            script.display(),
            elsewhere.0.display()
        ));
        let main = agent.wait_running("deaf");
        let [inside, moved] = wait_for("both workers", TIMEOUT, || {
            let text = std::fs::read_to_string(agent.dir().join("workers")).ok()?;
            let pids: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
            <[u32; 2]>::try_from(pids).ok()
        });
        let mut stop = std::process::Command::new(respawn_tests::agent_binary());
        stop.arg("--config")
            .arg(agent.config_path())
            .args(["stop", "deaf"]);
        let stopping = std::thread::spawn(move || stop.output());
        wait_gone(moved, "the worker that moved out of the cgroup");
        wait_gone(main, "the main process");
        // The one in the cgroup is given the stop's time: the stop goes on, without a pid.
        let status = agent.status("deaf");
        assert!(alive(inside), "{status:?}");
        assert_eq!((status.state, status.pid), (ProcessState::Stopping, None));
        let out = stopping.join().unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("killed (SIGKILL)"), "{stderr}");
        assert!(!alive(inside));
        agent.wait_for_log("did not stop in time; sending SIGKILL to what its main process left");
        assert_eq!(agent.status("deaf").state, ProcessState::Stopped);
    });
}
