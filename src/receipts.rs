//! Twilio's webhooks, checked against `X-Twilio-Signature`: status
//! callbacks (delivery receipts) become DELIVERED and UNDELIVERED status
//! events, and incoming STOP and START replies change the suppression list.
//!
//! Each SMS is sent with a `StatusCallback` URL that carries the event's
//! ids in its query. Twilio signs the URL together with the parameters it
//! posts, so the ids cannot be forged either. A forged or unsigned callback
//! gets 403 and emits nothing. A genuine one gets 200 only once its status
//! event is acknowledged by the broker. Otherwise it gets 503, and Twilio
//! tries again.
//!
//! Incoming messages are served beside the callback path, at `inbound`
//! (`https://herald.example.com/twilio/status` → `.../twilio/inbound`): the
//! URL to set as the number's or Messaging Service's incoming-message
//! webhook. Twilio itself answers STOP and START and stops sending to an
//! opted-out number; herald records the change so that it skips those
//! sends and reports them SUPPRESSED.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use reqwest::Url;
use sha1::Sha1;

use crate::deliver::Provider;
use crate::mask::{Masked, Secret};
use crate::model::{Channel, ErrorClass, Status, StatusEvent};
use crate::outcome::Publisher;
use crate::suppression::{Change, Entry, Reason, Suppressions};

pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// How long a callback waits for its status event to be acknowledged
/// before asking Twilio to try again.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Twilio sends callbacks: the public URL (as Twilio sees it, behind
/// any proxy), and the address herald listens on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub public_url: Url,
    pub listen: SocketAddr,
}

impl Endpoint {
    /// Where Twilio posts incoming messages.
    pub fn inbound_url(&self) -> Url {
        self.public_url.join("inbound").expect("a relative path joins any base")
    }

    /// The `StatusCallback` for one attempt of one event.
    pub fn callback_url(&self, event_id: &str, user_id: &str, attempt: u32) -> Url {
        let mut url = self.public_url.clone();
        url.query_pairs_mut()
            .append_pair("event_id", event_id)
            .append_pair("user_id", user_id)
            .append_pair("attempt", &attempt.to_string());
        url
    }
}

/// Twilio's signature: base64 of HMAC-SHA1, keyed by the auth token, over
/// the full URL followed by every posted parameter, sorted by name, each
/// name immediately followed by its value.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD.encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `header` is the signature of this request, compared in
/// constant time.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], header: &str) -> bool {
    let Ok(claimed) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else { return false };
    mac(auth_token, url, params).verify_slice(&claimed).is_ok()
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

struct Receiver {
    /// Scheme, host and port of the public URL: with the path and query
    /// of the request, the URL Twilio signed.
    origin: String,
    auth_token: Secret,
    publisher: Arc<Publisher>,
    suppressions: Arc<Suppressions>,
}

impl Receiver {
    /// Whether the request carries Twilio's signature of its URL and form.
    fn signed(&self, uri: &Uri, headers: &HeaderMap, params: &[(String, String)]) -> bool {
        let url = format!("{}{}", self.origin, uri.path_and_query().map_or("", |p| p.as_str()));
        let signed = headers
            .get(SIGNATURE_HEADER)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|claimed| verify(self.auth_token.expose(), &url, params, claimed));
        if !signed {
            tracing::warn!(message = "Rejected a webhook without a valid X-Twilio-Signature.", path = uri.path());
        }
        signed
    }
}

/// Serves callbacks on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoint: Endpoint,
    auth_token: Secret,
    publisher: Arc<Publisher>,
    suppressions: Arc<Suppressions>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let origin = endpoint.public_url.origin().ascii_serialization();
    let receiver = Arc::new(Receiver { origin, auth_token, publisher, suppressions });
    let inbound_url = endpoint.inbound_url();
    let app = Router::new()
        .route(endpoint.public_url.path(), post(callback))
        .route(inbound_url.path(), post(inbound))
        .with_state(receiver);
    tracing::info!(message = "Accepting Twilio webhooks.", listen = %endpoint.listen, status_callback = %endpoint.public_url, incoming_messages = %inbound_url);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn callback(State(r): State<Arc<Receiver>>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    if !r.signed(&uri, &headers, &params) {
        return StatusCode::FORBIDDEN;
    }
    let query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let (Some(event_id), Some(user_id)) = (param(&query, "event_id"), param(&query, "user_id")) else {
        // Signed, so from Twilio, but not for a message herald sent.
        return StatusCode::BAD_REQUEST;
    };
    let Some(event) = receipt(&params, event_id, user_id, param(&query, "attempt").and_then(|a| a.parse().ok())) else {
        // queued, sent, and the other steps before the outcome.
        return StatusCode::NO_CONTENT;
    };
    tracing::debug!(message = "Delivery receipt.", event_id = event.event_id, status = event.status.symbol());
    match tokio::time::timeout(PUBLISH_TIMEOUT, r.publisher.publish_status(event)).await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An incoming message: a STOP or START reply changes the suppression list;
/// anything else is left to whoever else handles replies. The answer is
/// empty TwiML, so Twilio sends nothing on herald's behalf.
async fn inbound(State(r): State<Arc<Receiver>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
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
        Ok(()) => twiml().into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
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
fn receipt(params: &[(String, String)], event_id: String, user_id: String, attempt: Option<u32>) -> Option<StatusEvent> {
    let param = |name: &str| param(params, name);
    let status = match param("MessageStatus")?.as_str() {
        "delivered" => Status::Delivered,
        "undelivered" | "failed" => Status::Undelivered,
        _ => return None,
    };
    let error_code = param("ErrorCode").filter(|c| !c.is_empty()).map(|c| format!("twilio:{c}"));
    Some(StatusEvent {
        event_id,
        user_id,
        channel: Some(Channel::Sms),
        status,
        attempt: attempt.unwrap_or(0),
        provider: Some(Provider::Twilio.name().to_owned()),
        provider_message_id: param("MessageSid"),
        error_class: error_code.as_ref().map(|_| ErrorClass::Permanent),
        error_message: error_code.as_ref().map(|_| "the carrier did not deliver the message".to_owned()),
        error_code,
        occurred_at: Utc::now(),
        next_attempt_at: None,
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
    fn only_outcomes_become_status_events() {
        let receipt = |status: &str, code: &str| {
            receipt(&params(&[("MessageSid", "SM1"), ("MessageStatus", status), ("ErrorCode", code)]), "e".into(), "u".into(), Some(1))
        };
        let delivered = receipt("delivered", "").unwrap();
        assert_eq!((delivered.status, delivered.error_code), (Status::Delivered, None));
        assert_eq!(delivered.provider_message_id.as_deref(), Some("SM1"));
        let undelivered = receipt("undelivered", "30003").unwrap();
        assert_eq!((undelivered.status, undelivered.error_code.as_deref()), (Status::Undelivered, Some("twilio:30003")));
        assert_eq!(receipt("failed", "30008").unwrap().status, Status::Undelivered);
        for step in ["queued", "sending", "sent", "accepted", "scheduled", "read", "canceled"] {
            assert!(receipt(step, "").is_none(), "{step}");
        }
    }

    #[test]
    fn the_callback_url_carries_the_ids() {
        let endpoint = Endpoint { public_url: Url::parse("https://h.example/twilio/status").unwrap(), listen: "127.0.0.1:0".parse().unwrap() };
        assert_eq!(
            endpoint.callback_url("e 1&x", "u/1", 2).as_str(),
            "https://h.example/twilio/status?event_id=e+1%26x&user_id=u%2F1&attempt=2"
        );
    }
}
