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
    assert_eq!((h.twilio.requests().len(), h.fcm.requests().len()), (5, 30));
    herald.stop().await.unwrap();
}
