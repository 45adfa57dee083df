//! `respawnctl alerts` end to end: real agents, a real Mosquitto and a stand-in chat service
//! that records every request and fails on demand. One crash is one alert with its exit code,
//! log tail and fix, and one resolved notice; a crash loop is one alert; a killed agent is one
//! offline alert after the grace period and none for its processes, then one back-online
//! notice; an alerter cut off from its broker says so, and nothing of the agents it cannot
//! see; a chat outage — and a restart of the alerter in the middle of it — delays alerts
//! but loses, repeats and reorders none; each service gets its own documented format.

use std::path::{Path, PathBuf};

use respawn_agent::control::{Reply, Request};
use respawn_tests::broker::Broker;
use respawn_tests::chat::{Answer, ChatServer, Recorded};
use respawn_tests::faults::SmallDisk;
use respawn_tests::mqtt::Observer;
use respawn_tests::{
    mqtt_section, respawnctl, respawnctl_at, runs_as_root, wait_for, wait_for_or, Alerter,
    RunningCtl, TestAgent, TIMEOUT,
};

/// Every kind of target, each on its own path of the stand-in server.
fn all_targets(server: &ChatServer) -> String {
    format!(
        r#"
[[target]]
name = "slack"
kind = "slack"
url = "{slack}"
min_interval = "0s"

[[target]]
name = "discord"
kind = "discord"
url = "{discord}"
min_interval = "0s"

[[target]]
name = "telegram"
kind = "telegram"
token = "123:abc"
chat_id = -1001
api = "{telegram}"
min_interval = "0s"

[[target]]
name = "matrix"
kind = "matrix"
homeserver = "{matrix}"
room = "!room:example.org"
token = "syt_secret"
min_interval = "0s"

[[target]]
name = "ntfy"
kind = "ntfy"
url = "{ntfy}"
token = "tk_secret"
min_interval = "0s"
"#,
        slack = server.url("/slack/T0/B0/secret"),
        discord = server.url("/discord/1/abc"),
        telegram = server.url("/telegram"),
        matrix = server.url("/matrix"),
        ntfy = server.url("/ntfy/door-alerts"),
    ) + &webhook_target(server)
}

fn webhook_target(server: &ChatServer) -> String {
    format!(
        "\n[[target]]\nname = \"webhook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        server.url("/hook")
    )
}

/// A process that crashes each time the test asks ([`crash_on_demand`]).
fn on_demand(name: &str) -> String {
    format!(
        "[[process]]\nname = \"{name}\"\ncommand = [\"sh\", \"-c\", \"while [ ! -e go-{name} ]; do sleep 0.05; done; rm -f go-{name}; echo {name} down; exit 1\"]\n\n"
    )
}

/// Crashes the process `name` made by [`on_demand`], and waits for its restart.
fn crash_on_demand(agent: &TestAgent, name: &str) {
    let before = agent.status(name).restarts;
    std::fs::write(agent.dir().join(format!("go-{name}")), "").unwrap();
    agent.wait_until(name, "its crash", |s| s.restarts > before);
}

/// An alerts file with quick rules for tests, and `targets`.
fn alerts_config(dir: &Path, targets: &str) -> PathBuf {
    let path = dir.join("alerts.toml");
    let text = format!(
        "[alerts]\ngrace = \"2s\"\ngroup_window = \"300ms\"\nresolve_after = \"2s\"\nstate_file = \"{}\"\nclient_id = \"alerts-under-test\"\n{targets}",
        dir.join("alerts-state.json").display()
    );
    std::fs::write(&path, text).expect("write alerts.toml");
    // Its tokens are secrets: readable by its owner only, as docs/alerts.md says.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod 600 alerts.toml");
    path
}

/// Has the alerts file `config` made by [`alerts_config`] in `dir` keep its state at `state`.
fn move_state_file(config: &Path, dir: &Path, state: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let default = dir.join("alerts-state.json").display().to_string();
    std::fs::write(config, text.replace(&default, &state.display().to_string())).unwrap();
}

