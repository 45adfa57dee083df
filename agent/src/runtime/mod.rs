//! The runtime around the pure state machine: one event loop that turns signals, child exits,
//! timers, probes and commands into inputs, feeds them to the state machine, and carries out
//! the actions that come back — through the live children, the command desk and the MQTT link.

mod audit;
mod children;
mod commands;
mod configuration;
mod desk;
mod follow;
pub(crate) mod report;
mod setup;
mod view;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::control::{Reply, Request};
use crate::mqtt::link::{Inbound, Link};
use crate::mqtt::remote::Policy;
use crate::shell::watch::Watched;
use crate::shell::{notify, KILL_GRACE};
use crate::state::{ManualStops, StateDir};
use crate::supervisor::{Action, Input, Supervisor};
use children::Children;
pub(crate) use children::MEMORY_CHECK_EVERY;
use desk::{Desk, Effect};
use follow::Streams;
use report::WallClock;
use setup::{next, sleep_until, tick};
use view::View;

struct Runtime {
    config_path: PathBuf,
    config: Config,
    supervisor: Supervisor,
    state: StateDir,
    stopped: ManualStops,
    children: Children,
    desk: Desk,
    /// The live output streams that followers hold leases on.
    streams: Streams,
    /// The MQTT link, when a broker is configured.
    link: Option<Link>,
    shutting_down: bool,
    /// A second SIGTERM/SIGINT came: everything is being killed.
    forced: bool,
    /// When the agent exits even if some process has not gone (one stuck in uninterruptible
    /// sleep survives even SIGKILL).
    give_up_at: Option<Instant>,
    started: Instant,
    /// Both clocks at the last heartbeat: a step of the wall clock between two is NTP's.
    clocks: WallClock,
    /// Processes to start once what their batch reported is on its way to the broker.
    spawns_after_reports: Vec<String>,
    /// SIGTERM or SIGINT came while what an earlier run left was stopped: nothing starts.
    stop_asked: Option<&'static str>,
}

/// Runs the agent until SIGTERM or SIGINT, with `config` read from `config_path` (which a
/// SIGHUP reads again).
pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let (mut rt, mut from) = setup::start(config_path, config).await?;
    rt.begin().await;

    loop {
        rt.spawn_put_off().await;
        if rt.shutting_down && rt.supervisor.is_idle() {
            break;
        }
        if rt.give_up_at.is_some_and(|at| Instant::now() >= at) {
            let left = rt.children.names();
            tracing::error!(
                ?left,
                "processes survive SIGKILL (uninterruptible sleep?); exiting without them"
            );
            break;
        }
        let deadline = rt
            .supervisor
            .next_deadline()
            .into_iter()
            .chain(rt.give_up_at)
            .min();
        let memory_check = rt.children.next_memory_check();
        let audit_flush = rt.desk.flush_at();
        let streams_due = rt.streams.next_due_at();
        tokio::select! {
            _ = from.sigterm.recv() => rt.shutdown("SIGTERM"),
            _ = from.sigint.recv() => rt.shutdown("SIGINT"),
            _ = from.sighup.recv() => rt.reload(),
            _ = from.sigchld.recv() => {
                let ending = rt.children.reap();
                rt.publish_states(&ending);
            }
            Some(done) = from.finished.recv() => {
                rt.state.forget_child(&done.name);
                rt.children.finished(&done.name);
                rt.feed(Input::Exited {
                    name: done.name,
                    pid: done.pid,
                    status: done.status,
                    oom: done.oom,
                    ended: done.ended,
                })
            }
            Some((request, answer)) = from.requests.recv() => rt.local(request, answer),
            Some(command) = next(&mut from.inbound) => rt.remote(command),
            _ = tick(&mut from.heartbeat) => rt.heartbeat(),
            // From this loop, so that a hung agent misses it and systemd restarts it.
            _ = tick(&mut from.systemd_watchdog) => notify::to_systemd("WATCHDOG=1"),
            Some(seen) = from.watched.recv() => rt.on_watched(seen),
            () = sleep_until(memory_check) => rt.check_memory(),
            () = sleep_until(audit_flush) => {
                let effects = rt.desk.flush(Instant::now(), &rt.config.agent.id);
                rt.carry_out(effects);
            }
            () = sleep_until(streams_due) => rt.stream_logs(),
            // Heard only while a followed process's lines would wait for it: a silent program
            // wakes nobody, a chatty one once a batch.
            () = from.output_written.notified(), if rt.streams.awaits_output() => {
                rt.streams.on_output(Instant::now());
            }
            () = sleep_until(deadline) => rt.feed(Input::Tick),
        }
    }
    // Before the next batch was due: what the programs said as they stopped, for a follower.
    rt.stream_logs();
    let effects = rt.desk.fail_all(&rt.config.agent.id);
    rt.carry_out(effects);
    from.server.abort();
    let _ = std::fs::remove_file(&from.socket);
    rt.children.tidy().await;
    setup::close(rt.link.take(), from.broker.take()).await;
    tracing::info!("all processes stopped; respawn-agent exits");
    Ok(())
}

