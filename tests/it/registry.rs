//! Schema Registry: writer schemas resolved by id, so producers can evolve.

use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::Schema;
use herald::model::Status;
use herald::record::envelope as h_;
use herald_testkit::fake::FakeRegistry;
use rdkafka::message::Message;

use crate::support::*;

/// The request schema as a newer producer might have it: one more optional
/// field, and a channel herald does not know.
fn evolved_schema() -> String {
    let mut schema: serde_json::Value = serde_json::from_str(herald::codec::REQUEST_SCHEMA).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.push(serde_json::json!({"name": "campaign", "type": ["null", "string"], "default": null}));
    fields[2]["type"]["symbols"] = serde_json::json!(["SMS", "PUSH", "EMAIL", "UNKNOWN"]);
    schema.to_string()
}

/// The request schema as a producer built before the push overrides has
/// it: no `android` or `apns` in the content.
fn older_schema() -> String {
    let mut schema: serde_json::Value = serde_json::from_str(herald::codec::REQUEST_SCHEMA).unwrap();
    let content = schema["fields"].as_array_mut().unwrap().iter_mut().find(|f| f["name"] == "content").unwrap();
    content["type"]["fields"].as_array_mut().unwrap().retain(|f| f["name"] != "android" && f["name"] != "apns");
    schema.to_string()
}

/// The fields after `created_at`, each at its default.
fn preferences() -> Vec<(String, Value)> {
    let null = || Value::Union(0, Box::new(Value::Null));
    vec![("time_zone".into(), null()), ("locale".into(), null()), ("priority".into(), Value::Enum(2, "UNKNOWN".into())), ("template_id".into(), null())]
}

/// Which producer wrote a record.
#[derive(Clone, Copy, PartialEq)]
enum Writer {
    Newer,
    Older,
}

fn encode(writer: Writer, schema: &Schema, id: u32, event_id: &str, user: &str, channel: (u32, &str), recipient: &str) -> Vec<u8> {
    let mut content = vec![
        ("title".into(), Value::Union(0, Box::new(Value::Null))),
        ("body".into(), Value::String("from a newer producer".into())),
        ("template_vars".into(), Value::Map(Default::default())),
        ("data".into(), Value::Map(Default::default())),
    ];
    if writer == Writer::Newer {
        content.extend([("android".into(), Value::Union(0, Box::new(Value::Null))), ("apns".into(), Value::Union(0, Box::new(Value::Null)))]);
    }
    let content = Value::Record(content);
    let mut fields = vec![
        ("event_id".into(), Value::String(event_id.into())),
        ("user_id".into(), Value::String(user.into())),
        ("channel".into(), Value::Enum(channel.0, channel.1.into())),
        ("recipient".into(), Value::String(recipient.into())),
        ("content".into(), content),
        ("scheduled_at".into(), Value::Union(0, Box::new(Value::Null))),
        ("created_at".into(), Value::TimestampMillis(1_700_000_000_000)),
    ];
    fields.extend(preferences());
    if writer == Writer::Newer {
        fields.push(("campaign".into(), Value::Union(1, Box::new(Value::String("spring".into())))));
    }
    let value = Value::Record(fields);
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend(apache_avro::to_avro_datum(schema, value).unwrap());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_newer_writer_schemas_and_registers_its_own() {
    let h = Harness::new().await;
    let registry = FakeRegistry::start().await;
    let evolved = evolved_schema();
    registry.insert(7, &evolved);
    let schema = Schema::parse_str(&evolved).unwrap();
    registry.insert(8, &older_schema());
    let older = Schema::parse_str(&older_schema()).unwrap();
    let herald = h.start(&["--schema-registry-url", &registry.base_url()]);

    h.send_raw(b"u1", &encode(Writer::Newer, &schema, 7, "v2-sms", "u1", (0, "SMS"), "+14155550100")).await;
    h.send_raw(b"u1", &encode(Writer::Newer, &schema, 7, "v2-email", "u1", (2, "EMAIL"), "ada@example.com")).await;
    h.send_raw(b"u1", &encode(Writer::Older, &older, 8, "v0-sms", "u1", (0, "SMS"), "+14155550100")).await;
    let unknown_id = encode(Writer::Newer, &schema, 999, "no-such-schema", "u1", (0, "SMS"), "+14155550100");
    h.send_raw(b"u1", &unknown_id).await;

    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(30), &["v2-sms".into(), "v2-email".into(), "v0-sms".into()]).await;
    assert_eq!(terminal["v2-sms"].status, Status::Sent);
    assert_eq!(terminal["v0-sms"].status, Status::Sent, "a writer without the push overrides");
    let email = &terminal["v2-email"];
    assert_eq!((email.status, email.error_code.as_deref(), email.channel), (Status::Invalid, Some("unknown-channel"), None));

    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| m.len() >= 2).await.to_vec();
    assert!(dead.iter().any(|m| m.payload() == Some(&unknown_id[..]) && header(m, h_::ERROR_CODE) == Some("unknown-schema")));

    // Status events carry the id the registry gave herald's status schema.
    let registered = registry
        .requests()
        .iter()
        .any(|r| r.path == format!("/subjects/{}-value/versions", h.topics.status));
    assert!(registered, "status schema registered under the topic's value subject");
    let raw = h.reader(&h.topics.status).read_until(Duration::from_secs(5), |m| !m.is_empty()).await.to_vec();
    let id = u32::from_be_bytes(raw[0].payload().unwrap()[1..5].try_into().unwrap());
    assert_eq!(id, 100, "the fake registry's first assigned id");
    herald.stop().await.unwrap();
}

