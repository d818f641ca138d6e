//! Topic creation at startup.

use herald::topics::TopicError;
use herald_testkit::kafka;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_when_a_topic_is_missing_and_creation_is_off() {
    let h = Harness::new().await;
    let result = herald::run(h.config(&["--create-topics", "false"]), std::future::pending()).await;
    match result {
        Err(herald::Error::Topics(TopicError::Missing(topic))) => {
            assert!(h.args(&[]).contains(&topic), "names one of its topics: {topic}");
        }
        other => panic!("expected a missing-topic error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_every_missing_topic() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    let t = &h.topics;
    for topic in [&t.requested, &t.status, &t.dead_letter].into_iter().chain(&t.retries) {
        assert_eq!(kafka::partitions(&h.broker.bootstrap, topic, std::time::Duration::from_secs(20)), 3, "{topic}");
    }
    herald.stop().await.unwrap();
}
