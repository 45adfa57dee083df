//! TLS and mutual TLS against Mosquitto: agent and respawnctl connect over mqtts:// with client
//! certificates; a wrong CA, an expired or a foreign client certificate are refused with a
//! clear reason; and the test PKI script of docs/security.md works as documented.

use std::path::Path;
use std::process::Command;

use respawn_tests::broker::Broker;
use respawn_tests::pki::Pki;
use respawn_tests::{respawnctl, wait_for, TestAgent, TIMEOUT};

const DOORBOT: &str = "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n";

fn ctl(broker: &Broker, tls: &[String], args: &[&str]) -> respawn_tests::CtlOutput {
    let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    respawnctl(broker, &all)
}

#[test]
fn agent_and_respawnctl_speak_mutual_tls() {
    let pki = Pki::new(&["alpha", "op-alice"]);
    let broker = Broker::start_tls(&pki.mosquitto_tls());
    let agent = TestAgent::start_as(
        "alpha",
        &(pki.mqtt_section(&broker.url(), "alpha") + DOORBOT),
    );
    let pid = agent.wait_running("doorbot");
    let ops = pki.client_args("op-alice");
    wait_for("the agent online over TLS", TIMEOUT, || {
        let out = ctl(&broker, &ops, &["status", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        (json["agents"][0]["liveness"] == "online").then_some(())
    });
    let out = ctl(&broker, &ops, &["restart", "alpha/doorbot"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("restarted alpha/doorbot pid {pid} → ")),
        "{out:?}"
    );
}

#[test]
fn certificates_that_do_not_verify_are_refused_with_the_reason() {
    let pki = Pki::new(&["alpha", "op-alice"]);
    pki.expired_client("op-expired");
    pki.foreign_client("op-foreign");
    let broker = Broker::start_tls(&pki.mosquitto_tls());

    // The client does not trust the broker: the agent's CA is another one.
    let wrong_ca = pki.mqtt_section(&broker.url(), "alpha").replace(
        &pki.path("ca.pem").display().to_string(),
        &pki.path("op-foreign-ca.pem").display().to_string(),
    );
    let agent = TestAgent::start_as("alpha", &(wrong_ca + DOORBOT));
    agent.wait_for_log("the broker's certificate is not signed by a trusted CA (check ca_file)");
    agent.wait_running("doorbot");

    // The broker does not trust the client.
    for name in ["op-expired", "op-foreign"] {
        let out = ctl(&broker, &pki.client_args(name), &["status"]);
        assert_eq!(out.code, Some(1), "{name}: {out:?}");
        assert!(
            out.stderr
                .contains("the broker refused this client's certificate"),
            "{name}: {out:?}"
        );
    }
    // No client certificate at all.
    let p = pki.path("ca.pem").display().to_string();
    let out = ctl(&broker, &["--ca-file".into(), p], &["status"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("the broker refused this client's certificate (CertificateRequired)"),
        "{out:?}"
    );
    // A name the broker's certificate does not carry.
    let out = Command::new(respawn_tests::respawnctl_binary())
        .args(["--broker", &broker.url().replace("127.0.0.1", "localhost")])
        .args(pki.client_args("op-alice"))
        .arg("status")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the broker's certificate is not valid for \"localhost\""),
        "{stderr}"
    );
    // The wrong scheme for the port: the listener hangs up, and the message says what to try.
    let status_at = |url: &str| {
        let out = Command::new(respawn_tests::respawnctl_binary())
            .args(["--broker", url, "status"])
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        stderr
    };
    // mqtt:// to the TLS port.
    let stderr = status_at(&broker.url().replace("mqtts://", "mqtt://"));
    assert!(
        stderr.contains("if this port takes TLS, the url is mqtts://"),
        "{stderr}"
    );
    // And mqtts:// to a plain port, which hangs up on the TLS greeting.
    let plain = respawn_tests::broker::Broker::start();
    let stderr = status_at(&plain.url().replace("mqtt://", "mqtts://"));
    assert!(
        stderr.contains("if this port is plain MQTT, without TLS, the url is mqtt://"),
        "{stderr}"
    );
}

#[test]
fn a_new_reason_to_fail_is_logged_at_once_not_at_the_tenth_attempt() {
    let pki = Pki::new(&["alpha"]);
    pki.foreign_client("op-foreign");
    let mut broker = Broker::start_tls(&pki.mosquitto_tls());
    broker.stop();
    let wrong_ca = pki.mqtt_section(&broker.url(), "alpha").replace(
        &pki.path("ca.pem").display().to_string(),
        &pki.path("op-foreign-ca.pem").display().to_string(),
    );
    let agent = TestAgent::start_as("alpha", &(wrong_ca + DOORBOT));
    agent.wait_for_log("broker unreachable (attempt 1)");
    // The broker comes back with a certificate the agent does not trust: said at the next
    // attempt, seconds later, not at the tenth, two minutes after the first.
    broker.resume();
    agent.wait_for_log("the broker's certificate is not signed by a trusted CA (check ca_file)");
}

#[test]
fn the_documented_pki_script_makes_a_working_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/make-test-pki.sh");
    let out = Command::new(script)
        .args([
            dir.path().to_str().unwrap(),
            "127.0.0.1",
            "alpha",
            "op-alice",
        ])
        .output()
        .expect("the script runs (it needs openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = |f: &str| dir.path().join(f).display().to_string();
    // Run again to add a client, it keeps the CA and the broker's certificate.
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    let (ca, broker_cert) = (read("ca.pem"), read("broker.pem"));
    let again = Command::new(script)
        .args([dir.path().to_str().unwrap(), "127.0.0.1", "op-bob"])
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    assert_eq!((read("ca.pem"), read("broker.pem")), (ca, broker_cert));
    assert!(dir.path().join("op-bob.pem").exists());
    let key_mode = std::fs::metadata(dir.path().join("alpha.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o077,
        0,
        "keys are private"
    );
    let broker = Broker::start_tls(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous false\n",
        file("ca.pem"),
        file("broker.pem"),
        file("broker.key")
    ));
    let mqtt = format!(
        "[mqtt]\nurl = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n",
        broker.url(),
        file("ca.pem"),
        file("alpha.pem"),
        file("alpha.key")
    );
    let agent = TestAgent::start_as("alpha", &(mqtt + DOORBOT));
    agent.wait_running("doorbot");
    let ops: Vec<String> = [
        "--ca-file",
        &file("ca.pem"),
        "--cert-file",
        &file("op-alice.pem"),
        "--key-file",
        &file("op-alice.key"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    wait_for(
        "the agent online with the script's certificates",
        TIMEOUT,
        || {
            let out = ctl(&broker, &ops, &["status", "--json"]);
            let json: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            (json["agents"][0]["liveness"] == "online").then_some(())
        },
    );
    assert!(Path::new(&file("ca.key")).exists());
}

#[test]
fn a_key_that_is_not_the_certificates_is_said_in_words() {
    let pki = Pki::new(&["alpha", "op-alice"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let crossed = pki.mqtt_section("mqtts://127.0.0.1:8883", "alpha").replace(
        &pki.path("alpha.key").display().to_string(),
        &pki.path("op-alice.key").display().to_string(),
    );
    std::fs::write(&config, crossed).unwrap();
    let out = respawn_tests::check(&config);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        said.contains("line 5: [mqtt]: the client certificate and key do not work together: the key is not the certificate's"),
        "{said}"
    );
    assert!(!said.contains("KeyMismatch"), "{said}");
}

/// `check` says each problem with the TLS files at the key that names the file, all at once:
/// a key file that holds no key at `key_file` even when `ca_file` names the same file, and a
/// key file that holds no key beside a certificate file that cannot be read.
#[test]
fn check_says_every_tls_file_problem_at_its_own_key() {
    let pki = Pki::new(&["alpha", "beta"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let section = |cert: &Path, key: &Path| {
        format!(
            "[mqtt]\nurl = \"mqtts://127.0.0.1:8883\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.path("ca.pem").display(),
            cert.display(),
            key.display()
        )
    };
    let (ca, missing) = (pki.path("ca.pem"), dir.path().join("missing.pem"));
    let said_of = |text: String| {
        std::fs::write(&config, text).unwrap();
        let out = respawn_tests::check(&config);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let no_key = format!("[mqtt]: {} holds no PEM private key", ca.display());

    let said = said_of(section(&pki.path("alpha.pem"), &ca));
    assert!(said.contains(&format!("line 5: {no_key}")), "{said}");
    assert!(!said.contains("line 3"), "{said}");

    let said = said_of(section(&missing, &ca));
    let unreadable = format!("line 4: [mqtt]: cannot read {}", missing.display());
    assert!(said.contains(&unreadable), "{said}");
    assert!(said.contains(&format!("line 5: {no_key}")), "{said}");

    // A CA file that is missing, on a machine without the system's CAs (a Pi image without
    // ca-certificates), beside a key that is not the certificate's: both said.
    let crossed = section(&pki.path("alpha.pem"), &pki.path("beta.key"))
        .replace(&ca.display().to_string(), &missing.display().to_string());
    std::fs::write(&config, crossed).unwrap();
    let no_system_cas = tempfile::tempdir().unwrap();
    let out = Command::new(respawn_tests::agent_binary())
        .arg("check")
        .arg(&config)
        .env("SSL_CERT_FILE", no_system_cas.path().join("none.pem"))
        .env("SSL_CERT_DIR", no_system_cas.path())
        .output()
        .expect("respawn-agent check runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(said.contains("line 3: [mqtt]: cannot read"), "{said}");
    assert!(
        said.contains("line 5: [mqtt]: the client certificate and key do not work together"),
        "{said}"
    );
}
