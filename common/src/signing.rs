//! Operator keys and command signatures: Ed25519 over the exact bytes of a command's body.
//!
//! A private key file holds `respawn-ed25519-private NAME BASE64-SEED`; the public key is one
//! line, `respawn-ed25519 BASE64-KEY NAME`, to paste into an agent's `[[operator]]`. The
//! signature travels in the command envelope as `{"key": NAME, "alg": "ed25519", "value":
//! BASE64}`. ring does the cryptography: it is already the TLS provider, so there is one crypto
//! library in the program.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::ids::validate_process_name;
use crate::messages::Signature;

/// The algorithm name in signatures.
pub const ALGORITHM: &str = "ed25519";
const PUBLIC_TAG: &str = "respawn-ed25519";
const PRIVATE_TAG: &str = "respawn-ed25519-private";

/// Why a key could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a respawn public key: expected \"{PUBLIC_TAG} BASE64 NAME\"")]
    NotPublicKey,
    #[error("not a respawn private key file: expected a line \"{PRIVATE_TAG} NAME BASE64\"")]
    NotPrivateKey,
    #[error("this is a PRIVATE key: it must never be on an agent; use the line of its .pub file")]
    PrivateWherePublic,
    #[error("this is a public key (a .pub file): sign with the private key file beside it")]
    PublicWherePrivate,
    #[error("the key is not valid base64 of 32 bytes")]
    BadKey,
    #[error("the operator name {0:?} is not valid: letters, digits, '_', '-', '.', at most 64")]
    BadName(String),
    #[error("no randomness available to make a key")]
    NoRandomness,
}

/// An operator's private key.
pub struct SigningKey {
    name: String,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An operator's public key.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    bytes: [u8; 32],
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", STANDARD.encode(self.bytes))
    }
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| KeyError::BadKey)?;
    bytes.try_into().map_err(|_| KeyError::BadKey)
}

impl SigningKey {
    /// A new random key for operator `name`.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        validate_process_name(name).map_err(|_| KeyError::BadName(name.to_owned()))?;
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::NoRandomness)?;
        Self::from_seed(name, seed)
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::BadKey)?;
        Ok(Self {
            name: name.to_owned(),
            seed,
            pair,
        })
    }

    /// Reads a private key file's content.
    ///
    /// ```
    /// use respawn_common::signing::SigningKey;
    /// let key = SigningKey::generate("alice").unwrap();
    /// let again = SigningKey::parse(&key.to_file()).unwrap();
    /// assert_eq!(again.name(), "alice");
    /// assert_eq!(again.public_line(), key.public_line());
    /// ```
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let Some(line) = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(PRIVATE_TAG))
        else {
            return Err(match text.trim_start().starts_with(PUBLIC_TAG) {
                true => KeyError::PublicWherePrivate,
                false => KeyError::NotPrivateKey,
            });
        };
        let mut fields = line.split_whitespace();
        let (Some(PRIVATE_TAG), Some(name), Some(seed), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(KeyError::NotPrivateKey);
        };
        validate_process_name(name).map_err(|_| KeyError::BadName(name.to_owned()))?;
        Self::from_seed(name, decode32(seed)?)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The content of the private key file.
    pub fn to_file(&self) -> String {
        format!(
            "# respawn operator key of {:?}: keep it secret (mode 0600)\n{PRIVATE_TAG} {} {}\n",
            self.name,
            self.name,
            STANDARD.encode(self.seed)
        )
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey { bytes }
    }

    /// The line to paste into an agent's `[[operator]] public_key`.
    pub fn public_line(&self) -> String {
        format!(
            "{PUBLIC_TAG} {} {}",
            STANDARD.encode(self.verifying_key().bytes),
            self.name
        )
    }

    /// Signs `body`, the exact bytes that will travel.
    pub fn sign(&self, body: &[u8]) -> Signature {
        Signature {
            key: self.name.clone(),
            alg: ALGORITHM.to_owned(),
            value: STANDARD.encode(self.pair.sign(body).as_ref()),
        }
    }
}

