//! Who may call the API, and for what. `--api-token` is one token with
//! every scope; `--api-tokens-file` lists more, each with its scopes, by
//! the SHA-256 of the token, so the file holds nothing a reader could
//! call the API with:
//!
//! ```text
//! # name     scopes         the token's SHA-256 (printf %s "$TOKEN" | sha256sum)
//! support    read,cancel    sha256:4a9e…
//! checkout   send           sha256:09c2…
//! ```
//!
//! The file is read again on SIGHUP; one that does not parse is refused,
//! naming its line, and the tokens in use stay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// What a token may be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `POST /v1/notifications` and its batch.
    Send,
    /// Notifications, a user's list and stats.
    Read,
    /// Cancelling.
    Cancel,
    /// Managing the API itself (webhook endpoints).
    Admin,
}

impl Scope {
    pub(crate) const ALL: [Scope; 4] = [Scope::Send, Scope::Read, Scope::Cancel, Scope::Admin];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Cancel => "cancel",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A token's name and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub name: String,
    scopes: u8,
}

impl Grant {
    fn every_scope(name: &str) -> Grant {
        Grant { name: name.to_owned(), scopes: Scope::ALL.iter().fold(0, |all, s| all | s.bit()) }
    }

    pub(crate) fn allows(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }
}

/// A token as the API keeps it: its SHA-256.
pub(crate) type Digest32 = [u8; 32];

pub(crate) fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// Every token the API takes.
#[derive(Debug)]
pub(crate) struct Tokens {
    single: Option<Digest32>,
    file: Option<PathBuf>,
    listed: RwLock<Arc<HashMap<Digest32, Grant>>>,
}

impl Tokens {
    /// `single` (every scope) and the tokens `file` lists.
    pub(crate) fn new(single: Option<&SecretString>, file: Option<&Path>) -> Result<Tokens, String> {
        let tokens = Tokens { single: single.map(|t| digest(t.expose_secret())), file: file.map(Path::to_owned), listed: RwLock::default() };
        tokens.reload()?;
        Ok(tokens)
    }

    /// What `given` may do, and the digest that stands for it; `None` for
    /// a token the API does not know. Tokens are looked up by digest: how
    /// long a lookup takes says nothing that helps find a token.
    pub(crate) fn grant(&self, given: &str) -> Option<(Digest32, Grant)> {
        let d = digest(given);
        if self.single == Some(d) {
            return Some((d, Grant::every_scope("--api-token")));
        }
        let listed = self.listed.read().unwrap_or_else(|p| p.into_inner()).clone();
        listed.get(&d).map(|g| (d, g.clone()))
    }

    /// Reads the file again; a file that does not parse is refused and the
    /// tokens in use stay. How many it lists.
    pub(crate) fn reload(&self) -> Result<usize, String> {
        let Some(file) = &self.file else { return Ok(0) };
        let listed = read(file)?;
        // Listed with fewer scopes, it would still have every one: the
        // operator meant to narrow it, and would not see that it was not.
        if let Some((_, grant)) = self.single.and_then(|d| listed.get_key_value(&d)) {
            return Err(format!("{}: {:?} is --api-token's own token, which has every scope; give it one of its own", file.display(), grant.name));
        }
        let count = listed.len();
        *self.listed.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(listed);
        Ok(count)
    }

    /// What reloads the file on every SIGHUP, to be spawned; `None` without
    /// a file. The signal is listened for before this returns, so a SIGHUP
    /// sent once the API answers is never the default one, which ends the
    /// process.
    pub(crate) fn reload_on_hangup(self: Arc<Self>) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.file.as_ref()?;
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!(message = "Cannot listen for SIGHUP; the tokens file is read only at startup.");
            return None;
        };
        Some(async move {
            while hangups.recv().await.is_some() {
                match self.reload() {
                    Ok(tokens) => tracing::info!(message = "API tokens reloaded.", tokens),
                    Err(error) => tracing::warn!(message = "The tokens file was refused; the tokens in use stay.", %error),
                }
            }
        })
    }
}

