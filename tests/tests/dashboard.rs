//! `respawnctl serve` end to end: two real agents and a real Mosquitto, the hub as a user
//! starts it, its HTTP API with logins, CSRF tokens and roles, `/metrics` checked by
//! Prometheus' own `promtool`, and the pages in a real headless Chromium: live without
//! reload, buttons that act (signed by the hub, in the user's name), no buttons for a viewer,
//! hostile output shown as text.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use respawn_agent::control::Request;
use respawn_common::messages::{Event, EventKind};
use respawn_common::signing::SigningKey;
use respawn_controller::serve::auth::hash_password;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{online_session, Observer};
use respawn_tests::webdriver::{self, Browser};
use respawn_tests::{mqtt_section, skip, wait_for, RunningCtl, TestAgent, TIMEOUT};
use tempfile::TempDir;

/// A process that crashes, with a hostile line of output, when its agent's directory gets a
/// file named `crash`.
const CRASHER: &str = r#"
[[process]]
name = "crasher"
command = ["sh", "-c", "echo '<script>window.pwned = 1</script> ready'; seq 1 25; printf 'invoice \\342\\200\\256txt.exe \\033[31mred\\n'; while [ ! -e crash ]; do sleep 0.05; done; rm -f crash; echo '<img src=x onerror=window.pwned=2> crashed' >&2; exit 3"]
"#;

const DOORBOT: &str = "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"100000\"]\n";

/// A process that ignores SIGTERM: once asked to stop, it stays `stopping` for a minute.
const STUBBORN: &str = "[[process]]\nname = \"stubborn\"\ncommand = [\"sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]\nstop_timeout = \"60s\"\n";

struct Site {
    broker: Broker,
    files: TempDir,
    hub_key: SigningKey,
    url: String,
    hub: Option<RunningCtl>,
    metrics_token: String,
}

impl Site {
    fn new() -> Self {
        Self::on(Broker::start())
    }

    fn on(broker: Broker) -> Self {
        let files = tempfile::tempdir().unwrap();
        let hub_key = SigningKey::generate("hub").unwrap();
        let key_file = respawn_tests::key_file(files.path(), &hub_key);
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let metrics_token = "scrape-me".to_owned();
        std::fs::write(files.path().join("token"), &metrics_token).unwrap();
        let serve = format!(
            "listen = \"127.0.0.1:{port}\"\nsigning_key = \"{}\"\nmetrics_token_file = \"{}\"\n\n\
             [[user]]\nname = \"alice\"\npassword = \"{}\"\n\n\
             [[user]]\nname = \"bob\"\npassword = \"{}\"\nrole = \"viewer\"\n",
            key_file.display(),
            files.path().join("token").display(),
            hash_password("alice's password").unwrap(),
            hash_password("bob's password").unwrap(),
        );
        std::fs::write(files.path().join("serve.toml"), serve).unwrap();
        Self {
            broker,
            files,
            hub_key,
            url: format!("http://127.0.0.1:{port}"),
            hub: None,
            metrics_token,
        }
    }

    fn agent(&self, id: &str, processes: &str) -> TestAgent {
        self.agent_with_env(id, processes, &[])
    }

    fn agent_with_env(&self, id: &str, processes: &str, env: &[(&str, &str)]) -> TestAgent {
        let config = format!(
            "[agent]\nid = \"{id}\"\nstate_dir = \"state\"\n\n[[operator]]\nname = \"hub\"\npublic_key = \"{}\"\n\n{}{processes}",
            self.hub_key.public_line(),
            mqtt_section(&self.broker)
        );
        let agent = match env {
            [] => TestAgent::start_in(tempfile::tempdir().unwrap(), &config),
            env => TestAgent::start_with_env(&config, env),
        };
        online_session(&self.broker, id);
        agent
    }

    /// Adds a top-level setting to serve.toml, before the first `[[user]]`.
    fn set(&self, line: &str) {
        let serve = self.files.path().join("serve.toml");
        let written = std::fs::read_to_string(&serve).unwrap();
        std::fs::write(&serve, format!("{line}\n{written}")).unwrap();
    }

    /// Serves HTTPS, with the certificate the PKI made for `broker`.
    fn set_tls(&self, pki: &respawn_tests::pki::Pki) {
        self.set(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            pki.path("broker.pem").display(),
            pki.path("broker.key").display()
        ));
    }

    fn start_hub(&mut self) {
        let config = self.files.path().join("serve.toml").display().to_string();
        let hub = RunningCtl::start(&self.broker, &["serve", "--config", &config]);
        let http = http();
        wait_for("the hub to answer", TIMEOUT, || {
            http.get(format!("{}/login", self.url))
                .call()
                .ok()
                .map(drop)
        });
        self.hub = Some(hub);
    }
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// A logged-in HTTP client: its cookie and CSRF token.
struct Client {
    url: String,
    cookie: String,
    csrf: String,
}

/// What an HTTP request came to.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = response.expect("an HTTP answer");
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    Answer {
        status: response.status().as_u16(),
        headers,
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn login(url: &str, name: &str, password: &str) -> Answer {
    login_forwarded(url, name, password, None)
}

/// A login as a reverse proxy passes it on, naming its client in `X-Forwarded-For`.
fn login_forwarded(url: &str, name: &str, password: &str, client: Option<&str>) -> Answer {
    let form = format!(
        "name={name}&password={}",
        password.replace(' ', "+").replace('\'', "%27")
    );
    // As a browser posts the hub's own login form: from the hub's origin.
    let mut request = http()
        .post(format!("{url}/login"))
        .header("Origin", url)
        .content_type("application/x-www-form-urlencoded");
    if let Some(client) = client {
        request = request.header("X-Forwarded-For", client);
    }
    answer(request.send(form))
}

impl Client {
    fn log_in(url: &str, name: &str, password: &str) -> Self {
        let answer = login(url, name, password);
        assert_eq!(answer.status, 303, "{name} logs in: {}", answer.body);
        let cookie = answer
            .header("set-cookie")
            .expect("a session cookie")
            .to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        // Named by the hub's port: a browser sends a host's cookies to all its ports, and
        // another hub of the machine must not take this one's.
        let port = url.rsplit(':').next().unwrap_or_default();
        assert!(
            cookie.starts_with(&format!("respawn_session_{port}=")),
            "{cookie}"
        );
        let cookie = cookie.split(';').next().unwrap_or_default().to_owned();
        let mut client = Self {
            url: url.to_owned(),
            cookie,
            csrf: String::new(),
        };
        client.csrf = client.get("/api/me").json()["csrf"]
            .as_str()
            .expect("a CSRF token")
            .to_owned();
        client
    }

    fn get(&self, path: &str) -> Answer {
        answer(
            http()
                .get(format!("{}{path}", self.url))
                .header("Cookie", &self.cookie)
                .call(),
        )
    }

    fn act(&self, agent: &str, process: &str, action: &str, csrf: Option<&str>) -> Answer {
        let body = serde_json::json!({"agent": agent, "process": process, "action": action});
        let mut request = http()
            .post(format!("{}/api/action", self.url))
            .header("Cookie", &self.cookie)
            .content_type("application/json");
        if let Some(csrf) = csrf {
            request = request.header("X-CSRF-Token", csrf);
        }
        answer(request.send(body.to_string()))
    }
}

fn promtool_checks(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("promtool reads");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `examples/prometheus`, where the example alerting rules and their tests are.
fn example_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus")
}

/// The `respawn_…` metric names a text uses.
fn metric_names(text: &str) -> BTreeSet<&str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices("respawn_")
        .filter(|(at, _)| !text[..*at].ends_with(is_name))
        .map(|(at, _)| {
            let rest = &text[at..];
            &rest[..rest.find(|c| !is_name(c)).unwrap_or(rest.len())]
        })
        .collect()
}