/// The alerts the webhook target took, in the order it took them.
fn delivered_alerts(server: &ChatServer) -> Vec<serde_json::Value> {
    server
        .requests_to("/hook")
        .iter()
        .filter(|r| r.delivered())
        .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn alert_names(alerts: &[serde_json::Value]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a["status"].as_str().unwrap_or("?"),
                a["labels"]["alertname"].as_str().unwrap_or("?"),
                a["labels"]["process"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

fn wait_for_alert(server: &ChatServer, alerter: &Alerter, wanted: &str) -> Vec<serde_json::Value> {
    wait_for_or(
        &format!("the alert {wanted:?}"),
        TIMEOUT,
        || {
            let alerts = delivered_alerts(server);
            alert_names(&alerts)
                .iter()
                .any(|n| n == wanted)
                .then_some(alerts)
        },
        || {
            format!(
                "delivered: {:?}\nalerter log:\n{}",
                alert_names(&delivered_alerts(server)),
                alerter.log()
            )
        },
    )
}

fn one_crash_is_one_alert_with_its_exit_log_and_fix_then_one_resolved_notice() {
    let broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &all_targets(&server));
    let alerter = Alerter::start(&broker, &config);
    let flaky = r#"
[[process]]
name = "flaky"
command = ["sh", "-c", "if [ -e crashed ]; then exec sleep 1000; fi; touch crashed; echo 'fatal: GPIO 17 busy' >&2; exit 3"]
backoff = { initial = "100ms", max = "1s" }
"#;
    let agent = TestAgent::start(&(mqtt_section(&broker) + flaky));
    let alerts = wait_for_alert(&server, &alerter, "resolved ProcessCrashed flaky");
    assert_eq!(
        alert_names(&alerts),
        [
            "firing ProcessCrashed flaky",
            "resolved ProcessCrashed flaky"
        ],
        "exactly one alert and one resolved notice"
    );
    let firing = &alerts[0];
    assert_eq!(firing["labels"]["agent"], "test");
    assert_eq!(
        firing["annotations"]["summary"],
        "test/flaky crashed: exit 3"
    );
    assert!(firing["annotations"]["description"]
        .as_str()
        .unwrap()
        .contains("fatal: GPIO 17 busy"));
    assert_eq!(
        firing["annotations"]["command"],
        "respawnctl restart test/flaky"
    );
    assert_eq!(agent.status("flaky").restarts, 1);

    // Every service got the same two messages, each in its own documented format.
    // (The targets are delivered to independently: wait for each one's second message.)
    let each = |prefix: &str| -> Vec<Recorded> {
        wait_for(&format!("two messages to {prefix}"), TIMEOUT, || {
            (server.requests_to(prefix).len() >= 2).then_some(())
        });
        let requests = server.requests_to(prefix);
        assert_eq!(requests.len(), 2, "{prefix}: {requests:#?}");
        assert!(requests.iter().all(Recorded::delivered));
        requests
    };
    let slack = each("/slack/");
    assert_eq!(
        (slack[0].method.as_str(), slack[0].path.as_str()),
        ("POST", "/slack/T0/B0/secret")
    );
    let json = slack[0].json();
    assert_eq!(json["text"], "🟠 test/flaky crashed: exit 3");
    assert_eq!(json["blocks"][0]["text"]["type"], "mrkdwn");
    assert!(json["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap()
        .contains("```fatal: GPIO 17 busy```"));

    let discord = each("/discord/");
    assert_eq!(discord[0].path, "/discord/1/abc?wait=true");
    let json = discord[0].json();
    assert_eq!(json["embeds"][0]["title"], "🟠 test/flaky crashed: exit 3");
    assert!(json["embeds"][0]["color"].is_u64());
    assert_eq!(discord[1].json()["embeds"][0]["color"], 0x2E_A0_43);

    let telegram = each("/telegram/");
    assert_eq!(telegram[0].path, "/telegram/bot123:abc/sendMessage");
    let json = telegram[0].json();
    assert_eq!(json["chat_id"], "-1001");
    assert_eq!(json["parse_mode"], "HTML");
    assert!(json["text"]
        .as_str()
        .unwrap()
        .contains("<pre>fatal: GPIO 17 busy</pre>"));

    let matrix = each("/matrix/");
    assert_eq!(matrix[0].method, "PUT");
    assert!(
        matrix[0].path.starts_with(
            "/matrix/_matrix/client/v3/rooms/%21room%3Aexample.org/send/m.room.message/"
        ),
        "{}",
        matrix[0].path
    );
    assert_ne!(
        matrix[0].path, matrix[1].path,
        "a transaction id per message"
    );
    assert_eq!(matrix[0].header("authorization"), Some("Bearer syt_secret"));
    let json = matrix[0].json();
    assert_eq!(json["msgtype"], "m.text");
    assert_eq!(json["format"], "org.matrix.custom.html");

    let ntfy = each("/ntfy/");
    assert_eq!(ntfy[0].path, "/ntfy/");
    assert_eq!(ntfy[0].header("authorization"), Some("Bearer tk_secret"));
    let json = ntfy[0].json();
    assert_eq!(json["topic"], "door-alerts");
    assert_eq!(json["title"], "test/flaky crashed: exit 3");
    assert_eq!(json["markdown"], true);
    assert_eq!(ntfy[1].json()["tags"][0], "white_check_mark");

    assert_eq!(each("/hook")[0].json()["version"], "4");
    assert!(
        !alerter.log().contains("secret"),
        "no webhook URL or token in the log"
    );
}

fn a_crash_loop_is_one_alert() {
    let broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &webhook_target(&server));
    let alerter = Alerter::start(&broker, &config);
    assert!(
        !alerter.log().contains("others can read"),
        "{}",
        alerter.log()
    );
    let processes = r#"
[[process]]
name = "looper"
command = ["sh", "-c", "echo going down; exit 1"]
backoff = { initial = "50ms", max = "100ms" }
crash_loop = { max_exits = 3, window = "1m" }
notify = "loop_only"

[[process]]
name = "marker"
command = ["sh", "-c", "while [ ! -e boom ]; do sleep 0.05; done; rm -f boom; exit 7"]
"#;
    let agent = TestAgent::start(&(mqtt_section(&broker) + processes));
    wait_for_alert(&server, &alerter, "firing ProcessCrashLoop looper");
    agent.wait_until("looper", "20 restarts", |s| s.restarts >= 20);
    // The alerter reads an agent's events in order: once the marker's crash is in, every
    // exit of the looper before it is too.
    std::fs::write(agent.dir().join("boom"), "").unwrap();
    let alerts = wait_for_alert(&server, &alerter, "firing ProcessCrashed marker");
    assert_eq!(
        alert_names(&alerts),
        [
            "firing ProcessCrashLoop looper",
            "firing ProcessCrashed marker"
        ],
        "twenty exits, one alert"
    );
}

fn a_killed_agent_is_one_offline_alert_after_the_grace_period_then_back_online() {
    let broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &webhook_target(&server));
    // A file others can read is taken, with a warning.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let alerter = Alerter::start(&broker, &config);
    assert!(
        alerter.log().contains("others can read the alerts file"),
        "{}",
        alerter.log()
    );
    let doorbot = "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n";
    let config_text = mqtt_section(&broker) + doorbot;
    let agent = TestAgent::start(&config_text);
    agent.wait_running("doorbot");
    wait_for("the alerter to see the agent online", TIMEOUT, || {
        let state = respawn_tests::mqtt::retained(&broker, "respawn/v1/test/state");
        (state.first()?.json()["state"] == "online").then_some(())
    });

    let crashed = agent.kill_hard();
    let alerts = wait_for_alert(&server, &alerter, "firing AgentOffline -");
    assert_eq!(alert_names(&alerts), ["firing AgentOffline -"]);
    assert!(alerts[0]["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("its connection was lost"));

    let agent = TestAgent::start_in(crashed, &config_text);
    agent.wait_running("doorbot");
    let alerts = wait_for_alert(&server, &alerter, "resolved AgentOffline -");
    assert_eq!(
        alert_names(&alerts),
        ["firing AgentOffline -", "resolved AgentOffline -"],
        "and nothing about its processes"
    );
    assert!(alerts[1]["annotations"]["summary"]
        .as_str()
        .unwrap()
        .starts_with("test is back online after "));
}

fn an_alerter_cut_off_from_its_broker_says_so_after_the_grace_period_and_nothing_else() {
    let mut broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Reminders every 4 s: the second one comes after the agent's heartbeat would have been
    // overdue for `grace`, had its clock run.
    let targets = "remind_every = \"4s\"\n".to_owned() + &webhook_target(&server);
    let config = alerts_config(dir.path(), &targets);
    let alerter = Alerter::start(&broker, &config);
    let doorbot = "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n";
    let agent = TestAgent::start(&(mqtt_section(&broker) + doorbot));
    agent.wait_running("doorbot");
    wait_for("the alerter to see the agent online", TIMEOUT, || {
        let state = respawn_tests::mqtt::retained(&broker, "respawn/v1/test/state");
        (state.first()?.json()["state"] == "online").then_some(())
    });

    broker.stop();
    let broker_alerts = |server: &ChatServer, status: &str| {
        let wanted = format!("{status} BrokerUnreachable -");
        let alerts = delivered_alerts(server);
        alert_names(&alerts)
            .iter()
            .filter(|n| **n == wanted)
            .count()
    };
    wait_for_or(
        "the broker's alert and its reminder",
        TIMEOUT,
        || (broker_alerts(&server, "firing") == 2).then_some(()),
        || format!("alerter log:\n{}", alerter.log()),
    );
    let alerts = delivered_alerts(&server);
    assert_eq!(
        alert_names(&alerts),
        ["firing BrokerUnreachable -", "firing BrokerUnreachable -"],
        "and nothing of the agent, which cannot be seen"
    );
    let port = format!(":{}", broker.port());
    assert!(alerts[0]["labels"]["broker"]
        .as_str()
        .is_some_and(|url| url.ends_with(&port)));
    let summary = alerts[0]["annotations"]["summary"]
        .as_str()
        .unwrap_or_default();
    assert!(
        summary.starts_with("the alerter has no connection to the broker mqtt://"),
        "{summary}"
    );

    broker.resume();
    wait_for_or(
        "the broker's alert resolved",
        TIMEOUT,
        || (broker_alerts(&server, "resolved") == 1).then_some(()),
        || format!("alerter log:\n{}", alerter.log()),
    );
    let alerts = delivered_alerts(&server);
    let summary = alerts
        .iter()
        .find(|a| a["status"] == "resolved")
        .and_then(|a| a["annotations"]["summary"].as_str())
        .unwrap_or_default();
    assert!(summary.contains(" again, after "), "{summary}");

    // An alerter that starts while its broker is away keeps trying, and says so the same way.
    // Stopped once it knows the resolution was taken: stopped before the answer came, it keeps
    // the message and delivers it again at its next start, as it must.
    wait_for_or(
        "the alerter to settle its three deliveries",
        TIMEOUT,
        || {
            let log = alerter.log();
            (log.lines()
                .filter(|l| l.contains("alerts: delivered"))
                .count()
                == 3)
                .then_some(())
        },
        || format!("alerter log:\n{}", alerter.log()),
    );
    assert!(alerter.stop().success());
    broker.stop();
    let before = delivered_alerts(&server).len();
    let alerter = Alerter::launch(&broker, &config);
    let new_alert = wait_for_or(
        "a broker alert from the new alerter",
        TIMEOUT,
        || {
            let alerts = delivered_alerts(&server);
            let mut since = alerts.into_iter().skip(before);
            since.find(|a| a["labels"]["alertname"] == "BrokerUnreachable")
        },
        || format!("alerter log:\n{}", alerter.log()),
    );
    assert_eq!(new_alert["status"], "firing");
    let reason = new_alert["annotations"]["description"].as_str();
    assert!(
        reason.is_some_and(|r| r.starts_with("alerts-under-test: cannot reach the broker at mqtt://")),
        "{reason:?}"
    );
    broker.resume();
    alerter.wait_for_log("watching the fleet for alerts");
    wait_for_or(
        "the second broker alert resolved",
        TIMEOUT,
        || (broker_alerts(&server, "resolved") == 2).then_some(()),
        || format!("alerter log:\n{}", alerter.log()),
    );
}

/// A password changed on the broker under a running alerter pages, and the alerter is back
/// once the password is right again (its failed attempts must not hold it up).
#[test]
fn a_login_refused_after_a_lost_connection_pages_and_ends_when_mended() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    let set_password = |password: &str| {
        let made = std::process::Command::new("mosquitto_passwd")
            .args(["-b"])
            .arg(&passwords)
            .args(["op-alerts", password])
            .status()
            .expect("mosquitto_passwd runs (it comes with Mosquitto)");
        assert!(made.success());
    };
    std::fs::write(&passwords, "").unwrap();
    set_password("right");
    let broker = Broker::mosquitto(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwords.display()
    ));
    let server = ChatServer::start();
    let config = alerts_config(dir.path(), &webhook_target(&server));
    let secret = dir.path().join("alerts-password");
    std::fs::write(&secret, "right\n").unwrap();
    let secret = secret.display().to_string();
    let options = ["--username", "op-alerts", "--password-file", &secret];
    let alerter = Alerter::launch_with(&broker, &config, &options);
    alerter.wait_for_log("watching the fleet for alerts");

    set_password("rotated");
    broker.reload();
    let alerts = wait_for_alert(&server, &alerter, "firing BrokerUnreachable -");
    let reason = alerts[0]["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("not authorized"), "{reason}");
    assert!(
        reason.contains("refused the connection as \"op-alerts\""),
        "the user it tried: {reason}"
    );
    set_password("right");
    broker.reload();
    wait_for_alert(&server, &alerter, "resolved BrokerUnreachable -");
    assert_eq!(
        alerter.log().matches("not authorized").count(),
        1,
        "the reason once, not at each attempt:\n{}",
        alerter.log()
    );
}

fn a_chat_outage_and_an_alerter_restart_lose_repeat_and_reorder_nothing() {
    let broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &webhook_target(&server));
    server.answer_always(Some(Answer::status(500)));
    let alerter = Alerter::start(&broker, &config);
    let agent = TestAgent::start(
        &(mqtt_section(&broker) + &on_demand("a") + &on_demand("b") + &on_demand("c")),
    );
    let crash = |name: &str| crash_on_demand(&agent, name);

    crash("a");
    wait_for(
        "two failed attempts to deliver the first alert",
        TIMEOUT,
        || (server.requests_to("/hook").len() >= 2).then_some(()),
    );
    // The alerter goes away in the middle of the outage, and an alert happens meanwhile.
    assert!(alerter.stop().success());
    crash("b");
    let alerter = Alerter::start(&broker, &config);
    crash("c");
    alerter.wait_for_log("alert");
    // The service comes back, first asking to slow down.
    server.answer_next([Answer::rate_limited(1)]);
    server.answer_always(None);
    let alerts = wait_for_alert(&server, &alerter, "firing ProcessCrashed c");
    let firing: Vec<String> = alert_names(&alerts)
        .into_iter()
        .filter(|n| n.starts_with("firing"))
        .collect();
    assert_eq!(
        firing,
        [
            "firing ProcessCrashed a",
            "firing ProcessCrashed b",
            "firing ProcessCrashed c"
        ],
        "every alert, once, in order"
    );
    let answers: Vec<u16> = server
        .requests_to("/hook")
        .iter()
        .map(|r| r.answered)
        .collect();
    assert!(answers.contains(&429), "{answers:?}");
    assert!(alerter.log().contains("rate limited"), "{}", alerter.log());
}

/// An alerter stopped while a message is on its way lets it arrive (within the request's
/// timeout): its next start does not send it again.
#[test]
fn an_alerter_stopped_mid_delivery_sends_nothing_twice() {
    let broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &webhook_target(&server));
    server.answer_always(Some(Answer::ok().after(std::time::Duration::from_secs(3))));
    let alerter = Alerter::start(&broker, &config);
    let agent = TestAgent::start(&(mqtt_section(&broker) + &on_demand("a") + &on_demand("b")));
    crash_on_demand(&agent, "a");
    wait_for("the alert on its way", TIMEOUT, || {
        (!server.requests_to("/hook").is_empty()).then_some(())
    });
    assert!(alerter.stop().success());
    server.answer_always(None);
    let alerter = Alerter::start(&broker, &config);
    crash_on_demand(&agent, "b");
    let alerts = wait_for_alert(&server, &alerter, "firing ProcessCrashed b");
    let names = alert_names(&alerts);
    let first = names
        .iter()
        .filter(|n| *n == "firing ProcessCrashed a")
        .count();
    assert_eq!(first, 1, "{names:?}");
}

