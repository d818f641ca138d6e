//! Who parked a record, and proof that it was herald.
//!
//! A delay topic is shared ground: anyone with write access can put a
//! record there, and another deployment on the same cluster (another group
//! id) parks its own records in it when the names are the same. herald acts
//! on its envelope (attempts made, error, origin) only when it can prove it
//! wrote it: every copy herald writes names its owner, the consumer group,
//! in `herald-owner`, and carries `herald-tag`, an HMAC-SHA256, keyed by
//! `--envelope-key`, over the record's key, value and every other header,
//! in order.
//!
//! On a delay topic, then, a record is
//! - **own**: the owner is this group and the tag is valid: its envelope
//!   is read as written;
//! - **foreign**: another group parked it: that deployment acts on it, and
//!   this one skips it (re-parking it multiplied each other's copies);
//! - **unsealed**: no owner, or this group's name with a tag that does not
//!   verify (an older build parked it, or a producer wrote it): judged as a
//!   new request, every check included, so writing a retry topic never
//!   skips a rate limit. Only its not-before time is kept: waiting grants
//!   nothing, and an older build's retry still waits its delay.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use crate::flags::{self, ConfigError};

/// The deployment (consumer group) that parked a record, or wrote a status.
pub const OWNER: &str = "herald-owner";
/// The HMAC over a parked record, its owner and headers.
pub const TAG: &str = "herald-tag";

/// Bumped if what the tag covers ever changes, so old tags fail cleanly.
const DOMAIN: &[u8] = b"herald-envelope-v1";

/// How a record on a delay topic came to be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Read from the requests topic: a producer's record.
    Request,
    /// Parked by this deployment, and proven so.
    Own,
    /// Parked by another deployment on the same topics.
    Foreign,
    /// On a delay topic without a valid seal of this deployment's.
    Unsealed(Unsealed),
}

/// Why a record on a delay topic is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealed {
    /// No `herald-owner`: an older build, or a producer.
    Missing,
    /// This deployment's name, and a tag that does not verify.
    Forged,
}

impl Unsealed {
    /// The metric label of this reason.
    pub fn label(self) -> &'static str {
        match self {
            Unsealed::Missing => "missing",
            Unsealed::Forged => "invalid",
        }
    }
}

/// The flag of the seal.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Topics")]
pub struct SealArgs {
    /// Secret (at least 32 bytes) that signs what herald parks on its delay topics, so that a record written there by anyone else is judged as a new request. The same on every instance of a deployment; required by the pipeline.
    #[arg(long, env = "HERALD_ENVELOPE_KEY", hide_env_values = true)]
    pub(crate) envelope_key: Option<secrecy::SecretString>,

    /// A file holding --envelope-key (as Kubernetes and Docker mount secrets).
    #[arg(long, env = "HERALD_ENVELOPE_KEY_FILE", conflicts_with = "envelope_key")]
    pub(crate) envelope_key_file: Option<std::path::PathBuf>,
}

impl SealArgs {
    /// The seal of the deployment `owner` (its consumer group).
    pub(crate) fn seal(&self, owner: &str) -> Result<Seal, ConfigError> {
        let key = flags::secret(&self.envelope_key, &self.envelope_key_file, "--envelope-key-file")?.ok_or(ConfigError::NoEnvelopeKey)?;
        flags::long_enough("--envelope-key", &key)?;
        Ok(Seal::new(key.expose_secret().as_bytes(), owner))
    }
}

/// Seals what herald parks, and checks what it reads back. Cheap to clone.
#[derive(Clone)]
pub struct Seal(std::sync::Arc<Keyed>);

struct Keyed {
    key: SecretSlice<u8>,
    /// The consumer group: who parked a record.
    owner: String,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal").field("owner", &self.0.owner).finish_non_exhaustive()
    }
}

impl Seal {
    /// The seal of the deployment `owner`, keyed by `--envelope-key`.
    pub fn new(key: &[u8], owner: &str) -> Seal {
        Seal(std::sync::Arc::new(Keyed { key: key.to_vec().into(), owner: owner.to_owned() }))
    }

    /// `headers` with this deployment's owner and the tag over everything
    /// added. The caller has removed any earlier owner and tag.
    pub fn seal(&self, key: Option<&[u8]>, value: Option<&[u8]>, headers: OwnedHeaders) -> OwnedHeaders {
        let headers = headers.insert(Header { key: OWNER, value: Some(self.0.owner.as_bytes()) });
        let tag = BASE64.encode(self.mac(key, value, &headers).finalize().into_bytes());
        headers.insert(Header { key: TAG, value: Some(tag.as_str()) })
    }

    /// `headers` (a status event's propagated ones, if any) with this
    /// deployment's name added: the send ledger, read back from a status
    /// topic another deployment may share, trusts only its own.
    pub fn own(&self, headers: Option<OwnedHeaders>) -> OwnedHeaders {
        headers.unwrap_or_else(|| OwnedHeaders::new_with_capacity(1)).insert(Header { key: OWNER, value: Some(self.0.owner.as_bytes()) })
    }