/// The example alerting rules of docs/dashboard.md are valid, and fire as they say: with two
/// hubs scraped, for an agent down only while its hub hears the broker, not for a process
/// stopped by hand (their own promtool tests).
#[test]
fn the_example_alerting_rules_pass_promtool() {
    if !has_tools("the_example_alerting_rules_pass_promtool", &["promtool"]) {
        return;
    }
    for args in [
        ["check", "rules", "respawn.rules.yml"],
        ["test", "rules", "respawn.rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(example_rules())
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn has_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools
        .iter()
        .filter(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .collect();
    missing.is_empty()
        || skip(
            test,
            &format!("{missing:?} not installed (apt install chromium chromium-driver prometheus)"),
        )
}

#[test]
fn the_hub_logs_users_in_checks_every_change_and_acts_in_their_name() {
    let mut site = Site::new();
    let door = site.agent("door-pi", DOORBOT);
    let mut garage = site.agent("garage-pi", DOORBOT);
    let events = Observer::connect(&site.broker, &["respawn/v1/+/event"]);
    site.start_hub();
    let url = site.url.clone();

    // Nobody gets in without logging in.
    let anonymous = answer(http().get(format!("{url}/")).call());
    assert_eq!(anonymous.status, 303);
    assert_eq!(anonymous.header("location"), Some("/login"));
    assert_eq!(
        answer(http().get(format!("{url}/api/fleet")).call()).status,
        401
    );
    // Whatever its body: a stranger is told to log in, not what the body should hold.
    for body in [
        "{}",
        "not json",
        r#"{"agent":"door-pi","process":"doorbot","action":"restart"}"#,
    ] {
        let stranger = answer(
            http()
                .post(format!("{url}/api/action"))
                .content_type("application/json")
                .send(body),
        );
        assert_eq!(
            (stranger.status, stranger.json()["error"].as_str()),
            (401, Some("log in first")),
            "{body}"
        );
    }
    let wrong = login(&url, "alice", "not her password");
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("Wrong name or password"),
        "{}",
        wrong.body
    );
    assert_eq!(login(&url, "mallory", "alice's password").status, 401);
    let cross_site = answer(
        http()
            .post(format!("{url}/login"))
            .header("Sec-Fetch-Site", "cross-site")
            .content_type("application/x-www-form-urlencoded")
            .send("name=alice&password=x"),
    );
    assert_eq!(
        cross_site.status, 403,
        "another site's form cannot try passwords"
    );
    // A browser sends no Sec-Fetch-Site to a plain-HTTP page of the LAN; its Origin it sends.
    let from_elsewhere = answer(
        http()
            .post(format!("{url}/login"))
            .header("Origin", "http://evil.test:24490")
            .content_type("application/x-www-form-urlencoded")
            .send("name=alice&password=x"),
    );
    assert_eq!(from_elsewhere.status, 403, "{}", from_elsewhere.body);

    let alice = Client::log_in(&url, "alice", "alice's password");
    let fleet = wait_for("both agents in the hub", TIMEOUT, || {
        let fleet = alice.get("/api/fleet").json();
        (fleet["agents"].as_array()?.len() == 2).then_some(fleet)
    });
    assert_eq!(fleet["agents"][0]["agent"], "door-pi");

    // Every change needs the session's CSRF token; a viewer may not act at all.
    let pid = door.wait_running("doorbot");
    assert_eq!(alice.act("door-pi", "doorbot", "restart", None).status, 403);
    assert_eq!(
        alice
            .act("door-pi", "doorbot", "restart", Some("forged"))
            .status,
        403
    );
    let bob = Client::log_in(&url, "bob", "bob's password");
    assert_eq!(bob.get("/api/me").json()["may_act"], false);
    let refused = bob.act("door-pi", "doorbot", "restart", Some(&bob.csrf));
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("may only look"), "{}", refused.body);
    assert_eq!(door.wait_running("doorbot"), pid, "nothing ran");
    // A body that says too little: a viewer is refused for who it is, an operator is told
    // what the body should hold.
    let half = |client: &Client| {
        answer(
            http()
                .post(format!("{url}/api/action"))
                .header("Cookie", &client.cookie)
                .header("X-CSRF-Token", &client.csrf)
                .content_type("application/json")
                .send(r#"{"agent":"door-pi"}"#),
        )
    };
    assert_eq!(half(&bob).status, 403);
    let told = half(&alice);
    assert_eq!(told.status, 422, "{}", told.body);
    // In the asker's terms, not serde's (found by a new-user run).
    assert!(
        told.json()["error"].as_str().is_some_and(|e| e
            .starts_with("the body must be an object whose agent, process and action are strings")
            && !e.contains("deserialize")),
        "{}",
        told.body
    );
    // A wrong method and a path that is nothing are said in words too, as JSON.
    let wrong_method = answer(http().get(format!("{url}/api/action")).call());
    assert_eq!(wrong_method.status, 405);
    assert_eq!(
        wrong_method.header("allow"),
        Some("POST"),
        "{:?}",
        wrong_method.headers
    );
    assert!(
        wrong_method.json()["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("GET is not how")),
        "{}",
        wrong_method.body
    );
    let nothing = answer(
        http()
            .post(format!("{url}/api/logs/door-pi"))
            .header("Cookie", &alice.cookie)
            .header("X-CSRF-Token", &alice.csrf)
            .send_empty(),
    );
    assert_eq!(nothing.status, 404);
    assert_eq!(nothing.json()["error"], "no such page", "{}", nothing.body);

    // Alice's restart is signed by the hub and carries her name to the agent's audit.
    let done = alice.act("door-pi", "doorbot", "restart", Some(&alice.csrf));
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.json()["message"]
        .as_str()
        .unwrap_or_default()
        .starts_with("restarted door-pi/doorbot"));
    door.wait_restarted("doorbot", pid);
    let audit = events.wait_json::<serde_json::Value>("the audit of the restart", |e| {
        e["kind"] == "command" && e["command"] == "restart" && e["outcome"] == "succeeded"
    });
    assert_eq!(
        (audit["requester"].as_str(), audit["signer"].as_str()),
        (Some("alice"), Some("hub"))
    );

    // Targets that match nothing, or an agent that is gone, are said so.
    let nope = alice.act("door-pi", "nope", "restart", Some(&alice.csrf));
    assert_eq!(nope.status, 404);
    // The hub's log says what each action came to, a refused one too.
    let line = |process: &str| {
        wait_for(
            &format!("the hub's log of the action on {process}"),
            TIMEOUT,
            || {
                let log = site.hub.as_ref().unwrap().stderr();
                log.lines()
                    .find(|l| {
                        l.contains("action done") && l.contains(&format!("process={process}"))
                    })
                    .map(str::to_owned)
            },
        )
    };
    assert!(
        line("doorbot").contains("result=restarted door-pi/doorbot"),
        "{}",
        line("doorbot")
    );
    // Also as asked, before it is sent: a page closed meanwhile ends the handler, not the
    // command, and the ask is kept.
    let asked = site.hub.as_ref().unwrap().stderr();
    assert!(
        asked
            .lines()
            .any(|l| l.contains(": action user=alice") && l.contains("process=doorbot")),
        "{asked}"
    );
    let refused = nope.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        !refused.is_empty() && line("nope").contains(&refused),
        "{}",
        line("nope")
    );
    garage.signal(nix::sys::signal::Signal::SIGTERM);
    garage.wait_exit();
    let offline = wait_for("garage-pi offline in the hub", TIMEOUT, || {
        let answer = alice.act("garage-pi", "doorbot", "restart", Some(&alice.csrf));
        answer.body.contains("offline").then_some(answer)
    });
    assert_eq!(offline.status, 502);

    // /metrics: the token, Prometheus' own check, and the fleet's values.
    let scrape = |bearer: &str| {
        let request = http().get(format!("{url}/metrics"));
        match bearer {
            "" => answer(request.call()),
            token => answer(
                request
                    .header("Authorization", &format!("Bearer {token}"))
                    .call(),
            ),
        }
    };
    let none = scrape("");
    assert_eq!(none.status, 401);
    assert!(
        none.body.starts_with("a bearer token is needed"),
        "{none:?}"
    );
    // A wrong one is told apart from none (it said "needed" of a token sent, found by a
    // new-user run).
    let wrong = scrape("scrape-you");
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.starts_with("the bearer token is not this hub's"),
        "{wrong:?}"
    );
    let metrics = scrape(&site.metrics_token);
    assert_eq!(metrics.status, 200);
    if has_tools(
        "the_hub_logs_users_in_checks_every_change_and_acts_in_their_name (promtool)",
        &["promtool"],
    ) {
        promtool_checks(&metrics.body);
    }
    for line in [
        "respawn_agent_up{agent=\"door-pi\"} 1",
        "respawn_agent_up{agent=\"garage-pi\"} 0",
        "respawn_process_up{agent=\"door-pi\",process=\"doorbot\"} 1",
        "respawn_process_state{agent=\"door-pi\",process=\"doorbot\",state=\"running\"} 1",
        "respawn_process_restarts_total{agent=\"door-pi\",process=\"doorbot\"} 0",
    ] {
        assert!(
            metrics.body.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            metrics.body
        );
    }
    assert!(metrics
        .body
        .contains("respawn_events_total{agent=\"door-pi\",kind=\"started\"}"));
    // The example alerting rules name only metrics the hub serves.
    let rules = std::fs::read_to_string(example_rules().join("respawn.rules.yml")).unwrap();
    let names = metric_names(&rules);
    assert_eq!(names.len(), 5, "{names:?}");
    for name in names {
        let family = format!("# TYPE {name} ");
        assert!(metrics.body.contains(&family), "{name} is not served");
    }

    // Logged out, the session is gone.
    let out = answer(
        http()
            .post(format!("{url}/logout"))
            .header("Cookie", &alice.cookie)
            .header("X-CSRF-Token", &alice.csrf)
            .send(""),
    );
    assert_eq!(out.status, 200);
    assert_eq!(alice.get("/api/fleet").status, 401);
}

