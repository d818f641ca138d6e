//! Records that can never be delivered: poison bytes and invalid requests.

use std::time::Duration;

use herald::model::{ErrorClass, Status};
use herald::outcome::envelope as h_;
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
    assert_eq!(h.twilio.requests().len(), 1, "only the valid one reached Twilio");

    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| m.len() >= 4).await.to_vec();
    assert!(dead.iter().any(|m| m.payload() == Some(&bad_phone[..]) && header(m, h_::ERROR_CODE) == Some("invalid-phone-number")));
    herald.stop().await.unwrap();
}
