//! Fake providers on loopback. Each checks a request the way the real API
//! does (path, auth, content type, required fields), records it, and
//! answers from a per-recipient script: by default, success.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

/// A request the fake accepted as well-formed.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// Form fields, in order (Twilio, token exchange).
    pub form: Vec<(String, String)>,
    /// JSON body (FCM).
    pub json: Option<Value>,
    pub headers: HeaderMap,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the fake answers one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Accept,
    /// An error response: HTTP status, the provider's error code, and an
    /// optional `Retry-After` in seconds.
    Fail { status: u16, code: Option<String>, retry_after: Option<u64> },
}

impl Reply {
    pub fn fail(status: u16, code: &str) -> Reply {
        Reply::Fail { status, code: Some(code.to_owned()), retry_after: None }
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    /// Replies per recipient, used up in order; then `Accept`.
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    /// Applied to every message request before answering.
    latency: Mutex<Duration>,
    /// Until then, every message request gets this reply: an outage.
    outage: Mutex<Option<(Instant, Reply)>>,
    counter: Mutex<u64>,
    /// Requests received, recorded or not.
    received: std::sync::atomic::AtomicUsize,
    /// Only counted, not recorded: a benchmark's millions of requests would
    /// otherwise cost the fake more than answering them.
    count_only: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn next_reply(&self, recipient: &str) -> Reply {
        if let Some((until, reply)) = self.outage.lock().unwrap().clone() {
            if Instant::now() < until {
                return reply;
            }
        }
        self.script.lock().unwrap().get_mut(recipient).and_then(VecDeque::pop_front).unwrap_or(Reply::Accept)
    }

    fn keep(&self, recorded: impl FnOnce() -> Recorded) {
        use std::sync::atomic::Ordering;
        self.received.fetch_add(1, Ordering::Relaxed);
        if !self.count_only.load(Ordering::Relaxed) {
            self.requests.lock().unwrap().push(recorded());
        }
    }

    fn next_id(&self) -> u64 {
        let mut c = self.counter.lock().unwrap();
        *c += 1;
        *c
    }
}

/// What every fake offers.
pub struct Fake<S> {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    state: Arc<S>,
}

impl<S: Send + Sync + 'static> Fake<S> {
    /// Serves `handler` on a free loopback port, with `state` and the
    /// recorded requests shared between them.
    async fn start_with<F, Fut>(state: S, handler: F) -> Fake<S>
    where
        F: Fn(Arc<S>, Arc<Shared>, Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let (state, shared) = (Arc::new(state), Arc::new(Shared::default()));
        let (s, sh) = (state.clone(), shared.clone());
        let addr = serve(Arc::new(move |r| Box::pin(handler(s.clone(), sh.clone(), r)))).await;
        Fake { addr, shared, state }
    }
}

impl<S> Fake<S> {
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Message requests received so far (not token exchanges).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// How many message requests were received, without copying them.
    pub fn count(&self) -> usize {
        self.shared.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From now on, requests are counted but not kept: for benchmarks.
    pub fn count_only(&self) {
        self.shared.count_only.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers the next requests for `recipient` with `replies`, in order.
    pub fn script(&self, recipient: &str, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().entry(recipient.to_owned()).or_default().extend(replies);
    }

    /// Delays every message response, as a slow provider would.
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock().unwrap() = latency;
    }

    /// Answers every message request with `reply` until `until`, whatever
    /// the scripts say.
    pub fn fail_until(&self, until: Instant, reply: Reply) {
        *self.shared.outage.lock().unwrap() = Some((until, reply));
    }
}

type Handler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

async fn serve(handler: Handler) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a fake provider");
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        handler(Request { method, uri, headers, body })
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A request as the fakes see it.
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    fn header(&self, name: header::HeaderName) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    fn record(&self, form: Vec<(String, String)>, json: Option<Value>) -> Recorded {
        Recorded {
            at: Instant::now(),
            path: self.uri.path().to_owned(),
            authorization: self.header(header::AUTHORIZATION),
            content_type: self.header(header::CONTENT_TYPE),
            form,
            json,
            headers: self.headers.clone(),
        }
    }
}

fn reply(status: u16, body: Value, retry_after: Option<u64>) -> Response {
    let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    response
}

