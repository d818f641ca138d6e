//! On time: what waits leaves when it is due, whatever waits beside it.
//! Each test asserts the order things happened in and that nothing left
//! early; how late things leave is measured by the load benchmark's
//! timing phase, not asserted here.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use herald::model::{Priority, Status, StatusEvent};
use herald_testkit::fake::Reply;

use crate::support::*;

fn first(events: &[StatusEvent], id: &str, status: Status) -> Option<StatusEvent> {
    events.iter().find(|e| e.event_id == id && e.status == status).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_due_soon_does_not_wait_behind_a_retry_parked_ahead_of_it() {
    let h = Harness::new().await;
    // A retry waits 20 s on the first rung.
    let herald = h.start(&["--retry-delays", "20s,40s,80s"]);
    let mut statuses = h.statuses();
    h.twilio.script("+14155550100", [Reply::fail(503, "20503")]);
    h.send(&sms("retried", "same-user", "+14155550100", "fails once")).await;
    statuses.until(Duration::from_secs(60), |e| first(e, "retried", Status::RetryScheduled).is_some()).await;
    // The same user, so the same partition: before the wheel, this send
    // was parked on the first rung behind the retry, and left with it.
    let mut soon = sms("soon", "same-user", "+14155550101", "due in 2 s");
    soon.scheduled_at = Some(Utc::now() + chrono::Duration::seconds(2));
    h.send(&soon).await;
    statuses.until(Duration::from_secs(120), |e| first(e, "soon", Status::Sent).is_some() && first(e, "retried", Status::Sent).is_some()).await;
    let soon_sent = first(&statuses.events, "soon", Status::Sent).unwrap();
    let retry_sent = first(&statuses.events, "retried", Status::Sent).unwrap();
    assert!(soon_sent.occurred_at >= soon.scheduled_at.unwrap(), "never early: {soon_sent:?}");
    assert!(soon_sent.occurred_at < retry_sent.occurred_at, "the send due soon left before the retry parked ahead of it: {soon_sent:?} {retry_sent:?}");
    let calls: Vec<String> = h.twilio.requests().iter().filter_map(|r| r.field("Body").map(str::to_owned)).collect();
    assert_eq!(calls, ["fails once", "due in 2 s", "fails once"]);
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_refused_by_an_open_circuit_leave_as_announced_spread_out_not_in_one_burst() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-rate-limit", "off", "--breaker-failures", "5", "--breaker-cooldown", "3s", "--retry-delays", "20s,40s,80s"]);
    let mut statuses = h.statuses();
    h.send(&push("joined", "user-j", "tok", "t", "herald has joined")).await;
    statuses.terminal(Duration::from_secs(60), &["joined".into()]).await;
    // Twilio fails for 2 s while 600 SMS come at 100 a second.
    h.twilio.fail_until(std::time::Instant::now() + Duration::from_secs(2), Reply::fail(503, "20503"));
    let requests: Vec<_> = (0..600).map(|i| sms(&format!("c-{i}"), &format!("user-{i}"), "+14155550100", "through the outage")).collect();
    for chunk in requests.chunks(10) {
        h.send_many(chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = requests.iter().map(|r| r.event_id.clone()).collect();
    // Those that failed before the circuit opened retry after 20 s; the
    // rest come back when it is due to close.
    statuses.terminal(Duration::from_secs(180), &ids).await;
    statuses.caught_up().await;
    // The records the open circuit refused: RETRY_SCHEDULED with no attempt
    // used, and a time to come back.
    let refused: Vec<(String, DateTime<Utc>)> = statuses
        .events
        .iter()
        .filter(|e| e.status == Status::RetryScheduled && e.error_code.as_deref() == Some("circuit-open"))
        .map(|e| (e.event_id.clone(), e.next_attempt_at.unwrap()))
        .collect();
    assert!(refused.len() >= 100, "the circuit refused only {}", refused.len());
    let mut sent_at = Vec::new();
    for (id, announced) in &refused {
        let sent = first(&statuses.events, id, Status::Sent).unwrap();
        assert!(sent.occurred_at >= *announced, "{id} left before its announced {announced}: {sent:?}");
        sent_at.push(sent.occurred_at);
    }
    // Spread as announced: the cooldown's random spread is 3 s, and they
    // left over at least half of it, not all at the instant of the trial.
    let announced: Vec<DateTime<Utc>> = refused.iter().map(|(_, at)| *at).collect();
    let span = |times: &[DateTime<Utc>]| *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(span(&announced) >= chrono::Duration::milliseconds(2000), "announced over {}", span(&announced));
    assert!(span(&sent_at) >= span(&announced) / 2, "announced over {}, left over {}", span(&announced), span(&sent_at));
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferral_to_eight_across_a_daylight_saving_change_leaves_at_eight_local() {
    use chrono_tz::America::New_York;
    let h = Harness::new().await;
    let clock = herald::clock::Clock::adjustable();
    // 23:00 EST on Saturday 13 March 2027; at 02:00 on Sunday New York
    // springs forward to EDT, so 08:00 that morning is 12:00 UTC, not 13:00.
    let night = New_York.with_ymd_and_hms(2027, 3, 13, 23, 0, 0).unwrap().to_utc();
    let eight = New_York.with_ymd_and_hms(2027, 3, 14, 8, 0, 0).unwrap().to_utc();
    assert_eq!(eight, Utc.with_ymd_and_hms(2027, 3, 14, 12, 0, 0).unwrap());
    clock.set(night);
    let herald = h.start_with_clock(&["--sms-quiet-hours", "21:00-08:00"], clock.clone());
    let mut statuses = h.statuses();
    let mut request = sms("morning", "u-dst", "+14155550100", "good morning, in EDT");
    request.prefs.time_zone = Some("America/New_York".into());
    request.prefs.priority = Priority::Normal;
    h.send(&request).await;
    statuses.until(Duration::from_secs(60), |e| first(e, "morning", Status::Deferred).is_some()).await;
    assert_eq!(first(&statuses.events, "morning", Status::Deferred).unwrap().next_attempt_at, Some(eight));
    // A minute before, in EDT (an hour after it, in EST): still waiting.
    clock.set(eight - chrono::Duration::minutes(1));
    let still = statuses.until(Duration::from_secs(30), |e| e.iter().filter(|e| e.event_id == "morning").count() >= 1).await.len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(h.twilio.count(), 0, "sent before 08:00 EDT");
    clock.set(eight + chrono::Duration::seconds(1));
    let done = statuses.terminal(Duration::from_secs(60), &["morning".into()]).await;
    assert!(still >= 1);
    assert_eq!(done["morning"].status, Status::Sent);
    assert!(done["morning"].occurred_at >= eight, "{:?}", done["morning"]);
    assert_eq!(h.twilio.count(), 1);
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_scheduled_29_days_ahead_is_copied_no_more_than_the_wheel_s_bound() {
    // The default wheel, scaled down from minutes to milliseconds: copies
    // depend on the ratios of the delays and the hold, not on their scale,
    // so this is the production bound, with 29 days run in 42 s.
    let scale = |d: &str| humantime::parse_duration(d).unwrap() / 60_000;
    let delays: Vec<String> = herald::topics::DEFAULT_WAIT_DELAYS.split(',').map(|d| format!("{}us", scale(d).as_micros())).collect();
    let hold = format!("{}us", scale(herald::topics::DEFAULT_HOLD).as_micros());
    let h = Harness::new().await;
    let waits: Vec<String> = (0..delays.len()).map(|i| format!("{}.tier-{i}", h.topics.requested)).collect();
    let (waits, delays) = (waits.join(","), delays.join(","));
    let args = ["--wait-topics", &waits, "--wait-delays", &delays, "--hold-window", &hold, "--max-schedule-ahead", "60s"];
    let topics = h.config(&args).pipeline().unwrap().topics;
    let bound = topics.most_copies(Duration::from_secs(30 * 24 * 60) / 1000);
    assert!(bound <= 8, "the wheel's bound for 30 days: {bound}");
    let herald = h.start(&args);
    let mut later = sms("later", "u-later", "+14155550100", "29 days on");
    let due = Utc::now() + chrono::Duration::milliseconds(29 * 24 * 60);
    later.scheduled_at = Some(due);
    h.send(&later).await;
    let sent = h.statuses().terminal(Duration::from_secs(120), &["later".into()]).await;
    assert!(sent["later"].occurred_at >= due, "{:?}", sent["later"]);
    let mut copies = 0;
    for tier in waits.split(',') {
        copies += h.reader(tier).read_to_end(Duration::from_secs(30)).await.len();
    }
    println!("29 days ahead, scaled: {copies} copies; the wheel's bound for 30 days is {bound}");
    assert!((1..=bound as usize).contains(&copies), "{copies} copies, bound {bound}");
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_send_an_older_build_parked_on_a_retry_topic_still_leaves_at_its_time() {
    use herald::record::envelope as h_;
    use rdkafka::message::{Header, OwnedHeaders};
    let h = Harness::new().await;
    herald_testkit::kafka::create_topics(&h.broker.bootstrap, &[&h.topics.retries[2]], PARTITIONS).await;
    let herald = h.start(&[]);
    // Before the wheel, a scheduled send waited on the retry topics.
    let mut request = sms("old-scheduled", "u-old", "+14155550100", "parked by an older build");
    let due = Utc::now() + chrono::Duration::seconds(5);
    request.scheduled_at = Some(due);
    let bytes = herald::codec::encode_request(&h.bundled.request, 1, &request).unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header { key: h_::ATTEMPTS, value: Some("0") })
        .insert(Header { key: h_::NOT_BEFORE, value: Some(&due.timestamp_millis().to_string()) });
    herald_testkit::kafka::produce(&h.producer, &h.topics.retries[2], b"u-old", &bytes, Some(headers)).await;
    let sent = h.statuses().terminal(Duration::from_secs(60), &["old-scheduled".into()]).await;
    assert_eq!(sent["old-scheduled"].status, Status::Sent);
    assert!(sent["old-scheduled"].occurred_at >= due, "{:?}", sent["old-scheduled"]);
    assert_eq!(h.twilio.count(), 1);
    herald.stop().await.unwrap();
}

/// One tier's broker stalls: only that tier's records wait for it. Three
/// brokers in librdkafka's mock cluster (tansu is one broker, so stalling
/// it stalls every topic alike); the first tier's partitions are led by
/// the third, which then answers everything 20 s late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_whose_broker_stalls_delays_only_its_own_records() {
    use rdkafka::mocking::{MockCluster, MockCoordinator};
    let h = Harness::new().await;
    let mock = MockCluster::new(3).expect("a mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let t = &h.topics;
    let all: Vec<&String> = [&t.requested, &t.status, &t.dead_letter].into_iter().chain(&t.retries).chain(&t.waits).collect();
    for topic in &all {
        mock.create_topic(topic, PARTITIONS, 1).unwrap();
        let leader = if **topic == t.waits[0] { 3 } else { 1 };
        for p in 0..PARTITIONS {
            mock.partition_leader(topic, p, Some(leader)).unwrap();
        }
    }
    for single in [&t.suppressions, &t.cancellations] {
        mock.create_topic(single, 1, 1).unwrap();
        mock.partition_leader(single, 0, Some(1)).unwrap();
    }
    for group in [h.group.clone(), format!("{}.ledger", h.group), format!("{}.reader", h.group)] {
        mock.coordinator(MockCoordinator::Group(group), 1).unwrap();
    }
    // Tiers of 0.5 s and 10 s: a wait of 3 s can only go to the first,
    // one of 9.5 to 10 s only to the second.
    let herald = h.start(&["--brokers", &bootstrap, "--wait-delays", "500ms,10s,60s", "--hold-window", "500ms"]);
    let producer = herald_testkit::kafka::producer(&bootstrap);
    let send = |r: herald::model::Request| {
        let bytes = herald::codec::encode_request(&h.bundled.request, 1, &r).unwrap();
        let (producer, topic) = (producer.clone(), t.requested.clone());
        async move { herald_testkit::kafka::produce(&producer, &topic, r.user_id.as_bytes(), &bytes, None).await }
    };
    let mut statuses = Statuses::on(&bootstrap, &t.status, &h.bundled);
    send(sms("warm", "u-warm", "+14155550100", "warm up")).await;
    statuses.terminal(Duration::from_secs(60), &["warm".into()]).await;

    mock.broker_round_trip_time(3, Duration::from_secs(20)).unwrap();
    // Due in 3 s: parked on the first tier, whose broker stalls.
    let mut stalled = sms("on-the-stalled-tier", "u-a", "+14155550101", "stalled");
    stalled.scheduled_at = Some(Utc::now() + chrono::Duration::seconds(3));
    // Due in 10 s: parked on the second tier, on another broker.
    let mut later = sms("on-another-tier", "u-b", "+14155550102", "on time");
    later.scheduled_at = Some(Utc::now() + chrono::Duration::seconds(10));
    // A retry on the first rung, and a send due now.
    h.twilio.script("+14155550103", [Reply::fail(503, "20503")]);
    for r in [stalled, later, sms("retried", "u-c", "+14155550103", "retried"), sms("now", "u-d", "+14155550104", "now")] {
        send(r).await;
    }
    let others = ["on-another-tier", "retried", "now"].map(String::from);
    statuses.terminal(Duration::from_secs(60), &others).await;
    assert!(first(&statuses.events, "on-the-stalled-tier", Status::Sent).is_none(), "the stalled tier's record went while its broker stalled");
    mock.broker_round_trip_time(3, Duration::ZERO).unwrap();
    let done = statuses.terminal(Duration::from_secs(120), &["on-the-stalled-tier".into()]).await;
    let stalled_sent = done["on-the-stalled-tier"].occurred_at;
    for id in &others {
        assert!(done[id].occurred_at < stalled_sent, "{id} waited for the stalled tier");
    }
    herald.stop().await.unwrap();
}