/// `alerts check` reads the file as the alerter would and says what each target is sent,
/// without a broker and without sending anything.
#[test]
fn alerts_check_says_what_the_file_sets_up_and_sends_nothing() {
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let targets = all_targets(&server)
        + "\n[[target]]\nname = \"loops\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\nkinds = [\"crash_loop\", \"failed\"]\nagents = [\"door-*\"]\nmin_interval = \"10s\"\n";
    let config = alerts_config(dir.path(), &targets);
    let config = config.display().to_string();
    // Nothing listens on the discard port: the check must not need a broker.
    let offline = "mqtt://127.0.0.1:9";
    let out = respawnctl_at(offline, &["alerts", "check", "--config", &config]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{config}: valid; 7 targets, state in ")),
        "{out:?}"
    );
    assert!(lines.contains(&"  slack (slack): every alert"), "{out:?}");
    assert!(
        lines.contains(
            &"  loops (webhook): crash_loop, failed; agents door-*; at most a message every 10s"
        ),
        "{out:?}"
    );
    assert!(
        lines.contains(&"an agent away is alerted after 2s; a process is back after 2s up; reminders every 4h; grouped for 300ms; a message undelivered is dropped after 1d"),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains(&server.url("")),
        "no URL, which is a secret: {out:?}"
    );
    // What is valid but perhaps not meant: the quick test settings.
    assert!(
        lines.iter().any(|l| l.starts_with("note: grace 2s: ")),
        "{out:?}"
    );
    assert!(
        lines.contains(&"note: slack: min_interval 0ms is quicker than slack takes messages (1s): it may refuse some (HTTP 429), which then wait"),
        "{out:?}"
    );
    assert!(server.requests().is_empty(), "nothing sent");

    // respawnctl's own file, as the Pi guide's service has it: its password file is the
    // service's alone, and the check reads no password (found by a new-user run).
    let ctl_config = dir.path().join("respawnctl.toml");
    std::fs::write(
        &ctl_config,
        "username = \"alerts\"\npassword_file = \"/run/credentials/respawn-alerts.service/mqtt-password\"\n",
    )
    .unwrap();
    let ctl_config = ctl_config.display().to_string();
    for action in ["check", "test"] {
        let out = respawnctl_at(
            offline,
            &[
                "--config",
                &ctl_config,
                "alerts",
                action,
                "--config",
                &config,
            ],
        );
        assert!(
            !out.stderr.contains("password file"),
            "alerts {action}: {out:?}"
        );
        if action == "check" {
            assert_eq!(out.code, Some(0), "{out:?}");
        }
    }

    std::fs::write(
        dir.path().join("bad.toml"),
        "[[target]]\nkind = \"telegram\"\ntoken = \"1:x\"\nchat_id = \"mychat\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml").display().to_string();
    let out = respawnctl_at(offline, &["alerts", "check", "--config", &bad]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("line 4: [[target]] \"telegram\": `chat_id` is \"mychat\""),
        "{out:?}"
    );
}

