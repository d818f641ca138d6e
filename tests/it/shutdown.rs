//! Graceful shutdown drains in-flight work and commits it, and keeps to
//! its deadline whatever the queues hold.

use std::process::Command;
use std::time::{Duration, Instant};

use herald::model::Status;
use herald_testkit::kafka;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_deliveries_then_commits() {
    let h = Harness::new().await;
    h.twilio.set_latency(Duration::from_millis(1500));
    let herald = h.start(&[]);
    let ids: Vec<String> = (0..6).map(|i| format!("inflight-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        h.send(&sms(id, &format!("user-{i}"), "+14155550100", "slow provider")).await;
    }
    // Wait until all six are at the provider, awaiting its answer.
    let started = Instant::now();
    while h.twilio.count() < ids.len() {
        assert!(started.elapsed() < Duration::from_secs(30), "requests never reached the provider");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    herald.stop().await.expect("clean shutdown");

    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(10), &ids).await;
    assert!(ids.iter().all(|id| terminal[id].status == Status::Sent));
    let committed = kafka::committed(&h.broker.bootstrap, &h.group, &h.topics.requested);
    for (partition, end) in kafka::end_offsets(&h.broker.bootstrap, &h.topics.requested).await {
        if end > 0 {
            assert_eq!(committed.get(&partition), Some(&end), "partition {partition} fully committed");
        }
    }

    // A restart finds nothing left to do. A sentinel on every partition
    // marks the point: once each is committed, everything before it was
    // handled, and nothing was delivered twice.
    h.twilio.set_latency(Duration::ZERO);
    let again = h.start(&[]);
    let sentinels = sentinels(&h, "sentinel").await;
    let ids: Vec<String> = sentinels.iter().map(|(id, ..)| id.clone()).collect();
    statuses.terminal(Duration::from_secs(30), &ids).await;
    committed_past(&h, &sentinels).await;
    again.stop().await.unwrap();
    assert_eq!(h.twilio.count(), 6 + sentinels.len(), "the first six, and the sentinels");
    assert_eq!(statuses.events.len(), 6 + sentinels.len());
}

/// Sends SMS until every partition of the requests topic has one; returns
/// each event id with its partition and offset.
pub async fn sentinels(h: &Harness, name: &str) -> Vec<(String, i32, i64)> {
    let mut sent = vec![];
    let mut covered = std::collections::HashSet::new();
    for i in 0..1000 {
        if covered.len() == PARTITIONS as usize {
            return sent;
        }
        let (id, user) = (format!("{name}-{i}"), format!("{name}-user-{i}"));
        let bytes = herald::codec::encode_request(&h.bundled.request, 1, &sms(&id, &user, "+14155550100", "sentinel")).unwrap();
        let (partition, offset) = h.send_raw(user.as_bytes(), &bytes).await;
        covered.insert(partition);
        sent.push((id, partition, offset));
    }
    panic!("hashing never reached every partition")
}

/// Waits until the group's commits have passed each sentinel.
pub async fn committed_past(h: &Harness, sentinels: &[(String, i32, i64)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let committed = kafka::committed(&h.broker.bootstrap, &h.group, &h.topics.requested);
        if sentinels.iter().all(|(_, p, o)| committed.get(p).is_some_and(|c| c > o)) {
            return;
        }
        assert!(Instant::now() < deadline, "commits never passed the sentinels: {committed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_deadline_whatever_the_queues_hold() {
    let h = Harness::new().await;
    // A provider that answers after an hour: calls hang until the timeout.
    h.twilio.set_latency(Duration::from_secs(3600));
    let requests: Vec<_> = (0..6000).map(|i| sms(&format!("q-{i}"), &format!("user-{}", i % 500), "+14155550100", "queued")).collect();
    h.send_many(&requests).await;
    let log = std::env::temp_dir().join(format!("herald-sigterm-{}.log", std::process::id()));
    let mut herald = h.spawn_logging(&["--sms-rate-limit", "off", "--http-timeout", "90s", "--shutdown-deadline", "3s"], &log);
    // Until the calls hang and the lane behind them is full.
    let started = Instant::now();
    while h.twilio.count() < 32 {
        assert!(started.elapsed() < Duration::from_secs(60), "the provider was never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // It exits by itself, and cleanly, while its calls still hang: they
    // would answer in an hour, or time out in 90 s. How soon after the
    // deadline it exits is measured by the benchmark, not asserted here.
    let (took, status) = herald.terminate();
    println!("exited {took:?} after SIGTERM, with a 3 s deadline");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {said}");
    assert!(said.contains("Shutdown deadline passed; unfinished records will be redelivered."), "gave up at the deadline: {said}");
    assert!(h.twilio.count() <= 64, "no call started after SIGTERM beyond those in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_starts_after_the_deadline() {
    let h = Harness::new().await;
    h.twilio.set_latency(Duration::from_secs(3600));
    let herald = h.start(&["--sms-rate-limit", "off", "--sms-concurrency", "8", "--shutdown-deadline", "2s", "--http-timeout", "90s"]);
    let requests: Vec<_> = (0..200).map(|i| sms(&format!("d-{i}"), &format!("user-{i}"), "+14155550100", "hangs")).collect();
    h.send_many(&requests).await;
    let started = Instant::now();
    while h.twilio.count() < 8 {
        assert!(started.elapsed() < Duration::from_secs(60), "the provider was never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    herald.stop().await.unwrap();
    // Aborting the eight hanging calls freed their slots; nothing took them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.twilio.count(), 8, "the calls that were in flight, and no other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_deadline_while_the_broker_is_stalled() {
    let h = Harness::with_own_broker().await;
    let pid = h.broker.pid().expect("a broker of its own") as i32;
    let log = std::env::temp_dir().join(format!("herald-stalled-{}.log", std::process::id()));
    let mut herald = h.spawn_logging(&["--shutdown-deadline", "3s"], &log);
    let ids: Vec<String> = (0..5).map(|i| format!("s-{i}")).collect();
    for id in &ids {
        h.send(&sms(id, &format!("user-{id}"), "+14155550100", "before the stall")).await;
    }
    h.statuses().terminal(Duration::from_secs(60), &ids).await;
    // SAFETY: plain kill(2) on the broker this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let asked = Instant::now();
    Command::new("kill").args(["-TERM", &herald.0.id().to_string()]).status().unwrap();
    // The broker stays stalled until herald has exited: a wait on it that
    // did not stop at its share of the deadline would wait for ever. The
    // bound below only keeps a broken build from hanging the suite.
    let mut exited = None;
    while asked.elapsed() < Duration::from_secs(60) {
        if let Some(status) = herald.0.try_wait().unwrap() {
            exited = Some((asked.elapsed(), status));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let (took, status) = exited.expect("herald never exited after SIGTERM with the broker stalled");
    println!("exited {took:?} after SIGTERM, the broker stalled, with a 3 s deadline");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {said}");
    // Each wait on the stalled broker gave up at its share's end.
    assert!(said.contains("Final commit did not finish within the shutdown deadline"), "{said}");
}
