//! Topic creation at startup.

use herald::pipeline::app::PipelineError;
use herald::topics::TopicError;
use herald_testkit::kafka;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_when_a_topic_is_missing_and_creation_is_off() {
    let h = Harness::new().await;
    let result = herald::run(h.config(&["--create-topics", "false"]), std::future::pending()).await;
    match result {
        Err(herald::Error::Pipeline(PipelineError::Topics(TopicError::Missing(topic)))) => {
            let t = &h.topics;
            let missing: Vec<&String> = [&t.status, &t.dead_letter].into_iter().chain(&t.retries).collect();
            assert!(missing.contains(&&topic), "names one of the missing topics: {topic}");
        }
        other => panic!("expected a missing-topic error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_every_missing_topic() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    let t = &h.topics;
    for topic in [&t.requested, &t.status, &t.dead_letter].into_iter().chain(&t.retries).chain(&t.waits) {
        assert_eq!(kafka::partitions(&h.broker.bootstrap, topic, std::time::Duration::from_secs(20)), PARTITIONS, "{topic}");
    }
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_when_the_topics_it_reads_differ_in_partitions() {
    let h = Harness::new().await;
    // A retry topic made elsewhere with a different partition count: a
    // user's retries would land on a partition another instance owns.
    kafka::create_topics(&h.broker.bootstrap, &[&h.topics.retries[1]], PARTITIONS + 1).await;
    match herald::run(h.config(&[]), std::future::pending()).await {
        Err(herald::Error::Pipeline(PipelineError::Topics(TopicError::NotCoPartitioned(found)))) => {
            let expected = format!("{}: {}", h.topics.retries[1], PARTITIONS + 1);
            assert!(found.contains(&expected), "names the odd topic: {found}");
        }
        other => panic!("expected a partition-count error, got {other:?}"),
    }
}
