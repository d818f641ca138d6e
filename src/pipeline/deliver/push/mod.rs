//! Push through FCM HTTP v1, authorised by an OAuth2 access token obtained
//! with a service-account JWT and cached until shortly before it expires.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::breaker::CircuitState;
use super::{Answer, Call, Delivered, DeliveryError, Dispatch, Gateway, Provider};
use crate::model::{AndroidOverrides, ApnsOverrides, Channel, ErrorCode, InvalidReason, Request, Tried};
use crate::pipeline::suppression::Reason;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Refresh this long before expiry so a token never dies mid-request.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The fields herald needs from a Google service-account key file.
#[derive(Clone, Deserialize)]
pub(crate) struct ServiceAccount {
    pub client_email: String,
    /// Named in the JWT's `kid`, so Google picks the key without trying each.
    pub private_key_id: Option<String>,
    private_key: SecretString,
    pub token_uri: String,
    pub project_id: Option<String>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount").field("client_email", &self.client_email).finish_non_exhaustive()
    }
}

/// What is wrong with the key file; the caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("it is not a service-account key: {0}")]
    Parse(serde_json::Error),
    #[error("its private key ({0}) is not an RSA key in PEM")]
    Key(String),
    #[error("it names no Firebase project: set --fcm-project-id or use a key file with project_id")]
    NoProject,
}

pub(crate) struct Fcm {
    http: reqwest::Client,
    /// `{base}/v1/projects/{project}/messages:send`, built once.
    send_url: Url,
    account: ServiceAccount,
    key: EncodingKey,
    /// Held across the token exchange so concurrent sends wait for one
    /// exchange instead of each starting their own.
    token: Mutex<Option<AccessToken>>,
}

struct AccessToken {
    value: SecretString,
    refresh_at: Instant,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct Sent {
    name: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GoogleError,
}

#[derive(Deserialize)]
struct GoogleError {
    status: Option<String>,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
}

impl Fcm {
    pub(crate) fn load_credentials(path: &Path) -> Result<ServiceAccount, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(CredentialsError::Read)?;
        serde_json::from_str(&text).map_err(CredentialsError::Parse)
    }

    /// Whether the key signs: checked at startup, before any connection.
    pub(crate) fn check_key(account: &ServiceAccount) -> Result<(), CredentialsError> {
        EncodingKey::from_rsa_pem(account.private_key.expose_secret().as_bytes())
            .map(|_| ())
            .map_err(|_| CredentialsError::Key(account.client_email.clone()))
    }

    pub(crate) fn new(
        http: reqwest::Client,
        base: &Url,
        account: ServiceAccount,
        project: Option<String>,
    ) -> Result<Self, CredentialsError> {
        let project = project.or_else(|| account.project_id.clone()).ok_or(CredentialsError::NoProject)?;
        let key = EncodingKey::from_rsa_pem(account.private_key.expose_secret().as_bytes())
            .map_err(|_| CredentialsError::Key(account.client_email.clone()))?;
        let send_url = base.join(&format!("v1/projects/{project}/messages:send")).expect("project id forms a valid path");
        Ok(Fcm { http, send_url, account, key, token: Mutex::new(None) })
    }

    async fn post(&self, message: &PushMessage) -> Result<Delivered, DeliveryError> {
        let token = self.access_token().await?;
        let request = self
            .http
            .post(self.send_url.clone())
            .bearer_auth(token.expose_secret())
            // Without it FCM may leave out `details[].errorCode`, by which
            // herald tells UNREGISTERED (suppress the token) from NOT_FOUND.
            .header("X-GOOG-API-FORMAT-VERSION", "2")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(message.body.clone());
        let answer = Answer::of(Provider::Fcm, request).await?;
        let (status, retry_after) = (answer.status, answer.retry_after);
        if status.is_success() {
            let sent: Sent = answer.body().await?;
            return Ok(Delivered { provider: Provider::Fcm, message_id: Some(sent.name) });
        }
        if status == StatusCode::UNAUTHORIZED {
            // Revoked or expired early: the next attempt exchanges afresh.
            *self.token.lock().await = None;
        }
        let body: Option<ErrorBody> = answer.error().await;
        Err(classify(status, body.map(|b| b.error), retry_after))
    }

    async fn access_token(&self) -> Result<SecretString, DeliveryError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        let unavailable = |code: ErrorCode, message: String| DeliveryError::Unavailable { provider: Provider::Fcm, code, message, retry_after: None };
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let header = Header { kid: self.account.private_key_id.clone(), ..Header::new(Algorithm::RS256) };
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| unavailable(ErrorCode::herald("oauth:sign"), e.to_string()))?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)];
        let answer = Answer::of(Provider::Fcm, self.http.post(&self.account.token_uri).form(&form)).await?;
        if !answer.status.is_success() {
            // An auth failure stops every push; retries keep the messages
            // while an operator fixes the key.
            return Err(unavailable(ErrorCode::token_exchange(answer.status.as_u16()), "token exchange refused".into()));
        }
        let token: TokenResponse = answer.body().await?;
        let lifetime = Duration::from_secs(token.expires_in).saturating_sub(REFRESH_MARGIN);
        let value = SecretString::from(token.access_token);
        *cached = Some(AccessToken { value: value.clone(), refresh_at: Instant::now() + lifetime });
        Ok(value)
    }
}

