//! Records that can never be delivered: poison bytes and invalid requests.

use std::collections::HashMap;
use std::time::Duration;

use herald::model::{ErrorClass, Status};
use herald::record::envelope as h_;
use herald_testkit::kafka;
use rdkafka::message::Message;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_intact_and_the_offset_moves_past_it() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    let poison = b"\x00\x00\x00\x00\x01this is not avro \xff\xfe".to_vec();
    h.send_raw(b"poisoner", &poison).await;
    h.send_raw(b"poisoner", b"{\"json\": \"not the wire format\"}").await;
    h.send(&sms("after-poison", "poisoner", "+14155550100", "still delivered")).await;

    let terminal = h.statuses().terminal(Duration::from_secs(30), &["after-poison".into()]).await;
    assert_eq!(terminal["after-poison"].status, Status::Sent);

    let mut dlq = h.reader(&h.topics.dead_letter);
    let dead = dlq.read_until(Duration::from_secs(10), |m| m.len() >= 2).await.to_vec();
    assert_eq!(dead[0].payload(), Some(&poison[..]), "bytes intact");
    assert_eq!(dead[0].key(), Some(&b"poisoner"[..]));
    assert_eq!(header(&dead[0], h_::ERROR_CODE), Some("avro-decode"));
    assert_eq!(header(&dead[1], h_::ERROR_CODE), Some("not-wire-format"));
    assert_eq!(header(&dead[0], h_::ORIGINAL_TOPIC), Some(h.topics.requested.as_str()));

    herald.stop().await.unwrap();
    // The group's committed position is past every record, poison included.
    let committed = kafka::committed(&h.broker.bootstrap, &h.group, &h.topics.requested);
    let end = kafka::end_offsets(&h.broker.bootstrap, &h.topics.requested).await;
    let written: Vec<_> = end.iter().filter(|(_, o)| **o > 0).collect();
    assert!(!written.is_empty());
    for (partition, end) in written {
        assert_eq!(committed.get(partition), Some(end), "partition {partition}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_reported_and_kept_on_the_dead_letter_topic() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    let bad_phone = h.send(&sms("bad-phone", "u1", "555-0100", "hi")).await;
    h.send(&sms("too-long", "u1", "+14155550100", &"x".repeat(481))).await;
    h.send(&sms("empty", "u1", "+14155550100", "  ")).await;
    // The record key must be the user id.
    let mut wrong_key = sms("wrong-key", "u2", "+14155550100", "hi");
    let bytes = herald::codec::encode_request(&h.bundled.request, 1, &wrong_key).unwrap();
    h.send_raw(b"someone-else", &bytes).await;
    wrong_key.event_id = "ok".into();
    h.send(&wrong_key).await;

    let ids = ["bad-phone", "too-long", "empty", "wrong-key", "ok"].map(String::from);
    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    for (id, code) in [("bad-phone", "invalid-phone-number"), ("too-long", "body-too-long"), ("empty", "empty-body"), ("wrong-key", "key-mismatch")] {
        let e = &terminal[id];
        assert_eq!((e.status, e.error_code.as_deref(), e.error_class), (Status::Invalid, Some(code), Some(ErrorClass::Invalid)), "{id}");
        assert!(!e.error_message.as_deref().unwrap_or_default().contains("555"), "no phone number in {e:?}");
    }
    assert_eq!(terminal["ok"].status, Status::Sent);
    assert_eq!(h.twilio.count(), 1, "only the valid one reached Twilio");

    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| m.len() >= 4).await.to_vec();
    assert!(dead.iter().any(|m| m.payload() == Some(&bad_phone[..]) && header(m, h_::ERROR_CODE) == Some("invalid-phone-number")));
    herald.stop().await.unwrap();
}

/// An SMS request whose wire bytes (key and value) come to exactly `size`.
fn request_of_size(h: &Harness, event_id: &str, user: &str, size: usize) -> Vec<u8> {
    let mut request = sms(event_id, user, "+14155550100", "");
    let base = herald::codec::encode_request(&h.bundled.request, 1, &request).unwrap().len() + user.len();
    // The body's length prefix grows with it, so aim and correct.
    let mut body = size.saturating_sub(base);
    loop {
        request.content.body = "x".repeat(body);
        let bytes = herald::codec::encode_request(&h.bundled.request, 1, &request).unwrap();
        match (bytes.len() + user.len()).cmp(&size) {
            std::cmp::Ordering::Equal => return bytes,
            std::cmp::Ordering::Greater => body -= 1,
            std::cmp::Ordering::Less => body += 1,
        }
    }
}

/// Sends `records` and then a good request behind each, on one partition;
/// returns the statuses and whether herald stopped promptly.
async fn behind_big_records(h: &Harness, records: &[(&str, Vec<u8>)]) -> HashMap<String, herald::model::StatusEvent> {
    let big = kafka::producer_up_to(&h.broker.bootstrap, 3_000_000);
    let mut ids = vec![];
    for (i, (id, bytes)) in records.iter().enumerate() {
        kafka::produce(&big, &h.topics.requested, b"big-user", bytes, None).await;
        let after = format!("after-{i}");
        h.send(&sms(&after, "big-user", "+14155550100", "still delivered")).await;
        ids.extend([id.to_string(), after]);
    }
    let terminal = h.statuses().terminal(Duration::from_secs(60), &ids).await;
    for i in 0..records.len() {
        assert_eq!(terminal[&format!("after-{i}")].status, Status::Sent, "the good record behind record {i}");
    }
    terminal
}

