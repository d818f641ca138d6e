use std::time::Duration;

use super::*;
use crate::model::Channel;
use crate::pipeline::deliver::{SmsProvider, TwilioAuth};
use crate::pipeline::ratelimit::{OverLimit, RateLimit};
use crate::topics::DelayTopic;

const KEY: &str = "an envelope key of 32 bytes or more";

/// The pipeline's command line, with an envelope key unless `args` give one.
fn parse(args: &[&str]) -> Config {
    let key = (!args.iter().any(|a| a.starts_with("--envelope-key"))).then_some(["--envelope-key", KEY]);
    Config::try_parse_from(std::iter::once("herald").chain(key.into_iter().flatten()).chain(args.iter().copied())).unwrap()
}

#[test]
fn the_old_services_environment_names_are_aliases() {
    let env = |pairs: &'static [(&'static str, &'static str)]| move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
    assert_eq!(legacy_env(env(&[])), Ok(vec![]));
    assert_eq!(legacy_env(env(&[("TWILIO_FROM_NUMBER", "+14155550100")])), Ok(vec![("TWILIO_FROM", "+14155550100".into())]));
    assert_eq!(legacy_env(env(&[("TWILIO_FROM_NUMBER", "+14155550100"), ("TWILIO_FROM", "+14155550100")])), Ok(vec![]));
    assert!(legacy_env(env(&[("TWILIO_FROM_NUMBER", "+14155550100"), ("TWILIO_FROM", "+14155550199")])).unwrap_err().contains("differ"));
    assert_eq!(legacy_env(env(&[("TWILIO_PHONE_NUMBER", "+14155550100")])), Ok(vec![("TWILIO_FROM", "+14155550100".into())]));
    assert_eq!(legacy_env(env(&[("TWILIO_PHONE_NUMBER", "+14155550100"), ("TWILIO_FROM_NUMBER", "+14155550100")])), Ok(vec![("TWILIO_FROM", "+14155550100".into())]));
    let differ = legacy_env(env(&[("TWILIO_PHONE_NUMBER", "+14155550100"), ("TWILIO_FROM_NUMBER", "+14155550199")])).unwrap_err();
    assert_eq!(differ, "TWILIO_FROM_NUMBER and TWILIO_PHONE_NUMBER are both set, and differ: set one");
    assert_eq!(legacy_env(env(&[("SMS_PROVIDER", "Vonage")])), Ok(vec![("HERALD_SMS_PROVIDERS", "vonage,twilio".into())]));
    assert_eq!(legacy_env(env(&[("SMS_PROVIDER", "twilio")])), Ok(vec![("HERALD_SMS_PROVIDERS", "twilio,vonage".into())]));
    assert_eq!(legacy_env(env(&[("SMS_PROVIDER", "vonage"), ("HERALD_SMS_PROVIDERS", "vonage")])), Ok(vec![]));
    assert!(legacy_env(env(&[("SMS_PROVIDER", "vonage"), ("HERALD_SMS_PROVIDERS", "twilio,vonage")])).unwrap_err().contains("set one"));
    assert!(legacy_env(env(&[("SMS_PROVIDER", "sns")])).unwrap_err().contains("not twilio or vonage"));
}

#[test]
fn the_crash_bound_must_leave_room_beside_a_hung_lane() {
    let refused = parse(&["--unconfirmed-sends", "32"]).check();
    assert_eq!(refused, Err(ConfigError::UnconfirmedWithinLane { unconfirmed: 32, lane: "sms-concurrency", concurrency: 32 }));
    assert!(refused.unwrap_err().to_string().starts_with("--unconfirmed-sends (32) must be more than --sms-concurrency (32)"));
    let push = parse(&["--unconfirmed-sends", "5", "--sms-concurrency", "4"]).check();
    assert_eq!(push, Err(ConfigError::UnconfirmedWithinLane { unconfirmed: 5, lane: "push-concurrency", concurrency: 32 }));
    assert_eq!(parse(&["--unconfirmed-sends", "5", "--sms-concurrency", "4", "--push-concurrency", "4"]).check(), Ok(()));
}

#[test]
fn bounds_a_semaphore_cannot_hold_are_refused_not_a_panic() {
    let huge = usize::MAX.to_string();
    assert_eq!(parse(&["--unconfirmed-sends", &huge]).check(), Err(ConfigError::TooLarge("unconfirmed-sends", usize::MAX)));
    assert_eq!(parse(&["--channel-queue", &huge]).check(), Err(ConfigError::TooLarge("channel-queue", usize::MAX)));
    let most = tokio::sync::Semaphore::MAX_PERMITS.to_string();
    assert_eq!(parse(&["--unconfirmed-sends", &most]).check(), Ok(()));
}

#[test]
fn defaults_match_the_service_herald_replaces() {
    let c = parse(&[]);
    assert_eq!(c.rate_limits.sms_rate_limit, RateLimit::per(10, Duration::from_secs(3600)));
    assert_eq!(c.rate_limits.sms_over_limit, OverLimit::Reject);
    assert_eq!(c.topics.retry_topics, ["retry-10m", "retry-20m", "retry-40m"]);
    assert_eq!(c.topics.retry_delays, [600, 1200, 2400].map(Duration::from_secs));
    assert_eq!(c.delivery.sms_max_chars, 480);
    assert_eq!(c.check(), Ok(()));
}