impl Runtime {
    /// Feeds `input` to the state machine and carries out the actions, including those of
    /// the inputs the actions themselves produce (a spawn's outcome); then reports the
    /// processes it touched and answers the commands it settled.
    fn feed(&mut self, input: Input) {
        let configure = matches!(input, Input::Configure(_));
        let mut queue = std::collections::VecDeque::from([input]);
        let mut touched = BTreeSet::new();
        let mut effects = Vec::new();
        let mut reported = false;
        while let Some(input) = queue.pop_front() {
            for action in self.supervisor.step(input, Instant::now()) {
                touched.insert(action.process().to_owned());
                match action {
                    Action::Spawn { name } if reported && self.connected() => {
                        self.spawns_after_reports.push(name);
                    }
                    action => {
                        reported |= matches!(action, Action::Emit(_));
                        queue.extend(self.execute(action, &mut effects));
                    }
                }
            }
        }
        if configure {
            touched.extend(self.supervisor.views().map(|v| v.name));
        }
        effects.extend(self.desk.settle(&self.supervisor, &self.config.agent.id));
        // A spawn put off publishes its state once it is made (`starting` in between would
        // look like a stop to whoever watches the state).
        touched.retain(|name| !self.spawns_after_reports.contains(name));
        self.publish_states(&touched);
        self.carry_out(effects);
    }

    fn execute(&mut self, action: Action, effects: &mut Vec<Effect>) -> Option<Input> {
        match action {
            Action::Spawn { name } => return Some(self.spawn(name)),
            Action::Signal { name, pid, signal } => {
                tracing::info!(process = %name, pid, signal = signal.as_str(), "stopping");
                self.children.signal(&name, pid, signal);
            }
            Action::Kill { name, pid } => {
                // "What it started": its cgroup or its process group, as contained.
                let why = (!self.forced).then_some("did not stop in time; ");
                let why = why.unwrap_or_default();
                // Its main process may have ended already, leaving others of it that did not.
                let what = match self.children.ending(&name) {
                    Some((main, _)) if main == pid => "what its main process left",
                    _ => "it and what it started",
                };
                tracing::warn!(process = %name, pid, "{why}sending SIGKILL to {what}");
                self.children.signal(&name, pid, Signal::SIGKILL);
            }
            Action::Emit(notice) => {
                report::log_notice(&notice, || self.children.tail(&notice.name, 1));
                if let Some(exit) = report::exit_to_keep(&notice) {
                    self.children.remember_exit(&notice.name, exit);
                }
                if let Some(link) = &self.link {
                    link.event(Some(&notice.name), report::event(&notice, &self.children));
                }
                effects.extend(self.desk.on_notice(&notice, &self.config.agent.id));
            }
            Action::RememberStopped { name, stopped } => {
                let saved = self.stopped.set(&self.state, &name, stopped);
                self.desk.stop_saved(&name, saved);
            }
            Action::Forget { name } => effects.extend(self.forget(&name)),
        }
        None
    }

    /// Starts the runs `feed` put off, once the link's task has had its turn: a crash's event
    /// then usually goes out before its restart, where starting a program costs about as much
    /// as the whole way to the broker.
    async fn spawn_put_off(&mut self) {
        while !self.spawns_after_reports.is_empty() {
            tokio::task::yield_now().await;
            for name in std::mem::take(&mut self.spawns_after_reports) {
                let input = self.spawn(name);
                self.feed(input);
            }
        }
    }

    /// Whether the link is connected to its broker.
    fn connected(&self) -> bool {
        self.link.as_ref().is_some_and(Link::is_connected)
    }

    /// Starts a run of `name`; its outcome, as the state machine's next input.
    fn spawn(&mut self, name: String) -> Input {
        let Some(config) = self.supervisor.config(&name).map(Arc::clone) else {
            let error = "not configured".into();
            return Input::SpawnFailed { name, error };
        };
        self.children.spawn(&config, &self.state)
    }

