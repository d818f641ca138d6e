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

    let calls_before = h.twilio.requests().len();
    let restarted = std::time::Instant::now();
    let second = spawn_herald(&h);
    // Its first call waits only for the group to notice the dead member
    // (session.timeout.ms is 6 s here) and for a join; not on a timeout.
    while h.twilio.requests().len() == calls_before {
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
