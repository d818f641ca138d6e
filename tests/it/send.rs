//! Sending over HTTP: `POST /v1/notifications` and its batch, with
//! idempotency keys, against tansu and kassandra (or KAFKA_BROKERS and
//! SCYLLA_URI).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::api::{migrated, refs, ApiRun};
use crate::support::*;

const TOKEN: &str = herald_testkit::API_TOKEN;

impl ApiRun {
    /// POSTs `body` to `path`, with `key` as the Idempotency-Key: the
    /// status, the body, and whether the answer was a replay.
    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value, bool) {
        let mut request = self.http.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("the API answers");
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null), replayed)
    }
}

/// How many records the requests topic holds.
async fn written(h: &Harness) -> i64 {
    herald_testkit::kafka::end_offsets(&h.broker.bootstrap, &h.topics.requested).await.values().sum()
}

fn sms_body(user: &str, text: &str) -> Value {
    json!({"user_id": user, "channel": "SMS", "recipient": "+14155550100", "content": {"body": text}})
}

/// The fields a 400 names.
fn fields(body: &Value) -> HashSet<String> {
    body["fields"].as_array().unwrap_or(&vec![]).iter().map(|f| f["field"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_sent_over_http_is_written_keyed_by_user_sent_and_followed_at_its_status_url() {
    let (h, _cql, args) = migrated(&[]).await;
    let herald = h.start(&refs(&args));
    let api = ApiRun::start(&h, &args);
    let (code, accepted, _) = api.post("/v1/notifications", None, &sms_body("http-user", "Your code is 123456")).await;
    assert_eq!(code, 202, "{accepted}");
    let event_id = accepted["event_id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["status_url"], format!("/v1/notifications/{event_id}"));
    // On the topic as any producer writes it: keyed by user, Avro the
    // pipeline reads.
    let mut reader = h.reader(&h.topics.requested);
    let records = reader.read_until(Duration::from_secs(30), |r| !r.is_empty()).await;
    assert_eq!(rdkafka::Message::key(&records[0]), Some("http-user".as_bytes()));
    let request = herald::codec::read_request(herald::codec::unframe(rdkafka::Message::payload(&records[0]).unwrap()).unwrap().1).unwrap();
    assert_eq!((request.event_id.as_str(), request.recipient.as_str(), request.content.body.as_str()), (event_id.as_str(), "+14155550100", "Your code is 123456"));
    let stored = api.until_status(&event_id, "SENT").await;
    assert_eq!(stored["event_id"], event_id.as_str());
    assert_eq!(h.twilio.count(), 1);
    // An event id of the caller's own is kept, and a push goes as well.
    let push = json!({"event_id": "mine-1", "user_id": "http-user", "channel": "PUSH", "recipient": "token-abc",
        "content": {"title": "Hi", "body": "there", "data": {"k": "v"}, "android": {"priority": "HIGH", "ttl_seconds": 60}},
        "priority": "URGENT", "locale": "pt-BR", "time_zone": "America/Sao_Paulo"});
    let (code, accepted, _) = api.post("/v1/notifications", None, &push).await;
    assert_eq!((code, accepted["event_id"].as_str()), (202, Some("mine-1")), "{accepted}");
    api.until_status("mine-1", "SENT").await;
    assert_eq!(h.fcm.count(), 1);
    api.stop().await;
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_be_sent_gets_one_error_per_field_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("herald-it-send-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("order_shipped")).unwrap();
    std::fs::write(dir.join("order_shipped/en.sms"), "Order {{ order }} shipped").unwrap();
    let templates = dir.to_str().unwrap();
    let (h, _cql, args) = migrated(&["--templates-dir", templates, "--max-schedule-ahead", "7d"]).await;
    let api = ApiRun::start(&h, &args);
    let far = (chrono::Utc::now() + chrono::Duration::days(8)).to_rfc3339();
    let everything_wrong = json!({"user_id": "", "channel": "SMS", "recipient": "+1415555010", "content": {"body": "hi"},
        "time_zone": "Mars/Olympus", "locale": "not a locale", "scheduled_at": far});
    let (code, body, _) = api.post("/v1/notifications", None, &everything_wrong).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid")), "{body}");
    assert_eq!(fields(&body), ["user_id", "recipient", "time_zone", "locale", "scheduled_at"].map(String::from).into(), "{body}");
    let cases: Vec<(Value, &str)> = vec![
        (json!({"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "content": {"body": "x".repeat(1601)}}), "content.body"),
        (json!({"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "content": {"body": "  "}}), "content.body"),
        (json!({"user_id": "u", "channel": "PUSH", "recipient": "t", "content": {"body": "x".repeat(4097)}}), "content"),
        (json!({"user_id": "u", "channel": "PUSH", "recipient": " ", "content": {"body": "x"}}), "recipient"),
        (json!({"user_id": "u", "channel": "PUSH", "recipient": "t", "content": {"body": "x", "android": {"ttl_seconds": -1}}}), "content.android.ttl_seconds"),
        (json!({"user_id": "u", "channel": "PUSH", "recipient": "t", "content": {"body": "x", "apns": {"badge": -1}}}), "content.apns.badge"),
        (json!({"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "content": {"template_id": "password_reset"}}), "content.template_id"),
        (json!({"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "content": {"template_id": "order_shipped"}}), "content.template_vars"),
        (json!({"event_id": "a\u{7}b", "user_id": "u", "channel": "SMS", "recipient": "+14155550100", "content": {"body": "x"}}), "event_id"),
        (json!({"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "content": {"body": "x"}, "scheduled_at": "tomorrow"}), "scheduled_at"),
        (json!({"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "content": {"body": "x"}, "scheduled_at": "2027-01-01T09:00:00"}), "scheduled_at"),
        (json!({"user_id": "x".repeat(257), "channel": "SMS", "recipient": "+14155550100", "content": {"body": "x"}}), "user_id"),
    ];
    for (request, field) in &cases {
        let (code, body, _) = api.post("/v1/notifications", None, request).await;
        assert_eq!((code, fields(&body)), (400, [field.to_string()].into()), "{request}: {body}");
    }
    // What is not a request at all is one error, naming what is wrong.
    for (raw, says) in [
        ("not json", "not JSON"),
        (r#"{"user_id": "u", "channel": "FAX", "recipient": "+14155550100"}"#, "FAX"),
        (r#"{"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "colour": "red"}"#, "colour"),
        (r#"{"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "priority": "urgent"}"#, "urgent"),
    ] {
        let response = api.http.post(format!("{}/v1/notifications", api.base)).bearer_auth(TOKEN).header("content-type", "application/json").body(raw).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{raw}");
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(says), "{raw}: {body}");
    }
    // Without the token, nothing.
    let response = api.http.post(format!("{}/v1/notifications", api.base)).json(&sms_body("u", "x")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // A good one goes, so the topic is there to count.
    let good = json!({"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "content": {"template_id": "order_shipped", "template_vars": {"order": "7"}}});
    assert_eq!(api.post("/v1/notifications", None, &good).await.0, 202);
    assert_eq!(written(&h).await, 1, "only the good request was written");
    api.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_writes_once_and_another_body_under_it_is_refused() {
    let (h, _cql, args) = migrated(&[]).await;
    let api = Arc::new(ApiRun::start(&h, &args));
    // Three retries of one key at once: one record, one event id, and
    // the answers after the first are replays.
    let body = sms_body("key-user", "Your order shipped");
    let tries = (0..3).map(|_| {
        let (api, body) = (api.clone(), body.clone());
        tokio::spawn(async move { api.post("/v1/notifications", Some("order-7-shipped"), &body).await })
    });
    let answers: Vec<(u16, Value, bool)> = futures::future::join_all(tries).await.into_iter().map(Result::unwrap).collect();
    assert!(answers.iter().all(|(code, _, _)| *code == 202), "{answers:?}");
    let ids: HashSet<&str> = answers.iter().map(|(_, b, _)| b["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(_, _, replayed)| *replayed).count(), 2, "{answers:?}");
    assert_eq!(written(&h).await, 1);
    // Spaced otherwise, the same request; with another body, refused.
    let respaced = serde_json::to_string_pretty(&body).unwrap();
    let reordered = r#"{"content": {"body": "Your order shipped"}, "recipient": "+14155550100", "channel": "SMS", "user_id": "key-user"}"#.to_owned();
    for same in [respaced, reordered] {
        let response = api.http.post(format!("{}/v1/notifications", api.base)).bearer_auth(TOKEN).header("Idempotency-Key", "order-7-shipped").header("content-type", "application/json").body(same.clone()).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 202, "{same}");
        assert!(response.headers().contains_key("idempotent-replayed"), "{same}");
    }
    let (code, refused, _) = api.post("/v1/notifications", Some("order-7-shipped"), &sms_body("key-user", "Your order did not ship")).await;
    assert_eq!((code, refused["error"].as_str()), (422, Some("idempotency-key-reused")), "{refused}");
    // A refused request is not kept under its key: fixed, it goes.
    let (code, _, _) = api.post("/v1/notifications", Some("fix-me"), &json!({"user_id": "u", "channel": "SMS", "recipient": "555"})).await;
    assert_eq!(code, 400);
    let (code, _, replayed) = api.post("/v1/notifications", Some("fix-me"), &sms_body("u", "fixed")).await;
    assert_eq!((code, replayed), (202, false));
    assert_eq!(written(&h).await, 2);
    for bad in ["", &"k".repeat(256), "tab\there"] {
        let (code, body, _) = api.post("/v1/notifications", Some(bad), &sms_body("u", "x")).await;
        assert_eq!(code, 400, "{bad:?}: {body}");
    }
    assert_eq!(written(&h).await, 2);
    Arc::into_inner(api).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sends_with_a_quarter_repeated_under_their_keys_write_seven_thousand_five_hundred() {
    let (h, _cql, args) = migrated(&[]).await;
    let api = Arc::new(ApiRun::start(&h, &args));
    // Keys 0..7,500, then 2,500 of them again, mixed in.
    let mut keys: Vec<usize> = (0..7500).chain((0..7500).step_by(3).take(2500)).collect();
    fastrand::shuffle(&mut keys);
    let answers: Vec<(usize, u16, String)> = futures::stream::iter(keys)
        .map(|k| {
            let api = api.clone();
            async move {
                let (code, body, _) = api.post("/v1/notifications", Some(&format!("key-{k}")), &sms_body(&format!("user-{}", k % 100), &format!("message {k}"))).await;
                (k, code, body["event_id"].as_str().unwrap_or_default().to_owned())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(answers.iter().all(|(_, code, _)| *code == 202), "{:?}", answers.iter().find(|(_, c, _)| *c != 202));
    let mut by_key: HashMap<usize, HashSet<String>> = HashMap::new();
    for (k, _, id) in &answers {
        by_key.entry(*k).or_default().insert(id.clone());
    }
    assert_eq!(by_key.len(), 7500);
    assert!(by_key.values().all(|ids| ids.len() == 1), "a key answered with two event ids");
    assert_eq!(written(&h).await, 7500);
    Arc::into_inner(api).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_writes_its_valid_requests_names_the_invalid_ones_and_replays_under_its_key() {
    let (h, _cql, args) = migrated(&[]).await;
    let api = ApiRun::start(&h, &args);
    let batch = json!({"notifications": [sms_body("b1", "one"), {"user_id": "b2", "channel": "SMS", "recipient": "not a number"}, sms_body("b3", "three"), {"nonsense": true}]});
    let (code, answer, _) = api.post("/v1/notifications/batch", Some("batch-1"), &batch).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!((answer["accepted"].as_u64(), answer["rejected"].as_u64()), (Some(2), Some(2)), "{answer}");
    let results = answer["results"].as_array().unwrap();
    let outcome: Vec<&str> = results.iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(outcome, ["accepted", "invalid", "accepted", "invalid"]);
    assert_eq!(results[1]["errors"][0]["field"], "recipient");
    assert!(results[3]["errors"][0]["message"].as_str().unwrap().contains("nonsense"), "{answer}");
    assert_eq!(written(&h).await, 2);
    // Sent again under its key: the first answer, nothing written.
    let (code, again, replayed) = api.post("/v1/notifications/batch", Some("batch-1"), &batch).await;
    assert_eq!((code, replayed), (200, true));
    assert_eq!(again, answer);
    assert_eq!(written(&h).await, 2);
    // 1,000 at once is the most.
    let most = json!({"notifications": (0..1000).map(|i| sms_body(&format!("many-{i}"), "hi")).collect::<Vec<_>>()});
    let (code, answer, _) = api.post("/v1/notifications/batch", None, &most).await;
    assert_eq!((code, answer["accepted"].as_u64()), (200, Some(1000)));
    let too_many = json!({"notifications": (0..1001).map(|i| sms_body(&format!("many-{i}"), "hi")).collect::<Vec<_>>()});
    let (code, answer, _) = api.post("/v1/notifications/batch", None, &too_many).await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("at most 1000"), "{answer}");
    // Bodies: 2 MB for a batch, 32 KB for one request, refused from the
    // headers, before any of it is read.
    let addr = api.base.trim_start_matches("http://").to_owned();
    for (path, length) in [("/v1/notifications/batch", 2 * 1024 * 1024 + 1), ("/v1/notifications", 32 * 1024 + 1)] {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }
    assert_eq!(written(&h).await, 1002);
    api.stop().await;
}
