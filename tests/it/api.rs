//! `herald api`: the status store and its API, against tansu and
//! kassandra (or KAFKA_BROKERS and SCYLLA_URI).

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use herald::model::Status;
use herald_testkit::Cql;
use herald_testkit::fake::Reply;
use serde_json::Value;

use crate::support::*;

const TOKEN: &str = herald_testkit::API_TOKEN;

/// herald's arguments for `cql`, then `extra`.
pub(crate) fn with(cql: &Cql, extra: &[&str]) -> Vec<String> {
    cql.args().into_iter().chain(extra.iter().map(|s| s.to_string())).collect()
}

pub(crate) fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `herald api`, in this process, on a port of its own.
pub(crate) struct ApiRun {
    pub base: String,
    /// Its admin endpoints.
    admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), herald::Error>>,
    pub http: reqwest::Client,
}

impl ApiRun {
    pub(crate) fn start(h: &Harness, args: &[String]) -> ApiRun {
        // The subcommand's own flags (`--api-*`, each with its value) go
        // after it.
        let (mut shared, mut own) = (Vec::new(), Vec::new());
        let mut given = args.iter();
        while let Some(arg) = given.next() {
            match arg.starts_with("--api-") {
                true => own.extend([arg.clone()].into_iter().chain(given.next().cloned())),
                false => shared.push(arg.clone()),
            }
        }
        let mut all = h.args(&refs(&shared));
        all.extend(["api", "--api-token", TOKEN].map(str::to_owned));
        all.extend(own);
        let config = <herald::Config as clap::Parser>::try_parse_from(all).expect("api arguments parse");
        let Some(herald::config::Command::Api(api)) = config.command.clone() else { unreachable!("parsed as api") };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin_base = format!("http://{}", admin.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let provided = herald::Provided { api: Some(listener), admin: Some(admin), ..Default::default() };
            herald::api(&config, &api, provided, async {
                let _ = stopped.await;
            })
            .await
        });
        // A generous bound on each call: a request that hangs fails the test
        // instead of stalling it.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        ApiRun { base, admin: admin_base, stop: Some(stop), task, http }
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        self.call(self.http.get(format!("{}{path}", self.base)).bearer_auth(TOKEN)).await
    }

    async fn cancel(&self, event_id: &str) -> (u16, Value) {
        let url = format!("{}/v1/notifications/{event_id}/cancel", self.base);
        self.call(self.http.post(url).bearer_auth(TOKEN).json(&serde_json::json!({"reason": "test"}))).await
    }

    pub(crate) async fn call(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Polls until `event_id`'s current status in the store is `status`.
    pub(crate) async fn until_status(&self, event_id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (code, body) = self.get(&format!("/v1/notifications/{event_id}")).await;
            if code == 200 && body["status"] == status {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "{event_id} never reached {status} in the store: {code} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().expect("herald api stops cleanly");
    }
}

/// A harness, kassandra with the schema, herald's arguments for it.
pub(crate) async fn migrated(extra: &[&str]) -> (Harness, Cql, Vec<String>) {
    let h = Harness::new().await;
    let cql = Cql::start();
    let args = with(&cql, extra);
    herald::migrate(&h.config(&refs(&args))).await.unwrap();
    (h, cql, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_can_be_asked_for_and_the_stats_match_what_was_sent() {
    let (h, _cql, args) = migrated(&["--sms-rate-limit", "5/1h", "--push-rate-limit", "1/1h", "--push-over-limit", "defer"]).await;
    let herald = h.start(&refs(&args));
    let api = ApiRun::start(&h, &args);
    h.twilio.script("+14155550102", [Reply::fail(400, "21211")]);
    h.twilio.script("+14155550103", vec![Reply::fail(503, "20503"); 4]);
    h.twilio.script("+14155550104", [Reply::fail(400, "21610")]);
    h.cancel("cancelled").await;
    // Another user's STOP suppresses the number for everyone.
    h.send(&sms("stopped", "other", "+14155550104", "hi")).await;
    h.statuses().terminal(Duration::from_secs(30), &["stopped".into()]).await;

    let user = "asker";
    let mut later = sms("later", user, "+14155550100", "in an hour");
    later.scheduled_at = Some(Utc::now() + chrono::Duration::hours(1));
    // One user, so one partition, in this order: five SMS fill the
    // 5-per-hour window (three sent, one refused, one dead-lettered), so
    // the next is rate limited. Invalid and cancelled ones are not counted.
    let requests = [
        sms("sent-1", user, "+14155550100", "one"),
        sms("sent-2", user, "+14155550100", "two"),
        sms("sent-3", user, "+14155550101", "three"),
        sms("refused", user, "+14155550102", "refused"),
        sms("dead", user, "+14155550103", "down"),
        sms("limited", user, "+14155550100", "over"),
        sms("invalid", user, "not a number", "bad"),
        sms("cancelled", user, "+14155550100", "cancelled"),
        later,
        push("pushed", user, "device-token-1", "t", "b"),
        // The push window (1 an hour, deferring) is full now.
        push("deferred", user, "device-token-1", "t", "again"),
        sms("suppressed", user, "+14155550104", "opted out"),
    ];
    let start = Utc::now();
    let mut requests = requests;
    for (i, r) in requests.iter_mut().enumerate() {
        // Distinct created_at (to the millisecond, as the schema keeps
        // it), so the list's order is the test's.
        r.created_at = start + chrono::Duration::milliseconds(i as i64);
        h.send(r).await;
    }
    let expected: HashMap<&str, &str> = [
        ("sent-1", "SENT"),
        ("sent-2", "SENT"),
        ("sent-3", "SENT"),
        ("refused", "FAILED"),
        ("dead", "DEAD_LETTERED"),
        ("limited", "RATE_LIMITED"),
        ("invalid", "INVALID"),
        ("cancelled", "CANCELLED"),
        ("later", "SCHEDULED"),
        ("pushed", "SENT"),
        ("deferred", "DEFERRED"),
        ("suppressed", "SUPPRESSED"),
    ]
    .into();
    let mut statuses = h.statuses();
    let terminal: Vec<String> = expected.keys().filter(|id| !["later", "deferred"].contains(id)).map(|id| id.to_string()).collect();
    statuses.terminal(Duration::from_secs(30), &terminal).await;

    for (id, status) in &expected {
        let body = api.until_status(id, status).await;
        let history: Vec<&str> = body["history"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
        let from_kafka: Vec<&str> = statuses.of(id).iter().map(|e| e.status.symbol()).collect();
        assert_eq!(history, from_kafka, "{id}: the store's history is the topic's");
        assert_eq!(body["user_id"], user);
    }
    let dead = api.get("/v1/notifications/dead").await.1;
    assert_eq!(dead["attempts"], 4);
    assert_eq!(dead["recipient"], "+*******0103", "masked");
    assert_eq!(dead["history"][3]["error_code"], "twilio:20503");
    let limited = api.get("/v1/notifications/limited").await.1;
    assert!(limited["history"][0]["next_attempt_at"].is_string(), "{limited}");

    let stats = api.get(&format!("/v1/users/{user}/stats")).await.1;
    let sms_stats = stats["channels"].as_array().unwrap().iter().find(|c| c["channel"] == "SMS").unwrap();
    assert_eq!((sms_stats["sent_last_hour"].as_u64(), sms_stats["sent_today"].as_u64()), (Some(3), Some(3)), "{stats}");
    assert_eq!(sms_stats["failed_today"], 2, "FAILED and DEAD_LETTERED");
    assert_eq!(sms_stats["pending"], 1, "the scheduled one");
    let window = &sms_stats["windows"][0];
    assert_eq!((window["max"].as_u64(), window["used"].as_u64(), window["remaining"].as_u64()), (Some(5), Some(5), Some(0)), "{window}");
    let frees: chrono::DateTime<Utc> = window["next_slot_at"].as_str().unwrap().parse().unwrap();
    let first_sent: chrono::DateTime<Utc> = api.get("/v1/notifications/sent-1").await.1["history"][0]["occurred_at"].as_str().unwrap().parse().unwrap();
    assert!((frees - first_sent - chrono::Duration::hours(1)).num_seconds().abs() <= 5, "frees at {frees}, first sent at {first_sent}");
    let push_stats = stats["channels"].as_array().unwrap().iter().find(|c| c["channel"] == "PUSH").unwrap();
    assert_eq!((push_stats["sent_today"].as_u64(), push_stats["pending"].as_u64()), (Some(1), Some(1)), "the deferred one waits: {push_stats}");
    assert_eq!((push_stats["windows"][0]["used"].as_u64(), push_stats["windows"][0]["remaining"].as_u64()), (Some(1), Some(0)));

    // Newest first, three at a time, every notification once.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/v1/users/{user}/notifications?limit=3"),
            Some(c) => format!("/v1/users/{user}/notifications?limit=3&cursor={c}"),
        };
        let (code, page) = api.get(&path).await;
        assert_eq!(code, 200, "{page}");
        for n in page["notifications"].as_array().unwrap() {
            listed.push(n["event_id"].as_str().unwrap().to_owned());
            assert_eq!(n["status"], expected[n["event_id"].as_str().unwrap()]);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<String> = requests.iter().rev().map(|r| r.event_id.clone()).collect();
    assert_eq!(listed, newest_first);
    let since = (Utc::now() + chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let none = api.get(&format!("/v1/users/{user}/notifications?since={since}")).await.1;
    assert_eq!(none["notifications"].as_array().map(Vec::len), Some(0), "nothing created after since");

    api.stop().await;
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_cancels_what_waits_and_refuses_what_is_final() {
    let (h, _cql, args) = migrated(&["--retry-delays", "300ms,5s,10s"]).await;
    let herald = h.start(&refs(&args));
    let api = ApiRun::start(&h, &args);
    let mut statuses = h.statuses();
    h.send(&sms("sent", "u1", "+14155550100", "out")).await;
    statuses.terminal(Duration::from_secs(30), &["sent".into()]).await;

    // Scheduled: cancelled before its time, never sent.
    let mut later = sms("later", "u2", "+14155550101", "never");
    later.scheduled_at = Some(Utc::now() + chrono::Duration::seconds(3));
    h.send(&later).await;
    api.until_status("later", "SCHEDULED").await;
    let (code, body) = api.cancel("later").await;
    assert_eq!((code, body["status"].as_str(), body["cancel"].as_str()), (202, Some("SCHEDULED"), Some("requested")), "{body}");

    // Waiting on the second retry topic.
    h.twilio.script("+14155550102", vec![Reply::fail(503, "20503"); 2]);
    h.send(&sms("retrying", "u3", "+14155550102", "twice failed")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = api.get("/v1/notifications/retrying").await.1;
        if body["status"] == "RETRY_SCHEDULED" && body["attempts"] == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never waited on the second retry topic: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.cancel("retrying").await.0, 202);

    // Not seen yet: accepted, and honoured when the request comes.
    let (code, body) = api.cancel("not-yet").await;
    assert_eq!((code, body["status"].clone()), (202, Value::Null), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.send(&sms("not-yet", "u4", "+14155550103", "cancelled ahead")).await;

    // Final already: 409, with the status.
    api.until_status("sent", "SENT").await;
    let (code, body) = api.cancel("sent").await;
    assert_eq!((code, body["error"].as_str(), body["status"].as_str()), (409, Some("already-final"), Some("SENT")), "{body}");

    api.until_status("later", "CANCELLED").await;
    let retried = api.until_status("retrying", "CANCELLED").await;
    assert_eq!(retried["attempts"], 2);
    api.until_status("not-yet", "CANCELLED").await;
    assert_eq!(api.cancel("later").await.0, 409, "cancelled is final too");
    let bodies: Vec<String> = h.twilio.requests().iter().filter_map(|r| r.field("Body").map(str::to_owned)).collect();
    assert_eq!(bodies.iter().filter(|b| *b == "twice failed").count(), 2, "no third attempt");
    assert!(!bodies.iter().any(|b| b == "never" || b == "cancelled ahead"), "{bodies:?}");
    api.stop().await;
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_rejects_missing_and_wrong_tokens_and_malformed_input_with_json_errors() {
    let (h, _cql, args) = migrated(&[]).await;
    let api = ApiRun::start(&h, &args);
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", api.base);
    // Until the listener is up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http.get(url("/openapi.json")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the API never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let unauthorized = [
        http.get(url("/v1/notifications/x")),
        http.get(url("/v1/notifications/x")).bearer_auth("wrong"),
        http.get(url("/v1/notifications/x")).bearer_auth(format!("{TOKEN}x")),
        http.get(url("/v1/notifications/x")).header("authorization", TOKEN),
        http.post(url("/v1/notifications/x/cancel")),
        http.get(url("/v1/users/u/stats")).bearer_auth(&TOKEN[..TOKEN.len() - 1]),
    ];
    for request in unauthorized {
        let (code, body) = api.call(request).await;
        assert_eq!((code, body["error"].as_str()), (401, Some("unauthorized")), "{body}");
    }

    let long = "e".repeat(300);
    let bad = [
        "/v1/notifications/%01control".to_owned(),
        format!("/v1/notifications/{long}"),
        "/v1/notifications/%FF%FE".to_owned(),
        "/v1/users/%0A/stats".to_owned(),
        "/v1/users/u/notifications?limit=0".to_owned(),
        "/v1/users/u/notifications?limit=lots".to_owned(),
        "/v1/users/u/notifications?since=yesterday".to_owned(),
        "/v1/users/u/notifications?cursor=forged".to_owned(),
    ];
    for path in &bad {
        let (code, body) = api.get(path).await;
        assert_eq!((code, body["error"].as_str()), (400, Some("bad-request")), "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (code, body) = api.call(http.post(url("/v1/notifications/x/cancel")).bearer_auth(TOKEN).body("{not json")).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("bad-request")), "{body}");

    for path in ["/v1/notifications/never-seen", "/v1/nothing-here"] {
        let (code, body) = api.get(path).await;
        assert_eq!((code, body["error"].as_str()), (404, Some("not-found")), "{path}: {body}");
    }

    // The document is the code's, and served without a token.
    let doc: Value = http.get(url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert!(doc["paths"]["/v1/users/{user_id}/stats"]["get"]["responses"]["401"].is_object());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_killed_while_consuming_loses_no_status() {
    let (h, cql, args) = migrated(&["--sms-rate-limit", "off"]).await;
    let herald = h.start(&refs(&[args.clone(), ["--delivery", "dry-run"].map(str::to_owned).to_vec()].concat()));
    let users: Vec<String> = (0..20).map(|u| format!("user-{u}")).collect();
    let requests: Vec<_> = (0..20_000).map(|i| sms(&format!("e{i}"), &users[i % 20], "+14155550100", "hi")).collect();
    h.send_many(&requests).await;
    let mut statuses = h.statuses();
    statuses.until(Duration::from_secs(120), |e| e.len() >= requests.len()).await;
    herald.stop().await.unwrap();

    // The store reads the status topic from the start, and is killed as
    // soon as some of it is written.
    let session = herald::cql::connect(&h.config(&refs(&args)).scylla.settings().unwrap().unwrap().0).await.unwrap();
    let store = herald::api::store::Store::open(session, &cql.keyspace).await.unwrap();
    let today = Utc::now().date_naive();
    let stored = || async {
        let mut n = 0;
        for u in &users {
            n += herald::api::store::Notification::group(store.day(u, today).await.unwrap()).len();
        }
        n
    };
    let api_args = |args: &[String]| -> Vec<String> { [args.to_vec(), ["api", "--api-token", TOKEN, "--api-listen", "127.0.0.1:0"].map(str::to_owned).to_vec()].concat() };
    let mut first = h.spawn(&refs(&api_args(&args)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the store wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let at_kill = stored().await;
    assert!(at_kill < requests.len(), "the kill came after everything was stored ({at_kill}); it tested nothing");

    let mut second = h.spawn(&refs(&api_args(&args)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while stored().await < requests.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {} after the restart", stored().await, requests.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.terminate();
    for u in &users {
        let notifications = herald::api::store::Notification::group(store.day(u, today).await.unwrap());
        assert_eq!(notifications.len(), 1_000, "{u}");
        for n in &notifications {
            assert_eq!((n.current().status, n.history.len()), (Status::Sent, 1), "{}: written once, whatever was written twice", n.event_id());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_bodies_cannot_lock_the_api_out() {
    use std::io::Write;
    let (h, _cql, args) = migrated(&[]).await;
    let api = ApiRun::start(&h, &args);
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http.get(format!("{}/openapi.json", api.base)).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the API never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addr = api.base.trim_start_matches("http://").to_owned();
    // More than the 256 connections it serves, each with its headers sent
    // and its body never finished, and no token.
    let slow: Vec<_> = (0..300)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /v1/notifications/x/cancel HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{").unwrap();
            s
        })
        .collect();
    for _ in 0..3 {
        let (code, _) = api.get("/v1/notifications/unknown").await;
        assert_eq!(code, 404);
    }
    // Answered while the API still held its 256 slow connections: each new
    // one, a request's too, took the place of the oldest. Had a request
    // waited for room instead, the body timeout (5 s) would have closed
    // every slow one before it got in.
    let open = still_open(&slow);
    assert!(open > 128, "{open} of {} slow connections open: the requests waited for them to time out", slow.len());
    drop(slow);

    // Over 32 KB: refused from its headers, with a JSON error, token or
    // not. Raw, since the server answers before the body is sent and
    // closes, which an HTTP client reports as a broken pipe.
    for (length, auth) in [(100_000, format!("Authorization: Bearer {TOKEN}\r\n")), (3_000_000, String::new())] {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "POST /v1/notifications/x/cancel HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains(r#""error":"payload-too-large""#), "{answer}");
    }
    let url = format!("{}/v1/notifications/x/cancel", api.base);
    // A reason that fits is taken.
    let (code, _) = api.call(http.post(&url).bearer_auth(TOKEN).json(&serde_json::json!({ "reason": "x".repeat(30_000) }))).await;
    assert_eq!(code, 202);
    let (code, body) = api.call(http.get(&url).bearer_auth(TOKEN)).await;
    assert_eq!((code, body["error"].as_str()), (405, Some("method-not-allowed")), "{body}");

    // A forged cursor far ahead is refused at once, not read day by day.
    let forged = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::to_vec(&serde_json::json!({ "day": "+262143-12-31", "created_at": 8_000_000_000_000_000i64, "event_id": "z" })).unwrap(),
    );
    // Read day by day, these would take longer than the client waits.
    let (code, body) = api.get(&format!("/v1/users/u/notifications?cursor={forged}")).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("bad-request")), "{body}");
    let ahead = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::to_vec(&serde_json::json!({ "day": "2100-01-01", "created_at": 4_102_444_800_000i64, "event_id": "z" })).unwrap(),
    );
    let (code, _) = api.get(&format!("/v1/users/u/notifications?cursor={ahead}")).await;
    assert_eq!(code, 400);
    api.stop().await;
}

/// How many of `streams` the server has not closed, nor answered.
pub fn still_open(streams: &[std::net::TcpStream]) -> usize {
    use std::io::Read;
    streams
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            // `Read` is implemented for `&TcpStream`.
            matches!((&mut &**s).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_created_at_far_off_are_still_listed_and_counted() {
    let (h, _cql, args) = migrated(&["--sms-rate-limit", "off"]).await;
    let herald = h.start(&refs(&[args.clone(), ["--delivery", "dry-run"].map(str::to_owned).to_vec()].concat()));
    let api = ApiRun::start(&h, &args);
    let user = "skewed";
    let mut ahead = sms("ahead", user, "+14155550100", "clock two days fast");
    ahead.created_at = Utc::now() + chrono::Duration::days(2);
    let mut old = sms("old", user, "+14155550100", "replayed from last quarter");
    old.created_at = Utc::now() - chrono::Duration::days(90);
    let mut seconds = sms("seconds", user, "+14155550100", "seconds for milliseconds");
    seconds.created_at = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp()).unwrap();
    let normal = sms("normal", user, "+14155550100", "fine");
    for r in [&ahead, &old, &seconds, &normal] {
        h.send(r).await;
    }
    for id in ["ahead", "old", "seconds", "normal"] {
        api.until_status(id, "SENT").await;
    }
    let page = api.get(&format!("/v1/users/{user}/notifications?limit=100")).await.1;
    let mut listed: Vec<&str> = page["notifications"].as_array().unwrap().iter().map(|n| n["event_id"].as_str().unwrap()).collect();
    listed.sort_unstable();
    assert_eq!(listed, ["ahead", "normal", "old", "seconds"], "{page}");
    let stats = api.get(&format!("/v1/users/{user}/stats")).await.1;
    let sms_stats = stats["channels"].as_array().unwrap().iter().find(|c| c["channel"] == "SMS").unwrap().clone();
    assert_eq!(sms_stats["sent_last_hour"], 4, "{stats}");
    api.stop().await;
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let (h, _cql, args) = migrated(&[]).await;
    let api = ApiRun::start(&h, &args);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let request = api.http.get(format!("{}/v1/notifications/unknown", api.base)).header("authorization", format!("{scheme} {TOKEN}"));
        let (code, body) = api.call(request).await;
        assert_eq!((code, body["error"].as_str()), (404, Some("not-found")), "{scheme}: {body}");
    }
    for wrong in [format!("Basic {TOKEN}"), format!("Bearer{TOKEN}"), TOKEN.to_owned()] {
        let (code, _) = api.call(api.http.get(format!("{}/v1/notifications/unknown", api.base)).header("authorization", wrong.clone())).await;
        assert_eq!(code, 401, "{wrong}");
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_s_reason_is_clipped_and_scrubbed_and_each_token_is_throttled() {
    let (h, _cql, args) = migrated(&[]).await;
    let api = ApiRun::start(&h, &[args.clone(), ["--api-cancel-rate", "3/1h"].map(str::to_owned).to_vec()].concat());
    let url = |id: &str| format!("{}/v1/notifications/{id}/cancel", api.base);
    let reason = format!("wrong\nnumber\u{7} +1 (415) 555-0199 {}", "x".repeat(30_000));
    let (code, body) = api.call(api.http.post(url("c-1")).bearer_auth(TOKEN).json(&serde_json::json!({ "reason": reason }))).await;
    assert_eq!(code, 202, "{body}");
    for id in ["c-2", "c-3"] {
        assert_eq!(api.cancel(id).await.0, 202);
    }
    // The token's three are used: the fourth waits, and says how long.
    let response = api.http.post(url("c-4")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "too-many-requests");
    // A wrong token is told it is wrong, not throttled.
    assert_eq!(api.call(api.http.post(url("c-5")).bearer_auth("wrong")).await.0, 401);

    let written = h.reader(&h.topics.cancellations).read_until(Duration::from_secs(30), |m| m.len() >= 3).await.to_vec();
    assert_eq!(written.len(), 3, "the throttled cancel wrote nothing");
    let first = written.iter().find(|m| rdkafka::Message::key(*m) == Some(&b"c-1"[..])).unwrap();
    let value: Value = serde_json::from_slice(rdkafka::Message::payload(first).unwrap()).unwrap();
    let kept = value["reason"].as_str().unwrap();
    assert_eq!(kept.chars().count(), 200, "{kept}");
    assert!(kept.starts_with("wrong number  +* (***) ***-0199 xxx") && kept.ends_with('…'), "{kept}");
    assert!(!kept.chars().any(char::is_control), "{kept:?}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_the_windows_the_pipeline_enforces_not_the_api_s_own_flags() {
    let (h, _cql, args) = migrated(&[]).await;
    let pipeline_args = [args.clone(), ["--sms-rate-limit", "3/1h,20/1d"].map(str::to_owned).to_vec()].concat();
    let herald = h.start(&refs(&pipeline_args));
    // The API is left at the default, 10/1h: what it reports must not be.
    let api = ApiRun::start(&h, &args);
    h.send(&sms("one", "windowed", "+14155550100", "hi")).await;
    api.until_status("one", "SENT").await;
    let stats = api.get("/v1/users/windowed/stats").await.1;
    let of = |channel: &str| stats["channels"].as_array().unwrap().iter().find(|c| c["channel"] == channel).unwrap().clone();
    let sms_stats = of("SMS");
    assert_eq!(sms_stats["rate_limit"], "3/1h,20/1day", "{stats}");
    let windows: Vec<(u64, u64, u64)> = sms_stats["windows"].as_array().unwrap().iter().map(|w| (w["max"].as_u64().unwrap(), w["used"].as_u64().unwrap(), w["length_seconds"].as_u64().unwrap())).collect();
    assert_eq!(windows, [(3, 1, 3600), (20, 1, 86_400)], "{stats}");
    assert_eq!((of("PUSH")["rate_limit"].as_str(), of("PUSH")["windows"].as_array().map(Vec::len)), (Some("off"), Some(0)));
    herald.stop().await.unwrap();

    // A pipeline of another group has written nothing: unknown, not guessed.
    let other = ApiRun::start(&h, &[args.clone(), ["--group-id", "no-such-pipeline", "--api-group-id", "other-store"].map(str::to_owned).to_vec()].concat());
    other.until_status("one", "SENT").await;
    let stats = other.get("/v1/users/windowed/stats").await.1;
    let sms_stats = stats["channels"].as_array().unwrap().iter().find(|c| c["channel"] == "SMS").unwrap().clone();
    assert_eq!((sms_stats["rate_limit"].clone(), sms_stats["windows"].as_array().map(Vec::len)), (Value::Null, Some(0)), "{stats}");
    other.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_api_serves_metrics_health_and_readiness_on_its_admin_listener() {
    let (h, _cql, args) = migrated(&["--sms-rate-limit", "off"]).await;
    let herald = h.start(&refs(&[args.clone(), ["--delivery", "dry-run"].map(str::to_owned).to_vec()].concat()));
    let api = ApiRun::start(&h, &args);
    let ids: Vec<String> = (0..20).map(|i| format!("stored-{i}")).collect();
    for id in &ids {
        h.send(&sms(id, "metered", "+14155550100", "hi")).await;
    }
    for id in &ids {
        api.until_status(id, "SENT").await;
    }
    // Skipped, not stored: not a status.
    herald_testkit::kafka::produce(&h.producer, &h.topics.status, b"junk", b"not avro", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let metrics = api.http.get(format!("{}/metrics", api.admin)).send().await.unwrap().text().await.unwrap();
        let value = |name: &str| metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if value("herald_store_statuses_written_total") >= Some(20.0) && value("herald_store_skipped_records_total") == Some(1.0) {
            break metrics;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("herald_store_write_errors_total 0"), "{metrics}");
    assert!(!metrics.contains("metered") && !metrics.contains("+1415"), "no personal data in labels: {metrics}");
    // The lag gauges come with librdkafka's statistics, every 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = api.http.get(format!("{}/metrics", api.admin)).send().await.unwrap().text().await.unwrap();
        if metrics.lines().any(|l| l.starts_with("herald_store_consumer_lag{")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no lag gauge: {metrics}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (code, health) = api.call(api.http.get(format!("{}/healthz", api.admin))).await;
    assert_eq!((code, &health["checks"]["store_loop"]["ok"]), (200, &Value::Bool(true)), "{health}");
    let (code, ready) = api.call(api.http.get(format!("{}/readyz", api.admin))).await;
    assert_eq!(code, 200, "{ready}");
    for check in ["partitions_assigned", "broker", "scylla"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {ready}");
    }
    api.stop().await;
    herald.stop().await.unwrap();
}