/// FCM's request body, borrowed from the request.
#[derive(Serialize)]
struct Message<'a> {
    message: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    token: &'a str,
    notification: Notification<'a>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    data: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    android: Option<Android<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apns: Option<Apns<'a>>,
}

#[derive(Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    body: &'a str,
}

/// FCM's `AndroidConfig`. Only what is set is sent, so FCM's defaults
/// apply to the rest.
#[derive(Serialize)]
struct Android<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    collapse_key: Option<&'a str>,
    /// A protobuf Duration, in JSON: seconds with an "s".
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<AndroidNotification<'a>>,
}

#[derive(Serialize)]
struct AndroidNotification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    click_action: Option<&'a str>,
}

/// FCM's `ApnsConfig`: headers, and the `aps` dictionary of the payload.
#[derive(Serialize)]
struct Apns<'a> {
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    headers: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<ApnsPayload<'a>>,
}

#[derive(Serialize)]
struct ApnsPayload<'a> {
    aps: Aps<'a>,
}

#[derive(Serialize)]
struct Aps<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<&'a str>,
    #[serde(rename = "thread-id", skip_serializing_if = "Option::is_none")]
    thread_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<i32>,
    #[serde(rename = "content-available", skip_serializing_if = "Option::is_none")]
    content_available: Option<u8>,
}

impl<'a> Message<'a> {
    fn of(request: &'a Request) -> Self {
        let content = &request.content;
        Message {
            message: Inner {
                token: &request.recipient,
                notification: Notification { title: content.title.as_deref(), body: &content.body },
                data: &content.data,
                android: content.android.as_deref().and_then(Android::of),
                apns: content.apns.as_deref().and_then(Apns::of),
            },
        }
    }
}

impl<'a> Android<'a> {
    /// `None` when nothing is set: empty overrides add nothing.
    fn of(a: &'a AndroidOverrides) -> Option<Self> {
        let notification = AndroidNotification { channel_id: a.channel_id.as_deref(), sound: a.sound.as_deref(), click_action: a.click_action.as_deref() };
        let notification = (notification.channel_id.is_some() || notification.sound.is_some() || notification.click_action.is_some()).then_some(notification);
        let android = Android {
            priority: a.priority.map(|p| p.symbol()),
            collapse_key: a.collapse_key.as_deref(),
            ttl: a.ttl_seconds.map(|s| format!("{s}s")),
            notification,
        };
        (android.priority.is_some() || android.collapse_key.is_some() || android.ttl.is_some() || android.notification.is_some()).then_some(android)
    }
}

impl<'a> Apns<'a> {
    fn of(a: &'a ApnsOverrides) -> Option<Self> {
        let aps = Aps {
            sound: a.sound.as_deref(),
            category: a.category.as_deref(),
            thread_id: a.thread_id.as_deref(),
            badge: a.badge,
            content_available: a.content_available.then_some(1),
        };
        let set = aps.sound.is_some() || aps.category.is_some() || aps.thread_id.is_some() || aps.badge.is_some() || aps.content_available.is_some();
        let apns = Apns { headers: &a.headers, payload: set.then_some(ApnsPayload { aps }) };
        (!apns.headers.is_empty() || apns.payload.is_some()).then_some(apns)
    }
}

const PERMANENT: &[&str] = &["UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR"];

fn classify(status: StatusCode, error: Option<GoogleError>, retry_after: Option<Duration>) -> DeliveryError {
    let fcm_code = error.as_ref().and_then(|e| e.details.iter().find_map(|d| d.error_code.clone()));
    let code = fcm_code.clone().or_else(|| error.and_then(|e| e.status));
    let (code, message) = match code {
        Some(c) => (ErrorCode::provider(Provider::Fcm, &c), format!("FCM answered {c}")),
        None => (ErrorCode::http(status.as_u16()), format!("FCM answered HTTP {status}")),
    };
    let permanent = match fcm_code.as_deref() {
        Some(c) => PERMANENT.contains(&c),
        None => status.is_client_error() && !matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::UNAUTHORIZED),
    };
    if fcm_code.as_deref() == Some("UNREGISTERED") {
        return DeliveryError::RecipientGone { provider: Provider::Fcm, code, message, reason: Reason::TokenUnregistered };
    }
    if permanent {
        DeliveryError::Rejected { provider: Provider::Fcm, code, message }
    } else {
        DeliveryError::Unavailable { provider: Provider::Fcm, code, message, retry_after }
    }
}

/// FCM refuses messages whose payload is larger. Counted here: the
/// notification, the data and the platform overrides.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 4096;
/// FCM keeps a message at most 28 days.
const MAX_TTL_SECONDS: i64 = 28 * 24 * 3600;

