use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::types::Value;
use chrono::{TimeZone, Utc};

use super::status::StatusDecodeError;
use super::*;
use crate::model::{AndroidOverrides, AndroidPriority, ApnsOverrides, Channel, Content, Encoding, ErrorClass, ErrorCode, Origin, Prefs, Priority, Provider, Request, SmsCost, Status, StatusEvent, Tried};

fn sample_request() -> Request {
    Request {
        prefs: Default::default(),
        event_id: "evt-1".into(),
        user_id: "user-1".into(),
        channel: Channel::Push,
        recipient: "token-abc".into(),
        content: Content {
            template_id: None,
            title: Some("Hi".into()),
            body: "Hello there".into(),
            template_vars: HashMap::from([("name".into(), "Ada".into())]),
            data: HashMap::from([("k".into(), "v".into())]),
            android: Some(Box::new(AndroidOverrides {
                priority: Some(AndroidPriority::High),
                ttl_seconds: Some(3600),
                collapse_key: Some("news".into()),
                channel_id: None,
                sound: Some("default".into()),
                click_action: None,
            })),
            apns: Some(Box::new(ApnsOverrides {
                headers: HashMap::from([("apns-priority".into(), "10".into())]),
                badge: Some(3),
                content_available: true,
                ..ApnsOverrides::default()
            })),
        },
        scheduled_at: Some(Utc.timestamp_millis_opt(1_800_000_000_123).unwrap()),
        created_at: Utc.timestamp_millis_opt(1_700_000_000_456).unwrap(),
    }
}

#[test]
fn request_round_trips_through_the_wire_format() {
    let b = Bundled::load();
    let bytes = encode_request(&b.request, 42, &sample_request()).unwrap();
    let (id, mut datum) = unframe(&bytes).unwrap();
    assert_eq!(id, 42);
    let value = apache_avro::from_avro_datum(&b.request, &mut datum, None).unwrap();
    assert_eq!(request_from_value(value).unwrap(), sample_request());
}

#[test]
fn a_request_written_with_the_schema_before_quiet_hours_resolves_with_defaults() {
    // The schema as it was: without the four fields appended for quiet
    // hours and templates. A registry hands herald such a writer schema.
    let mut older: serde_json::Value = serde_json::from_str(REQUEST_SCHEMA).unwrap();
    let fields = older["fields"].as_array_mut().unwrap();
    let new = ["time_zone", "locale", "priority", "template_id"];
    fields.retain(|f| !new.contains(&f["name"].as_str().unwrap()));
    let older = Schema::parse_str(&older.to_string()).unwrap();
    let b = Bundled::load();
    let request = sample_request();
    let Value::Record(mut fields) = apache_avro::from_avro_datum(&b.request, &mut unframe(&encode_request(&b.request, 1, &request).unwrap()).unwrap().1, None).unwrap() else {
        panic!("a record")
    };
    fields.retain(|(name, _)| !new.contains(&name.as_str()));
    let datum = apache_avro::to_avro_datum(&older, Value::Record(fields)).unwrap();
    let resolved = apache_avro::from_avro_datum(&older, &mut &datum[..], Some(&b.request)).unwrap();
    assert_eq!(request_from_value(resolved).unwrap(), request, "defaults: no zone, no locale, UNKNOWN, no template");
    // Without a registry, the hand reader takes the older datum too.
    assert_eq!(read_request(&datum), Ok(request));
}

#[test]
fn time_zone_locale_priority_and_template_round_trip_both_ways() {
    let b = Bundled::load();
    let prefs = Prefs { time_zone: Some("America/New_York".into()), locale: Some("pt-BR".into()), priority: Priority::Urgent };
    let mut request = Request { prefs, ..sample_request() };
    request.content.template_id = Some("order_shipped".into());
    let bytes = encode_request(&b.request, 1, &request).unwrap();
    let mut datum = unframe(&bytes).unwrap().1;
    assert_eq!(read_request(datum), Ok(request.clone()));
    let value = apache_avro::from_avro_datum(&b.request, &mut datum, None).unwrap();
    assert_eq!(request_from_value(value).unwrap(), request);
    // A priority symbol a newer writer added reads as UNKNOWN.
    let mut newer = unframe(&bytes).unwrap().1.to_vec();
    let at = newer.len() - 1 - 1 - "order_shipped".len() - 1;
    assert_eq!(newer[at], 2, "URGENT's index, zigzagged");
    newer[at] = 8;
    assert_eq!(read_request(&newer).unwrap().prefs.priority, Priority::Unknown);
}

#[test]
fn the_hand_reader_reads_what_apache_avro_writes() {
    let b = Bundled::load();
    let minimal = Request {
        channel: Channel::Sms,
        recipient: "+14155550100".into(),
        content: Content { body: "Grüße 👋".into(), ..Content::default() },
        scheduled_at: None,
        ..sample_request()
    };
    let many = Content {
        template_vars: (0..100).map(|i| (format!("k{i}"), "v".repeat(i))).collect(),
        ..sample_request().content
    };
    for request in [sample_request(), minimal, Request { content: many, ..sample_request() }] {
        let bytes = encode_request(&b.request, 1, &request).unwrap();
        assert_eq!(read_request(unframe(&bytes).unwrap().1), Ok(request));
    }
}

