//! Bounded in-flight work: with room for one record per lane, every record
//! still reaches its outcome, whether it settles in the consume loop or
//! waits on a provider.

use std::time::Duration;

use herald::model::Status;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_one_drains_settled_and_delivered_records_alike() {
    let h = Harness::new().await;
    let herald = h.start(&["--channel-queue", "1", "--sms-rate-limit", "5/1h"]);
    let mut ids = vec![];
    for i in 0..30 {
        // SMS: 5 are sent through the fake Twilio, 25 are rate limited
        // without a provider call. Push: all through the fake FCM.
        let (sms_id, push_id) = (format!("sms-{i}"), format!("push-{i}"));
        h.send(&sms(&sms_id, "one-user", "+14155550100", "hi")).await;
        h.send(&push(&push_id, &format!("user-{i}"), "tok", "t", "hi")).await;
        ids.extend([sms_id, push_id]);
    }
    let terminal = h.statuses().terminal(Duration::from_secs(60), &ids).await;
    let count = |prefix: &str, status| ids.iter().filter(|id| id.starts_with(prefix) && terminal[*id].status == status).count();
    assert_eq!((count("sms-", Status::Sent), count("sms-", Status::RateLimited)), (5, 25));
    assert_eq!(count("push-", Status::Sent), 30);
    assert_eq!((h.twilio.count(), h.fcm.count()), (5, 30));
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_slower_than_the_poll_interval_does_not_cost_the_group() {
    let h = Harness::new().await;
    // Calls take 12 s; the consumer must poll every 10 s (FAST_GROUP).
    h.twilio.set_latency(Duration::from_secs(12));
    let log = std::env::temp_dir().join(format!("herald-maxpoll-{}.log", std::process::id()));
    let args = ["--sms-rate-limit", "off", "--sms-concurrency", "4", "--channel-queue", "4", "--http-timeout", "90s"];
    let mut herald = h.spawn_logging(&args, &log);
    let mut statuses = h.statuses();
    h.send(&push("joined", "user-0", "tok", "t", "herald has joined")).await;
    statuses.terminal(Duration::from_secs(60), &["joined".into()]).await;
    // Twice the lane: the second half must wait a whole call, 12 s.
    let ids: Vec<String> = (0..8).map(|i| format!("slow-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        h.send(&sms(id, &format!("user-{i}"), "+14155550100", id)).await;
    }
    let terminal = statuses.terminal(Duration::from_secs(90), &ids).await;
    assert!(ids.iter().all(|id| terminal[id].status == Status::Sent));
    let (_, status) = herald.terminate();
    assert!(status.success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("MAXPOLL") && !logged.contains("max.poll.interval"), "left the group: {logged}");
    assert_eq!(logged.matches("Rebalance.").count(), 2, "one assignment, one revocation at shutdown: {logged}");
    assert_eq!(h.twilio.count(), ids.len(), "each sent once");
}