#[test]
fn each_group_becomes_its_module_s_settings() {
    let s = parse(&["--brokers", "k:9092", "--sms-concurrency", "7", "--retry-delays", "1s,2s,3s", "--push-rate-limit", "5/1m"]).pipeline().unwrap();
    assert_eq!(s.kafka.brokers, "k:9092");
    assert_eq!((s.route.sms_lane.concurrency, s.route.push_lane.concurrency, s.route.sms_lane.queue, s.route.unconfirmed_sends), (7, 32, 2048, 64));
    assert_eq!(s.topics.retries[2], DelayTopic { name: "retry-40m".into(), delay: Duration::from_secs(3) });
    assert_eq!(s.rate_limits.of(Channel::Push).limit, RateLimit::per(5, Duration::from_secs(60)));
    assert!(s.scylla.is_none() && s.receipts.is_none() && s.delivery.twilio.is_none() && s.delivery.fcm.is_none());
}

#[test]
fn retry_schedule_must_pair_topics_with_delays() {
    let c = parse(&["--retry-delays", "1s,2s"]);
    assert_eq!(c.check(), Err(ConfigError::RetryScheduleMismatch { topics: 3, delays: 2 }));
}

#[test]
fn a_topic_cannot_serve_two_roles() {
    let c = parse(&["--topic-status", "retry-20m"]);
    assert_eq!(c.check(), Err(ConfigError::DuplicateTopic("retry-20m".into())));
}

#[test]
fn twilio_credentials_come_together() {
    let c = parse(&["--twilio-account-sid", "AC1"]);
    assert_eq!(c.check(), Err(ConfigError::TwilioIncomplete("--twilio-auth-token or --twilio-api-key-sid")));
    let key = parse(&["--twilio-account-sid", "AC1", "--twilio-from", "+14155550100", "--twilio-api-key-sid", "SK1", "--twilio-api-key-secret", "s"]);
    assert_eq!(key.check(), Ok(()), "an API key instead of the auth token");
    let no_secret = parse(&["--twilio-api-key-sid", "SK1"]).check();
    assert_eq!(no_secret, Err(ConfigError::TwilioApiKeyIncomplete("--twilio-api-key-secret")), "a key needs its secret");
}

#[test]
fn vonage_credentials_come_together_and_providers_have_an_order() {
    let settings = |args: &[&str]| parse(args).check();
    assert_eq!(settings(&["--vonage-api-key", "k", "--vonage-from", "herald"]), Err(ConfigError::VonageIncomplete("--vonage-api-secret")));
    assert_eq!(settings(&["--vonage-api-key", "k", "--vonage-api-secret", "s"]), Err(ConfigError::VonageIncomplete("--vonage-from")));
    assert_eq!(settings(&["--vonage-api-secret", "s"]), Err(ConfigError::VonageIncomplete("--vonage-api-key")));
    assert_eq!(parse(&[]).delivery.sms_providers, [SmsProvider::Twilio, SmsProvider::Vonage]);
    assert_eq!(parse(&["--sms-providers", "vonage,twilio"]).delivery.sms_providers, [SmsProvider::Vonage, SmsProvider::Twilio]);
    assert_eq!(parse(&["--sms-providers", "vonage,vonage"]).check(), Err(ConfigError::DuplicateProvider));
}

#[test]
fn senders_that_would_fail_every_sms_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--twilio-from", "abc"),
        ("--twilio-from", "14155550100"),
        ("--twilio-from", "+1415"),
        ("--vonage-from", ""),
        ("--vonage-from", "+1415"),
    ] {
        let mut args = vec!["herald", flag, value];
        if flag == "--vonage-from" {
            args.extend(["--vonage-api-key", "k", "--vonage-api-secret", "s"]);
        }
        let error = Config::try_parse_from(args).expect_err(value).to_string();
        assert!(error.contains(flag), "{flag} {value:?}: {error}");
    }
    assert!(Config::try_parse_from(["herald", "--twilio-from", "MG0123456789abcdef0123456789abcdef"]).is_ok());
}

#[test]
fn the_receipts_url_is_http() {
    let twilio = ["--twilio-account-sid", "AC1", "--twilio-auth-token", "t", "--twilio-from", "+14155550100"];
    let with = |url: &str| parse(&[&twilio[..], &["--receipts-listen", "127.0.0.1:8080", "--receipts-public-url", url]].concat());
    assert_eq!(with("https://herald.example.com/twilio/status").check(), Ok(()));
    assert_eq!(with("http://127.0.0.1:8080/twilio/status").check(), Ok(()), "a loopback proxy or a test");
    assert_eq!(with("http://localhost/twilio/status").check(), Ok(()));
    for bad in ["mailto:ops@example.com", "http://herald.example.com/twilio/status", "http://10.0.0.1/twilio/status"] {
        assert_eq!(with(bad).check(), Err(ConfigError::ReceiptsUrl(bad.into())), "{bad}");
    }
}

