//! Quiet hours in the recipient's own time zone, on a clock the test
//! moves: no test waits for real hours. The daylight-saving rules are
//! checked against chrono-tz in `src/quiet.rs`.

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use chrono_tz::America::New_York;
use chrono_tz::Tz;
use herald::clock::Clock;
use herald::model::{ErrorClass, Priority, Request, Status};
use rdkafka::Message;

use crate::support::*;

/// The next time after `after` at which the clock in `zone` shows `hour`:00.
fn next_local(zone: Tz, hour: u32, after: DateTime<Utc>) -> DateTime<Utc> {
    let local = after.with_timezone(&zone).date_naive();
    local
        .iter_days()
        .filter_map(|day| zone.with_ymd_and_hms(day.year(), day.month(), day.day(), hour, 0, 0).single())
        .map(|t| t.to_utc())
        .find(|t| *t > after)
        .unwrap()
}

fn in_zone(mut request: Request, zone: &str, priority: Priority) -> Request {
    request.prefs.time_zone = Some(zone.into());
    request.prefs.priority = priority;
    request
}

fn calls_with_body(h: &Harness, body: &str) -> usize {
    h.twilio.requests().iter().filter(|r| r.field("Body") == Some(body)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_at_night_in_new_york_is_sent_at_eight_there_and_urgent_at_once() {
    let h = Harness::new().await;
    let clock = Clock::adjustable();
    let night = next_local(New_York, 23, Utc::now());
    clock.set(night);
    // Short delays, so the deferred request comes round every few seconds.
    let herald = h.start_with_clock(&["--sms-quiet-hours", "21:00-08:00", "--retry-delays", "1s,2s,3s"], clock.clone());
    let mut statuses = h.statuses();

    // One user, three requests: New York's night, the same marked URGENT,
    // and Tokyo, where 23:00 in New York is early afternoon.
    let normal = in_zone(sms("night", "u1", "+14155550100", "good morning"), "America/New_York", Priority::Normal);
    let urgent = in_zone(sms("code", "u1", "+14155550101", "your code is 123456"), "America/New_York", Priority::Urgent);
    let tokyo = in_zone(sms("tokyo", "u1", "+14155550102", "good afternoon"), "Asia/Tokyo", Priority::Unknown);
    assert!((12..=14).contains(&chrono::Timelike::hour(&night.with_timezone(&chrono_tz::Asia::Tokyo))), "daytime in Tokyo");
    for r in [&normal, &urgent, &tokyo] {
        h.send(r).await;
    }
    let ids = ["code", "tokyo"].map(String::from);
    let sent = statuses.terminal(Duration::from_secs(30), &ids).await;
    assert_eq!((sent["code"].status, sent["tokyo"].status), (Status::Sent, Status::Sent));
    statuses.until(Duration::from_secs(10), |e| e.iter().any(|e| e.event_id == "night" && e.status == Status::Deferred)).await;
    let deferred = statuses.of("night").into_iter().find(|e| e.status == Status::Deferred).unwrap();
    let morning = next_local(New_York, 8, night);
    assert_eq!(morning.with_timezone(&New_York).date_naive(), night.with_timezone(&New_York).date_naive().succ_opt().unwrap(), "the next morning");
    assert_eq!(deferred.next_attempt_at, Some(morning), "{deferred:?}");
    assert_eq!((deferred.error_code.as_deref(), deferred.error_class), (Some("quiet-hours"), Some(ErrorClass::Transient)));
    assert!(deferred.error_message.as_deref().unwrap().contains("America/New_York"), "{deferred:?}");
    assert_eq!(deferred.attempt, 0, "no attempt used");

    // Still night for several rounds of the delay topics: nothing is sent.
    clock.set(morning - chrono::Duration::minutes(10));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(calls_with_body(&h, "good morning"), 0);
    assert!(statuses.of("night").iter().all(|e| e.status == Status::Deferred));

    // Morning in New York.
    clock.set(morning + chrono::Duration::seconds(1));
    let done = statuses.terminal(Duration::from_secs(30), &["night".into()]).await;
    assert_eq!((done["night"].status, done["night"].attempt), (Status::Sent, 1), "{:?}", done["night"]);
    assert!(done["night"].occurred_at >= morning);
    assert_eq!(
        [calls_with_body(&h, "good morning"), calls_with_body(&h, "your code is 123456"), calls_with_body(&h, "good afternoon")],
        [1, 1, 1]
    );
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_time_zone_is_invalid_and_dead_lettered() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-quiet-hours", "21:00-08:00"]);
    // Matched in any case; the default zone (UTC) for a request with none.
    let bad = h.send(&in_zone(sms("mars", "u1", "+14155550100", "hi"), "Mars/Olympus_Mons", Priority::Urgent)).await;
    h.send(&in_zone(sms("lower", "u1", "+14155550101", "hi"), "europe/lisbon", Priority::Urgent)).await;
    let ids = ["mars", "lower"].map(String::from);
    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    let mars = &terminal["mars"];
    assert_eq!((mars.status, mars.error_code.as_deref(), mars.error_class), (Status::Invalid, Some("unknown-time-zone"), Some(ErrorClass::Invalid)));
    assert!(mars.error_message.as_deref().unwrap().contains("Mars/Olympus_Mons"));
    assert_eq!(terminal["lower"].status, Status::Sent, "an URGENT send, in a zone spelt in lower case");
    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| !m.is_empty()).await.to_vec();
    assert!(dead.iter().any(|m| m.payload() == Some(&bad[..]) && header(m, herald::record::envelope::ERROR_CODE) == Some("unknown-time-zone")));
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_comes_due_at_night_waits_for_the_morning_keeping_its_attempts() {
    let h = Harness::new().await;
    let clock = Clock::adjustable();
    let evening = next_local(New_York, 20, Utc::now());
    clock.set(evening);
    let herald = h.start_with_clock(&["--sms-quiet-hours", "21:00-08:00", "--retry-delays", "3s,3s,3s"], clock.clone());
    h.twilio.script("+14155550100", vec![herald_testkit::fake::Reply::fail(503, "20503")]);
    h.send(&in_zone(sms("evening", "u1", "+14155550100", "see you tomorrow"), "America/New_York", Priority::Normal)).await;
    let mut statuses = h.statuses();
    statuses.until(Duration::from_secs(30), |e| e.iter().any(|e| e.event_id == "evening" && e.status == Status::RetryScheduled)).await;
    // The retry comes due after 21:00 there.
    let night = next_local(New_York, 23, evening);
    clock.set(night);
    statuses.until(Duration::from_secs(30), |e| e.iter().any(|e| e.event_id == "evening" && e.status == Status::Deferred)).await;
    let deferred = statuses.of("evening").into_iter().find(|e| e.status == Status::Deferred).unwrap();
    let morning = next_local(New_York, 8, night);
    assert_eq!((deferred.attempt, deferred.next_attempt_at), (1, Some(morning)), "{deferred:?}");
    assert_eq!(calls_with_body(&h, "see you tomorrow"), 1);

    clock.set(morning + chrono::Duration::seconds(1));
    let done = statuses.terminal(Duration::from_secs(30), &["evening".into()]).await;
    assert_eq!((done["evening"].status, done["evening"].attempt), (Status::Sent, 2), "the second attempt: {:?}", done["evening"]);
    assert_eq!(calls_with_body(&h, "see you tomorrow"), 2);
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_deferred_request_that_come_due_together_are_sent_once() {
    let h = Harness::new().await;
    let clock = Clock::adjustable();
    let night = next_local(New_York, 23, Utc::now());
    clock.set(night);
    let herald = h.start_with_clock(&["--sms-quiet-hours", "21:00-08:00", "--retry-delays", "1s,2s,3s", "--sms-rate-limit", "off"], clock.clone());
    // The call takes a while, so every copy comes up while the first is under way.
    h.twilio.set_latency(Duration::from_millis(800));
    // Four copies of one request waiting for the morning, as crashes before
    // a commit (or a producer sending it again) leave them.
    let request = in_zone(sms("copies", "u1", "+14155550100", "once only"), "America/New_York", Priority::Normal);
    for _ in 0..4 {
        h.send(&request).await;
    }
    let mut statuses = h.statuses();
    statuses.until(Duration::from_secs(30), |e| e.iter().filter(|e| e.event_id == "copies" && e.status == Status::Deferred).count() >= 4).await;
    clock.set(next_local(New_York, 8, night) + chrono::Duration::seconds(1));
    statuses.terminal(Duration::from_secs(30), &["copies".into()]).await;
    // Every copy has come round by now: the longest delay is 3 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    statuses.caught_up().await;
    assert_eq!(calls_with_body(&h, "once only"), 1, "one call for four copies");
    let sent = statuses.of("copies").into_iter().filter(|e| e.status == Status::Sent).count();
    assert_eq!(sent, 1, "{:?}", statuses_of(&statuses.events, "copies"));
    herald.stop().await.unwrap();
}
