//! Twilio's webhooks, checked against `X-Twilio-Signature`: status
//! callbacks (delivery receipts) become DELIVERED and UNDELIVERED status
//! events, and incoming STOP and START replies change the suppression list.
//!
//! Each SMS is sent with a `StatusCallback` URL that carries the event's
//! ids in its query, with herald's own signature of them (`sig`, an HMAC
//! keyed by `--receipts-key`), so a callback can only name a send herald
//! made. Twilio signs the URL together with the parameters it posts. A
//! callback whose Twilio signature fails gets 403; one whose ids are
//! malformed, repeated or not signed by herald gets 400 or 403. Either way
//! nothing is emitted. A genuine one gets 200 only once its status event is
//! acknowledged by the broker, else 503, and Twilio tries again.
//!
//! Incoming messages are served beside the callback path, at `inbound`
//! (`https://herald.example.com/twilio/status` → `.../twilio/inbound`): the
//! URL to set as the number's or Messaging Service's incoming-message
//! webhook. Twilio itself answers STOP and START and stops sending to an
//! opted-out number; herald records the change so that it skips those
//! sends and reports them SUPPRESSED.
//!
//! Anyone on the internet can reach this listener, so everything a client
//! can make it hold is bounded: connections (`Limits`), the time to send
//! headers (which also closes idle keep-alive connections), the body's size
//! (checked before it is read) and the time to send it, and a connection's
//! whole lifetime.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use axum::routing::post;
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use reqwest::Url;
use sha1::Sha1;
use tokio::net::TcpListener;

use crate::pipeline::deliver::Provider;
use crate::pipeline::deliver::sms::{CallbackError, CallbackIds, StatusCallbacks};

pub(crate) use crate::serve::Limits;
use crate::flags::{self, ConfigError};
use crate::mask::Masked;
use secrecy::{ExposeSecret, SecretString};
use crate::model::{Channel, ErrorClass, ErrorCode, Status, StatusEvent};
use crate::pipeline::outcome::Publisher;
use crate::pipeline::suppression::{Change, Entry, Reason, Suppressions};

/// The header Twilio signs its webhooks in.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// How long a callback waits for its status event to be acknowledged
/// before asking Twilio to try again.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Twilio's signature: base64 of HMAC-SHA1, keyed by the auth token, over
/// the full URL followed by every posted parameter, sorted by name, each
/// name immediately followed by its value. As Twilio's own validators do,
/// a parameter repeated with the same value counts once.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD.encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `header` is the signature of this request, compared in
/// constant time.
pub(crate) fn verify(auth_token: &str, url: &str, params: &[(String, String)], header: &str) -> bool {
    let Ok(claimed) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else { return false };
    mac(auth_token, url, params).verify_slice(&claimed).is_ok()
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    let mut sorted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        sorted.entry(name).or_default().insert(value);
    }
    for (name, values) in sorted {
        for value in values {
            mac.update(name.as_bytes());
            mac.update(value.as_bytes());
        }
    }
    mac
}

/// The public URL's scheme and host, with the port and without it: Twilio
/// signs either, depending on the product, and its validators accept both.
fn origins(public_url: &Url) -> [String; 2] {
    let (scheme, host) = (public_url.scheme(), public_url.host_str().unwrap_or_default());
    let host = match public_url.host() {
        Some(url::Host::Ipv6(_)) if !host.starts_with('[') => format!("[{host}]"),
        _ => host.to_owned(),
    };
    let port = public_url.port_or_known_default().unwrap_or(443);
    [format!("{scheme}://{host}:{port}"), format!("{scheme}://{host}")]
}

struct Receiver {
    /// With the path and query of the request, the URL Twilio signed.
    origins: [String; 2],
    auth_token: SecretString,
    callbacks: StatusCallbacks,
    limits: Limits,
    publisher: Arc<Publisher>,
    suppressions: Arc<Suppressions>,
}

impl Receiver {
    /// Whether the request carries Twilio's signature of its URL and form.
    fn signed(&self, uri: &Uri, headers: &HeaderMap, params: &[(String, String)]) -> bool {
        let path = uri.path_and_query().map_or("", |p| p.as_str());
        let claimed = headers.get(SIGNATURE_HEADER).and_then(|h| h.to_str().ok());
        let signed = claimed.is_some_and(|claimed| {
            self.origins.iter().any(|origin| verify(self.auth_token.expose_secret(), &format!("{origin}{path}"), params, claimed))
        });
        if !signed {
            tracing::warn!(message = "Rejected a webhook without a valid X-Twilio-Signature.", path = uri.path());
        }
        signed
    }

