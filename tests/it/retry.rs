//! The retry path through the delay topics, and not-before times.

use std::time::Duration;

use chrono::Utc;
use herald::model::{ErrorClass, Status};
use herald::record::envelope as h_;
use herald_testkit::fake::Reply;
use rdkafka::message::Message;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_walk_10m_20m_40m_then_dead_letter() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    h.twilio.script("+14155550100", vec![Reply::fail(503, "20503"); 4]);
    let original = h.send(&sms("doomed", "u1", "+14155550100", "never arrives")).await;

    let mut statuses = h.statuses();
    statuses.terminal(Duration::from_secs(30), &["doomed".into()]).await;
    let seen = statuses.of("doomed");
    assert_eq!(
        seen.iter().map(|e| (e.status, e.attempt)).collect::<Vec<_>>(),
        [(Status::RetryScheduled, 1), (Status::RetryScheduled, 2), (Status::RetryScheduled, 3), (Status::DeadLettered, 4)]
    );
    for (e, delay) in seen.iter().zip(RETRY_DELAYS) {
        let next = e.next_attempt_at.expect("retry has a next attempt time");
        assert_eq!(next - e.occurred_at, chrono::Duration::from_std(delay).unwrap());
        assert_eq!((e.error_class, e.error_code.as_deref()), (Some(ErrorClass::Transient), Some("twilio:20503")));
        // herald's sentence, not the provider's text (which quotes a number).
        let message = e.error_message.as_deref().unwrap();
        assert!(message.starts_with("twilio unavailable (twilio:20503): Twilio answered HTTP 503") && !message.contains("Scripted"), "{message}");
    }

    // One record on each retry topic, carrying the attempts made so far.
    for (attempts, topic) in h.topics.retries.iter().enumerate() {
        // Terminal already: every copy is written.
        let records = h.reader(topic).read_to_end(Duration::from_secs(30)).await.to_vec();
        assert_eq!(records.len(), 1, "exactly one record on {topic}");
        assert_eq!(header(&records[0], h_::ATTEMPTS), Some((attempts + 1).to_string().as_str()));
        assert_eq!(records[0].payload(), Some(&original[..]));
    }

    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| !m.is_empty()).await.to_vec();
    let d = &dead[0];
    assert_eq!(d.payload(), Some(&original[..]), "dead letter keeps the producer's bytes");
    assert_eq!(d.key(), Some(&b"u1"[..]));
    assert_eq!(header(d, h_::ATTEMPTS), Some("4"));
    assert_eq!(header(d, h_::ORIGINAL_TOPIC), Some(h.topics.requested.as_str()));
    assert!(header(d, h_::ORIGINAL_OFFSET).is_some() && header(d, h_::ORIGINAL_PARTITION).is_some());
    assert_eq!(header(d, h_::ERROR_CLASS), Some("TRANSIENT"));
    assert_eq!(header(d, h_::ERROR_CODE), Some("twilio:20503"));

    // Not-before respected: each attempt waited at least its delay.
    let times: Vec<_> = h.twilio.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 4);
    for (pair, delay) in times.windows(2).zip(RETRY_DELAYS) {
        assert!(pair[1] - pair[0] >= delay, "attempt came after {:?}, before its delay {delay:?}", pair[1] - pair[0]);
    }
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_on_the_third_attempt_ends_the_retries() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    h.fcm.script("flaky-token", [Reply::fail(503, "UNAVAILABLE"), Reply::fail(500, "INTERNAL")]);
    h.send(&push("flaky", "u2", "flaky-token", "t", "third time lucky")).await;

    let mut statuses = h.statuses();
    statuses.terminal(Duration::from_secs(30), &["flaky".into()]).await;
    statuses.caught_up().await;
    assert_eq!(statuses_of(&statuses.events, "flaky"), [(Status::RetryScheduled, 1), (Status::RetryScheduled, 2), (Status::Sent, 3)]);
    assert_eq!(h.fcm.count(), 3);
    assert!(h.reader(&h.topics.retries[2]).read_to_end(Duration::from_secs(30)).await.is_empty(), "never reached retry-40m");
    assert!(h.reader(&h.topics.dead_letter).read_to_end(Duration::from_secs(30)).await.is_empty());
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_are_not_retried() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    h.twilio.script("+14155550123", [Reply::fail(400, "21614")]);
    h.fcm.script("dead-token", [Reply::fail(404, "UNREGISTERED")]);
    h.send(&sms("landline", "u3", "+14155550123", "hello")).await;
    h.send(&push("gone", "u4", "dead-token", "t", "hello")).await;

    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(30), &["landline".into(), "gone".into()]).await;
    assert_eq!((terminal["landline"].status, terminal["landline"].error_code.as_deref()), (Status::Failed, Some("twilio:21614")));
    assert_eq!((terminal["gone"].status, terminal["gone"].error_code.as_deref()), (Status::Failed, Some("fcm:UNREGISTERED")));
    assert_eq!(terminal["gone"].error_class, Some(ErrorClass::Permanent));
    statuses.caught_up().await;
    assert_eq!(statuses.of("landline").len(), 1, "no retry after a permanent failure");
    assert_eq!((h.twilio.count(), h.fcm.count()), (1, 1));
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_send_waits_for_its_time_without_blocking_others() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    // The schedule is relative to now, so wait until herald has joined the
    // group; otherwise the join (about 3 s) could outlast the schedule.
    let mut statuses = h.statuses();
    h.send(&push("warm-up", "u0", "token", "t", "herald is consuming")).await;
    statuses.terminal(Duration::from_secs(30), &["warm-up".into()]).await;

    let mut later = sms("later", "u5", "+14155550100", "at the scheduled time");
    let due = Utc::now() + chrono::Duration::milliseconds(2500);
    later.scheduled_at = Some(due);
    h.send(&later).await;
    // Same user, so same partition as the scheduled one.
    h.send(&sms("now", "u5", "+14155550101", "right away")).await;

    let terminal = statuses.terminal(Duration::from_secs(30), &["later".into(), "now".into()]).await;
    let scheduled = statuses.of("later");
    assert_eq!(scheduled[0].status, Status::Scheduled);
    assert_eq!(scheduled[0].next_attempt_at.map(millis), Some(millis(due)));
    let sent_later = &terminal["later"];
    assert_eq!(sent_later.status, Status::Sent);
    // In milliseconds, as the request carried its time (timestamp-millis).
    assert!(millis(sent_later.occurred_at) >= millis(due), "sent at {} before {}", sent_later.occurred_at, due);
    assert!(terminal["now"].occurred_at < due, "the unscheduled event did not wait behind the scheduled one");
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_parked_again_keeps_the_error_that_parked_it() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    // A Retry-After of 6 s outlasts the 1.2 s topic several times over: the
    // record is released early, and parked again, however slow the machine.
    h.twilio.script("+14155550100", [Reply::Fail { status: 429, code: Some("20429".into()), retry_after: Some(6) }]);
    h.send(&sms("later", "u1", "+14155550100", "after the Retry-After")).await;
    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(30), &["later".into()]).await;
    herald.stop().await.unwrap();
    assert_eq!((terminal["later"].status, terminal["later"].attempt), (Status::Sent, 2));
    // On the first rung, then on the wheel for the rest of the 6 s.
    let mut copies = vec![];
    for topic in h.topics.retries.iter().chain(&h.topics.waits) {
        copies.extend(h.reader(topic).read_to_end(Duration::from_secs(30)).await.to_vec());
    }
    assert!(copies.len() >= 2, "parked, then parked again: {} copies", copies.len());
    for copy in &copies {
        assert_eq!(header(copy, h_::ERROR_CODE), Some("twilio:20429"));
        assert_eq!(header(copy, h_::ERROR_CLASS), Some("TRANSIENT"));
        assert!(header(copy, h_::ERROR_MESSAGE).is_some_and(|m| m.contains("too many requests")));
        assert_eq!(header(copy, h_::ATTEMPTS), Some("1"));
    }
}