#[test]
fn alerts_test_says_which_targets_work() {
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &all_targets(&server));
    let config = config.display().to_string();
    let broker = Broker::attach(1);
    let out = respawnctl(&broker, &["alerts", "test", "--config", &config]);
    assert_eq!(out.code, Some(0), "{out:?}");
    for name in ["slack", "discord", "telegram", "matrix", "ntfy", "webhook"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l == format!("{name} ({name}): ok")),
            "{name}: {out:?}"
        );
    }
    assert_eq!(server.requests().len(), 6);

    server.answer_always(Some(Answer::status(500)));
    let out = respawnctl(&broker, &["alerts", "test", "--config", &config]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out
        .stdout
        .contains("slack (slack): failed: HTTP 500: status 500 as the test asked"));

    std::fs::write(
        dir.path().join("bad.toml"),
        "[[target]]\nkind = \"pigeon\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml").display().to_string();
    let out = respawnctl(&broker, &["alerts", "--config", &bad]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("kind \"pigeon\" is not one of"),
        "{out:?}"
    );
}

/// An agent that had to drop events while its broker was away says so with its next event,
/// and the alerter tells it: a loss is never silent.
fn events_an_agent_dropped_are_alerted() {
    let mut broker = Broker::keeping_sessions();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &webhook_target(&server));
    let alerter = Alerter::start(&broker, &config);
    // Two events kept on disk at most: the first start makes one, each restart below two (its
    // exit, its start). The agent starts while the broker is away, so that every event is
    // made unsent: had the first start's gone out just before the broker stopped, whether its
    // acknowledgement came back first would decide its fate.
    let mqtt = mqtt_section(&broker).replace("[mqtt]\n", "[mqtt]\nspool_limit = 2\n");
    let worker = "[[process]]\nname = \"worker\"\ncommand = [\"sleep\", \"1000\"]\n";
    broker.stop();
    let agent = TestAgent::start(&(mqtt + worker));
    let mut pid = agent.wait_running("worker");
    for _ in 0..3 {
        let Reply::Done { .. } = agent.request(Request::Restart {
            process: "worker".into(),
        }) else {
            panic!("the restart failed:\n{}", agent.log());
        };
        pid = agent.wait_restarted("worker", pid);
    }
    broker.resume();
    // Each delivered event tells what was dropped before it; the alerts add up to all of it
    // (one alert when they come within one grouping window, as they usually do).
    let lost_in_all = || {
        let alerts = delivered_alerts(&server);
        let lost = alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == "AgentEventsLost");
        let counts = lost.filter_map(|a| {
            let summary = a["annotations"]["summary"].as_str()?;
            summary
                .strip_prefix("test lost ")?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        });
        counts.sum::<u64>()
    };
    wait_for_or(
        "alerts of the events lost",
        TIMEOUT,
        || (lost_in_all() >= 5).then_some(()),
        || {
            format!(
                "delivered: {:?}\n{}",
                alert_names(&delivered_alerts(&server)),
                alerter.log()
            )
        },
    );
    assert_eq!(lost_in_all(), 5, "seven events, two kept");
}

