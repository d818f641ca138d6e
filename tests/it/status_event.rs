//! What a status event tells a subscriber beyond the outcome, and the
//! producer's trace headers following a request everywhere herald writes.

use std::time::Duration;

use herald::model::{Encoding, Status};
use herald_testkit::fake::Reply;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_says_whom_when_what_it_cost_and_where_the_request_is() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-rate-limit", "1/1h"]);
    let first = sms("plain", "u1", "+14155550100", "hello");
    let bytes = herald::codec::encode_request(&h.bundled.request, 1, &first).unwrap();
    let (partition, offset) = h.send_raw(b"u1", &bytes).await;
    // 71 characters outside GSM-7: two UCS-2 segments (67 each).
    let long = sms("unicode", "u2", "+14155550101", &"é🙂".repeat(40));
    h.send(&long).await;
    let limited = sms("limited", "u1", "+14155550100", "over the limit");
    h.send(&limited).await;

    let ids = ["plain", "unicode", "limited"].map(String::from);
    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    let plain = &terminal["plain"];
    assert_eq!(plain.status, Status::Sent);
    assert_eq!(plain.recipient.as_deref(), Some("+*******0100"), "masked");
    assert_eq!(plain.created_at.map(millis), Some(millis(first.created_at)));
    assert_eq!(plain.scheduled_at, None);
    assert_eq!(plain.sms.map(|c| (c.segments, c.encoding)), Some((1, Encoding::Gsm7)));
    let origin = plain.origin.as_ref().expect("origin");
    assert_eq!((origin.topic.as_str(), origin.partition, origin.offset), (h.topics.requested.as_str(), partition, offset));
    assert!(plain.tried.is_empty());

    let unicode = &terminal["unicode"];
    assert_eq!(unicode.sms.map(|c| (c.segments, c.encoding)), Some((2, Encoding::Ucs2)), "{unicode:?}");

    // RATE_LIMITED says when the window frees up: an hour after the send
    // that filled it.
    let limited = &terminal["limited"];
    assert_eq!(limited.status, Status::RateLimited);
    let frees = limited.next_attempt_at.expect("next_attempt_at on RATE_LIMITED");
    let after_send = frees - plain.occurred_at;
    assert!((after_send - chrono::Duration::hours(1)).num_seconds().abs() <= 5, "window frees {after_send} after the send");
    herald.stop().await.unwrap();
}

fn traced(traceparent: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header { key: "traceparent", value: Some(traceparent) })
        .insert(Header { key: "tracestate", value: Some("vendor=1") })
        .insert(Header { key: "X-Correlation-Id", value: Some("order-42") })
        .insert(Header { key: "not-propagated", value: Some("secret-ish") })
        // W3C allows one: the first is the trace.
        .insert(Header { key: "traceparent", value: Some("00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01") })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_headers_follow_a_request_to_its_statuses_retries_and_dead_letter() {
    let h = Harness::new().await;
    let herald = h.start(&["--propagate-headers", "x-correlation-id"]);
    h.twilio.script("+14155550100", vec![Reply::fail(503, "20503"); 4]);
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let doomed = herald::codec::encode_request(&h.bundled.request, 1, &sms("doomed", "u1", "+14155550100", "never")).unwrap();
    herald_testkit::kafka::produce(&h.producer, &h.topics.requested, b"u1", &doomed, Some(traced(parent))).await;
    // Too large to copy whole: its dead letter is stripped of the value.
    let huge = sms("huge", "u2", "+14155550101", &"x".repeat(2_000_000));
    let huge_parent = "00-11111111111111111111111111111111-2222222222222222-01";
    let bytes = herald::codec::encode_request(&h.bundled.request, 1, &huge).unwrap();
    let big = herald_testkit::kafka::producer_up_to(&h.broker.bootstrap, 3_000_000);
    herald_testkit::kafka::produce(&big, &h.topics.requested, b"u2", &bytes, Some(traced(huge_parent))).await;

    let ids = ["doomed", "huge"].map(String::from);
    h.statuses().terminal(Duration::from_secs(60), &ids).await;
    herald.stop().await.unwrap();

    let statuses = h.reader(&h.topics.status).read_to_end(Duration::from_secs(30)).await.to_vec();
    let of = |id: &str| statuses.iter().filter(|m| herald::codec::read_status(m.payload().unwrap()).unwrap().event_id == id).cloned().collect::<Vec<_>>();
    let doomed_statuses = of("doomed");
    assert_eq!(doomed_statuses.len(), 4, "three retries, then dead-lettered");
    for m in &doomed_statuses {
        assert_eq!(header(m, "traceparent"), Some(parent));
        assert_eq!(header(m, "tracestate"), Some("vendor=1"));
        assert_eq!(header(m, "X-Correlation-Id"), Some("order-42"), "named by --propagate-headers, in any case");
        assert_eq!(header(m, "not-propagated"), None);
        assert_eq!(m.headers().map(|h| h.iter().filter(|h| h.key == "traceparent").count()), Some(1), "one traceparent");
    }
    for topic in &h.topics.retries {
        let copies = h.reader(topic).read_to_end(Duration::from_secs(30)).await.to_vec();
        assert_eq!(copies.len(), 1);
        assert_eq!(header(&copies[0], "traceparent"), Some(parent), "on {topic}");
    }
    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| m.len() >= 2).await.to_vec();
    let by_key = |key: &[u8]| dead.iter().find(|m| m.key() == Some(key)).expect("a dead letter").clone();
    assert_eq!(header(&by_key(b"u1"), "traceparent"), Some(parent));
    let stripped = by_key(b"u2");
    assert_eq!(stripped.payload(), None, "stripped");
    assert_eq!(header(&stripped, "traceparent"), Some(huge_parent), "the trace survives the stripping");
    assert_eq!(header(&stripped, "not-propagated"), None, "nothing else of the producer's does");
    let huge_status = of("huge");
    assert_eq!(header(&huge_status[0], "traceparent"), Some(huge_parent));
}