// ---------------------------------------------------------------- Twilio

pub struct TwilioAccount {
    pub account_sid: String,
    pub auth_token: String,
    /// An API key of the account (SID, secret), accepted as well.
    pub api_key: (String, String),
}

pub type FakeTwilio = Fake<TwilioAccount>;

impl FakeTwilio {
    pub async fn start(account_sid: &str, auth_token: &str, (key_sid, key_secret): (&str, &str)) -> FakeTwilio {
        let account = TwilioAccount { account_sid: account_sid.into(), auth_token: auth_token.into(), api_key: (key_sid.into(), key_secret.into()) };
        Fake::start_with(account, twilio).await
    }

    pub fn expected_authorization(&self) -> String {
        self.state.basic_auth()
    }
}

impl TwilioAccount {
    fn basic_auth(&self) -> String {
        basic(&self.account_sid, &self.auth_token)
    }
}

/// An `Authorization: Basic` value.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    reply(status, json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status}), None)
}

async fn twilio(account: Arc<TwilioAccount>, shared: Arc<Shared>, r: Request) -> Response {
    let expected_path = format!("/2010-04-01/Accounts/{}/Messages.json", account.account_sid);
    if r.method != Method::POST || r.uri.path() != expected_path {
        return twilio_error(404, 20404, "The requested resource was not found");
    }
    let api_key = basic(&account.api_key.0, &account.api_key.1);
    if r.header(header::AUTHORIZATION).is_none_or(|a| a != account.basic_auth() && a != api_key) {
        return twilio_error(401, 20003, "Authenticate");
    }
    if r.header(header::CONTENT_TYPE).as_deref() != Some("application/x-www-form-urlencoded") {
        return twilio_error(400, 20001, "Content-Type must be application/x-www-form-urlencoded");
    }
    let form = r.form();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let Some(to) = field("To") else { return twilio_error(400, 21604, "A 'To' phone number is required.") };
    if field("Body").is_none_or(|b| b.is_empty()) {
        return twilio_error(400, 21602, "Message body is required.");
    }
    if field("From").is_none() && field("MessagingServiceSid").is_none() {
        return twilio_error(400, 21603, "A 'From' phone number is required.");
    }
    if !to.starts_with('+') {
        return twilio_error(400, 21211, "The 'To' number is not a valid phone number.");
    }
    shared.keep(|| r.record(form.clone(), None));
    let latency = *shared.latency.lock().unwrap();
    tokio::time::sleep(latency).await;
    match shared.next_reply(&to) {
        Reply::Accept => {
            let sid = format!("SM{:032x}", shared.next_id());
            reply(201, json!({"sid": sid, "status": "queued", "to": to}), None)
        }
        Reply::Fail { status, code, retry_after } => {
            let code = code.and_then(|c| c.parse::<u32>().ok());
            reply(status, json!({"code": code, "message": "Scripted failure for +15005550006", "status": status}), retry_after)
        }
    }
}

// ---------------------------------------------------------------- Vonage

pub struct VonageAccount {
    pub api_key: String,
    pub api_secret: String,
}

pub type FakeVonage = Fake<VonageAccount>;

impl FakeVonage {
    pub async fn start(api_key: &str, api_secret: &str) -> FakeVonage {
        Fake::start_with(VonageAccount { api_key: api_key.into(), api_secret: api_secret.into() }, vonage).await
    }
}

/// The SMS API's answer: HTTP 200, with one status per part.
fn vonage_answer(part: Value) -> Response {
    reply(200, json!({"message-count": "1", "messages": [part]}), None)
}