/// An alerter that cannot write its state would acknowledge nothing, and the broker would
/// soon send it nothing: on a full disk it says so and does not start.
#[test]
fn an_alerter_that_cannot_write_its_state_does_not_start() {
    let test = "an_alerter_that_cannot_write_its_state_does_not_start";
    if !runs_as_root(test, "mounting a tmpfs") {
        return;
    }
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &webhook_target(&server));
    let disk = SmallDisk::mount_at(&dir.path().join("full"), 64);
    disk.fill();
    let unwritable = dir.path().join("full/alerts-state.json");
    move_state_file(&config, dir.path(), &unwritable);
    let broker = Broker::attach(1);
    let config = config.display().to_string();
    let mut alerter = RunningCtl::start(&broker, &["alerts", "--config", &config]);
    assert_eq!(alerter.wait_exit(), Some(1), "{}", alerter.stderr());
    let said = format!("cannot write the state file {}", unwritable.display());
    assert!(alerter.stderr().contains(&said), "{}", alerter.stderr());
}

/// What the alerter sends is saved first: on a disk that filled up while it ran, it sends
/// nothing until the state is saved, and a restart meanwhile repeats nothing.
#[test]
fn an_alerter_whose_disk_fills_sends_nothing_it_could_not_save() {
    let test = "an_alerter_whose_disk_fills_sends_nothing_it_could_not_save";
    if !runs_as_root(test, "mounting a tmpfs") {
        return;
    }
    let broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &webhook_target(&server));
    let disk = SmallDisk::mount_at(&dir.path().join("small"), 64);
    move_state_file(
        &config,
        dir.path(),
        &dir.path().join("small/alerts-state.json"),
    );
    let alerter = Alerter::start(&broker, &config);
    let agent = TestAgent::start(&(mqtt_section(&broker) + &on_demand("a") + &on_demand("b")));

    disk.fill();
    crash_on_demand(&agent, "a");
    alerter.wait_for_log("messages wait until the state is saved");
    assert!(server.requests_to("/hook").is_empty(), "{}", alerter.log());
    // Stopped while the disk is full: the next start has what the last one could not save.
    assert!(alerter.stop().success());
    disk.free();
    let alerter = Alerter::start(&broker, &config);
    wait_for_alert(&server, &alerter, "firing ProcessCrashed a");
    crash_on_demand(&agent, "b");
    let alerts = wait_for_alert(&server, &alerter, "firing ProcessCrashed b");
    let names = alert_names(&alerts);
    let first = names.iter().filter(|n| *n == "firing ProcessCrashed a");
    assert_eq!(first.count(), 1, "{names:?}");
}