#[test]
fn the_hand_reader_reports_unknown_channels_and_truncation() {
    let b = Bundled::load();
    let bytes = encode_request(&b.request, 1, &sample_request()).unwrap();
    let datum = unframe(&bytes).unwrap().1;
    // Three nulls and an enum index: the fields appended for quiet hours
    // and templates. A datum that ends before them is an older writer's.
    let older = datum.len() - 4;
    for cut in (0..datum.len()).filter(|cut| *cut != older) {
        assert!(read_request(&datum[..cut]).is_err(), "cut at {cut}");
    }
    assert_eq!(read_request(&datum[..older]), Ok(sample_request()), "an older writer's request reads with defaults");
    let mut unknown = datum.to_vec();
    let channel_at = 1 + "evt-1".len() + 1 + "user-1".len();
    // zigzag 2: UNKNOWN; 3 and 60: symbols a newer writer added.
    for index in [4, 6, 120] {
        unknown[channel_at] = index;
        assert_eq!(
            read_request(&unknown),
            Err(RequestError::UnknownChannel { event_id: "evt-1".into(), user_id: "user-1".into(), symbol: "UNKNOWN".into() }),
            "index {}", index / 2
        );
    }
    unknown[channel_at] = 1; // zigzag -1
    assert!(matches!(read_request(&unknown), Err(RequestError::Binary(_))));
}

#[test]
fn status_round_trips_with_every_optional_field() {
    let b = Bundled::load();
    let event = StatusEvent {
        locale: None,
        event_id: "e".into(),
        user_id: "u".into(),
        channel: None,
        status: Status::RetryScheduled,
        attempt: 2,
        provider: Some(Provider::Twilio),
        provider_message_id: None,
        error_code: Some(ErrorCode::http(503)),
        error_class: Some(ErrorClass::Transient),
        error_message: Some("provider unavailable".into()),
        occurred_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
        next_attempt_at: Some(Utc.timestamp_millis_opt(1_700_000_600_000).unwrap()),
        recipient: Some("+*******0100".into()),
        created_at: Some(Utc.timestamp_millis_opt(1_699_999_999_000).unwrap()),
        scheduled_at: Some(Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()),
        sms: Some(SmsCost { segments: 3, encoding: Encoding::Ucs2 }),
        origin: Some(Origin { topic: "notification.requested".into(), partition: 4, offset: 1_234_567_890_123 }),
        tried: vec![
            Tried { provider: Provider::Twilio, error_code: ErrorCode::http(503) },
            Tried { provider: Provider::Vonage, error_code: ErrorCode::provider(Provider::Vonage, "6") },
        ],
    };
    // Written by hand, read back by apache-avro.
    let bytes = encode_status(0, &event);
    assert_eq!(decode_status(&b.status, &bytes).unwrap(), event);
    assert_eq!(read_status(&bytes).unwrap(), event, "and by the hand reader");
    let bare = StatusEvent {
        channel: Some(Channel::Sms),
        provider_message_id: Some("SM1".into()),
        ..StatusEvent::new(event.event_id.clone(), event.user_id.clone(), Status::Sent, event.attempt, event.occurred_at)
    };
    for status in Status::ALL {
        let e = StatusEvent { status, ..bare.clone() };
        assert_eq!(decode_status(&b.status, &encode_status(7, &e)).unwrap(), e);
        assert_eq!(read_status(&encode_status(7, &e)).unwrap(), e, "the hand reader too");
    }
}

#[test]
fn a_status_from_a_herald_older_than_the_enrichment_reads_with_defaults() {
    let occurred_at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let event = StatusEvent {
        channel: Some(Channel::Sms),
        provider: Some(Provider::Twilio),
        provider_message_id: Some("SM1".into()),
        ..StatusEvent::new("e", "u", Status::Sent, 1, occurred_at)
    };
    let bytes = encode_status(0, &event);
    // Seven null unions and an empty array: what the oldest writer lacked.
    let older = &bytes[..bytes.len() - 8];
    assert_eq!(read_status(older).unwrap(), event);
    // And the null locale: what a writer before templates lacked.
    assert_eq!(read_status(&bytes[..bytes.len() - 1]).unwrap(), event);
}

#[test]
fn the_status_hand_reader_takes_symbols_and_fields_a_newer_writer_added() {
    let occurred_at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let event = StatusEvent { channel: Some(Channel::Push), error_class: Some(ErrorClass::Permanent), ..StatusEvent::new("e", "u", Status::Sent, 1, occurred_at) };
    let mut bytes = encode_status(0, &event);
    bytes.extend([2, b'x']); // a field appended by a newer schema
    assert_eq!(read_status(&bytes).unwrap(), event);
    let at = 5 + 2 + 2; // header, then event_id and user_id of one byte each
    bytes[at] = 10; // channel index 5: unknown
    assert_eq!(read_status(&bytes).unwrap().channel, None);
    bytes[at + 1] = 40; // status index 20: unknown
    assert!(matches!(read_status(&bytes), Err(StatusDecodeError::UnknownStatus(20))));
}

#[test]
fn every_status_is_a_schema_symbol_and_back() {
    let Schema::Record(record) = Bundled::load().status else { panic!("status schema is a record") };
    let field = record.fields.iter().find(|f| f.name == "status").expect("status field");
    let Schema::Enum(e) = &field.schema else { panic!("status is an enum") };
    let known: Vec<&str> = e.symbols.iter().map(String::as_str).filter(|s| *s != "UNKNOWN").collect();
    assert_eq!(known, Status::ALL.map(Status::symbol));
}

#[test]
fn unframe_rejects_what_is_not_the_wire_format() {
    assert_eq!(unframe(&[]), Err(WireError::Empty));
    assert_eq!(unframe(&[1, 0, 0, 0, 1, 9]), Err(WireError::BadMagic(1)));
    assert_eq!(unframe(&[0, 0, 1]), Err(WireError::TooShort(3)));
    assert_eq!(unframe(&[0, 0, 0, 1, 2, 7]), Ok((258, &[7u8][..])));
}