#[test]
fn the_keyspace_must_be_a_plain_identifier() {
    for bad in ["herald; DROP TABLE x", "1herald", "", "a-b"] {
        assert_eq!(parse(&["--scylla-keyspace", bad]).check(), Err(ConfigError::Keyspace(bad.into())), "{bad}");
    }
    assert_eq!(parse(&["--scylla-keyspace", "herald_2"]).check(), Ok(()));
}

#[test]
fn the_pipeline_needs_an_envelope_key_of_32_bytes_and_other_programs_do_not() {
    let without = |args: &[&str]| Config::try_parse_from(std::iter::once("herald").chain(args.iter().copied())).unwrap().check();
    assert_eq!(without(&[]), Err(ConfigError::NoEnvelopeKey));
    assert_eq!(without(&["check"]), Err(ConfigError::NoEnvelopeKey));
    assert_eq!(without(&["--envelope-key", "short"]), Err(ConfigError::SecretTooShort { flag: "--envelope-key", len: 5 }));
    assert_eq!(without(&["--envelope-key", KEY]), Ok(()));
    assert_eq!(without(&["--scylla-uri", "127.0.0.1:9042", "migrate"]), Ok(()));
    assert_eq!(without(&["dlq", "list"]), Ok(()));
    let s = parse(&["--group-id", "eu"]).pipeline().unwrap();
    assert!(format!("{:?}", s.seal).contains("eu") && !format!("{s:?}").contains(KEY), "owned by the group; the key never shows");
}

#[test]
fn secrets_come_from_files_too_without_their_final_line_break() {
    let dir = std::env::temp_dir().join(format!("herald-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let key = file("key", &format!("{KEY}\n"));
    let token = file("token", "twilio-token\r\n");
    let s = parse(&["--envelope-key-file", &key, "--twilio-account-sid", "AC1", "--twilio-from", "+14155550100", "--twilio-auth-token-file", &token])
        .pipeline()
        .unwrap();
    match s.delivery.twilio.unwrap().auth {
        TwilioAuth::AuthToken(t) => assert_eq!(secrecy::ExposeSecret::expose_secret(&t), "twilio-token"),
        other => panic!("{other:?}"),
    }
    let empty = file("empty", "\n");
    assert!(matches!(parse(&["--envelope-key-file", &empty]).pipeline(), Err(ConfigError::SecretFile { flag: "--envelope-key-file", .. })));
    let missing = parse(&["--envelope-key-file", "/nonexistent/key"]).check().unwrap_err().to_string();
    assert!(missing.starts_with("--envelope-key-file /nonexistent/key: cannot read it"), "{missing}");
    assert!(Config::try_parse_from(["herald", "--envelope-key", KEY, "--envelope-key-file", &key]).is_err(), "one or the other");
    let api = |token: &str| Config::try_parse_from(["herald", "--scylla-uri", "h:9042", "api", "--api-token", token]).unwrap().check();
    assert_eq!(api("a"), Err(ConfigError::SecretTooShort { flag: "--api-token", len: 1 }));
    assert_eq!(api(KEY), Ok(()));
    let from_file = Config::try_parse_from(["herald", "--scylla-uri", "h:9042", "api", "--api-token-file", &key]).unwrap();
    assert_eq!(from_file.check(), Ok(()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn listeners_are_on_loopback_unless_told_otherwise_each_program_on_its_own_port() {
    let loopback = |port| Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(parse(&[]).pipeline().unwrap().admin, loopback(9464));
    let api = Config::try_parse_from(["herald", "--scylla-uri", "h:9042", "api", "--api-token", KEY]).unwrap();
    let Some(Command::Api(args)) = &api.command else { unreachable!() };
    let settings = api.api(args).unwrap();
    assert_eq!(settings.admin, loopback(9465), "beside a pipeline on the same host");
    assert_eq!(settings.listen, loopback(8080).unwrap());
    assert_eq!(parse(&["--admin-listen", "0.0.0.0:9464"]).pipeline().unwrap().admin, Some("0.0.0.0:9464".parse().unwrap()));
    assert_eq!(parse(&["--admin-listen", "off"]).pipeline().unwrap().admin, None);
}

#[test]
fn a_retry_must_wait() {
    assert_eq!(parse(&["--retry-delays", "0s,0s,0s"]).check(), Err(ConfigError::ZeroRetryDelay));
    assert_eq!(parse(&["--retry-delays", "1s,0s,3s"]).check(), Err(ConfigError::ZeroRetryDelay));
}

#[test]
fn migrate_needs_a_scylla_uri() {
    assert_eq!(parse(&["migrate"]).check(), Err(ConfigError::MigrateWithoutScylla));
    assert!(matches!(parse(&["--scylla-uri", "127.0.0.1:9042", "migrate"]).command, Some(Command::Migrate)));
}

#[test]
fn the_auth_token_never_shows_in_a_config_dump() {
    let c = parse(&["--twilio-auth-token", "s3cr3t-token"]);
    assert!(!format!("{c:?}").contains("s3cr3t-token"));
}