    /// Whether a status event was written by another deployment: one that
    /// names no owner (an older build) is taken as this one's.
    pub fn foreign_status(&self, headers: Option<&rdkafka::message::BorrowedHeaders>) -> bool {
        let owner = headers.and_then(|h| h.iter().find(|h| h.key == OWNER)).and_then(|h| h.value);
        owner.is_some_and(|o| o != self.0.owner.as_bytes())
    }

    /// Whose record this is. Only a record read from a delay topic is
    /// asked.
    pub fn check(&self, key: Option<&[u8]>, value: Option<&[u8]>, headers: Option<&OwnedHeaders>) -> Provenance {
        let Some(headers) = headers else { return Provenance::Unsealed(Unsealed::Missing) };
        let owner = headers.iter().find(|h| h.key == OWNER).and_then(|h| h.value);
        // The tag is the last header: one added after it would be read
        // without being covered.
        let tag = headers.iter().last().filter(|h| h.key == TAG).and_then(|h| h.value);
        match owner {
            None => Provenance::Unsealed(Unsealed::Missing),
            Some(o) if o != self.0.owner.as_bytes() => Provenance::Foreign,
            Some(_) => {
                let valid = tag.and_then(|t| BASE64.decode(t).ok()).is_some_and(|tag| {
                    // `verify_slice` compares in constant time.
                    self.mac(key, value, headers).verify_slice(&tag).is_ok()
                });
                if valid {
                    Provenance::Own
                } else {
                    Provenance::Unsealed(Unsealed::Forged)
                }
            }
        }
    }

    /// Every part is length-prefixed, and an absent part differs from an
    /// empty one, so no two records run together into one input.
    fn mac(&self, key: Option<&[u8]>, value: Option<&[u8]>, headers: &OwnedHeaders) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.key.expose_secret()).expect("HMAC takes keys of any length");
        mac.update(DOMAIN);
        let mut part = |bytes: Option<&[u8]>| match bytes {
            None => mac.update(&[0]),
            Some(b) => {
                mac.update(&[1]);
                mac.update(&(b.len() as u64).to_be_bytes());
                mac.update(b);
            }
        };
        part(key);
        part(value);
        let mut covered = 0u64;
        for h in headers.iter() {
            if h.key == TAG {
                break;
            }
            part(Some(h.key.as_bytes()));
            part(h.value);
            covered += 1;
        }
        part(Some(&covered.to_be_bytes()));
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal() -> Seal {
        Seal::new(b"0123456789abcdef0123456789abcdef", "herald")
    }

    fn headers() -> OwnedHeaders {
        OwnedHeaders::new().insert(Header { key: "traceparent", value: Some("00-abc") }).insert(Header { key: "herald-attempts", value: Some("1") })
    }

    #[test]
    fn a_sealed_record_is_own_and_any_change_unseals_it() {
        let s = seal();
        let sealed = s.seal(Some(b"user-1"), Some(b"value"), headers());
        assert_eq!(s.check(Some(b"user-1"), Some(b"value"), Some(&sealed)), Provenance::Own);
        let forged = Provenance::Unsealed(Unsealed::Forged);
        assert_eq!(s.check(Some(b"user-2"), Some(b"value"), Some(&sealed)), forged, "key");
        assert_eq!(s.check(Some(b"user-1"), Some(b"valuE"), Some(&sealed)), forged, "value");
        assert_eq!(s.check(None, Some(b"value"), Some(&sealed)), forged, "no key is not an empty key");
        let mut changed = OwnedHeaders::new();
        for h in sealed.iter() {
            let value = if h.key == "herald-attempts" { Some(&b"0"[..]) } else { h.value };
            changed = changed.insert(Header { key: h.key, value });
        }
        assert_eq!(s.check(Some(b"user-1"), Some(b"value"), Some(&changed)), forged, "a header");
        let appended = sealed.clone().insert(Header { key: "herald-attempts", value: Some("0") });
        assert_eq!(s.check(Some(b"user-1"), Some(b"value"), Some(&appended)), forged, "a header after the tag");
    }

    #[test]
    fn another_key_or_owner_is_not_ours() {
        let sealed = seal().seal(Some(b"u"), Some(b"v"), headers());
        let other_key = Seal::new(b"another key, as long as the first", "herald");
        assert_eq!(other_key.check(Some(b"u"), Some(b"v"), Some(&sealed)), Provenance::Unsealed(Unsealed::Forged));
        let other_group = Seal::new(b"0123456789abcdef0123456789abcdef", "herald-eu");
        assert_eq!(other_group.check(Some(b"u"), Some(b"v"), Some(&sealed)), Provenance::Foreign);
        assert_eq!(seal().check(Some(b"u"), Some(b"v"), Some(&headers())), Provenance::Unsealed(Unsealed::Missing));
        assert_eq!(seal().check(Some(b"u"), Some(b"v"), None), Provenance::Unsealed(Unsealed::Missing));
        let no_tag = headers().insert(Header { key: OWNER, value: Some("herald") });
        assert_eq!(seal().check(Some(b"u"), Some(b"v"), Some(&no_tag)), Provenance::Unsealed(Unsealed::Forged));
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        assert!(!format!("{:?}", seal()).contains("0123456789"));
    }
}