respawn_tests::on_both_brokers!(
    events_an_agent_dropped_are_alerted,
    one_crash_is_one_alert_with_its_exit_log_and_fix_then_one_resolved_notice,
    a_crash_loop_is_one_alert,
    a_killed_agent_is_one_offline_alert_after_the_grace_period_then_back_online,
    an_alerter_cut_off_from_its_broker_says_so_after_the_grace_period_and_nothing_else,
    a_chat_outage_and_an_alerter_restart_lose_repeat_and_reorder_nothing,
);

/// An agent restarted with a crashing program turned off (`autostart = false`) ends its alert:
/// nothing runs it any more, and reminders would say it still crashes.
#[test]
fn a_restart_of_the_agent_that_leaves_a_crashed_process_off_ends_its_alert() {
    let broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let alerter = Alerter::start(
        &broker,
        &alerts_config(dir.path(), &webhook_target(&server)),
    );
    let crasher = |autostart: bool| {
        mqtt_section(&broker)
            + &format!(
                r#"
[[process]]
name = "crasher"
command = ["sh", "-c", "exit 3"]
backoff = {{ initial = "1h", max = "1h" }}
autostart = {autostart}
"#
            )
    };
    let agent = TestAgent::start(&crasher(true));
    wait_for_alert(&server, &alerter, "firing ProcessCrashed crasher");
    let agent = TestAgent::start_in(agent.shut_down(), &crasher(false));
    let alerts = wait_for_alert(&server, &alerter, "resolved ProcessCrashed crasher");
    let resolved = alerts
        .iter()
        .find(|a| a["status"] == "resolved")
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        resolved.contains("the agent restarted and left it off"),
        "{resolved}"
    );
    drop(agent);
}

