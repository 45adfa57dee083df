//! A throwaway PKI for TLS tests: a CA, a broker certificate for 127.0.0.1 (only), and
//! client certificates whose CN is the client's name — plus the bad ones (expired, signed by a
//! foreign CA) that must be refused.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::broker::Broker;
use crate::CtlOutput;

/// A CA and the certificates it signed, as PEM files in a directory.
pub struct Pki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = params.self_signed(&key).expect("a CA certificate").pem();
    (params, key, pem)
}

impl Pki {
    /// A CA (`ca.pem`), a broker certificate (`broker.pem`, `broker.key`), and `NAME.pem` +
    /// `NAME.key` for every client name.
    pub fn new(clients: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (params, key, pem) = ca("respawn test CA");
        std::fs::write(dir.path().join("ca.pem"), pem).expect("write the CA");
        let pki = Self {
            dir,
            issuer: Issuer::new(params, key),
        };
        pki.issue(
            "broker",
            &["127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        for client in clients {
            pki.issue(client, &[], ExtendedKeyUsagePurpose::ClientAuth, false);
        }
        pki
    }

    fn issue(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) {
        let key = KeyPair::generate().expect("a key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    /// A client certificate of this CA that expired years ago.
    pub fn expired_client(&self, name: &str) {
        self.issue(name, &[], ExtendedKeyUsagePurpose::ClientAuth, true);
    }

    /// A client certificate signed by another CA (written as `NAME.pem`/`NAME.key`), and that
    /// CA as `NAME-ca.pem`.
    pub fn foreign_client(&self, name: &str) {
        let (params, key, pem) = ca("some other CA");
        std::fs::write(self.path(&format!("{name}-ca.pem")), pem).expect("write");
        let foreign = Pki {
            dir: tempfile::tempdir().expect("a temporary directory"),
            issuer: Issuer::new(params, key),
        };
        foreign.issue(name, &[], ExtendedKeyUsagePurpose::ClientAuth, false);
        for ext in ["pem", "key"] {
            std::fs::copy(
                foreign.path(&format!("{name}.{ext}")),
                self.path(&format!("{name}.{ext}")),
            )
            .expect("copy");
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Mosquitto lines of a TLS listener that requires client certificates and takes
    /// their CN as the username, as docs/security.md sets it up.
    pub fn mosquitto_tls(&self) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous false\n",
            self.path("ca.pem").display(),
            self.path("broker.pem").display(),
            self.path("broker.key").display()
        )
    }

    /// respawnctl's options to connect as client `name` of this PKI.
    pub fn client_args(&self, name: &str) -> Vec<String> {
        let path = |file: &str| self.path(file).display().to_string();
        vec![
            "--ca-file".into(),
            path("ca.pem"),
            "--cert-file".into(),
            path(&format!("{name}.pem")),
            "--key-file".into(),
            path(&format!("{name}.key")),
        ]
    }

    /// Runs respawnctl against `broker` as client `name` of this PKI.
    pub fn respawnctl(&self, broker: &Broker, name: &str, args: &[&str]) -> CtlOutput {
        let client = self.client_args(name);
        let mut all: Vec<&str> = client.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        crate::respawnctl(broker, &all)
    }

    /// The Mosquitto ACL of docs/security.md (`examples/mosquitto/respawn.acl`) as a line of
    /// Mosquitto configuration.
    pub fn example_acl() -> String {
        format!(
            "acl_file {}\n",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/mosquitto/respawn.acl"
            )
        )
    }

    /// The agent's `[mqtt]` section for `url`, as client `name`.
    pub fn mqtt_section(&self, url: &str, name: &str) -> String {
        format!(
            "[mqtt]\nurl = \"{url}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nheartbeat = \"1s\"\nkeep_alive = \"5s\"\n\n",
            self.path("ca.pem").display(),
            self.path(&format!("{name}.pem")).display(),
            self.path(&format!("{name}.key")).display()
        )
    }
}
