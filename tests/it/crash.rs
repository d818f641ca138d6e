//! Killing herald mid-stream loses nothing.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use herald::model::Status;

use crate::support::*;

fn spawn_herald(h: &Harness) -> Process {
    h.spawn(&["--sms-rate-limit", "off", "--sms-concurrency", "4"])
}

/// Event ids Twilio has been asked to deliver (each body names its event).
fn delivered_ids(h: &Harness) -> Vec<String> {
    let body = |r: &herald_testkit::fake::Recorded| r.form.iter().find(|(k, _)| k == "Body").map(|(_, v)| v.clone());
    h.twilio.requests().iter().filter_map(body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_every_event_reaches_a_terminal_status() {
    let h = Harness::new().await;
    h.twilio.set_latency(Duration::from_millis(25));
    let ids: Vec<String> = (0..300).map(|i| format!("crash-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        h.send(&sms(id, &format!("user-{}", i % 30), "+14155550100", id)).await;
    }

    let mut first = spawn_herald(&h);
    let mut statuses = h.statuses();
    statuses.until(Duration::from_secs(60), |e| e.iter().filter(|e| e.status == Status::Sent).count() >= 60).await;
    first.0.kill().expect("SIGKILL");
    first.0.wait().unwrap();
    let before_kill: HashSet<String> = delivered_ids(&h).into_iter().collect();
    assert!(before_kill.len() < ids.len(), "killed mid-stream, not after the end");

    let calls_before = h.twilio.count();
    let restarted = std::time::Instant::now();
    let second = spawn_herald(&h);
    // Its first call waits only for the group to notice the dead member
    // (session.timeout.ms is 6 s here) and for a join; not on a timeout.
    while h.twilio.count() == calls_before {
        assert!(restarted.elapsed() < Duration::from_secs(20), "no provider call 20 s after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("first provider call {:?} after the restart", restarted.elapsed());
    let terminal = statuses.terminal(Duration::from_secs(90), &ids).await;
    assert!(ids.iter().all(|id| terminal[id].status == Status::Sent));

    // At least once: an event is delivered twice only if the killed
    // instance had delivered it, and never more than twice.
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    for id in delivered_ids(&h) {
        *deliveries.entry(id).or_default() += 1;
    }
    assert_eq!(deliveries.len(), ids.len(), "every event was delivered");
    let repeated: Vec<&String> = deliveries.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    println!("events: {}, delivered before the kill: {}, delivered again after it: {}", ids.len(), before_kill.len(), repeated.len());
    assert!(repeated.iter().all(|id| before_kill.contains(*id)), "only the killed instance's work is repeated");
    assert!(deliveries.values().all(|n| *n <= 2), "one crash, at most one repeat");

    // SIGTERM is a graceful stop with exit code 0.
    Command::new("kill").args(["-TERM", &second.0.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut second = second;
        second.0.wait()
    }).await.unwrap().unwrap();
    assert!(status.success(), "herald exits 0 on SIGTERM, got {status}");
}

/// Provider calls so far, by event id (each request's body is its id).
fn calls_per_event(h: &Harness) -> HashMap<String, usize> {
    let mut per_event: HashMap<String, usize> = HashMap::new();
    let twilio = h.twilio.requests().into_iter().filter_map(|r| r.field("Body").map(str::to_owned));
    let fcm = h.fcm.requests().into_iter().filter_map(|r| r.json?["message"]["notification"]["body"].as_str().map(str::to_owned));
    for id in twilio.chain(fcm) {
        *per_event.entry(id).or_default() += 1;
    }
    per_event
}

fn mixed(count: usize, prefix: &str) -> Vec<herald::model::Request> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            match i % 2 {
                0 => sms(&id, &format!("user-{}", i % 200), "+14155550100", &id),
                _ => push(&id, &format!("user-{}", i % 200), &format!("token-{i}"), "t", &id),
            }
        })
        .collect()
}

/// Waits for every event to end SENT; returns the statuses read.
async fn all_sent(h: &Harness, statuses: &mut Statuses, ids: &[String]) {
    statuses.terminal(Duration::from_secs(180), ids).await;
    let current = statuses.current();
    let unsent: Vec<_> = ids.iter().filter(|id| current[*id].status != Status::Sent).collect();
    assert!(unsent.is_empty(), "not sent: {unsent:?}");
    let _ = h;
}

/// Calls beyond one per event, and the events that had them.
fn extra_calls(h: &Harness) -> (usize, usize) {
    let per_event = calls_per_event(h);
    (per_event.values().map(|n| n - 1).sum(), per_event.values().copied().max().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_draining_repeats_at_most_the_calls_in_flight() {
    let h = Harness::new().await;
    h.twilio.set_latency(Duration::from_millis(50));
    h.fcm.set_latency(Duration::from_millis(50));
    let requests = mixed(3000, "drain");
    let ids: Vec<String> = requests.iter().map(|r| r.event_id.clone()).collect();
    h.send_many(&requests).await;
    let mut first = h.spawn(&["--sms-rate-limit", "off"]);
    let started = std::time::Instant::now();
    // Killed well into the drain, with calls in flight.
    while h.twilio.count() + h.fcm.count() < 500 {
        assert!(started.elapsed() < Duration::from_secs(60), "only {} calls", h.twilio.count() + h.fcm.count());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let before = calls_per_event(&h).len();
    assert!(before > 200 && before < ids.len(), "killed mid-drain: {before} of {} called", ids.len());
    let mut second = h.spawn(&["--sms-rate-limit", "off"]);
    let mut statuses = h.statuses();
    all_sent(&h, &mut statuses, &ids).await;
    let (extra, most) = extra_calls(&h);
    println!("{before} events called before the kill; {extra} called again after it; at most {most} calls for one");
    // SMS and push lanes, 32 calls each by default: what can be in flight.
    assert!(extra <= 64, "{extra} duplicate calls after one kill");
    assert!(most <= 2);
    // A record redelivered after its send reported the recorded send again.
    let per_event = calls_per_event(&h);
    let resent = ids.iter().filter(|id| statuses.of(id).iter().filter(|e| e.status == Status::Sent).count() > 1).filter(|id| per_event[*id] == 1);
    for id in resent {
        let sends: Vec<_> = statuses.of(id).into_iter().filter(|e| e.status == Status::Sent).collect();
        assert!(sends.windows(2).all(|w| (&w[0].provider, &w[0].provider_message_id, w[0].attempt) == (&w[1].provider, &w[1].provider_message_id, w[1].attempt)), "{sends:#?}");
    }
    let _ = second.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_taking_over_a_killed_ones_partitions_does_not_resend_its_sends() {
    let h = Harness::new().await;
    h.twilio.set_latency(Duration::from_millis(50));
    h.fcm.set_latency(Duration::from_millis(50));
    let requests = mixed(3000, "takeover");
    let ids: Vec<String> = requests.iter().map(|r| r.event_id.clone()).collect();
    h.send_many(&requests).await;
    let mut a = h.spawn(&["--sms-rate-limit", "off"]);
    let started = std::time::Instant::now();
    while h.twilio.count() + h.fcm.count() == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no call");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B joins: A hands half its partitions over, its calls finished first.
    let mut b = h.spawn(&["--sms-rate-limit", "off"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (after_join, _) = extra_calls(&h);
    // Then A dies, and B takes over the rest.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let mut statuses = h.statuses();
    all_sent(&h, &mut statuses, &ids).await;
    let (extra, most) = extra_calls(&h);
    println!("duplicate calls: {after_join} after B joined, {extra} in all");
    assert!(extra <= 64, "{extra} duplicate calls: at most A's calls in flight when it died");
    assert!(most <= 2);
    let _ = b.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_while_herald_runs() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-rate-limit", "off", "--commit-interval", "200ms"]);
    let requests = mixed(100, "commit");
    let ids: Vec<String> = requests.iter().map(|r| r.event_id.clone()).collect();
    let mut statuses = h.statuses();
    h.send_many(&requests).await;
    statuses.terminal(Duration::from_secs(60), &ids).await;
    // Committed while herald runs, not only when it stops. That the commits
    // come every --commit-interval is librdkafka's auto.commit.interval.ms
    // (see `kafka`'s unit test); the bound below only keeps a broken build
    // from hanging the suite.
    let end = herald_testkit::kafka::end_offsets(&h.broker.bootstrap, &h.topics.requested).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let committed = herald_testkit::kafka::committed(&h.broker.bootstrap, &h.group, &h.topics.requested);
        if end.iter().all(|(p, e)| *e == 0 || committed.get(p) == Some(e)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not committed: {committed:?} of {end:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    herald.stop().await.unwrap();
}

/// The value of an unlabelled or singly labelled gauge in a scrape.
fn gauge(text: &str, series: &str) -> i64 {
    let line = text.lines().find(|l| l.split(' ').next() == Some(series)).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// With the broker stalled no status is acknowledged, so calls go on only
/// until `--unconfirmed-sends` of them wait for theirs: that is the most a
/// crash at that moment could repeat. A lane's slot comes back at each
/// answer, so those sends outnumber the lane's 4 slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_status_acknowledged_calls_stop_at_the_unconfirmed_sends() {
    let h = Harness::with_own_broker().await;
    let pid = h.broker.pid().expect("a broker of its own") as i32;
    h.twilio.set_latency(Duration::from_millis(5));
    let requests: Vec<_> = (0..3000).map(|i| sms(&format!("u-{i}"), &format!("user-{}", i % 300), "+14155550100", &format!("u-{i}"))).collect();
    let ids: Vec<String> = requests.iter().map(|r| r.event_id.clone()).collect();
    h.send_many(&requests).await;
    let (herald, admin) = h.start_with_admin(&["--sms-rate-limit", "off", "--sms-concurrency", "4", "--push-concurrency", "4", "--unconfirmed-sends", "12"]);
    let started = std::time::Instant::now();
    while h.twilio.count() < 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "only {} calls", h.twilio.count());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SAFETY: plain kill(2) on the broker this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let at_stall = h.twilio.count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let scrape = reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap();
    let after = h.twilio.count();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    println!("{at_stall} calls when the broker stopped, {after} two seconds later");
    assert!(after < ids.len(), "the backlog was not drained before the stall");
    assert!(after - at_stall <= 12, "{} calls made with no status acknowledged", after - at_stall);
    assert_eq!(gauge(&scrape, "herald_unconfirmed_sends"), 12, "the sends waiting for their statuses fill the bound");
    assert_eq!(gauge(&scrape, r#"herald_lane_calls_in_flight{channel="SMS"}"#), 0, "all of them answered: no call is under way");

    let mut statuses = h.statuses();
    all_sent(&h, &mut statuses, &ids).await;
    herald.stop().await.unwrap();
    let (extra, _) = extra_calls(&h);
    assert_eq!(extra, 0, "a stall repeats nothing");
}
