//! What protects a provider: the circuit breaker and the request-rate cap.

use std::time::Duration;

use herald::model::Status;
use herald_testkit::fake::Reply;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_circuit_and_turns_calls_into_retries_until_it_closes() {
    let h = Harness::new().await;
    // Twilio fails twice, then recovers.
    h.twilio.script("+14155550199", vec![Reply::fail(503, "20503"); 2]);
    // One call at a time, so each result is counted before the next call.
    let herald = h.start(&["--sms-rate-limit", "off", "--sms-concurrency", "1", "--breaker-failures", "2", "--breaker-cooldown", "2s"]);
    let ids: Vec<String> = (0..5).map(|i| format!("outage-{i}")).collect();
    for id in &ids {
        h.send(&sms(id, "user-o", "+14155550199", id)).await;
    }
    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(60), &ids).await;
    herald.stop().await.unwrap();

    assert!(ids.iter().all(|id| terminal[id].status == Status::Sent), "{terminal:#?}");
    // Two failures opened the circuit. The three events behind them, and
    // the first two's retries, were refused without a call and scheduled
    // for when it would close; then one trial call closed it, and every
    // event went through once.
    let refused: Vec<_> = statuses.events.iter().filter(|e| e.error_code.as_deref() == Some("circuit-open")).collect();
    assert_eq!(refused.len(), 5, "{refused:#?}");
    assert_eq!(h.twilio.count(), 2 + 5);
    let first_refusal = refused.iter().map(|e| e.occurred_at).min().unwrap();
    for e in &refused {
        let retry_at = e.next_attempt_at.expect("a retry time");
        assert!(retry_at >= first_refusal + chrono::Duration::milliseconds(1500), "retried only when the circuit closes: {retry_at}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_second_are_capped() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-rate-limit", "off", "--twilio-max-rps", "5"]);
    let ids: Vec<String> = (0..15).map(|i| format!("capped-{i}")).collect();
    for id in &ids {
        h.send(&sms(id, "user-c", "+14155550100", id)).await;
    }
    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    herald.stop().await.unwrap();
    assert!(ids.iter().all(|id| terminal[id].status == Status::Sent));

    let mut at: Vec<_> = h.twilio.requests().iter().map(|r| r.at).collect();
    at.sort();
    assert_eq!(at.len(), 15);
    // A burst of 5, then one every 200 ms: the 15th 2 s after the first.
    let spread = at[14] - at[0];
    assert!(spread >= Duration::from_millis(1900), "15 requests at 5/s took only {spread:?}");
    // A token bucket: at most the burst plus a second's refill in any second.
    for window in at.windows(11) {
        assert!(window[10] - window[0] >= Duration::from_millis(950), "11 requests within {:?}", window[10] - window[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_refused_by_an_open_circuit_keep_their_attempts_and_come_back_spread_out() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-rate-limit", "off", "--sms-concurrency", "4", "--breaker-failures", "2", "--breaker-cooldown", "2s"]);
    let mut statuses = h.statuses();
    h.send(&push("joined", "user-j", "tok", "t", "herald has joined")).await;
    statuses.terminal(Duration::from_secs(60), &["joined".into()]).await;
    // Twilio is down for 3 s, then healthy.
    let recovered = std::time::Instant::now() + Duration::from_secs(3);
    h.twilio.fail_until(recovered, Reply::fail(503, "20503"));
    let ids: Vec<String> = (0..40).map(|i| format!("storm-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        h.send(&sms(id, &format!("user-{i}"), "+14155550100", id)).await;
    }
    let terminal = statuses.terminal(Duration::from_secs(60), &ids).await;
    herald.stop().await.unwrap();

    let calls = h.twilio.requests();
    for id in &ids {
        let sent = &terminal[id];
        assert_eq!(sent.status, Status::Sent, "{id}");
        // An attempt is a call: refusals by the open circuit used none.
        let made = calls.iter().filter(|r| r.field("Body") == Some(id)).count();
        assert_eq!(sent.attempt as usize, made, "{id}: attempt {} after {made} calls", sent.attempt);
    }
    let refused = statuses.events.iter().filter(|e| e.error_code.as_deref() == Some("circuit-open")).count();
    assert!(refused >= 30, "most were refused without a call ({refused})");
    // After the recovery, calls came spread over the cooldown, not at once.
    let mut after: Vec<_> = calls.iter().map(|r| r.at).filter(|at| *at >= recovered).collect();
    after.sort();
    let spread = *after.last().unwrap() - after[0];
    assert!(spread >= Duration::from_millis(800), "{} calls within {spread:?}", after.len());
}
