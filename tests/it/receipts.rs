//! Delivery receipts: Twilio's signed status callbacks become status events;
//! forged and unsigned ones are refused and emit nothing.

use std::time::Duration;

use herald::model::Status;
use herald::receipts::{signature, SIGNATURE_HEADER};
use herald_testkit::providers::AUTH_TOKEN;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_callbacks_report_delivery_and_forged_ones_are_refused() {
    let h = Harness::new().await;
    let port = herald_testkit::free_port();
    let public = format!("http://127.0.0.1:{port}/twilio/status");
    let herald = h.start(&["--receipts-listen", &format!("127.0.0.1:{port}"), "--receipts-public-url", &public]);
    h.send(&sms("rcpt-1", "user-r", "+14155550100", "one")).await;
    h.send(&sms("rcpt-2", "user-r", "+14155550101", "two")).await;
    let mut statuses = h.statuses();
    let sent = statuses.terminal(Duration::from_secs(30), &["rcpt-1".into(), "rcpt-2".into()]).await;

    // Twilio was told where to report, per event and attempt.
    let requests = h.twilio.requests();
    let callback = |to: &str| {
        let r = requests.iter().find(|r| r.field("To") == Some(to)).expect("sent to Twilio");
        r.field("StatusCallback").expect("a StatusCallback").to_owned()
    };
    let (url1, url2) = (callback("+14155550100"), callback("+14155550101"));
    assert_eq!(url1, format!("{public}?event_id=rcpt-1&user_id=user-r&attempt=1"));

    let http = reqwest::Client::new();
    let post = |url: String, params: Vec<(String, String)>, sig: Option<String>| {
        let http = http.clone();
        async move {
            let mut req = http.post(&url).form(&params);
            if let Some(sig) = sig {
                req = req.header(SIGNATURE_HEADER, sig);
            }
            req.send().await.expect("herald answers").status().as_u16()
        }
    };
    let params = |sid: &str, status: &str, code: &str| -> Vec<(String, String)> {
        let mut p = vec![("MessageSid", sid), ("MessageStatus", status), ("AccountSid", ACCOUNT_SID)];
        if !code.is_empty() {
            p.push(("ErrorCode", code));
        }
        p.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    };
    let sid1 = sent["rcpt-1"].provider_message_id.clone().unwrap();
    let sid2 = sent["rcpt-2"].provider_message_id.clone().unwrap();

    // Forged: signed with another token, signed for another event, unsigned.
    let delivered1 = params(&sid1, "delivered", "");
    assert_eq!(post(url1.clone(), delivered1.clone(), Some(signature("not-the-token", &url1, &delivered1))).await, 403);
    assert_eq!(post(url1.clone(), delivered1.clone(), Some(signature(AUTH_TOKEN, &url2, &delivered1))).await, 403);
    assert_eq!(post(url1.clone(), delivered1.clone(), None).await, 403);

    // Genuine: an intermediate step is acknowledged and ignored; outcomes
    // become status events.
    let sending = params(&sid1, "sending", "");
    assert_eq!(post(url1.clone(), sending.clone(), Some(signature(AUTH_TOKEN, &url1, &sending))).await, 204);
    assert_eq!(post(url1.clone(), delivered1.clone(), Some(signature(AUTH_TOKEN, &url1, &delivered1))).await, 200);
    let undelivered2 = params(&sid2, "undelivered", "30003");
    assert_eq!(post(url2.clone(), undelivered2.clone(), Some(signature(AUTH_TOKEN, &url2, &undelivered2))).await, 200);

    statuses
        .until(Duration::from_secs(30), |events| events.iter().filter(|e| matches!(e.status, Status::Delivered | Status::Undelivered)).count() >= 2)
        .await;
    statuses.settle(Duration::from_millis(500)).await;
    herald.stop().await.unwrap();

    assert_eq!(statuses_of(&statuses.events, "rcpt-1"), [(Status::Sent, 1), (Status::Delivered, 1)], "nothing from the forgeries");
    assert_eq!(statuses_of(&statuses.events, "rcpt-2"), [(Status::Sent, 1), (Status::Undelivered, 1)]);
    let undelivered = statuses.of("rcpt-2").pop().unwrap();
    assert_eq!(undelivered.error_code.as_deref(), Some("twilio:30003"));
    assert_eq!(undelivered.provider_message_id.as_deref(), Some(sid2.as_str()));
}