impl VerifyingKey {
    /// Reads a public key: the whole line from `respawnctl keygen`, or just its base64 part.
    ///
    /// ```
    /// use respawn_common::signing::{SigningKey, VerifyingKey};
    /// let key = SigningKey::generate("alice").unwrap();
    /// let public = VerifyingKey::parse(&key.public_line()).unwrap();
    /// assert_eq!(public, key.verifying_key());
    /// assert!(VerifyingKey::parse("ssh-ed25519 AAAA").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if text.contains(PRIVATE_TAG) {
            return Err(KeyError::PrivateWherePublic);
        }
        let mut fields = text.split_whitespace();
        let key = match (fields.next(), fields.next()) {
            (Some(PUBLIC_TAG), Some(key)) => key,
            (Some(key), None) if !key.contains('-') => key,
            _ => return Err(KeyError::NotPublicKey),
        };
        Ok(Self {
            bytes: decode32(key)?,
        })
    }

    /// The name at the end of a public key line, if it has one: the name `respawnctl` signs
    /// with, which an agent's `[[operator]] name` must match.
    ///
    /// ```
    /// use respawn_common::signing::VerifyingKey;
    /// assert_eq!(VerifyingKey::line_name("respawn-ed25519 AAAA alice"), Some("alice"));
    /// assert_eq!(VerifyingKey::line_name("AAAA"), None);
    /// ```
    pub fn line_name(text: &str) -> Option<&str> {
        let mut fields = text.split_whitespace();
        (fields.next() == Some(PUBLIC_TAG))
            .then(|| fields.nth(1))
            .flatten()
    }

    /// Whether `signature` (base64) is this key's signature of `body`.
    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        let Ok(signature) = STANDARD.decode(signature.trim()) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, self.bytes)
            .verify(body, &signature)
            .is_ok()
    }
}

/// The sha256 of `bytes`, in lowercase hex: how a remote configuration is named.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The first twelve hex digits of a hash, as people quote it.
pub fn short_sha256(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// Whether two secrets are equal, in a time that does not say where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_the_same_only_whole() {
        assert!(same_secret("s3cret", "s3cret"));
        for other in ["s3creT", "s3cre", "s3crett", ""] {
            assert!(!same_secret("s3cret", other), "{other}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_signature_verifies_over_the_exact_bytes_only() {
        let key = SigningKey::generate("alice").unwrap();
        let body = br#"{"cmd_id":"1","command":"restart"}"#;
        let signature = key.sign(body);
        assert_eq!(
            (signature.key.as_str(), signature.alg.as_str()),
            ("alice", "ed25519")
        );
        let public = key.verifying_key();
        assert!(public.verify(body, &signature.value));
        assert!(!public.verify(br#"{"cmd_id":"1","command":"stop"}"#, &signature.value));
        assert!(!public.verify(
            b" {\"cmd_id\":\"1\",\"command\":\"restart\"}",
            &signature.value
        ));
        let other = SigningKey::generate("alice").unwrap().verifying_key();
        assert!(!other.verify(body, &signature.value));
        assert!(!public.verify(body, "not base64!"));
        assert!(!public.verify(body, ""));
    }

    #[test]
    fn key_files_are_read_back_and_bad_ones_explained() {
        let key = SigningKey::generate("ops-1").unwrap();
        let file = key.to_file();
        assert!(file.contains("keep it secret"));
        assert_eq!(
            SigningKey::parse(&file).unwrap().public_line(),
            key.public_line()
        );
        assert_eq!(
            SigningKey::parse("hello").unwrap_err(),
            KeyError::NotPrivateKey
        );
        assert_eq!(
            SigningKey::parse(&key.public_line()).unwrap_err(),
            KeyError::PublicWherePrivate
        );
        assert_eq!(
            VerifyingKey::parse(&file).unwrap_err(),
            KeyError::PrivateWherePublic,
            "a private key pasted into an agent's configuration"
        );
        assert_eq!(
            SigningKey::parse("respawn-ed25519-private a/b AAAA").unwrap_err(),
            KeyError::BadName("a/b".into())
        );
        assert_eq!(
            SigningKey::parse("respawn-ed25519-private ok AAAA").unwrap_err(),
            KeyError::BadKey
        );
        assert!(SigningKey::generate("no spaces").is_err());
        let bare = key
            .public_line()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned();
        assert_eq!(VerifyingKey::parse(&bare).unwrap(), key.verifying_key());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2048)
        ))]

        /// No body but the signed one, and no tampered signature, verifies.
        #[test]
        fn only_the_signed_body_verifies(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            other in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<usize>(),
        ) {
            let key = SigningKey::from_seed("p", [7; 32]).unwrap();
            let signature = key.sign(&body);
            let public = key.verifying_key();
            prop_assert!(public.verify(&body, &signature.value));
            if other != body {
                prop_assert!(!public.verify(&other, &signature.value));
            }
            let mut raw = STANDARD.decode(&signature.value).unwrap();
            let i = flip % raw.len();
            raw[i] ^= 1 << (flip % 8);
            prop_assert!(!public.verify(&body, &STANDARD.encode(raw)));
        }

        /// Arbitrary text never makes key parsing panic.
        #[test]
        fn key_parsing_never_panics(text in ".{0,200}") {
            let _ = VerifyingKey::parse(&text);
            let _ = SigningKey::parse(&text);
        }
    }
}
