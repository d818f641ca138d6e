//! Cancelling a notification: a record on the cancellations topic that
//! every instance follows; honoured while the request waits, never after
//! it was sent.

use std::time::Duration;

use chrono::Utc;
use herald::model::Status;
use herald_testkit::fake::Reply;

use crate::support::*;

/// Sends a request and waits for its terminal status: herald is consuming.
async fn warm_up(h: &Harness, statuses: &mut Statuses) {
    h.send(&push("warm-up", "u0", "token", "t", "herald is consuming")).await;
    statuses.terminal(Duration::from_secs(30), &["warm-up".into()]).await;
}

fn calls_with_body(h: &Harness, body: &str) -> usize {
    h.twilio.requests().iter().filter(|r| r.field("Body") == Some(body)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_scheduled_send_is_never_sent() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    let mut statuses = h.statuses();
    warm_up(&h, &mut statuses).await;

    let mut later = sms("later", "u1", "+14155550100", "never sent");
    later.scheduled_at = Some(Utc::now() + chrono::Duration::seconds(3));
    h.send(&later).await;
    statuses.until(Duration::from_secs(10), |e| e.iter().any(|e| e.event_id == "later" && e.status == Status::Scheduled)).await;
    h.cancel("later").await;

    let terminal = statuses.terminal(Duration::from_secs(30), &["later".into()]).await;
    assert_eq!((terminal["later"].status, terminal["later"].attempt), (Status::Cancelled, 0), "{:?}", terminal["later"]);
    // In milliseconds, as the request carried its time (Avro's
    // timestamp-millis): within the millisecond it is due, herald may act.
    let due = later.scheduled_at.unwrap().timestamp_millis();
    assert!(terminal["later"].occurred_at.timestamp_millis() >= due, "cancelled when it came up for its attempt, at {due}: {:?}", terminal["later"]);
    assert_eq!(calls_with_body(&h, "never sent"), 0, "no provider call");
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_request_waiting_on_the_second_retry_topic() {
    let h = Harness::new().await;
    // The second retry waits 5 s: long enough to cancel it meanwhile.
    let herald = h.start(&["--retry-delays", "300ms,5s,10s"]);
    h.twilio.script("+14155550100", vec![Reply::fail(503, "20503"); 2]);
    h.send(&sms("retried", "u2", "+14155550100", "failing twice")).await;
    let mut statuses = h.statuses();
    statuses
        .until(Duration::from_secs(30), |e| e.iter().any(|e| e.event_id == "retried" && e.status == Status::RetryScheduled && e.attempt == 2))
        .await;
    h.cancel("retried").await;

    let terminal = statuses.terminal(Duration::from_secs(30), &["retried".into()]).await;
    assert_eq!((terminal["retried"].status, terminal["retried"].attempt), (Status::Cancelled, 2), "{:?}", terminal["retried"]);
    assert_eq!(calls_with_body(&h, "failing twice"), 2, "the two failed attempts, and no third");
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_written_before_herald_started_and_before_its_request_is_honoured() {
    let h = Harness::new().await;
    // Read from the topic at startup, not followed.
    h.cancel("early").await;
    let herald = h.start(&[]);
    h.send(&sms("early", "u3", "+14155550100", "cancelled in advance")).await;
    h.send(&sms("kept", "u3", "+14155550101", "not cancelled")).await;
    // Followed: written while herald runs, before its request.
    h.cancel("ahead").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.send(&sms("ahead", "u3", "+14155550102", "cancelled ahead")).await;

    let ids = ["early", "kept", "ahead"].map(String::from);
    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    assert_eq!(terminal["early"].status, Status::Cancelled);
    assert_eq!(terminal["ahead"].status, Status::Cancelled);
    assert_eq!(terminal["kept"].status, Status::Sent);
    assert_eq!(calls_with_body(&h, "cancelled in advance") + calls_with_body(&h, "cancelled ahead"), 0);
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_the_send_changes_nothing() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    h.send(&sms("sent", "u4", "+14155550100", "already out")).await;
    let mut statuses = h.statuses();
    statuses.terminal(Duration::from_secs(30), &["sent".into()]).await;
    h.cancel("sent").await;
    // A later request of the same user shows herald has read past the cancel.
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.send(&sms("after", "u4", "+14155550101", "later")).await;
    statuses.terminal(Duration::from_secs(30), &["after".into()]).await;
    let history: Vec<Status> = statuses.of("sent").iter().map(|e| e.status).collect();
    assert_eq!(history, [Status::Sent]);
    assert_eq!(calls_with_body(&h, "already out"), 1);
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_scheduled_beyond_the_furthest_allowed_is_invalid() {
    let h = Harness::new().await;
    let herald = h.start(&["--max-schedule-ahead", "1h"]);
    let mut far = sms("far", "u5", "+14155550100", "next year");
    far.scheduled_at = Some(Utc::now() + chrono::Duration::hours(2));
    let mut near = sms("near", "u5", "+14155550101", "soon");
    near.scheduled_at = Some(Utc::now() + chrono::Duration::minutes(59));
    h.send(&far).await;
    h.send(&near).await;
    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(30), &["far".into()]).await;
    assert_eq!((terminal["far"].status, terminal["far"].error_code.as_deref()), (Status::Invalid, Some("scheduled-too-far")));
    assert!(terminal["far"].error_message.as_deref().is_some_and(|m| m.contains("1h")), "{:?}", terminal["far"]);
    statuses.until(Duration::from_secs(10), |e| e.iter().any(|e| e.event_id == "near" && e.status == Status::Scheduled)).await;
    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| !m.is_empty()).await.to_vec();
    assert_eq!(dead.len(), 1, "the far one is on the dead-letter topic");
    herald.stop().await.unwrap();
}
