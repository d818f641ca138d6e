//! CPU-only paths of one record, without Kafka:
//!
//!     cargo bench --bench micro
//!
//! Avro decode and encode of a request, the status event written for it,
//! the rate-limit decision, and the outcome decision.

use std::hint::black_box;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use herald::codec::{self, Bundled};
use herald::pipeline::ratelimit::RateLimit;
use herald::pipeline::deliver::{Delivered, DeliveryError, Provider};
use herald::model::{Attempts, Channel, Content, Request, Status, StatusEvent};
use herald::pipeline::outcome;
use herald::pipeline::ratelimit::{Limiter, Store, Subject};
use futures::FutureExt;
use herald::topics::Topics;

fn request() -> Request {
    Request {
        prefs: Default::default(),
        event_id: "bench-000000001".into(),
        user_id: "user-00001".into(),
        channel: Channel::Sms,
        recipient: "+14155550100".into(),
        content: Content {
            title: None,
            body: "Your order #4711 has shipped and will arrive on Thursday between 9:00 and 12:00. Track it in the app.".into(),
            ..Content::default()
        },
        scheduled_at: None,
        created_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
    }
}

fn codec(c: &mut Criterion) {
    let schemas = Bundled::load();
    let bytes = codec::encode_request(&schemas.request, 1, &request()).unwrap();
    let datum = codec::unframe(&bytes).unwrap().1;
    c.bench_function("request: decode (herald's reader)", |b| b.iter(|| codec::read_request(black_box(datum)).unwrap()));
    c.bench_function("request: decode (apache-avro, for comparison)", |b| {
        b.iter(|| {
            let value = apache_avro::from_avro_datum(&schemas.request, &mut black_box(datum), None).unwrap();
            codec::request_from_value(value).unwrap()
        })
    });
    c.bench_function("request: encode (apache-avro, as producers do)", |b| {
        b.iter(|| codec::encode_request(&schemas.request, 1, black_box(&request())).unwrap())
    });
    let status = StatusEvent {
        channel: Some(Channel::Sms),
        provider: Some(herald::model::Provider::Twilio),
        provider_message_id: Some("SM0123456789abcdef0123456789abcdef".into()),
        // What an SMS's status carries since the enrichment.
        recipient: Some("+*******0100".into()),
        created_at: Some(Utc.timestamp_millis_opt(1_699_999_999_000).unwrap()),
        sms: Some(herald::model::SmsCost { segments: 1, encoding: herald::model::Encoding::Gsm7 }),
        origin: Some(herald::model::Origin { topic: "notification.requested".into(), partition: 3, offset: 123_456_789 }),
        ..StatusEvent::new("bench-000000001", "user-00001", Status::Sent, 1, Utc.timestamp_millis_opt(1_700_000_000_000).unwrap())
    };
    c.bench_function("status: encode (herald's writer)", |b| b.iter(|| codec::encode_status(0, black_box(&status))));
}

fn rate_limit(c: &mut Criterion) {
    let limit = RateLimit::per(10, std::time::Duration::from_secs(3600));
    let limiter = Limiter::new(|_| limit.clone(), Store::Memory);
    let now = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let users: Vec<String> = (0..50_000).map(|i| format!("user-{i:05}")).collect();
    let events: Vec<String> = (0..1_000_000).map(|i| format!("event-{i}")).collect();
    let mut i = 0;
    // 50,000 users in turn: each check finds a partly filled window.
    c.bench_function("rate limit: check (50,000 users, 10/h)", |b| {
        b.iter(|| {
            i = (i + 1) % events.len();
            let subject =
                Subject { user_id: &users[i % users.len()], channel: Channel::Sms, event_id: &events[i], partition: 0 };
            // In memory, a check never waits.
            limiter.check(subject, now).now_or_never().expect("ready").expect("no store to fail")
        })
    });
}

fn decide(c: &mut Criterion) {
    let topics = Topics::defaults();
    let now = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let sent = Delivered { provider: Provider::Twilio, message_id: Some("SM1".into()) };
    c.bench_function("outcome: decide (sent)", |b| b.iter(|| outcome::decide(Ok(black_box(sent.clone())), Attempts::NONE, &topics, now, Duration::ZERO)));
    let unavailable = DeliveryError::Unavailable {
        provider: Provider::Twilio,
        code: herald::model::ErrorCode::provider(herald::model::Provider::Twilio, 20503),
        message: "service unavailable".into(),
        retry_after: None,
    };
    c.bench_function("outcome: decide (transient, retry)", |b| {
        b.iter(|| outcome::decide(Err(black_box(unavailable.clone())), Attempts::made(1).unwrap(), &topics, now, Duration::ZERO))
    });
}

criterion_group!(benches, codec, rate_limit, decide);
criterion_main!(benches);