#[test]
fn a_large_fleet_is_held_whole() {
    let mut site = Site::new();
    // More retained messages than Mosquitto queues at QoS 1 for a client (1,000).
    respawn_tests::sim::publish_fleet("127.0.0.1", site.broker.port(), 200, 10);
    site.start_hub();
    let bearer = format!("Bearer {}", site.metrics_token);
    wait_for("every process in /metrics", TIMEOUT, || {
        let metrics = answer(
            http()
                .get(format!("{}/metrics", site.url))
                .header("Authorization", &bearer)
                .call(),
        );
        (metrics.body.matches("respawn_process_up{").count() == 2000).then_some(())
    });
}

#[test]
fn the_hub_speaks_https_with_its_certificate() {
    let pki = respawn_tests::pki::Pki::new(&[]);
    let mut site = Site::new();
    let serve = site.files.path().join("serve.toml");
    site.set_tls(&pki);
    let https_url = site.url.replace("http://", "https://");
    let hub = RunningCtl::start(
        &site.broker,
        &["serve", "--config", &serve.display().to_string()],
    );
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    let ca = ureq::tls::parse_pem(&ca)
        .filter_map(Result::ok)
        .filter_map(|item| match item {
            ureq::tls::PemItem::Certificate(cert) => Some(cert),
            _ => None,
        })
        .collect::<Vec<_>>();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(ca)))
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .build();
    let https = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent();
    let page = wait_for_or_ctl(&hub, || https.get(format!("{https_url}/login")).call().ok());
    assert_eq!(page.status(), 200);
    let form = "name=alice&password=alice%27s+password";
    let welcome = answer(
        https
            .post(format!("{https_url}/login"))
            .content_type("application/x-www-form-urlencoded")
            .send(form),
    );
    assert_eq!(welcome.status, 303);
    let cookie = welcome.header("set-cookie").unwrap_or_default();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        http().get(format!("{}/login", site.url)).call().is_err(),
        "no plain HTTP on an HTTPS port"
    );
    site.hub = Some(hub);
}

#[test]
fn asks_for_a_processs_output_at_once_share_one_command() {
    let mut site = Site::new();
    let door = site.agent("door-pi", DOORBOT);
    door.wait_running("doorbot");
    let events = Observer::connect(&site.broker, &["respawn/v1/door-pi/event"]);
    site.start_hub();
    let alice = Client::log_in(&site.url, "alice", "alice's password");
    wait_for("door-pi in the hub", TIMEOUT, || {
        let fleet = alice.get("/api/fleet").json();
        (fleet["agents"].as_array()?.len() == 1).then_some(())
    });
    // A page reloaded over and over, by twenty at once.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let asks: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| {
                    let asked = http()
                        .post(format!("{}/api/logs/door-pi/doorbot", site.url))
                        .header("Cookie", &alice.cookie)
                        .header("X-CSRF-Token", &alice.csrf)
                        .send_empty();
                    answer(asked).status
                })
            })
            .collect();
        asks.into_iter().map(|ask| ask.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // A restart after them: once its audit is in, so is every `logs` the agent took before.
    assert_eq!(
        alice
            .act("door-pi", "doorbot", "restart", Some(&alice.csrf))
            .status,
        200
    );
    let commands = events.wait("the restart's audit", |messages| {
        let commands: Vec<String> = messages
            .iter()
            .filter_map(|m| serde_json::from_slice::<Event>(&m.payload).ok())
            .filter_map(|e| match e.kind {
                EventKind::Command { command, .. } => Some(command),
                _ => None,
            })
            .collect();
        commands.iter().any(|c| c == "restart").then_some(commands)
    });
    let asked = commands.iter().filter(|c| *c == "logs").count();
    assert_eq!(asked, 1, "one command for the twenty: {commands:?}");
    // The page's own read is not among the process's recent events; the restart is.
    let shown = wait_for("the restart among the recent events", TIMEOUT, || {
        let body = alice
            .get("/api/events?agent=door-pi&process=doorbot")
            .json();
        let commands: Vec<String> = (body["events"].as_array()?.iter())
            .filter_map(|e| Some(e["command"].as_str()?.to_owned()))
            .collect();
        commands.iter().any(|c| c == "restart").then_some(commands)
    });
    assert_eq!(shown, ["restart"], "{shown:?}");
}