    /// The posted form, read within the limits: refused before reading
    /// when it announces more, cut off when it sends more or too slowly.
    async fn form(&self, headers: &HeaderMap, body: Body) -> Result<Vec<(String, String)>, StatusCode> {
        let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > self.limits.max_body as u64) {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        let bytes: Bytes = match tokio::time::timeout(self.limits.body_timeout, axum::body::to_bytes(body, self.limits.max_body)).await {
            Err(_) => return Err(StatusCode::REQUEST_TIMEOUT),
            Ok(Err(_)) => return Err(StatusCode::PAYLOAD_TOO_LARGE),
            Ok(Ok(bytes)) => bytes,
        };
        Ok(form_urlencoded::parse(&bytes).into_owned().collect())
    }
}

/// The receipts listener, as configured.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) callbacks: StatusCallbacks,
    /// Checks Twilio's signatures.
    pub(crate) auth_token: SecretString,
    pub(crate) limits: Limits,
}

/// The flags of the receipts listener.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Delivery receipts")]
pub struct ReceiptsArgs {
    /// Address to accept Twilio status callbacks (delivery receipts) on, e.g. 0.0.0.0:8080. Off without it.
    #[arg(long, env = "HERALD_RECEIPTS_LISTEN")]
    pub(crate) receipts_listen: Option<SocketAddr>,

    /// The callback URL as Twilio reaches it (behind any proxy), e.g. <https://herald.example.com/twilio/status>; its path is served.
    #[arg(long, env = "HERALD_RECEIPTS_PUBLIC_URL")]
    pub(crate) receipts_public_url: Option<Url>,

    /// Key that signs the ids in callback URLs, so a callback can only name a send herald made. Derived from the auth token when not given.
    #[arg(long, env = "HERALD_RECEIPTS_KEY", hide_env_values = true)]
    pub(crate) receipts_key: Option<SecretString>,

    /// A file holding --receipts-key.
    #[arg(long, env = "HERALD_RECEIPTS_KEY_FILE", conflicts_with = "receipts_key")]
    pub(crate) receipts_key_file: Option<std::path::PathBuf>,

    /// Webhook connections open at once; more wait to be accepted.
    #[arg(long, env = "HERALD_RECEIPTS_MAX_CONNECTIONS", default_value_t = 256)]
    pub(crate) receipts_max_connections: usize,
}

impl ReceiptsArgs {
    /// The listener's settings when receipts are on. Twilio's signatures
    /// are checked with its `auth_token`, so receipts need one.
    pub(crate) fn settings(&self, auth_token: Option<SecretString>) -> Result<Option<Settings>, ConfigError> {
        flags::counts(&[("receipts-max-connections", self.receipts_max_connections, true)])?;
        if let Some(url) = self.receipts_public_url.as_ref().filter(|u| !flags::secure_or_local(u)) {
            return Err(ConfigError::ReceiptsUrl(url.to_string()));
        }
        let (listen, public_url) = match (self.receipts_listen, &self.receipts_public_url) {
            (None, None) => return Ok(None),
            (Some(listen), Some(url)) => (listen, url.clone()),
            _ => return Err(ConfigError::ReceiptsIncomplete),
        };
        let auth_token = auth_token.ok_or(ConfigError::ReceiptsWithoutTwilio)?;
        let key = flags::secret(&self.receipts_key, &self.receipts_key_file, "--receipts-key-file")?;
        Ok(Some(Settings {
            listen,
            callbacks: StatusCallbacks::new(public_url, key, &auth_token),
            auth_token,
            limits: Limits::new(self.receipts_max_connections),
        }))
    }
}

/// Serves Twilio's webhooks on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    settings: Settings,
    publisher: Arc<Publisher>,
    suppressions: Arc<Suppressions>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Settings { callbacks, auth_token, limits, .. } = settings;
    let inbound_url = callbacks.inbound_url();
    let callback_path = callbacks.public_url.path().to_owned();
    tracing::info!(message = "Accepting Twilio webhooks.", listen = %listener.local_addr()?, status_callback = %callbacks.public_url, incoming_messages = %inbound_url);
    let receiver = Arc::new(Receiver { origins: origins(&callbacks.public_url), auth_token, callbacks, limits, publisher, suppressions });
    let app = Router::new().route(&callback_path, post(callback)).route(inbound_url.path(), post(inbound)).with_state(receiver);
    crate::serve::accept(listener, app, limits, shutdown).await
}