/// Everything produced to the requests topic is committed once herald
/// has stopped.
async fn stops_with_everything_committed(h: &Harness, herald: Running) {
    herald.stop().await.unwrap();
    let committed = kafka::committed(&h.broker.bootstrap, &h.group, &h.topics.requested);
    for (partition, end) in kafka::end_offsets(&h.broker.bootstrap, &h.topics.requested).await {
        if end > 0 {
            assert_eq!(committed.get(&partition), Some(&end), "partition {partition} committed past every record");
        }
    }
    // A restart finds nothing to do: no good record is sent again.
    let sent = h.twilio.count();
    let again = h.start(&[]);
    let mut statuses = h.statuses();
    h.send(&sms("sentinel", "big-user", "+14155550100", "last")).await;
    statuses.terminal(Duration::from_secs(30), &["sentinel".into()]).await;
    again.stop().await.unwrap();
    assert_eq!(h.twilio.count(), sent + 1, "only the sentinel was sent after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_under_kafkas_limit_but_over_librdkafkas_default_is_dead_lettered_whole() {
    // About 1,000,099 bytes: under the broker's default 1,048,588, over
    // the 1,000,000 a default librdkafka producer writes.
    let h = Harness::new().await;
    let herald = h.start(&[]);
    let bytes = request_of_size(&h, "megabyte", "big-user", 1_000_099);
    let terminal = behind_big_records(&h, &[("megabyte", bytes.clone())]).await;
    let invalid = &terminal["megabyte"];
    assert_eq!((invalid.status, invalid.error_code.as_deref()), (Status::Invalid, Some("body-too-long")));
    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| !m.is_empty()).await.to_vec();
    assert_eq!(dead[0].payload(), Some(&bytes[..]), "the whole record is kept");
    assert_eq!(header(&dead[0], h_::ORIGINAL_SIZE), None);
    stops_with_everything_committed(&h, herald).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_too_large_to_copy_are_dead_lettered_without_their_bytes() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    // herald copies whole a record of up to --max-message-bytes (Kafka's
    // default, 1,048,588) less the 3,072 bytes its headers may need
    // (its own, and the trace headers it propagates).
    let limit = 1_048_588 - herald::pipeline::outcome::HEADER_ROOM;
    assert_eq!(herald::pipeline::outcome::HEADER_ROOM, 3_072, "the README says so");
    let records = [
        ("at-limit", request_of_size(&h, "at-limit", "big-user", limit)),
        ("over-limit", request_of_size(&h, "over-limit", "big-user", limit + 1)),
        ("two-mb", request_of_size(&h, "two-mb", "big-user", 2_000_000)),
    ];
    let terminal = behind_big_records(&h, &records).await;
    assert_eq!(terminal["at-limit"].error_code.as_deref(), Some("body-too-long"));
    for id in ["over-limit", "two-mb"] {
        let e = &terminal[id];
        assert_eq!((e.status, e.error_code.as_deref(), e.channel), (Status::Invalid, Some("record-too-large"), Some(herald::model::Channel::Sms)), "{id}");
    }
    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| m.len() >= 3).await.to_vec();
    assert_eq!(dead[0].payload().map(<[u8]>::len), Some(records[0].1.len()), "at the limit: whole");
    for (m, size) in dead[1..].iter().zip([limit + 1, 2_000_000]) {
        assert_eq!(m.payload(), None, "none of the producer's bytes");
        assert_eq!(m.key(), Some(&b"big-user"[..]), "the key is short, so it is kept");
        assert_eq!(header(m, h_::ORIGINAL_SIZE), Some(size.to_string().as_str()));
        assert_eq!(header(m, h_::ERROR_CODE), Some("record-too-large"));
        assert_eq!(header(m, h_::ORIGINAL_TOPIC), Some(h.topics.requested.as_str()));
    }
    stops_with_everything_committed(&h, herald).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_status_names_the_channel_whenever_the_request_decoded() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    let encode = |r: &herald::model::Request| herald::codec::encode_request(&h.bundled.request, 1, r).unwrap();
    let wrong_key = encode(&push("wrong-key", "u1", "tok", "t", "hi"));
    h.send_raw(b"someone-else", &wrong_key).await;
    h.producer
        .send(rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&h.topics.requested).payload(&encode(&sms("null-key", "u1", "+14155550100", "hi"))), rdkafka::util::Timeout::Never)
        .await
        .unwrap();
    h.send(&sms("", "u1", "+14155550100", "no event id")).await;
    h.send(&push("no-user", "", "tok", "t", "hi")).await;
    let mut statuses = h.statuses();
    statuses.until(Duration::from_secs(30), |e| e.len() >= 4).await;
    herald.stop().await.unwrap();
    use herald::model::Channel;
    let mut got: Vec<_> = statuses.events.iter().map(|e| (e.error_code.as_deref().unwrap_or_default().to_owned(), e.event_id.clone(), e.status, e.channel)).collect();
    got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let expected = [
        ("empty-event-id", "", Channel::Sms),
        ("empty-user-id", "no-user", Channel::Push),
        ("key-mismatch", "null-key", Channel::Sms),
        ("key-mismatch", "wrong-key", Channel::Push),
    ];
    assert_eq!(got, expected.map(|(code, id, channel)| (code.to_owned(), id.to_owned(), Status::Invalid, Some(channel))));
}