/// Scripts use the E.164 number; Vonage sees it without the `+`.
async fn vonage(account: Arc<VonageAccount>, shared: Arc<Shared>, r: Request) -> Response {
    if r.method != Method::POST || r.uri.path() != "/sms/json" {
        return reply(404, json!({"type": "https://developer.vonage.com/api-errors#not-found", "title": "Not Found"}), None);
    }
    let refused = |status: &str, text: &str| vonage_answer(json!({"status": status, "error-text": text}));
    if r.header(header::CONTENT_TYPE).as_deref() != Some("application/x-www-form-urlencoded") {
        return refused("2", "Missing api_key");
    }
    let form = r.form();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if field("api_key").as_deref() != Some(account.api_key.as_str()) || field("api_secret").as_deref() != Some(account.api_secret.as_str()) {
        return refused("4", "Bad Credentials");
    }
    let (Some(to), Some(_from), Some(_text)) = (field("to"), field("from"), field("text").filter(|t| !t.is_empty())) else {
        return refused("2", "Missing to, from or text");
    };
    if to.is_empty() || !to.chars().all(|c| c.is_ascii_digit()) {
        return refused("3", "Invalid to address");
    }
    if !matches!(field("type").as_deref(), None | Some("text") | Some("unicode")) {
        return refused("3", "Invalid message type");
    }
    shared.keep(|| r.record(form.clone(), None));
    let latency = *shared.latency.lock().unwrap();
    tokio::time::sleep(latency).await;
    match shared.next_reply(&format!("+{to}")) {
        Reply::Accept => vonage_answer(json!({
            "to": to, "message-id": format!("{:016X}", shared.next_id()), "status": "0",
            "remaining-balance": "15.53590000", "message-price": "0.03330000", "network": "23410",
        })),
        Reply::Fail { status: 200, code, .. } => refused(code.as_deref().unwrap_or("5"), &format!("Scripted failure for {to}")),
        Reply::Fail { status, retry_after, .. } => reply(status, json!({"title": "Scripted failure"}), retry_after),
    }
}

// ---------------------------------------------------------------- FCM

/// The service-account key in `fixtures/`: a throwaway key made for these
/// tests, never valid anywhere else.
const SERVICE_ACCOUNT: &str = include_str!("../fixtures/service-account.json");
const PUBLIC_KEY: &str = include_str!("../fixtures/fake-fcm-public.pem");
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

pub struct FcmProject {
    pub project: String,
    pub client_email: String,
    pub private_key_id: String,
    issued: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<Recorded>>,
}

pub type FakeFcm = Fake<FcmProject>;

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

impl FakeFcm {
    pub async fn start() -> FakeFcm {
        let key: Value = serde_json::from_str(SERVICE_ACCOUNT).unwrap();
        let project = FcmProject {
            project: key["project_id"].as_str().unwrap().to_owned(),
            client_email: key["client_email"].as_str().unwrap().to_owned(),
            private_key_id: key["private_key_id"].as_str().unwrap().to_owned(),
            issued: Mutex::default(),
            exchanges: Mutex::default(),
        };
        Fake::start_with(project, fcm).await
    }

    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Writes the fixture key file pointing at this fake's token endpoint.
    pub fn write_service_account(&self, dir: &Path) -> PathBuf {
        let mut key: Value = serde_json::from_str(SERVICE_ACCOUNT).unwrap();
        key["token_uri"] = self.token_uri().into();
        let path = dir.join(format!("service-account-{}.json", self.addr.port()));
        std::fs::write(&path, serde_json::to_vec_pretty(&key).unwrap()).unwrap();
        path
    }

    pub fn project(&self) -> &str {
        &self.state.project
    }

    /// Successful token exchanges so far.
    pub fn token_exchanges(&self) -> Vec<Recorded> {
        self.state.exchanges.lock().unwrap().clone()
    }
}

fn google_error(status: u16, grpc: &str, fcm_code: Option<&str>, retry_after: Option<u64>) -> Response {
    let details = match fcm_code {
        Some(c) => json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}]),
        None => json!([]),
    };
    reply(status, json!({"error": {"code": status, "message": "Scripted failure", "status": grpc, "details": details}}), retry_after)
}