/// Holds `argv[3]` silent connections to `argv[1]:argv[2]`, prints how many of them the server
/// closed (waiting up to 8 s, less than a handshake may take, for all but 32 to close), and
/// keeps the rest until its input ends.
const SILENT_CLIENT: &str = r#"
import select, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port)) for _ in range(n)]
closed, deadline = set(), time.time() + 8
while time.time() < deadline and len(closed) < n - 32:
    readable, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.5)
    for s in readable:
        try:
            if not s.recv(1):
                closed.add(s)
        except OSError:
            closed.add(s)
print(len(closed), flush=True)
sys.stdin.read()
"#;

#[test]
fn over_https_one_address_cannot_take_every_handshake() {
    let test = "over_https_one_address_cannot_take_every_handshake";
    if !respawn_tests::runs_as_root(test, "network namespaces") || !has_tools(test, &["python3"]) {
        return;
    }
    let pki = respawn_tests::pki::Pki::new(&[]);
    let netns = respawn_tests::faults::Netns::new(20);
    let mut site = Site::new();
    let serve = site.files.path().join("serve.toml");
    let config = std::fs::read_to_string(&serve).unwrap();
    let config = config.replacen("listen = \"127.0.0.1:", "listen = \"0.0.0.0:", 1);
    std::fs::write(&serve, config).unwrap();
    site.set_tls(&pki);
    let hub = RunningCtl::start(
        &site.broker,
        &["serve", "--config", &serve.display().to_string()],
    );
    let port = site.url.rsplit(':').next().unwrap().to_owned();
    let https = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .disable_verification(true)
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build(),
        )
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent();
    let login = format!("https://127.0.0.1:{port}/login");
    wait_for_or_ctl(&hub, || https.get(&login).call().ok());

    // One address of the LAN opens 300 connections and says nothing on any of them.
    let mut silent = std::process::Command::new("ip")
        .args(["netns", "exec", &netns.name, "python3", "-c", SILENT_CLIENT])
        .args([&netns.host_ip, &port, "300"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 in the namespace");
    let mut count = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(silent.stdout.take().unwrap()),
        &mut count,
    )
    .unwrap();
    let closed: usize = count.trim().parse().unwrap_or_else(|_| panic!("{count:?}"));
    assert!(
        closed >= 300 - 32,
        "all but its 32 are closed at once: {closed}"
    );
    // While it holds its 32, anyone else is answered.
    let page = https.get(&login).call().expect("the login page");
    assert_eq!(page.status(), 200);
    drop(silent.stdin.take());
    let _ = silent.wait();
    site.hub = Some(hub);
}

