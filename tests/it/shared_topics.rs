//! The delay topics are shared ground: another deployment on the same
//! topics, or any producer with write access, can put records there. herald
//! acts only on the envelopes it can prove it wrote (`record::seal`).

use std::time::Duration;

use chrono::Utc;
use herald::model::Status;
use herald::record::envelope as h_;
use herald::record::seal::{OWNER, TAG};
use herald::record::Seal;
use rdkafka::message::{Header, Message, OwnedHeaders};

use crate::support::*;

/// The value of `name` in `metrics` (Prometheus text), summed over its
/// label sets; 0 when absent.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(admin: &str) -> String {
    reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap()
}

/// Reads every delay topic to its end.
async fn parked(h: &Harness) -> Vec<rdkafka::message::OwnedMessage> {
    let mut all = Vec::new();
    for topic in h.topics.retries.iter().chain(&h.topics.waits) {
        all.extend(h.reader(topic).read_to_end(Duration::from_secs(30)).await.iter().cloned());
    }
    all
}

/// Waits until `group` has committed every record of every delay topic:
/// it has seen all there is to see.
async fn caught_up(h: &Harness, group: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut behind = Vec::new();
        for topic in h.topics.retries.iter().chain(&h.topics.waits) {
            let end = herald_testkit::kafka::end_offsets(&h.broker.bootstrap, topic).await;
            let committed = herald_testkit::kafka::committed(&h.broker.bootstrap, group, topic);
            behind.extend(end.iter().filter(|(p, e)| **e > 0 && committed.get(p).copied().unwrap_or(0) < **e).map(|(p, _)| (topic.clone(), *p)));
        }
        if behind.is_empty() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{group} never caught up with {behind:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_on_the_same_topics_each_send_once_and_never_repark_the_others_copies() {
    let h = Harness::new().await;
    let (east_group, west_group) = (format!("{}.east", h.group), format!("{}.west", h.group));
    let (east, east_admin) = h.start_with_admin(&["--group-id", &east_group]);
    let mut statuses = h.statuses();
    let sent = |events: &[herald::model::StatusEvent], id: &str| events.iter().filter(|e| e.event_id == id && e.status == Status::Sent).count();
    h.send(&sms("shared-now", "u-shared", "+14155550101", "due at once")).await;
    statuses.until(Duration::from_secs(60), |events| sent(events, "shared-now") == 1).await;
    // West starts after east sent it: west's send ledger reads east's SENT
    // from the shared status topic, and must not take it for its own.
    let (west, west_admin) = h.start_with_admin(&["--group-id", &west_group]);
    statuses.until(Duration::from_secs(60), |events| sent(events, "shared-now") == 2).await;
    // Then a send scheduled several hops of the 1.2 s delay topic ahead:
    // each deployment parks and re-parks its own copy. Before owners, each
    // re-parked the other's copies too, and they multiplied.
    let mut scheduled = sms("shared-scheduled", "u-shared", "+14155550100", "scheduled, two deployments");
    scheduled.scheduled_at = Some(Utc::now() + chrono::Duration::seconds(4));
    h.send(&scheduled).await;
    statuses.until(Duration::from_secs(60), |events| sent(events, "shared-scheduled") == 2).await;
    caught_up(&h, &east_group).await;
    caught_up(&h, &west_group).await;

    // Once per deployment, and never before its time.
    let calls = h.twilio.requests();
    let to = |number: &str| calls.iter().filter(|r| r.field("To") == Some(number)).count();
    assert_eq!((to("+14155550100"), to("+14155550101")), (2, 2), "each request sent once per deployment");
    statuses.caught_up().await;
    assert_eq!(sent(&statuses.events, "shared-scheduled"), 2);
    let scheduled = statuses_of(&statuses.events, "shared-scheduled");
    assert_eq!(scheduled.iter().filter(|(s, _)| *s == Status::Scheduled).count(), 2, "{scheduled:?}");

    // Bounded: a 4 s wait on delays of at most 1.2 s is a handful of hops
    // for each deployment, whatever the other does.
    let copies = parked(&h).await;
    let owned_by = |group: &str| copies.iter().filter(|m| header(m, OWNER) == Some(group)).count();
    let (by_east, by_west) = (owned_by(&east_group), owned_by(&west_group));
    assert_eq!(by_east + by_west, copies.len(), "every copy names its owner");
    assert!((1..=6).contains(&by_east) && (1..=6).contains(&by_west), "copies: east {by_east}, west {by_west}");
    assert!(copies.iter().all(|m| header(m, TAG).is_some()), "every copy is sealed");

    // Each saw the other's copies, and skipped them.
    for (admin, others) in [(&east_admin, by_west), (&west_admin, by_east)] {
        let foreign = metric(&scrape(admin).await, "herald_foreign_records_total");
        assert_eq!(foreign, others as f64, "{admin} skipped the other deployment's copies");
    }
    east.stop().await.unwrap();
    west.stop().await.unwrap();
}

/// Produces `request` straight to a retry topic with `headers`, as anyone
/// with write access could.
async fn park_by_hand(h: &Harness, retry: usize, request: &herald::model::Request, headers: OwnedHeaders) -> Vec<u8> {
    // Created here, as herald would: a producer's first write would make
    // the broker create it with its own partition count, and herald would
    // then refuse to start.
    herald_testkit::kafka::create_topics(&h.broker.bootstrap, &[&h.topics.retries[retry]], PARTITIONS).await;
    let bytes = herald::codec::encode_request(&h.bundled.request, 1, request).unwrap();
    herald_testkit::kafka::produce(&h.producer, &h.topics.retries[retry], request.user_id.as_bytes(), &bytes, Some(headers)).await;
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_to_a_retry_topic_by_hand_get_every_check_and_skip_no_limit() {
    let h = Harness::new().await;
    let (herald, admin) = h.start_with_admin(&["--sms-rate-limit", "3/1h"]);
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = format!("forged-{i}");
        let request = sms(&id, "u-forger", &format!("+1415555{:04}", 100 + i), "skip the limit?");
        // Half claim a retry, half go further and claim to be herald's own,
        // with a tag that cannot verify.
        let mut headers = OwnedHeaders::new().insert(Header { key: h_::ATTEMPTS, value: Some("1") });
        if i % 2 == 1 {
            headers = headers.insert(Header { key: OWNER, value: Some(h.group.as_str()) }).insert(Header { key: TAG, value: Some("AAAA") });
        }
        park_by_hand(&h, 0, &request, headers).await;
        ids.push(id);
    }
    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(60), &ids).await;
    let count = |status| ids.iter().filter(|id| terminal[*id].status == status).count();
    assert_eq!((count(Status::Sent), count(Status::RateLimited)), (3, 7), "judged as new requests: {terminal:#?}");
    assert_eq!(h.twilio.count(), 3);
    for id in &ids {
        let e = &terminal[id];
        let attempt = if e.status == Status::Sent { 1 } else { 0 };
        assert_eq!(e.attempt, attempt, "{id}: a claimed attempt counts for nothing");
    }
    let metrics = scrape(&admin).await;
    assert_eq!(metric(&metrics, "herald_unsealed_records_total{seal=\"missing\"}"), 5.0, "{metrics}");
    assert_eq!(metric(&metrics, "herald_unsealed_records_total{seal=\"invalid\"}"), 5.0, "{metrics}");
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_count_that_would_overflow_is_refused_even_when_sealed() {
    let h = Harness::new().await;
    herald_testkit::kafka::create_topics(&h.broker.bootstrap, &[&h.topics.retries[0]], PARTITIONS).await;
    let herald = h.start(&[]);
    let seal = Seal::new(herald_testkit::ENVELOPE_KEY.as_bytes(), &h.group);
    let request = sms("overflow", "u-overflow", "+14155550100", "attempt u32::MAX");
    let mut written = Vec::new();
    for (id, attempts) in [("overflow", "4294967295"), ("over-the-bound", "1001")] {
        let mut request = request.clone();
        request.event_id = id.into();
        let bytes = herald::codec::encode_request(&h.bundled.request, 1, &request).unwrap();
        let headers = OwnedHeaders::new().insert(Header { key: h_::ATTEMPTS, value: Some(attempts) });
        let sealed = seal.seal(Some(b"u-overflow"), Some(&bytes), headers);
        herald_testkit::kafka::produce(&h.producer, &h.topics.retries[0], b"u-overflow", &bytes, Some(sealed)).await;
        written.push(bytes);
    }
    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(30), |m| m.len() >= 2).await.to_vec();
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(header(d, h_::ERROR_CODE), Some("bad-herald-header"), "{:?}", d.headers());
        assert!(written.iter().any(|w| d.payload() == Some(&w[..])), "the producer's bytes are kept");
    }
    assert_eq!(h.twilio.count(), 0, "never sent");
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_an_older_build_parked_waits_its_time_then_goes_as_a_new_request() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    // The instant first: the send's instant is then at least as late after
    // it as the send's time is after `not_before`'s base.
    let started = std::time::Instant::now();
    let not_before = Utc::now() + chrono::Duration::milliseconds(1500);
    // What a build before seals wrote: attempts, a time, an origin; no owner.
    let headers = OwnedHeaders::new()
        .insert(Header { key: h_::ATTEMPTS, value: Some("2") })
        .insert(Header { key: h_::NOT_BEFORE, value: Some(&not_before.timestamp_millis().to_string()) })
        .insert(Header { key: h_::ORIGINAL_TOPIC, value: Some(h.topics.requested.as_str()) })
        .insert(Header { key: h_::ORIGINAL_PARTITION, value: Some("0") })
        .insert(Header { key: h_::ORIGINAL_OFFSET, value: Some("7") });
    park_by_hand(&h, 1, &sms("old-build", "u-old", "+14155550100", "parked before the upgrade"), headers).await;
    let terminal = h.statuses().terminal(Duration::from_secs(30), &["old-build".into()]).await;
    assert_eq!((terminal["old-build"].status, terminal["old-build"].attempt), (Status::Sent, 1));
    let waited = h.twilio.requests()[0].at - started;
    assert!(waited >= Duration::from_millis(1500), "sent {waited:?} after parking, before its time");
    herald.stop().await.unwrap();
}
