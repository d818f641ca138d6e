use super::*;
use crate::model::ErrorClass;

fn message(request: &Request) -> serde_json::Value {
    let encoded = prepare(request).unwrap();
    let value: serde_json::Value = serde_json::from_slice(encoded.json()).unwrap();
    assert_eq!(value, serde_json::to_value(Message::of(request)).unwrap(), "encoded in parts as serde would whole");
    value
}

fn validate(request: &Request) -> Result<(), InvalidReason> {
    prepare(request).map(|_| ())
}

#[test]
fn payloads_over_4096_bytes_are_refused_before_sending() {
    let mut r = Request {
        prefs: Default::default(),
        event_id: "e".into(),
        user_id: "u".into(),
        channel: crate::model::Channel::Push,
        recipient: "token".into(),
        content: crate::model::Content { title: Some("t".into()), body: "b".into(), ..Default::default() },
        scheduled_at: None,
        created_at: chrono::Utc::now(),
    };
    assert_eq!(validate(&r), Ok(()));
    // {"body":"…","title":"t"} is 23 bytes around the body.
    r.content.body = "x".repeat(MAX_PAYLOAD_BYTES - 23);
    assert!(validate(&r).is_ok(), "exactly at the limit");
    r.content.data.insert("k".into(), "v".into());
    assert_eq!(validate(&r), Err(InvalidReason::PayloadTooLarge { bytes: MAX_PAYLOAD_BYTES + 9, max: MAX_PAYLOAD_BYTES }), "data counts too");
    r.content.data.clear();
    r.content.body = "é".repeat(2040);
    assert!(matches!(validate(&r), Err(InvalidReason::PayloadTooLarge { .. })), "bytes, not characters");
}

fn google(status: &str, fcm: Option<&str>) -> Option<GoogleError> {
    Some(GoogleError {
        status: Some(status.into()),
        details: vec![ErrorDetail { error_code: fcm.map(str::to_owned) }],
    })
}

#[test]
fn classification_table() {
    use StatusCode as S;
    let rows = [
        (S::NOT_FOUND, google("NOT_FOUND", Some("UNREGISTERED")), ErrorClass::Permanent, "fcm:UNREGISTERED"),
        (S::BAD_REQUEST, google("INVALID_ARGUMENT", Some("INVALID_ARGUMENT")), ErrorClass::Permanent, "fcm:INVALID_ARGUMENT"),
        (S::FORBIDDEN, google("PERMISSION_DENIED", Some("SENDER_ID_MISMATCH")), ErrorClass::Permanent, "fcm:SENDER_ID_MISMATCH"),
        (S::UNAUTHORIZED, google("UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR")), ErrorClass::Permanent, "fcm:THIRD_PARTY_AUTH_ERROR"),
        (S::SERVICE_UNAVAILABLE, google("UNAVAILABLE", Some("UNAVAILABLE")), ErrorClass::Transient, "fcm:UNAVAILABLE"),
        (S::INTERNAL_SERVER_ERROR, google("INTERNAL", Some("INTERNAL")), ErrorClass::Transient, "fcm:INTERNAL"),
        (S::TOO_MANY_REQUESTS, google("RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED")), ErrorClass::Transient, "fcm:QUOTA_EXCEEDED"),
        (S::BAD_GATEWAY, None, ErrorClass::Transient, "http:502"),
        (S::UNAUTHORIZED, None, ErrorClass::Transient, "http:401"),
    ];
    for (status, error, class, code) in rows {
        let e = classify(status, error, None);
        assert_eq!((e.class(), e.code().as_str()), (class, code), "{status}");
        let gone = matches!(e, DeliveryError::RecipientGone { reason: Reason::TokenUnregistered, .. });
        assert_eq!(gone, code == "fcm:UNREGISTERED", "only UNREGISTERED suppresses the token: {e:?}");
    }
}