/// The broker keeps the hub's session while its connection is down: what an agent said
/// meanwhile reaches the pages and the counts. (Here the broker restarts, keeping sessions,
/// and the hub is held back until the agent, back first, has sent its spool.)
#[test]
fn events_sent_while_the_hub_was_cut_off_reach_its_pages() {
    let mut site = Site::on(Broker::keeping_sessions());
    let watcher =
        Observer::connect_persistent(&site.broker, "watcher", &["respawn/v1/alpha/event"]);
    let agent = site.agent("alpha", DOORBOT);
    let before = agent.wait_running("doorbot");
    site.start_hub();
    let alice = Client::log_in(&site.url, "alice", "alice's password");
    let shown = |kind: &str, pid: u32| {
        let events = alice.get("/api/events").json();
        let events = events["events"].as_array().cloned().unwrap_or_default();
        events.iter().any(|e| e["kind"] == kind && e["pid"] == pid)
    };
    wait_for("the hub to read the fleet", TIMEOUT, || {
        let fleet = alice.get("/api/fleet").json();
        (fleet["agents"].as_array()?.len() == 1).then_some(())
    });
    let hub = site.hub.as_ref().expect("the hub");
    let hub_pid = nix::unistd::Pid::from_raw(hub.pid() as i32);

    site.broker.stop();
    nix::sys::signal::kill(hub_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    agent.request(respawn_agent::control::Request::Restart {
        process: "doorbot".into(),
    });
    let after = agent.wait_restarted("doorbot", before);
    site.broker.resume();
    watcher.wait_connected();
    watcher.wait_json::<serde_json::Value>("the agent's spool delivered", |e| {
        e["kind"] == "started" && e["pid"] == after
    });
    nix::sys::signal::kill(hub_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_for_or_ctl(hub, || {
        (shown("exited", before) && shown("started", after)).then_some(())
    });
}

/// A hub with no `serve.toml`, on the site's loopback port; the hub and the port.
fn hub_without_file(site: &Site) -> (RunningCtl, String) {
    let port = site.url.rsplit(':').next().unwrap_or_default().to_owned();
    let listen = format!("127.0.0.1:{port}");
    (
        RunningCtl::start(&site.broker, &["serve", "--listen", &listen]),
        port,
    )
}

/// The hub's first page, once it answers.
fn first_page(site: &Site) -> Answer {
    wait_for("the hub", TIMEOUT, || {
        http()
            .get(format!("{}/", site.url))
            .call()
            .ok()
            .map(|r| answer(Ok(r)))
    })
}

#[test]
fn a_hub_without_users_serves_only_loopback_names() {
    let site = Site::new();
    let (_hub, port) = hub_without_file(&site);
    let page = first_page(&site);
    assert_eq!(page.status, 200);
    assert!(
        page.header("set-cookie").is_some(),
        "the local user's session"
    );
    // A name made to resolve to 127.0.0.1 (DNS rebinding) gets no session.
    let rebound = answer(
        http()
            .get(format!("{}/", site.url))
            .header("Host", &format!("evil.example:{port}"))
            .call(),
    );
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert!(rebound.header("set-cookie").is_none());
    for path in ["/metrics", "/api/fleet", "/api/me", "/login"] {
        let answer = answer(
            http()
                .get(format!("{}{path}", site.url))
                .header("Host", &format!("evil.example:{port}"))
                .call(),
        );
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
    }
    // Without a session there is no login to ask for: the page gives one (it said "log in
    // first" where no one logs in, found by a new-user run).
    let sessionless = answer(http().get(format!("{}/api/fleet", site.url)).call());
    assert_eq!(sessionless.status, 401);
    assert!(
        sessionless.body.contains("open the hub's page first"),
        "{}",
        sessionless.body
    );
}

/// With users, the hub answers to its addresses, its machine's name and `hosts`, not to a
/// name made to resolve to it (DNS rebinding): a page there could otherwise post wrong logins
/// from its visitors' browsers, locking them out, or read an open `/metrics`.
#[test]
fn a_hub_with_users_answers_only_to_its_own_names() {
    let mut site = Site::new();
    site.set("hosts = [\"hub.example.lan\"]");
    site.start_hub();
    let port = site.url.rsplit(':').next().unwrap_or_default().to_owned();
    let bearer = format!("Bearer {}", site.metrics_token);
    let get = |host: &str, path: &str| {
        answer(
            http()
                .get(format!("{}{path}", site.url))
                .header("Host", host)
                .header("Authorization", &bearer)
                .call(),
        )
    };
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let own = [
        format!("127.0.0.1:{port}"),
        format!("192.0.2.7:{port}"),
        format!("{}:{port}", machine.trim()),
        format!("{}.local:{port}", machine.trim()),
        format!("HUB.example.lan:{port}"),
    ];
    for host in &own {
        for path in ["/login", "/metrics"] {
            let answer = get(host, path);
            assert_eq!(answer.status, 200, "{host}{path}: {}", answer.body);
        }
    }
    let rebound = format!("evil.example:{port}");
    for path in ["/login", "/metrics", "/api/fleet", "/"] {
        let refused = get(&rebound, path);
        assert_eq!(refused.status, 403, "{path}: {}", refused.body);
        assert!(
            refused.body.contains("add it to `hosts`"),
            "{}",
            refused.body
        );
    }
    // Wrong logins by that name are not taken, so they cannot use up alice's tries.
    for i in 0..6 {
        let form = format!("name=alice&password=guess{i}");
        let tried = answer(
            http()
                .post(format!("{}/login", site.url))
                .header("Host", &rebound)
                .content_type("application/x-www-form-urlencoded")
                .send(form),
        );
        assert_eq!(tried.status, 403, "{}", tried.body);
    }
    Client::log_in(&site.url, "alice", "alice's password");
    let hub = site.hub.as_ref().unwrap();
    let said = "refused a request for the name \"evil.example\"";
    wait_for_or_ctl(hub, || hub.stderr().contains(said).then_some(()));
    assert_eq!(hub.stderr().matches(said).count(), 1, "{}", hub.stderr());
}

/// Wrong logins sent all at once get five tries between them, as one after another do.
#[test]
fn a_burst_of_wrong_logins_gets_five_tries_in_all() {
    let mut site = Site::new();
    site.start_hub();
    let url = site.url.clone();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let url = &url;
        let tries: Vec<_> = (0..20)
            .map(|i| scope.spawn(move || login(url, "alice", &format!("guess {i}")).status))
            .collect();
        tries.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let refused = statuses.iter().filter(|&&s| s == 401).count();
    let waiting = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((refused, waiting), (5, 15), "{statuses:?}");
}

/// Behind a reverse proxy the hub trusts (`trusted_proxies`), wrong logins lock out the
/// client the proxy names, not the proxy and everyone behind it; from a peer it does not
/// trust, `X-Forwarded-For` is not believed, so an attacker cannot escape the limit by
/// writing a new address into it each time.
#[test]
fn behind_a_trusted_proxy_wrong_logins_lock_out_their_client_only() {
    let mut site = Site::new();
    site.set("trusted_proxies = [\"127.0.0.1\"]");
    site.start_hub();
    let attacker = Some("203.0.113.9");
    for i in 0..5 {
        let tried = login_forwarded(&site.url, "alice", &format!("guess {i}"), attacker);
        assert_eq!(tried.status, 401, "{}", tried.body);
    }
    let locked = login_forwarded(&site.url, "alice", "alice's password", attacker);
    assert_eq!(locked.status, 429, "the attacker waits: {}", locked.body);
    let alice = login_forwarded(&site.url, "alice", "alice's password", Some("203.0.113.10"));
    assert_eq!(
        alice.status, 303,
        "alice, behind the same proxy: {}",
        alice.body
    );

    let mut untrusting = Site::new();
    untrusting.start_hub();
    for i in 0..5 {
        let client = format!("203.0.113.{i}");
        let tried = login_forwarded(&untrusting.url, "alice", "guess", Some(&client));
        assert_eq!(tried.status, 401, "{}", tried.body);
    }
    let escaped = login_forwarded(&untrusting.url, "alice", "guess", Some("203.0.113.99"));
    assert_eq!(
        escaped.status, 429,
        "a new address written in: {}",
        escaped.body
    );
}

/// Wrong logins whose clients go away at once (reset) count all the same: leaving does not
/// escape the limit, nor start a second password check beside the next.
#[test]
fn wrong_logins_whose_clients_leave_count_all_the_same() {
    use std::io::Write as _;
    let mut site = Site::new();
    site.start_hub();
    let address = site.url.trim_start_matches("http://").to_owned();
    let reset = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    for i in 0..12 {
        let form = format!("name=alice&password=guess{i}");
        let request = format!(
            "POST /login HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        );
        let mut left = std::net::TcpStream::connect(&address).unwrap();
        left.write_all(request.as_bytes()).unwrap();
        nix::sys::socket::setsockopt(&left, nix::sys::socket::sockopt::Linger, &reset).unwrap();
        drop(left);
    }
    // Five failures lock the address out for a minute: the right password waits too.
    let tried = login(&site.url, "alice", "alice's password");
    assert_eq!(tried.status, 429, "{}", tried.body);
}

/// A client that trickles its headers, or the body of its request, is cut off once its time
/// is up, while others are served meanwhile: a few slow connections cannot hold the hub.
#[test]
fn a_client_that_trickles_its_request_is_cut_off() {
    use std::io::{Read as _, Write as _};
    let site = Site::new();
    let (_hub, port) = hub_without_file(&site);
    let listen = format!("127.0.0.1:{port}");
    wait_for("the hub", TIMEOUT, || {
        http().get(format!("{}/", site.url)).call().ok()
    });
    let mut slow: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&listen).unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            stream
        })
        .collect();
    // One trickles the body of a login instead: its headers are all in.
    let mut slow_body = std::net::TcpStream::connect(&listen).unwrap();
    slow_body
        .write_all(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 16000\r\n\r\nname=al")
        .unwrap();
    let page = answer(http().get(format!("{}/", site.url)).call());
    assert_eq!(page.status, 200, "served while slow clients wait");
    // The hub's header timeout is 10 s; a closed connection reads as end of stream.
    let stream = slow.first_mut().unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10) + TIMEOUT))
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    assert!(
        read.is_ok() && started.elapsed() < std::time::Duration::from_secs(10) + TIMEOUT,
        "cut off: {read:?} after {:?}, {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&rest)
    );
    // The body's own deadline is 10 s too: answered 408, and the connection closed.
    slow_body
        .set_read_timeout(Some(std::time::Duration::from_secs(10) + TIMEOUT))
        .unwrap();
    let mut answer = Vec::new();
    let read = slow_body.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok() && answer.starts_with("HTTP/1.1 408"),
        "{read:?}: {answer}"
    );
}

