//! The per-user, per-channel rolling window.

use std::time::Duration;

use herald::model::Status;
use herald_testkit::fake::Reply;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleventh_and_twelfth_sms_in_an_hour_are_rate_limited() {
    let h = Harness::new().await;
    let herald = h.start(&[]); // default: 10 SMS per hour
    let mut ids = vec![];
    for i in 0..12 {
        let id = format!("limited-{i}");
        h.send(&sms(&id, "busy-user", "+14155550100", "hi")).await;
        ids.push(id);
    }
    h.send(&sms("other-user-1", "quiet-user", "+14155550101", "hi")).await;
    h.send(&push("push-of-busy", "busy-user", "tok", "t", "push has its own window")).await;
    ids.extend(["other-user-1".to_owned(), "push-of-busy".to_owned()]);

    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    let count = |status| ids[..12].iter().filter(|id| terminal[*id].status == status).count();
    assert_eq!((count(Status::Sent), count(Status::RateLimited)), (10, 2));
    // One user's events share a partition and are judged in order.
    for id in &ids[10..12] {
        let e = &terminal[id];
        assert_eq!(e.status, Status::RateLimited);
        assert_eq!(e.error_code.as_deref(), Some("rate-limit-exceeded"));
        assert_eq!(e.attempt, 0);
    }
    assert_eq!(terminal["other-user-1"].status, Status::Sent);
    assert_eq!(terminal["push-of-busy"].status, Status::Sent);
    assert_eq!(h.twilio.count(), 11);
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_not_counted_again() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-rate-limit", "2/1h"]);
    h.twilio.script("+14155550100", [Reply::fail(503, "20503")]);
    h.send(&sms("a", "u", "+14155550100", "first, retried once")).await;
    h.send(&sms("b", "u", "+14155550199", "second")).await;
    h.send(&sms("c", "u", "+14155550199", "third: over the limit")).await;

    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(30), &["a".into(), "b".into(), "c".into()]).await;
    // "c" was denied before "a" was retried: the window was full when the
    // retry ran, so counting the retry would have denied it too.
    assert_eq!(statuses_of(&statuses.events, "a"), [(Status::RetryScheduled, 1), (Status::Sent, 2)]);
    assert_eq!(terminal["b"].status, Status::Sent);
    assert_eq!(terminal["c"].status, Status::RateLimited);
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_do_not_use_the_window() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-rate-limit", "2/1h"]);
    let dead = h.reader(&h.topics.dead_letter);
    h.send(&sms("bad-1", "u", "not-a-number", "hi")).await;
    h.send(&sms("bad-2", "u", "+14155550100", &"x".repeat(481))).await;
    h.send(&sms("good-1", "u", "+14155550100", "one")).await;
    h.send(&sms("good-2", "u", "+14155550100", "two")).await;
    // The window is full now; an invalid request is still invalid.
    h.send(&sms("bad-3", "u", "", "hi")).await;
    h.send(&sms("good-3", "u", "+14155550100", "three")).await;
    let ids = ["bad-1", "bad-2", "good-1", "good-2", "bad-3", "good-3"].map(String::from);
    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    herald.stop().await.unwrap();
    let got: Vec<_> = ids.iter().map(|id| (id.as_str(), terminal[id].status)).collect();
    assert_eq!(
        got,
        [
            ("bad-1", Status::Invalid),
            ("bad-2", Status::Invalid),
            ("good-1", Status::Sent),
            ("good-2", Status::Sent),
            ("bad-3", Status::Invalid),
            ("good-3", Status::RateLimited),
        ]
    );
    let mut dead = dead;
    let codes: Vec<String> = dead
        .read_until(Duration::from_secs(10), |m| m.len() >= 3)
        .await
        .iter()
        .map(|m| header(m, herald::record::envelope::ERROR_CODE).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(codes, ["invalid-phone-number", "body-too-long", "invalid-phone-number"], "every invalid one is dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_cannot_claim_attempts_to_skip_the_limit() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-rate-limit", "1/1h"]);
    h.send(&sms("first", "capped", "+14155550100", "hi")).await;
    // herald's own headers, forged on the requests topic: as if attempts
    // had been made (retries are not counted) and the request were parked.
    let forged = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header { key: herald::record::envelope::ATTEMPTS, value: Some("1") })
        .insert(rdkafka::message::Header { key: herald::record::envelope::NOT_BEFORE, value: Some("not a time") });
    let bytes = herald::codec::encode_request(&h.bundled.request, 1, &sms("forged", "capped", "+14155550100", "again")).unwrap();
    herald_testkit::kafka::produce(&h.producer, &h.topics.requested, b"capped", &bytes, Some(forged)).await;
    let terminal = h.statuses().terminal(Duration::from_secs(30), &["first".into(), "forged".into()]).await;
    assert_eq!(terminal["first"].status, Status::Sent);
    assert_eq!((terminal["forged"].status, terminal["forged"].attempt), (Status::RateLimited, 0), "{:?}", terminal["forged"]);
    herald.stop().await.unwrap();
}