#[test]
fn message_shape() {
    let request = Request {
        prefs: Default::default(),
        event_id: "e".into(),
        user_id: "u".into(),
        channel: crate::model::Channel::Push,
        recipient: "tok".into(),
        content: crate::model::Content {
            template_id: None,
            title: Some("T".into()),
            body: "B".into(),
            template_vars: HashMap::new(),
            data: HashMap::from([("k".into(), "v".into())]),
            android: None,
            apns: None,
        },
        scheduled_at: None,
        created_at: chrono::Utc::now(),
    };
    assert_eq!(
        message(&request),
        serde_json::json!({"message": {"token": "tok", "notification": {"title": "T", "body": "B"}, "data": {"k": "v"}}})
    );
    let overridden = Request {
        content: crate::model::Content {
            android: Some(Box::new(AndroidOverrides {
                priority: Some(crate::model::AndroidPriority::High),
                ttl_seconds: Some(90),
                channel_id: Some("orders".into()),
                ..Default::default()
            })),
            apns: Some(Box::new(ApnsOverrides {
                headers: HashMap::from([("apns-priority".into(), "5".into())]),
                badge: Some(0),
                thread_id: Some("orders".into()),
                content_available: true,
                ..Default::default()
            })),
            ..request.content.clone()
        },
        ..request.clone()
    };
    assert_eq!(
        message(&overridden)["message"],
        serde_json::json!({
            "token": "tok", "notification": {"title": "T", "body": "B"}, "data": {"k": "v"},
            "android": {"priority": "HIGH", "ttl": "90s", "notification": {"channel_id": "orders"}},
            "apns": {"headers": {"apns-priority": "5"}, "payload": {"aps": {"badge": 0, "thread-id": "orders", "content-available": 1}}}
        })
    );
    // Empty overrides add nothing.
    let empty = Request {
        content: crate::model::Content { android: Some(Box::default()), apns: Some(Box::default()), ..request.content.clone() },
        ..request.clone()
    };
    assert_eq!(message(&empty), message(&request));
}

#[test]
fn strings_are_encoded_byte_for_byte_as_serde_json_would() {
    let texts = [
        "", "plain", "say \"hi\"", "back\\slash", "tab\tnew\nline", "\u{0}\u{1f}", "\u{7f} del", "é ü 中文",
        "emoji 🎉", "</script>", "\\\"", "a\rb", &"x".repeat(1500),
    ];
    for (i, text) in texts.iter().enumerate() {
        let title = (i % 2 == 0).then(|| text.to_string());
        let request = Request {
            prefs: Default::default(),
            event_id: "e".into(),
            user_id: "u".into(),
            channel: crate::model::Channel::Push,
            recipient: format!("tok{text}"),
            content: crate::model::Content { title, body: format!("body {text}"), ..Default::default() },
            scheduled_at: None,
            created_at: chrono::Utc::now(),
        };
        let prepared = prepare(&request).unwrap();
        assert_eq!(
            String::from_utf8_lossy(prepared.json()),
            serde_json::to_string(&Message::of(&request)).unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn overrides_out_of_range_are_invalid() {
    let mut r = Request {
        prefs: Default::default(),
        event_id: "e".into(),
        user_id: "u".into(),
        channel: crate::model::Channel::Push,
        recipient: "tok".into(),
        content: crate::model::Content { body: "b".into(), ..Default::default() },
        scheduled_at: None,
        created_at: chrono::Utc::now(),
    };
    for (ttl, ok) in [(0, true), (MAX_TTL_SECONDS, true), (-1, false), (MAX_TTL_SECONDS + 1, false)] {
        r.content.android = Some(Box::new(AndroidOverrides { ttl_seconds: Some(ttl), ..Default::default() }));
        assert_eq!(validate(&r).is_ok(), ok, "ttl {ttl}");
    }
    r.content.android = None;
    r.content.apns = Some(Box::new(ApnsOverrides { badge: Some(-1), ..Default::default() }));
    assert_eq!(validate(&r), Err(InvalidReason::InvalidOverride("apns.badge")));
}
