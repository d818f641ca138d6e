//! SMS failover from Twilio to Vonage: on transient failures and an open
//! circuit only, with the status naming the provider that was used.

use std::time::Duration;

use herald::model::{ErrorClass, Status};
use herald_testkit::fake::Reply;
use herald_testkit::providers::{VONAGE_API_KEY, VONAGE_API_SECRET, VONAGE_FROM};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_fails_over_to_vonage_on_transient_failures_only() {
    let h = Harness::new().await;
    h.twilio.script("+14155550101", [Reply::fail(503, "20503")]);
    h.twilio.script("+14155550102", [Reply::fail(400, "21211")]);
    h.twilio.script("+14155550103", [Reply::fail(503, "20503")]);
    h.vonage.script("+14155550103", [Reply::fail(200, "1")]);
    let mut extra = h.vonage_args();
    extra.extend(["--sms-rate-limit", "off"]);
    let herald = h.start(&extra);
    h.send(&sms("over", "user-f", "+14155550101", "Your parcel 📦 is here")).await;
    h.send(&sms("refused", "user-f", "+14155550102", "hi")).await;
    h.send(&sms("both-down", "user-f", "+14155550103", "hi")).await;
    let ids = ["over", "refused", "both-down"].map(String::from);
    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(30), &ids).await;
    herald.stop().await.unwrap();

    // Twilio failed transiently: Vonage sent it, and the status says so.
    let over = &terminal["over"];
    assert_eq!((over.status, over.provider.map(|p| p.name()), over.attempt), (Status::Sent, Some("vonage"), 1), "{over:?}");
    assert!(over.provider_message_id.as_deref().is_some_and(|id| id.len() == 16), "{over:?}");
    // Twilio, failed over from, is named with its error.
    let tried: Vec<(&str, &str)> = over.tried.iter().map(|t| (t.provider.name(), t.error_code.as_str())).collect();
    assert_eq!(tried, [("twilio", "twilio:20503")]);
    let to_vonage: Vec<_> = h.vonage.requests().into_iter().filter(|r| r.field("to") == Some("14155550101")).collect();
    assert_eq!(to_vonage.len(), 1);
    let r = &to_vonage[0];
    assert_eq!((r.path.as_str(), r.content_type.as_deref()), ("/sms/json", Some("application/x-www-form-urlencoded")));
    let fields = [
        ("api_key", VONAGE_API_KEY),
        ("api_secret", VONAGE_API_SECRET),
        ("from", VONAGE_FROM),
        ("to", "14155550101"),
        ("text", "Your parcel 📦 is here"),
        ("type", "unicode"),
        ("client-ref", "over"),
    ];
    assert_eq!(r.form, fields.map(|(k, v)| (k.to_owned(), v.to_owned())));
    assert_eq!(r.header("user-agent"), Some(herald::USER_AGENT));

    // A permanent refusal is final: Vonage is not asked.
    let refused = &terminal["refused"];
    assert_eq!((refused.status, refused.provider.map(|p| p.name()), refused.error_code.as_deref()), (Status::Failed, Some("twilio"), Some("twilio:21211")));
    assert!(h.vonage.requests().iter().all(|r| r.field("to") != Some("14155550102")));
    assert!(refused.tried.is_empty(), "no failover: {refused:?}");

    // Both down: a retry, reported with the last provider's error; the
    // retry then goes to Twilio first again.
    let both = statuses.of("both-down");
    assert_eq!(both[0].status, Status::RetryScheduled, "{both:#?}");
    assert_eq!((both[0].provider.map(|p| p.name()), both[0].error_code.as_deref(), both[0].error_class), (Some("vonage"), Some("vonage:1"), Some(ErrorClass::Transient)));
    let tried: Vec<(&str, &str)> = both[0].tried.iter().map(|t| (t.provider.name(), t.error_code.as_str())).collect();
    assert_eq!(tried, [("twilio", "twilio:20503")], "the last provider's error is the status's own");
    assert_eq!((terminal["both-down"].status, terminal["both-down"].provider.map(|p| p.name()), terminal["both-down"].attempt), (Status::Sent, Some("twilio"), 2));
    assert_eq!(h.twilio.requests().iter().filter(|r| r.field("To") == Some("+14155550103")).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_twilio_circuit_is_open_sms_goes_straight_to_vonage() {
    let h = Harness::new().await;
    h.twilio.script("+14155550104", [Reply::fail(503, "20503")]);
    let mut extra = h.vonage_args();
    extra.extend(["--sms-rate-limit", "off", "--sms-concurrency", "1", "--breaker-failures", "1", "--breaker-cooldown", "60s"]);
    let herald = h.start(&extra);
    let mut statuses = h.statuses();
    h.send(&sms("opens", "user-c", "+14155550104", "first")).await;
    statuses.terminal(Duration::from_secs(30), &["opens".into()]).await;
    let ids: Vec<String> = (0..3).map(|i| format!("open-{i}")).collect();
    for id in &ids {
        h.send(&sms(id, "user-c", "+14155550100", id)).await;
    }
    let terminal = statuses.terminal(Duration::from_secs(30), &ids).await;
    herald.stop().await.unwrap();

    for id in ids.iter().chain([&"opens".to_owned()]) {
        assert_eq!((terminal[id].status, terminal[id].provider.map(|p| p.name())), (Status::Sent, Some("vonage")), "{id}");
    }
    assert_eq!(h.twilio.count(), 1, "only the call that opened the circuit");
    assert_eq!(h.vonage.count(), 4);
}