/// A Pi without a real-time clock, out of reach of NTP, a week behind: its crash is told as
/// starting now, by the alerter's clock, not a week ago.
#[test]
fn a_crash_on_an_agent_whose_clock_is_a_week_behind_is_dated_by_the_alerters_clock() {
    let test = "a_crash_on_an_agent_whose_clock_is_a_week_behind_is_dated_by_the_alerters_clock";
    let Some(week_behind) = respawn_tests::clock_a_week_behind(test) else {
        return;
    };
    let broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let alerter = Alerter::start(
        &broker,
        &alerts_config(dir.path(), &webhook_target(&server)),
    );
    let heartbeats = Observer::connect(&broker, &["respawn/v1/test/heartbeat"]);
    let agent = TestAgent::start_with_env(
        &(mqtt_section(&broker) + &on_demand("doorbot")),
        &week_behind,
    );
    agent.wait_running("doorbot");
    // Its clock is told by its heartbeat, which the alerter hears before the crash.
    heartbeats.wait("its heartbeat", |messages| messages.first().map(drop));
    crash_on_demand(&agent, "doorbot");
    let alerts = wait_for_alert(&server, &alerter, "firing ProcessCrashed doorbot");
    let starts = alerts[0]["startsAt"].as_str().unwrap_or_default();
    let starts = respawn_common::time::parse(starts).unwrap();
    let ago = std::time::SystemTime::now()
        .duration_since(starts)
        .unwrap_or_default();
    assert!(
        ago < std::time::Duration::from_secs(60),
        "began {ago:?} ago: {alerts:?}"
    );
}