/// A delay topic's idle partitions rest (are paused) for a twentieth of the
/// topic's delay; a record that lands while its partition rests, or in the
/// instant it is put to rest, must still be read, once, soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_land_on_a_resting_delay_topic_are_all_read_once() {
    let h = Harness::new().await;
    // retry-1's partitions rest for 3 s at a time.
    let herald = h.start(&["--retry-delays", "60s,120s,240s"]);
    h.send(&sms("warm-up", "warm", "+14155550100", "hi")).await;
    h.statuses().terminal(Duration::from_secs(30), &["warm-up".into()]).await;

    // Parked records that are due at once, as if an earlier attempt had
    // failed, landing on one partition at random moments across several
    // rest cycles.
    let mut ids = Vec::new();
    let mut landed = std::collections::HashMap::new();
    for i in 0..20 {
        let id = format!("rested-{i}");
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header { key: h_::ATTEMPTS, value: Some("1") })
            .insert(rdkafka::message::Header { key: h_::NOT_BEFORE, value: Some(Utc::now().timestamp_millis().to_string().as_str()) });
        let user = "parked-user".to_owned();
        let bytes = herald::codec::encode_request(&h.bundled.request, 1, &sms(&id, &user, "+14155550100", "parked")).unwrap();
        // Sealed as herald's own, so its attempt counts.
        let headers = herald::record::Seal::new(herald_testkit::ENVELOPE_KEY.as_bytes(), &h.group).seal(Some(user.as_bytes()), Some(&bytes), headers);
        herald_testkit::kafka::produce(&h.producer, &h.topics.retries[0], user.as_bytes(), &bytes, Some(headers)).await;
        landed.insert(id.clone(), Utc::now());
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..2500))).await;
    }

    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    let mut longest = chrono::Duration::zero();
    for id in &ids {
        let e = &terminal[id];
        assert_eq!((e.status, e.attempt), (Status::Sent, 2), "{id}: {e:?}");
        longest = longest.max(e.occurred_at - landed[id]);
    }
    // Otherwise no record landed during a rest, and this tested nothing.
    assert!(longest > chrono::Duration::milliseconds(1000), "no record waited out a rest: longest wait {longest}");
    let bodies: Vec<String> = h.twilio.requests().iter().filter_map(|r| r.field("Body").map(str::to_owned)).collect();
    assert_eq!(bodies.iter().filter(|b| *b == "parked").count(), ids.len(), "each parked record sent exactly once");
    herald.stop().await.unwrap();
}