/// The tokens a file lists, or why it cannot be used.
fn read(path: &Path) -> Result<HashMap<Digest32, Grant>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(text: &str) -> Result<HashMap<Digest32, Grant>, String> {
    let mut tokens = HashMap::new();
    let mut names = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = |reason: String| format!("line {}: {reason}", n + 1);
        let [name, scopes, hash] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            return Err(at("give a name, its scopes and sha256:<64 hex digits>, separated by spaces".into()));
        };
        let mut bits = 0;
        for s in scopes.split(',') {
            let scope = Scope::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| at(format!("unknown scope {s:?}; the scopes are send, read, cancel and admin")))?;
            bits |= scope.bit();
        }
        let digest = hash
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64)
            .and_then(|h| (0..32).map(|i| u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).ok()).collect::<Option<Vec<u8>>>())
            .and_then(|d| Digest32::try_from(d).ok())
            .ok_or_else(|| at("the token must be given as sha256: and 64 hex digits, never as itself".into()))?;
        if !names.insert(name.to_owned()) {
            return Err(at(format!("{name:?} is named twice")));
        }
        if tokens.insert(digest, Grant { name: name.to_owned(), scopes: bits }).is_some() {
            return Err(at("this token is listed twice".into()));
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: Digest32) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_file_grants_each_token_its_scopes_and_the_single_token_every_scope() {
        let file = format!("# who what\nsupport read,cancel sha256:{}\n\ncheckout send sha256:{}  # the shop\n", hex(digest("s-token")), hex(digest("c-token")));
        let dir = std::env::temp_dir().join(format!("herald-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, &file).unwrap();
        let tokens = Tokens::new(Some(&SecretString::from("all-token".to_owned())), Some(&path)).unwrap();
        let (_, support) = tokens.grant("s-token").unwrap();
        assert_eq!(support.name, "support");
        assert!(support.allows(Scope::Read) && support.allows(Scope::Cancel) && !support.allows(Scope::Send) && !support.allows(Scope::Admin));
        let (_, checkout) = tokens.grant("c-token").unwrap();
        assert!(checkout.allows(Scope::Send) && !checkout.allows(Scope::Read));
        let (_, all) = tokens.grant("all-token").unwrap();
        assert!(Scope::ALL.iter().all(|s| all.allows(*s)));
        assert!(tokens.grant("nobody").is_none());
        assert!(tokens.grant("").is_none());
        // Reloaded: the new list in, the old out; a bad file changes nothing.
        std::fs::write(&path, format!("support admin sha256:{}\n", hex(digest("s-token")))).unwrap();
        assert_eq!(tokens.reload(), Ok(1));
        assert!(tokens.grant("s-token").unwrap().1.allows(Scope::Admin));
        assert!(tokens.grant("c-token").is_none());
        std::fs::write(&path, "support reed sha256:00\n").unwrap();
        assert!(tokens.reload().unwrap_err().contains("line 1: unknown scope \"reed\""));
        assert!(tokens.grant("s-token").is_some(), "the tokens in use stay");
        // --api-token listed with fewer scopes: refused, at a reload and at
        // startup, rather than silently keeping every scope.
        std::fs::write(&path, format!("narrowed read sha256:{}\n", hex(digest("all-token")))).unwrap();
        assert!(tokens.reload().unwrap_err().contains("\"narrowed\" is --api-token's own token"));
        assert!(Tokens::new(Some(&SecretString::from("all-token".to_owned())), Some(&path)).is_err());
        assert!(Tokens::new(None, Some(&path)).is_ok(), "without --api-token it is just a token");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_that_would_be_misread_is_refused_naming_its_line() {
        let good = format!("sha256:{}", hex(digest("t")));
        for (text, says) in [
            (format!("a read {good}\nb read"), "line 2: give a name"),
            (format!("a read,write {good}"), "unknown scope \"write\""),
            ("a read my-plain-token".to_owned(), "never as itself"),
            (format!("a read sha256:{}", &good[7..70]), "64 hex digits"),
            (format!("a read {good}\na send sha256:{}", hex(digest("u"))), "line 2: \"a\" is named twice"),
            (format!("a read {good}\nb send {good}"), "line 2: this token is listed twice"),
        ] {
            let error = parse(&text).unwrap_err();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }
}