    /// Carries out what the command desk decided.
    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Answer(answer, reply) => {
                    let _ = answer.send(reply);
                }
                Effect::Feed(input) => self.feed(input),
                Effect::Reply(request, reply) => {
                    if let Some(link) = &self.link {
                        link.reply(&request.requester, request.correlation, &reply);
                    }
                }
                Effect::Audit {
                    request,
                    reply,
                    unaudited,
                } => {
                    if let Some(link) = &self.link {
                        report::audit(link, &request, &reply, unaudited);
                    }
                }
                Effect::RenewSession => self.link.iter().for_each(Link::renew_session),
                Effect::RepublishBirth => self.link.iter().for_each(Link::republish_birth),
                Effect::Config(request, command) => self.config_command(request, command),
                Effect::Follow { process, seq } => {
                    self.streams.lease(&process, seq, Instant::now());
                    self.children.mark_one_followed(&process);
                }
                Effect::Reload(answer, file) => {
                    let reply = match self.refused_reload_of(file.as_deref()) {
                        Some(refusal) => refusal,
                        None => self.reload_reply(),
                    };
                    drop(answer.send(reply));
                }
            }
        }
    }

    /// A request on the control socket.
    fn local(&mut self, request: Request, answer: oneshot::Sender<Reply>) {
        if matches!(request, Request::Status) {
            self.children.sample_usage();
        }
        let (id, supervisor) = (&self.config.agent.id, &self.supervisor);
        let view = View::new(id, supervisor, &self.children, &self.streams);
        let effects = self.desk.local(request, answer, &view);
        self.carry_out(effects);
    }

    /// A command that arrived over MQTT.
    fn remote(&mut self, inbound: Inbound) {
        let session = self.link.as_ref().map(Link::session).unwrap_or_default();
        let policy = Policy {
            operators: &self.config.operators,
            allow_unsigned: self.config.agent.allow_unsigned_commands,
            session: &session,
        };
        let (id, supervisor) = (&self.config.agent.id, &self.supervisor);
        let view = View::new(id, supervisor, &self.children, &self.streams);
        let effects = self
            .desk
            .remote(inbound, policy, SystemTime::now(), Instant::now(), &view);
        self.carry_out(effects);
    }

    /// Something was seen of a running child: readiness, its own status, a probe's result,
    /// an overdue watchdog.
    fn on_watched(&mut self, watched: Watched) {
        let name = watched.name.clone();
        if let Some(input) = self.children.on_watched(watched) {
            self.feed(input);
        }
        self.publish_states(&BTreeSet::from([name]));
    }

    /// Sends the new lines of the followed processes.
    fn stream_logs(&mut self) {
        let children = &self.children;
        let connected = self.connected();
        let batches = self
            .streams
            .batches(Instant::now(), connected, |process, seq, most| {
                children.lines_since(process, seq, most)
            });
        // Streams whose lease lapsed wake the loop no more.
        let streams = &self.streams;
        self.children
            .mark_followed(|name| streams.is_followed(name));
        let Some(link) = &self.link else {
            return;
        };
        for batch in batches {
            let numbered_since = children.numbered_since(&batch.process);
            link.log_batch(&batch.message(&self.config.agent.id, numbered_since));
        }
    }

    /// Restarts the processes over their `max_memory`.
    fn check_memory(&mut self) {
        let over = {
            let supervisor = &self.supervisor;
            self.children
                .check_memory(|name| supervisor.config(name)?.max_memory)
        };
        for input in over {
            self.feed(input);
        }
        self.schedule_memory_checks();
    }

    fn schedule_memory_checks(&mut self) {
        let any_limit = self.config.processes.iter().any(|p| p.max_memory.is_some());
        self.children.schedule_memory_checks(any_limit);
    }

    /// What the agent shows of itself now.
    fn view(&self) -> View<'_> {
        let (id, supervisor) = (&self.config.agent.id, &self.supervisor);
        View::new(id, supervisor, &self.children, &self.streams)
    }

    fn publish_states(&self, names: &BTreeSet<String>) {
        if let Some(link) = &self.link {
            report::states(link, &self.view(), &self.config.processes, names);
        }
    }

    fn shutdown(&mut self, signal: &str) {
        let force = self.shutting_down;
        if force {
            tracing::warn!("{signal} again: killing every process now");
        } else {
            tracing::info!("{signal}: stopping every process (send it again to kill them at once)");
            notify::to_systemd("STOPPING=1");
        }
        self.shutting_down = true;
        let effects = self.desk.shut(&self.config.agent.id);
        self.carry_out(effects);
        self.forced = force;
        let grace = match force {
            true => KILL_GRACE,
            false => self.config.longest_stop() + KILL_GRACE,
        };
        self.give_up_at = Some(Instant::now() + grace);
        self.feed(Input::Shutdown { force });
    }
}