async fn callback(State(r): State<Arc<Receiver>>, uri: Uri, headers: HeaderMap, body: Body) -> StatusCode {
    let params = match r.form(&headers, body).await {
        Ok(params) => params,
        Err(status) => return status,
    };
    if !r.signed(&uri, &headers, &params) {
        return StatusCode::FORBIDDEN;
    }
    // Signed by Twilio, but the ids must be herald's, as herald wrote them.
    let ids = match r.callbacks.callback_ids(uri.query().unwrap_or("")) {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!(message = "Rejected a status callback whose ids herald did not write.", %error);
            return match error {
                CallbackError::Malformed => StatusCode::BAD_REQUEST,
                CallbackError::Forged => StatusCode::FORBIDDEN,
            };
        }
    };
    let partition = ids.partition;
    let Some(event) = receipt(&params, ids) else {
        // queued, sent, and the other steps before the outcome.
        return StatusCode::NO_CONTENT;
    };
    tracing::debug!(message = "Delivery receipt.", event_id = event.event_id, status = event.status.symbol());
    match tokio::time::timeout(PUBLISH_TIMEOUT, r.publisher.publish_status(event, Some(partition))).await {
        Ok(Ok(())) => StatusCode::OK,
        Ok(Err(_)) | Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An incoming message: a STOP or START reply changes the suppression list;
/// anything else is left to whoever else handles replies. The answer is
/// empty TwiML, so Twilio sends nothing on herald's behalf.
async fn inbound(State(r): State<Arc<Receiver>>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let params = match r.form(&headers, body).await {
        Ok(params) => params,
        Err(status) => return status.into_response(),
    };
    if !r.signed(&uri, &headers, &params) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let Some(from) = param(&params, "From") else { return StatusCode::BAD_REQUEST.into_response() };
    let twiml = || ([(header::CONTENT_TYPE, "text/xml")], "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>");
    let entry = match opt_out(param(&params, "OptOutType").as_deref(), param(&params, "Body").as_deref()) {
        Some(Opt::Out(keyword)) => Some(Entry { reason: Reason::OptedOut, cause: format!("sms:{keyword}") }),
        Some(Opt::In) => None,
        None => return twiml().into_response(),
    };
    let change = Change { channel: Channel::Sms, recipient: from, entry };
    tracing::info!(message = "Opt-out changed by a reply.", recipient = %Masked(&change.recipient), opted_out = change.entry.is_some());
    r.suppressions.apply(&change);
    match tokio::time::timeout(PUBLISH_TIMEOUT, r.publisher.publish_change(&change)).await {
        Ok(Ok(())) => twiml().into_response(),
        Ok(Err(_)) | Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Opt {
    /// With the keyword, as Twilio reports it.
    Out(String),
    In,
}

/// Twilio's verdict on a reply: `OptOutType` with Advanced Opt-Out, or
/// else its default keywords, matched as Twilio matches them (the whole
/// body, any case).
fn opt_out(opt_out_type: Option<&str>, body: Option<&str>) -> Option<Opt> {
    const OUT: &[&str] = &["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"];
    const IN: &[&str] = &["START", "YES", "UNSTOP"];
    let keyword = match opt_out_type {
        Some(t) if !t.is_empty() => t.to_ascii_uppercase(),
        _ => body?.trim().to_ascii_uppercase(),
    };
    match keyword.as_str() {
        k if OUT.contains(&k) => Some(Opt::Out(keyword)),
        k if IN.contains(&k) => Some(Opt::In),
        _ => None,
    }
}

/// The value of form or query parameter `name`.
fn param(list: &[(String, String)], name: &str) -> Option<String> {
    list.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The status event a callback reports, if it reports an outcome.
fn receipt(params: &[(String, String)], ids: CallbackIds) -> Option<StatusEvent> {
    let param = |name: &str| param(params, name);
    let status = match param("MessageStatus")?.as_str() {
        "delivered" => Status::Delivered,
        "undelivered" | "failed" => Status::Undelivered,
        _ => return None,
    };
    let error_code = param("ErrorCode").filter(|c| !c.is_empty()).map(|c| ErrorCode::provider(Provider::Twilio, c));
    Some(StatusEvent {
        event_id: ids.event_id,
        user_id: ids.user_id,
        channel: Some(Channel::Sms),
        status,
        attempt: ids.attempt,
        provider: Some(Provider::Twilio),
        provider_message_id: param("MessageSid"),
        error_class: error_code.as_ref().map(|_| ErrorClass::Permanent),
        error_message: error_code.as_ref().map(|_| "the carrier did not deliver the message".to_owned()),
        error_code,
        occurred_at: Utc::now(),
        next_attempt_at: None,
        recipient: param("To").map(|to| Masked(&to).to_string()),
        // The request is not at hand: subscribers have these from its SENT.
        created_at: None,
        scheduled_at: None,
        sms: None,
        origin: None,
        tried: Vec::new(),
        locale: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_that_opt_out_and_in() {
        let out = |k: &str| Some(Opt::Out(k.to_owned()));
        assert_eq!(opt_out(Some("STOP"), Some("arrête")), out("STOP"), "Advanced Opt-Out decides");
        assert_eq!(opt_out(Some("START"), Some("whatever")), Some(Opt::In));
        assert_eq!(opt_out(Some("HELP"), Some("stop")), None, "HELP is neither");
        assert_eq!(opt_out(None, Some(" stop ")), out("STOP"));
        assert_eq!(opt_out(Some(""), Some("Unsubscribe")), out("UNSUBSCRIBE"));
        assert_eq!(opt_out(None, Some("unstop")), Some(Opt::In));
        assert_eq!(opt_out(None, Some("stop please")), None, "single words only, as Twilio");
        assert_eq!(opt_out(None, Some("thanks")), None);
        assert_eq!(opt_out(None, None), None);
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The example in Twilio's security documentation (auth token 12345),
    /// checked independently with Python's hmac module.
    #[test]
    fn twilio_documented_example() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let p = params(&[
            ("Digits", "1234"),
            ("To", "+18005551212"),
            ("From", "+12349013030"),
            ("Caller", "+12349013030"),
            ("CallSid", "CA1234567890ABCDE"),
        ]);
        assert_eq!(signature("12345", url, &p), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(verify("12345", url, &p, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        let mut repeated = p.clone();
        repeated.push(("To".into(), "+18005551212".into()));
        assert!(verify("12345", url, &repeated, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="), "an identical pair counts once");
    }

    #[test]
    fn anything_changed_breaks_the_signature() {
        let url = "https://h.example/twilio/status?event_id=e1&user_id=u1&attempt=1";
        let p = params(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]);
        let good = signature("token", url, &p);
        assert!(verify("token", url, &p, &good));
        assert!(!verify("other-token", url, &p, &good), "another account's token");
        assert!(!verify("token", &url.replace("e1", "e2"), &p, &good), "another event id in the URL");
        let mut altered = p.clone();
        altered[1].1 = "undelivered".into();
        assert!(!verify("token", url, &altered, &good), "another status");
        assert!(!verify("token", url, &p, ""), "empty");
        assert!(!verify("token", url, &p, "not base64!"), "garbage");
        assert!(!verify("token", url, &p, &good[..good.len() - 4]), "truncated");
    }

    #[test]
    fn the_signed_url_may_carry_the_default_port_or_not() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(origins(&url("https://h.example/x")), ["https://h.example:443", "https://h.example"]);
        assert_eq!(origins(&url("https://h.example:443/x")), ["https://h.example:443", "https://h.example"]);
        assert_eq!(origins(&url("http://127.0.0.1:8080/x")), ["http://127.0.0.1:8080", "http://127.0.0.1"]);
    }

    fn ids() -> CallbackIds {
        CallbackIds { event_id: "e 1&x".into(), user_id: "u/1".into(), attempt: 2, partition: 5 }
    }

    #[test]
    fn only_outcomes_become_status_events() {
        let receipt = |status: &str, code: &str| receipt(&params(&[("MessageSid", "SM1"), ("MessageStatus", status), ("ErrorCode", code)]), ids());
        let delivered = receipt("delivered", "").unwrap();
        assert_eq!((delivered.status, delivered.error_code, delivered.attempt), (Status::Delivered, None, 2));
        assert_eq!(delivered.provider_message_id.as_deref(), Some("SM1"));
        let undelivered = receipt("undelivered", "30003").unwrap();
        assert_eq!((undelivered.status, undelivered.error_code.as_ref().map(ErrorCode::as_str)), (Status::Undelivered, Some("twilio:30003")));
        assert_eq!(receipt("failed", "30008").unwrap().status, Status::Undelivered);
        for step in ["queued", "sending", "sent", "accepted", "scheduled", "read", "canceled"] {
            assert!(receipt(step, "").is_none(), "{step}");
        }
    }
}