/// One user's live pages are 16 at most (429 beyond), so that they cannot take all of the
/// hub's connections; a page closed frees its place.
#[test]
fn a_user_has_sixteen_live_streams_at_most() {
    use std::io::{Read as _, Write as _};
    let site = Site::new();
    let (_hub, port) = hub_without_file(&site);
    let page = first_page(&site);
    let cookie = page.header("set-cookie").expect("the local session");
    let cookie = cookie.split(';').next().unwrap_or_default().to_owned();
    // Each stream's status line, its connection kept open.
    let open = || {
        let mut stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        let request =
            format!("GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        (String::from_utf8_lossy(&head).into_owned(), stream)
    };
    let mut streams = Vec::new();
    for _ in 0..16 {
        let (status, stream) = open();
        assert_eq!(status, "HTTP/1.1 200");
        streams.push(stream);
    }
    assert_eq!(open().0, "HTTP/1.1 429", "a seventeenth");
    drop(streams.pop());
    // Its place is free once the hub has found it closed (at its next write to it).
    wait_for("a place for another", TIMEOUT, || {
        let (status, stream) = open();
        (status == "HTTP/1.1 200").then_some(stream)
    });
}

/// A client that stops reading its answers (here: thousands of pipelined requests whose
/// answers it never takes) is cut off once a write to it has waited 10 s, while others are
/// served: stalled connections cannot hold the hub's 256.
#[test]
fn a_client_that_stops_reading_is_cut_off() {
    use std::io::Write as _;
    let site = Site::new();
    let (hub, port) = hub_without_file(&site);
    wait_for("the hub", TIMEOUT, || {
        http().get(format!("{}/", site.url)).call().ok()
    });
    let mut stalled = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    // 4,000 answers of 16 KiB: far more than the sockets' buffers hold.
    let requests = b"GET /assets/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(4000);
    let limit = std::time::Duration::from_secs(10) + TIMEOUT;
    stalled.set_write_timeout(Some(limit)).unwrap();
    // The hub stops reading too once its writes wait; it may be gone before all is sent.
    let _ = stalled.write_all(&requests);
    let page = answer(http().get(format!("{}/", site.url)).call());
    assert_eq!(page.status, 200, "served while a client stalls");
    respawn_tests::wait_for_or(
        "the stalled client cut off",
        limit,
        || {
            hub.stderr()
                .contains("cut off a client that took none of its answers for 10s")
                .then_some(())
        },
        || hub.stderr(),
    );
    drop(stalled);
}

/// Waits for `check`, saying what the hub printed if it never comes.
fn wait_for_or_ctl<T>(hub: &RunningCtl, check: impl FnMut() -> Option<T>) -> T {
    respawn_tests::wait_for_or("the hub", TIMEOUT, check, || hub.stderr())
}

fn save(dir: &Option<PathBuf>, name: &str, png: &[u8]) {
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

fn log_in_browser(browser: &Browser, url: &str, name: &str, password: &str) {
    browser.goto(&format!("{url}/login"));
    browser.type_into("#name", name);
    browser.type_into("#password", password);
    browser.click("#login");
}

/// An agent whose clock is a week behind (a Pi without a real-time clock or NTP): the page
/// reads its times by its clock, so its uptimes are seconds, not a week, and says its clock
/// is off.
#[test]
fn the_pages_read_an_agents_times_by_its_own_clock() {
    let test = "the_pages_read_an_agents_times_by_its_own_clock";
    if !has_tools(test, &["chromium", "chromedriver"]) || !webdriver::available() {
        return;
    }
    let Some(week_behind) = respawn_tests::clock_a_week_behind(test) else {
        return;
    };
    let mut site = Site::new();
    let door = site.agent_with_env("door-pi", DOORBOT, &week_behind);
    door.wait_running("doorbot");
    site.start_hub();
    let browser = Browser::start(1200, 900);
    log_in_browser(&browser, &site.url, "alice", "alice's password");
    browser.wait(
        "the agent, its clock said to be off, and uptimes of seconds",
        "const card = document.querySelector('[data-agent=\"door-pi\"]'); if (!card) return false; const head = card.querySelector('.agent-head').innerText; const up = card.querySelector('[data-field=\"up\"]'); const row = card.querySelector('tr[data-process=\"doorbot\"]'); return head.includes('clock 7d behind') && up && /up \\d+s$/.test(up.innerText) && row && /^\\d+s$/.test(row.children[3].innerText)",
    );
    browser.wait(
        "the offset the hub measured, a week",
        "const a = agents.get('door-pi'); return !!a && Math.abs(a.clock_offset_ms + 7 * 86400000) < 5000",
    );
    // Its events are dated today on the events page, which holds no fleet of its own.
    let pid = door.wait_running("doorbot");
    door.request(Request::Restart {
        process: "doorbot".into(),
    });
    door.wait_restarted("doorbot", pid);
    browser.goto(&format!("{}/events", site.url));
    browser.wait(
        "the restart's events, dated today",
        "const items = [...document.querySelectorAll('#events li')]; return items.length > 0 && items.every(li => li.textContent.startsWith(new Date().toLocaleString().split(',')[0] + ','))",
    );
}

#[test]
fn the_pages_are_live_their_buttons_act_and_output_stays_text() {
    let test = "the_pages_are_live_their_buttons_act_and_output_stays_text";
    if !has_tools(test, &["chromium", "chromedriver"]) || !webdriver::available() {
        return;
    }
    // RESPAWN_SCREENSHOTS=docs/screenshots keeps the pages' pictures for the docs.
    let shots = std::env::var_os("RESPAWN_SCREENSHOTS").map(PathBuf::from);
    let mut site = Site::new();
    let door = site.agent("door-pi", &format!("{DOORBOT}{CRASHER}"));
    let garage = site.agent("garage-pi", &format!("{DOORBOT}{STUBBORN}"));
    let events = Observer::connect(&site.broker, &["respawn/v1/+/event"]);
    site.start_hub();
    let url = site.url.clone();
    let browser = Browser::start(1200, 900);

    // The wrong password is refused on the page.
    log_in_browser(&browser, &url, "alice", "wrong");
    browser.wait(
        "the refusal",
        "return document.body.innerText.includes('Wrong name or password')",
    );
    log_in_browser(&browser, &url, "alice", "alice's password");
    browser.wait(
        "both agents and their processes",
        "return document.querySelectorAll('[data-agent]').length === 2 && document.querySelectorAll('tr[data-process]').length === 4",
    );
    browser.wait(
        "the count of both",
        "return document.getElementById('summary').textContent.startsWith('2 agents')",
    );
    // The filter narrows the page to one agent, counted as one.
    browser.eval("const box = document.getElementById('filter'); box.value = 'garage-pi'; box.dispatchEvent(new Event('input')); return true");
    browser.wait(
        "one agent, counted as one",
        "return document.querySelectorAll('[data-agent]').length === 1 && /^1 agent($|,)/.test(document.getElementById('summary').textContent)",
    );
    // One that leaves nothing says so (a bare "0 agents", found by a new-user run).
    browser.eval("const box = document.getElementById('filter'); box.value = 'shed-*'; box.dispatchEvent(new Event('input')); return true");
    browser.wait(
        "nothing matching, said so",
        "return document.querySelectorAll('[data-agent]').length === 0 && document.getElementById('summary').textContent.startsWith('0 agents match \"shed-*\" (of 2;')",
    );
    browser.eval("const box = document.getElementById('filter'); box.value = ''; box.dispatchEvent(new Event('input')); return true");
    browser.wait(
        "both agents again",
        "return document.querySelectorAll('[data-agent]').length === 2",
    );
    // A long detail (a spawn error naming a path) wraps in its own column: the others keep
    // their words whole, a line each at most (they broke mid-word, "doorbo t", found by a
    // new-user run).
    assert_eq!(
        browser.eval("const p = {name: 'doorbot', state: 'spawn_failed', pid: 24509, since: new Date().toISOString(), restarts: 12, spawn_error: 'cannot start /opt/' + 'x'.repeat(400)}; const t = processTable({agent: 'door-pi', liveness: 'online'}, [p]); document.querySelector('main').append(t); const lines = (c) => { const r = document.createRange(); r.selectNodeContents(c); return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; }; const cells = [...t.querySelectorAll('th'), ...[...t.querySelectorAll('tbody td')].slice(0, 5)]; const broken = cells.filter(c => lines(c) > c.textContent.trim().split(/\\s+/).length).map(c => c.textContent); const wrapped = lines(t.querySelector('td.details')) > 1; t.remove(); return JSON.stringify({broken, wrapped})"),
        r#"{"broken":[],"wrapped":true}"#
    );
    // Health is said once probed; before its first probe "unknown" beside the last exit read
    // as the exit's (found by a new-user run).
    assert_eq!(
        browser.eval("const details = (health) => processRow({agent: 'door-pi', liveness: 'online'}, {name: 'web', state: 'starting', restarts: 0, health}).querySelector('td.details').textContent; return [details({status: 'unknown'}), details({status: 'failing', last_error: 'timed out'})]"),
        serde_json::json!(["", "failing: timed out"])
    );
    // An agent whose birth names processes whose state did not come says so on its card, as
    // `respawnctl status` does (found by a new-user run: the card showed nothing).
    assert_eq!(
        browser.eval("const card = agentCard({agent: 'x-pi', liveness: 'online', processes: [], unknown_processes: ['db', 'web']}); const note = card.querySelector('[data-field=\"unknown\"]'); return note ? note.textContent : ''"),
        "No state for 2 processes: db, web (the broker did not send it, or it could not be read)"
    );
    // From now on, a reload would lose this mark.
    browser.eval("window.stillTheSamePage = true; return true");

    // A crash shows without a reload.
    let crasher = door.wait_running("crasher");
    let crashed_at = Instant::now();
    std::fs::write(door.dir().join("crash"), "").unwrap();
    browser.wait(
        "the crash on the page",
        "const row = document.querySelector('[data-agent=\"door-pi\"] tr[data-process=\"crasher\"]'); return row && row.innerText.includes('exit 3')",
    );
    let shown_after = crashed_at.elapsed();
    eprintln!("crash → on the page: {shown_after:?}");
    assert_eq!(
        browser.eval("return window.stillTheSamePage === true"),
        true
    );
    door.wait_restarted("crasher", crasher);
    save(&shots, "fleet-desktop.png", &browser.screenshot());

    // Restart from the page: a new pid on it, and the agent's audit names alice.
    let pid = door.wait_running("doorbot");
    browser.click(
        "[data-agent=\"door-pi\"] tr[data-process=\"doorbot\"] button[data-action=\"restart\"]",
    );
    // What it did is said, and then no more: the table tells how things are after it (a page
    // left open said "stopped" above a running process, found by a new-user run).
    browser.wait(
        "the restart said",
        "const b = document.getElementById('message'); return !b.hidden && b.innerText.startsWith('restarted door-pi/doorbot')",
    );
    let new_pid = door.wait_restarted("doorbot", pid);
    browser.wait(
        "the new pid on the page",
        &format!("const cell = document.querySelector('[data-agent=\"door-pi\"] tr[data-process=\"doorbot\"] [data-field=\"pid\"]'); return cell && cell.innerText === '{new_pid}'"),
    );
    let audit = events.wait_json::<serde_json::Value>("the audit of the restart", |e| {
        e["kind"] == "command" && e["command"] == "restart" && e["process"] == "doorbot"
    });
    assert_eq!(audit["requester"], "alice");
    browser.wait(
        "what the restart did said no more",
        "return document.getElementById('message').hidden",
    );

    // The broker goes away: the page says so, its buttons are off (an action could only time
    // out), and it recovers by itself.
    site.broker.stop();
    browser.wait(
        "the banner for a lost broker, and no button to press",
        "const b = document.getElementById('broker'); const made = buttons({agent: 'door-pi', liveness: 'online'}, {name: 'doorbot', state: 'running'}); return !b.hidden && b.innerText.includes('lost the broker') && document.querySelectorAll('button[data-action]:not(:disabled)').length === 0 && made.querySelectorAll('button').length === 2 && [...made.querySelectorAll('button')].every(x => x.disabled)",
    );
    let resumed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    site.broker.resume();
    browser.wait(
        "the banner gone, the fleet back and online, its buttons on",
        "return document.getElementById('broker').hidden && document.querySelectorAll('tr[data-process]').length === 4 && [...document.querySelectorAll('[data-field=\"liveness\"]')].map(e => e.innerText).join() === 'online,online' && [...document.querySelectorAll('button[data-action]')].every(x => !x.disabled)",
    );
    // The hub's log says it once, in words of its own, with why.
    let log = site.hub.as_ref().unwrap().stderr();
    assert_eq!(log.matches("lost the broker").count(), 1, "{log}");
    assert!(log.contains("lost the broker: the broker "), "{log}");
    assert!(!log.contains("Mqtt state"), "{log}");
    assert!(log.contains("(2 users)"), "{log}");
    // The agent's new connection does not make it younger: "up" counts from its start.
    browser.wait(
        "door-pi's uptime from its start, on its new connection",
        &format!("const a = agents.get('door-pi'); const up = document.querySelector('[data-agent=\"door-pi\"] [data-field=\"up\"]'); return a && Date.parse(a.state.since) > {resumed} && up && Date.parse(up.dataset.since) < {resumed}"),
    );
    assert_eq!(
        browser.eval("return window.stillTheSamePage === true"),
        true
    );

    // What an agent says of itself and of a process is shown escaped in the rows too.
    let hostile = "a\\u202eb\\u001b[2J";
    let shown = "a\\\\u{202e}b\\\\u{1b}[2J";
    assert_eq!(
        browser.eval(&format!("const a = {{agent: 'x', liveness: 'online', state: {{version: '{hostile}', host: '{hostile}'}}, processes: []}}; const p = {{name: 'x', state: 'spawn_failed', spawn_error: '{hostile}', health: {{status: 'failing', last_error: '{hostile}'}}}}; const texts = [agentCard(a).innerText, processRow(a, p).innerText]; return texts.every(t => t.split('{shown}').length === 3 && !/[\\u202e\\u001b]/.test(t))")),
        true
    );

    // The process page: hostile output is text, and nothing of it ran.
    browser.goto(&format!("{url}/process?agent=door-pi&process=crasher"));
    browser.wait(
        "the crash's output on the process page",
        "const box = document.getElementById('last-exit'); return box && box.innerText.includes('<img src=x onerror=window.pwned=2> crashed')",
    );
    browser.wait(
        "the log lines",
        "return document.getElementById('logs').innerText.includes('<script>window.pwned = 1</script> ready')",
    );
    // Nor can it reorder the text around it or colour it: shown escaped, as respawnctl does.
    assert_eq!(
        browser.eval("return document.getElementById('logs').innerText.includes('invoice \\\\u{202e}txt.exe \\\\u{1b}[31mred')"),
        true
    );
    // A later exit with no output of its own shows none, not the output of the run before.
    assert_eq!(
        browser.eval("rememberExit({kind: 'exited', log_tail: []}); renderProcess(); return lastExitTail === null && !document.querySelector('#last-exit pre')"),
        true
    );
    // Its events in the words of `respawnctl events`: a crash is "crashed", not "exited".
    browser.wait(
        "the crash among its events, said as respawnctl says it",
        "return /door-pi\\/crasher · crashed · exit 3 after \\d+\\w+, restarting/.test(document.getElementById('events').innerText)",
    );
    assert_eq!(browser.eval("return window.pwned === undefined && document.querySelectorAll('main img, main script').length === 0"), true);
    // A new run's output comes without a press of Refresh (found in a review: the page kept
    // the old run's lines after a restart).
    let runs_shown = "return document.getElementById('logs').innerText.split('ready').length - 1";
    let shown_before = browser.eval(runs_shown).as_u64().unwrap();
    let crasher = door.wait_running("crasher");
    std::fs::write(door.dir().join("crash"), "").unwrap();
    door.wait_restarted("crasher", crasher);
    browser.wait(
        "the new run's first line in the output",
        &format!("{runs_shown} > {shown_before}"),
    );
    // In view: the box holds more than it shows, and shows its end (found by a new-user run:
    // it stayed at the oldest lines, the new run's hidden below).
    browser.wait(
        "the output scrolled to its newest line",
        "const box = document.getElementById('logs'); return box.scrollHeight > box.clientHeight + 100 && box.scrollTop + box.clientHeight >= box.scrollHeight - 4",
    );
    // But a reader who scrolled up to read older lines is left there by a re-read.
    browser.eval("const box = document.getElementById('logs'); box.scrollTop = 0; loadLogs().then(() => { window.leftWhereRead = box.scrollTop === 0; }); return true");
    browser.wait(
        "a re-read after scrolling up",
        "return window.leftWhereRead === true",
    );
    // An event that comes again (over the stream, after the list a reload fetched held it)
    // is shown once.
    assert_eq!(
        browser.eval("const list = document.getElementById('events'); const ids = [...list.children].map(li => li.dataset.id); const n = ids.length; const e = {id: 'once', seq: 1, agent: 'door-pi', process: 'crasher', at: new Date().toISOString(), kind: 'started', pid: 1, restarts: 0}; showEvent(e); showEvent(e); return new Set(ids).size === n && list.children.length === n + 1"),
        true
    );
    save(&shots, "process-desktop.png", &browser.screenshot());

    // A viewer sees everything, and no button.
    drop(browser);
    let browser = Browser::start(390, 844);
    log_in_browser(&browser, &url, "bob", "bob's password");
    browser.wait(
        "the fleet for bob",
        "return document.querySelectorAll('tr[data-process]').length === 4",
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('button[data-action]').length"),
        0
    );
    assert_eq!(
        browser.eval("return document.getElementById('me').innerText.includes('view only')"),
        true
    );
    // On a phone a process's numbers are kept, labelled, and its last exit takes the width
    // (found by a new-user run: uptime and restarts were hidden, and the last exit broke
    // every word in a column a few letters wide).
    assert_eq!(
        browser.eval("const row = document.querySelector('[data-agent=\"door-pi\"] tr[data-process=\"crasher\"]'); const details = row.querySelector('td.details'); const shown = (c) => c && c.getClientRects().length > 0; return details.textContent.includes('exit 3') && details.getBoundingClientRect().width > 0.8 * row.getBoundingClientRect().width && ['pid', 'up', 'restarts'].every((l) => shown(row.querySelector('[data-label=\"' + l + '\"]')))"),
        true
    );
    save(&shots, "fleet-phone.png", &browser.screenshot());
    browser.goto(&format!("{url}/process?agent=door-pi&process=crasher"));
    browser.wait(
        "the process page for bob",
        "return document.getElementById('logs').innerText.includes('ready')",
    );
    save(&shots, "process-phone.png", &browser.screenshot());

    // A process that takes its time to stop has no uptime while it stops: its `since` is
    // when the stop began.
    garage.wait_running("stubborn");
    let mut stop = Command::new(respawn_tests::agent_binary())
        .args(["--config", &garage.config_path().display().to_string()])
        .args(["stop", "stubborn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    browser.goto(&url);
    browser.wait(
        "stubborn stopping, without an uptime",
        "const row = document.querySelector('[data-agent=\"garage-pi\"] tr[data-process=\"stubborn\"]'); return row && row.children[1].textContent.startsWith('stopping') && row.children[2].textContent !== '-' && row.children[3].textContent === '-' && row.children[5].textContent.includes('stopping for ')",
    );
    let _ = stop.kill();
    let _ = stop.wait();

    // An agent that died hard: what its processes last said shows, greyed as respawnctl greys
    // it, with no uptime, which nobody knows any more.
    let _orphans = garage.kill_hard();
    browser.goto(&url);
    browser.wait(
        "garage-pi lost, its process without an uptime",
        "const row = document.querySelector('[data-agent=\"garage-pi\"] tr[data-process=\"doorbot\"]'); const live = document.querySelector('[data-agent=\"garage-pi\"] [data-field=\"liveness\"]'); return row && live && live.textContent === 'lost' && row.children[1].textContent === 'running' && row.children[1].classList.contains('dim') && !row.children[1].className.includes('s-running') && row.children[3].textContent === '-'",
    );
    // To an operator, an agent that is away offers no button: no command would reach it.
    drop(browser);
    let browser = Browser::start(1280, 900);
    log_in_browser(&browser, &url, "alice", "alice's password");
    browser.wait(
        "buttons for door-pi only",
        "const away = document.querySelectorAll('[data-agent=\"garage-pi\"] button[data-action]').length; const here = document.querySelectorAll('[data-agent=\"door-pi\"] button[data-action]').length; return document.querySelector('[data-agent=\"garage-pi\"]') && away === 0 && here > 0",
    );
}
