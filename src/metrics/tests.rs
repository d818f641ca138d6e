use chrono::Utc;

use super::*;

fn event(status: Status, channel: Option<Channel>, provider: Option<Provider>) -> StatusEvent {
    let secret = StatusEvent::new("e-secret", "u-secret", status, 1, Utc::now());
    StatusEvent { channel, provider, provider_message_id: Some("SM-secret".into()), ..secret }
}

#[test]
fn outcomes_count_under_their_own_labels_only() {
    let m = Metrics::new();
    m.status(&event(Status::Sent, Some(Channel::Sms), Some(Provider::Twilio)));
    m.status(&event(Status::Sent, Some(Channel::Sms), Some(Provider::Twilio)));
    m.status(&event(Status::Invalid, None, None));
    m.call(Provider::Fcm, CallResult::Unavailable, Some(Duration::from_millis(20)));
    let text = m.encode();
    assert!(text.contains(r#"herald_outcomes_total{status="SENT",channel="SMS",provider="twilio"} 2"#), "{text}");
    assert!(text.contains(r#"herald_outcomes_total{status="INVALID",channel="UNKNOWN",provider="none"} 1"#), "{text}");
    assert!(!text.contains(r#"status="FAILED""#), "no series for what never happened");
    assert!(text.contains(r#"herald_provider_calls_total{provider="fcm",result="unavailable"} 1"#), "{text}");
    assert!(text.contains(r#"herald_provider_call_duration_seconds_count{provider="fcm"} 1"#), "{text}");
    assert!(!text.contains("secret"), "no ids in labels");
    let classic = m.encode_classic();
    assert!(classic.contains("# TYPE herald_outcomes_total counter"), "{classic}");
    assert!(classic.contains("# HELP herald_outcomes_total Status events"), "{classic}");
    assert!(classic.contains("# TYPE herald_provider_call_duration_seconds histogram"), "{classic}");
    assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"), "{classic}");
}