/// The push stage: FCM (or a dry run).
pub(crate) struct PushStage {
    pub dispatch: Dispatch<Fcm>,
}

impl PushStage {
    /// The message to send for `request`, encoded, or why it can never be
    /// sent here.
    pub(crate) fn prepare(&self, request: &Request) -> Result<PushMessage, InvalidReason> {
        if let Some(reason) = self.dispatch.refuses(Channel::Push) {
            return Err(reason);
        }
        prepare(request)
    }

    /// What a stage that calls nobody answers; `None` when a provider must
    /// be called.
    pub(crate) fn answer_now(&self) -> Option<Delivered> {
        self.dispatch.answer_now()
    }

    /// Sends a push (see [`Dispatch::send`]).
    pub(crate) async fn send(&self, message: &PushMessage, call: Call<'_>, tried: &mut Vec<Tried>) -> Result<Delivered, DeliveryError> {
        self.dispatch.send(message, call, tried).await
    }

    /// Each provider's circuit, now.
    pub(crate) fn circuits(&self) -> Vec<(Provider, CircuitState)> {
        self.dispatch.circuits()
    }

    /// The providers in failover order, for people.
    pub(crate) fn describe(&self) -> String {
        self.dispatch.describe()
    }
}

/// FCM's request body for one push, checked against FCM's rules and
/// encoded once: every attempt, and every provider, sends these bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PushMessage {
    body: bytes::Bytes,
}

impl PushMessage {
    #[cfg(test)]
    pub(crate) fn json(&self) -> &[u8] {
        &self.body
    }
}

impl Gateway for Fcm {
    type Message = PushMessage;

    fn provider(&self) -> Provider {
        Provider::Fcm
    }

    async fn send(&self, message: &PushMessage, _: Call<'_>) -> Result<Delivered, DeliveryError> {
        self.post(message).await
    }
}

/// Checks a push request against FCM's rules, the size of its payload
/// among them, and encodes it. The parts FCM counts are written one by
/// one, so their sizes are known without writing anything twice.
fn prepare(request: &Request) -> Result<PushMessage, InvalidReason> {
    if request.recipient.trim().is_empty() {
        return Err(InvalidReason::EmptyPushToken);
    }
    if request.content.body.trim().is_empty() && request.content.title.as_deref().unwrap_or("").trim().is_empty() {
        return Err(InvalidReason::EmptyBody);
    }
    if let Some(ttl) = request.content.android.as_ref().and_then(|a| a.ttl_seconds) {
        if !(0..=MAX_TTL_SECONDS).contains(&ttl) {
            return Err(InvalidReason::InvalidOverride("android.ttl_seconds"));
        }
    }
    if request.content.apns.as_ref().and_then(|a| a.badge).is_some_and(|b| b < 0) {
        return Err(InvalidReason::InvalidOverride("apns.badge"));
    }
    let message = Message::of(request).message;
    let mut body = Vec::with_capacity(256 + request.content.body.len());
    body.extend_from_slice(b"{\"message\":{\"token\":");
    write_str(&mut body, message.token);
    body.extend_from_slice(b",\"notification\":");
    let mut payload = write_notification(&mut body, &message.notification);
    if !message.data.is_empty() {
        body.extend_from_slice(b",\"data\":");
        payload += write(&mut body, message.data);
    }
    if let Some(android) = &message.android {
        body.extend_from_slice(b",\"android\":");
        payload += write(&mut body, android);
    }
    if let Some(apns) = &message.apns {
        body.extend_from_slice(b",\"apns\":");
        payload += write(&mut body, apns);
    }
    body.extend_from_slice(b"}}");
    if payload > MAX_PAYLOAD_BYTES {
        return Err(InvalidReason::PayloadTooLarge { bytes: payload, max: MAX_PAYLOAD_BYTES });
    }
    Ok(PushMessage { body: body.into() })
}

/// Appends `value` as JSON, and says how many bytes that took.
fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> usize {
    let before = out.len();
    serde_json::to_writer(&mut *out, value).expect("a message serializes");
    out.len() - before
}

/// [`write`] for the notification every push has, by hand: serde's
/// struct and string machinery was most of what preparing a push cost.
fn write_notification(out: &mut Vec<u8>, notification: &Notification<'_>) -> usize {
    let before = out.len();
    out.push(b'{');
    if let Some(title) = notification.title {
        out.extend_from_slice(b"\"title\":");
        write_str(out, title);
        out.push(b',');
    }
    out.extend_from_slice(b"\"body\":");
    write_str(out, notification.body);
    out.push(b'}');
    out.len() - before
}

/// Appends `s` as a JSON string, byte for byte as serde_json writes it.
/// Most strings need no escape, and saying so takes comparisons without
/// branches, which the compiler turns into vector code; serde_json looks
/// each byte up in a table.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let escapes = s.as_bytes().iter().fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escapes {
        write(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests;
