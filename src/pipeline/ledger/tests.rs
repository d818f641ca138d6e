use super::*;
use crate::model::Provider;
use crate::model::Channel;
use chrono::TimeZone;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

fn status(event_id: &str, status: Status, attempt: u32, time: i64) -> StatusEvent {
    StatusEvent {
        channel: Some(Channel::Sms),
        provider: matches!(status, Status::Sent | Status::Delivered | Status::RetryScheduled).then_some(Provider::Twilio),
        provider_message_id: (status == Status::Sent).then(|| "SM1".to_owned()),
        next_attempt_at: (status == Status::RetryScheduled).then(|| at(time + 600)),
        ..StatusEvent::new(event_id, "u", status, attempt, at(time))
    }
}

#[test]
fn a_restored_send_is_reported_not_repeated() {
    let ledger = Ledger::new(std::time::Duration::from_secs(3600));
    ledger.restore(2, &status("sent", Status::Sent, 1, 0), at(10));
    ledger.restore(2, &status("failed", Status::Failed, 1, 0), at(10));
    let sent = ledger.sent(2, "sent").unwrap();
    assert_eq!((sent.delivered.provider, sent.delivered.message_id.as_deref(), sent.attempts.count()), (Provider::Twilio, Some("SM1"), 1));
    assert_eq!(ledger.sent(2, "failed"), None);
    assert_eq!(ledger.sent(3, "sent"), None, "another partition's");
}

#[test]
fn a_send_of_an_event_seen_before_is_kept_and_others_are_not() {
    let ledger = Ledger::new(std::time::Duration::from_secs(3600));
    ledger.restore(0, &status("retried", Status::RetryScheduled, 1, 0), at(10));
    let sent = Sent { delivered: Delivered { provider: Provider::Fcm, message_id: Some("m".into()) }, attempts: Attempts::made(1).unwrap() };
    ledger.record(0, "retried", sent.clone(), at(20));
    ledger.record(0, "new", sent.clone(), at(20));
    assert_eq!(ledger.sent(0, "retried"), Some(sent), "its retry copy will find it");
    assert_eq!(ledger.sent(0, "new"), None);
    assert_eq!(ledger.len(), 1);
}

#[test]
fn a_later_sighting_does_not_undo_a_send() {
    let ledger = Ledger::new(std::time::Duration::from_secs(3600));
    ledger.restore(0, &status("e", Status::Delivered, 1, 5), at(10));
    ledger.restore(0, &status("e", Status::RetryScheduled, 1, 0), at(10));
    assert!(ledger.sent(0, "e").is_some(), "a receipt implies the send");
}

#[test]
fn entries_expire_and_go_with_their_partition() {
    let ledger = Ledger::new(std::time::Duration::from_secs(60));
    ledger.restore(0, &status("old", Status::Sent, 1, 0), at(61));
    assert_eq!(ledger.sent(0, "old"), None, "older than the window");
    // A retry due in 600 s is kept until then, plus the window.
    ledger.restore(0, &status("waiting", Status::RetryScheduled, 1, 0), at(500));
    assert_eq!(ledger.len(), 1);
    ledger.restore(1, &status("other", Status::Sent, 1, 0), at(1));
    ledger.forget(0);
    assert_eq!((ledger.len(), ledger.sent(1, "other").is_some()), (1, true));
}
