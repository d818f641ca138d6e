//! Graceful shutdown drains in-flight work and commits it.

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
    while h.twilio.requests().len() < ids.len() {
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

    // A restart finds nothing left to do: no event is delivered twice.
    let again = h.start(&[]);
    statuses.settle(Duration::from_secs(6)).await;
    assert_eq!(statuses.events.len(), ids.len());
    assert_eq!(h.twilio.requests().len(), ids.len());
    again.stop().await.unwrap();
}