/// The request schema as a newer producer might have it, with these
/// channel and Android priority symbols.
fn with_symbols(channels: &[&str], priorities: &[&str]) -> Schema {
    let mut schema: serde_json::Value = serde_json::from_str(herald::codec::REQUEST_SCHEMA).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields[2]["type"]["symbols"] = serde_json::json!(channels);
    let content = fields.iter_mut().find(|f| f["name"] == "content").unwrap();
    let android = content["type"]["fields"].as_array_mut().unwrap().iter_mut().find(|f| f["name"] == "android").unwrap();
    android["type"][1]["fields"][0]["type"][1]["symbols"] = serde_json::json!(priorities);
    Schema::parse_str(&schema.to_string()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_registry_symbols_a_newer_writer_added_read_as_unknown() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    let null = || Value::Union(0, Box::new(Value::Null));
    let request = |schema: &Schema, event_id: &str, channel: (u32, &str), recipient: &str, priority: Option<(u32, &str)>| {
        let android = match priority {
            None => null(),
            Some((i, symbol)) => Value::Union(1, Box::new(Value::Record(vec![
                ("priority".into(), Value::Union(1, Box::new(Value::Enum(i, symbol.into())))),
                ("ttl_seconds".into(), null()),
                ("collapse_key".into(), null()),
                ("channel_id".into(), null()),
                ("sound".into(), null()),
                ("click_action".into(), null()),
            ]))),
        };
        let content = Value::Record(vec![
            ("title".into(), null()),
            ("body".into(), Value::String("from a newer producer".into())),
            ("template_vars".into(), Value::Map(Default::default())),
            ("data".into(), Value::Map(Default::default())),
            ("android".into(), android),
            ("apns".into(), null()),
        ]);
        let value = Value::Record(vec![
            ("event_id".into(), Value::String(event_id.into())),
            ("user_id".into(), Value::String("u1".into())),
            ("channel".into(), Value::Enum(channel.0, channel.1.into())),
            ("recipient".into(), Value::String(recipient.into())),
            ("content".into(), content),
            ("scheduled_at".into(), null()),
            ("created_at".into(), Value::TimestampMillis(1_700_000_000_000)),
        ]
        .into_iter()
        .chain(preferences())
        .collect());
        // Schema id 0: no registry knows it; herald reads with its own schema.
        let mut bytes = vec![0, 0, 0, 0, 0];
        bytes.extend(apache_avro::to_avro_datum(schema, value).unwrap());
        bytes
    };
    let inserted = with_symbols(&["SMS", "PUSH", "EMAIL", "UNKNOWN"], &["NORMAL", "HIGH", "UNKNOWN"]);
    let appended = with_symbols(&["SMS", "PUSH", "UNKNOWN", "EMAIL"], &["NORMAL", "HIGH", "UNKNOWN", "MAX"]);
    h.send_raw(b"u1", &request(&inserted, "email-before-unknown", (2, "EMAIL"), "ada@example.com", None)).await;
    h.send_raw(b"u1", &request(&appended, "email-after-unknown", (3, "EMAIL"), "ada@example.com", None)).await;
    h.send_raw(b"u1", &request(&appended, "push-max-priority", (1, "PUSH"), "tok", Some((3, "MAX")))).await;
    let ids = ["email-before-unknown", "email-after-unknown", "push-max-priority"].map(String::from);
    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    herald.stop().await.unwrap();
    for id in &ids[..2] {
        let e = &terminal[id];
        assert_eq!((e.status, e.error_code.as_deref(), e.channel), (Status::Invalid, Some("unknown-channel"), None), "{id}");
    }
    assert_eq!(terminal["push-max-priority"].status, Status::Sent);
    let sent = h.fcm.requests();
    assert_eq!(sent[0].json.as_ref().unwrap()["message"].get("android"), None, "an unknown priority leaves FCM's default");
    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(10), |m| m.len() >= 2).await.to_vec();
    assert!(dead.iter().all(|m| header(m, h_::ERROR_CODE) == Some("unknown-channel")), "not avro-decode");
}