/// A restart of the agent (`systemctl restart`, an upgrade) stops every program as asked, but
/// says nothing about them: an alert under way stays, and is not "stopped by request".
#[test]
fn a_restart_of_the_agent_ends_no_alert() {
    let broker = Broker::start();
    let server = ChatServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(dir.path(), &webhook_target(&server));
    // Only the restart could end the crash's alert within the test.
    let rules = std::fs::read_to_string(&config).unwrap();
    let rules = rules.replace("resolve_after = \"2s\"", "resolve_after = \"1h\"");
    std::fs::write(&config, rules).unwrap();
    let alerter = Alerter::start(&broker, &config);
    let processes = mqtt_section(&broker)
        + r#"
[[process]]
name = "crasher"
command = ["sh", "-c", "[ -e crashed ] && exec sleep 1000; touch crashed; exit 3"]
backoff = { initial = "50ms", max = "100ms" }

[[process]]
name = "marker"
command = ["sh", "-c", "while [ ! -e boom ]; do sleep 0.05; done; rm -f boom; exit 7"]
"#;
    let agent = TestAgent::start(&processes);
    wait_for_alert(&server, &alerter, "firing ProcessCrashed crasher");
    agent.wait_until("crasher", "running again", |s| {
        s.restarts == 1 && s.state == respawn_common::status::ProcessState::Running
    });
    let agent = TestAgent::start_in(agent.shut_down(), &processes);
    agent.wait_running("marker");
    // The alerter reads an agent's events in order: once the marker's crash is in, what the
    // restart said of the crasher is too.
    std::fs::write(agent.dir().join("boom"), "").unwrap();
    let alerts = wait_for_alert(&server, &alerter, "firing ProcessCrashed marker");
    let of_processes: Vec<String> = alert_names(&alerts)
        .into_iter()
        .filter(|name| !name.ends_with(" -"))
        .collect();
    assert_eq!(
        of_processes,
        [
            "firing ProcessCrashed crasher",
            "firing ProcessCrashed marker"
        ],
        "alerter log:\n{}",
        alerter.log()
    );
}