async fn fcm(project: Arc<FcmProject>, shared: Arc<Shared>, r: Request) -> Response {
    if r.method == Method::POST && r.uri.path() == "/token" {
        return fcm_token(&project, &r);
    }
    let expected_path = format!("/v1/projects/{}/messages:send", project.project);
    if r.method != Method::POST || r.uri.path() != expected_path {
        return google_error(404, "NOT_FOUND", None, None);
    }
    let bearer = r.header(header::AUTHORIZATION).and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned));
    if !bearer.is_some_and(|t| project.issued.lock().unwrap().contains(&t)) {
        return google_error(401, "UNAUTHENTICATED", None, None);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&r.body) else {
        return google_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), None);
    };
    let Some(token) = body["message"]["token"].as_str().map(str::to_owned) else {
        return google_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), None);
    };
    // As herald fears of FCM: without this header, errors lose the details
    // that tell UNREGISTERED from a mere NOT_FOUND.
    let detailed = r.header(header::HeaderName::from_static("x-goog-api-format-version")).as_deref() == Some("2");
    shared.keep(|| r.record(vec![], Some(body.clone())));
    let latency = *shared.latency.lock().unwrap();
    tokio::time::sleep(latency).await;
    match shared.next_reply(&token) {
        Reply::Accept => reply(200, json!({"name": format!("projects/{}/messages/{}", project.project, shared.next_id())}), None),
        Reply::Fail { status, code, retry_after } => {
            let grpc = match status {
                404 => "NOT_FOUND",
                400 => "INVALID_ARGUMENT",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            google_error(status, grpc, code.as_deref().filter(|_| detailed), retry_after)
        }
    }
}

fn fcm_token(project: &FcmProject, r: &Request) -> Response {
    let invalid = || reply(400, json!({"error": "invalid_grant", "error_description": "Invalid JWT"}), None);
    let form = r.form();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return reply(400, json!({"error": "unsupported_grant_type"}), None);
    }
    let Some(assertion) = field("assertion") else { return invalid() };
    // Google finds the key by `kid`; google-auth always sends it.
    let kid = jsonwebtoken::decode_header(&assertion).ok().and_then(|h| h.kid);
    if kid.as_deref() != Some(project.private_key_id.as_str()) {
        return invalid();
    }
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[format!("http://{}/token", r.header(header::HOST).unwrap_or_default())]);
    validation.set_issuer(&[&project.client_email]);
    let Ok(token) = jsonwebtoken::decode::<Claims>(&assertion, &key, &validation) else { return invalid() };
    let c = token.claims;
    if c.scope != FCM_SCOPE || c.exp - c.iat > 3600 || c.iss != project.client_email || c.aud.is_empty() {
        return invalid();
    }
    let access = format!("ya29.fake-{}", project.issued.lock().unwrap().len() + 1);
    project.issued.lock().unwrap().push(access.clone());
    project.exchanges.lock().unwrap().push(r.record(form, None));
    reply(200, json!({"access_token": access, "expires_in": 3600, "token_type": "Bearer"}), None)
}

// ---------------------------------------------------------------- Schema Registry

#[derive(Default)]
pub struct Schemas {
    by_id: Mutex<HashMap<u32, String>>,
}

pub type FakeRegistry = Fake<Schemas>;

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        Fake::start_with(Schemas::default(), registry).await
    }

    /// Puts `schema` at `id`, as another system's producer would have.
    pub fn insert(&self, id: u32, schema: &str) {
        self.state.by_id.lock().unwrap().insert(id, schema.to_owned());
    }
}

async fn registry(schemas: Arc<Schemas>, shared: Arc<Shared>, r: Request) -> Response {
    let path = r.uri.path().to_owned();
    shared.keep(|| r.record(vec![], serde_json::from_slice(&r.body).ok()));
    let not_found = || reply(404, json!({"error_code": 40403, "message": "Schema not found"}), None);
    if let Some(id) = path.strip_prefix("/schemas/ids/") {
        let Ok(id) = id.parse::<u32>() else { return not_found() };
        return match schemas.by_id.lock().unwrap().get(&id) {
            Some(schema) => reply(200, json!({"schema": schema}), None),
            None => not_found(),
        };
    }
    if r.method == Method::POST && path.starts_with("/subjects/") && path.ends_with("/versions") {
        let Some(schema) = serde_json::from_slice::<Value>(&r.body).ok().and_then(|b| b["schema"].as_str().map(str::to_owned))
        else {
            return reply(422, json!({"error_code": 42201, "message": "Invalid schema"}), None);
        };
        let mut by_id = schemas.by_id.lock().unwrap();
        let id = match by_id.iter().find(|(_, s)| **s == schema) {
            Some((id, _)) => *id,
            None => {
                let id = (100..).find(|id| !by_id.contains_key(id)).expect("a free id");
                by_id.insert(id, schema);
                id
            }
        };
        return reply(200, json!({"id": id}), None);
    }
    not_found()
}
