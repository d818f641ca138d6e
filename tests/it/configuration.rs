//! Bad configuration is reported at once, in one line that names the flag,
//! before herald connects to anything; and `--help` shows no secret.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the herald binary with `args` and `env`, with no KAFKA_BROKERS or
/// SCYLLA_URI from the test's environment; returns its exit code, its
/// stderr and stdout, and how long it ran. It must exit within `within`.
fn herald(args: &[&str], env: &[(&str, &str)], within: Duration) -> (Option<i32>, String, String, Duration) {
    let log = tempfile(&format!("{}", std::process::id()));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("SCYLLA_URI")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stdout = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
            return (status.code(), std::fs::read_to_string(&log).unwrap(), stdout, started.elapsed());
        }
        if started.elapsed() > within {
            let _ = child.kill();
            panic!("herald {args:?} still running after {within:?}: {}", std::fs::read_to_string(&log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tempfile(tag: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    std::env::temp_dir().join(format!("herald-config-{tag}-{}.log", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
}

#[test]
fn an_unreachable_broker_is_named_at_once() {
    for (args, env, address) in [
        (vec!["--brokers", "127.0.0.1:1"], vec![], "127.0.0.1:1"),
        (vec![], vec![("KAFKA_BROKERS", "127.0.0.1:2")], "127.0.0.1:2"),
    ] {
        let (code, stderr, _, took) = herald(&args, &env, Duration::from_secs(8));
        assert_eq!(code, Some(1), "{stderr}");
        let error = stderr.lines().find(|l| l.contains("ERROR")).unwrap_or_else(|| panic!("an error line: {stderr}"));
        assert!(error.contains(&format!("--brokers {address}")) && error.contains("refused"), "{error}");
        assert!(took < Duration::from_secs(3), "reported after {took:?}");
        assert!(!stderr.contains('\u{1b}'), "no colour codes in a file: {stderr:?}");
    }
}

#[test]
fn local_mistakes_are_reported_before_connecting_and_name_their_flag() {
    let twilio = ["--twilio-account-sid", "AC1", "--twilio-auth-token", "t", "--twilio-from", "+14155550100"];
    let not_json = tempfile("key");
    std::fs::write(&not_json, "not a key").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let public = format!("http://{taken}/twilio/status");
    let rows: Vec<(Vec<&str>, String)> = vec![
        (vec!["--fcm-credentials", "/nonexistent/key.json"], "--fcm-credentials /nonexistent/key.json: cannot read it".into()),
        (vec!["--fcm-credentials", not_json.to_str().unwrap()], format!("--fcm-credentials {}: it is not a service-account key", not_json.display())),
        ([&twilio[..], &["--receipts-listen", &taken, "--receipts-public-url", &public]].concat(), format!("--receipts-listen {taken}: cannot listen")),
        (vec!["--sms-template", "{unclosed"], "--sms-template does not parse".into()),
        (vec!["--templates-dir", "/nonexistent/herald-templates"], "--templates-dir: /nonexistent/herald-templates: cannot be read".into()),
    ];
    for (mut args, expected) in rows {
        // The broker is unreachable too: the local mistake must be the one reported.
        args.extend(["--brokers", "127.0.0.1:1"]);
        let (code, stderr, _, took) = herald(&args, &[], Duration::from_secs(8));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(&expected), "expected {expected:?} in {stderr}");
        assert!(!stderr.contains("--brokers 127.0.0.1:1:"), "reported before connecting: {stderr}");
        assert!(took < Duration::from_secs(3), "{args:?} took {took:?}");
    }
}

#[test]
fn senders_that_would_fail_every_sms_are_refused() {
    for (flag, value) in [("--twilio-from", "abc"), ("--twilio-from", "14155550100"), ("--twilio-from", "+1415"), ("--vonage-from", "")] {
        let mut args = vec![flag, value];
        if flag == "--vonage-from" {
            args.extend(["--vonage-api-key", "k", "--vonage-api-secret", "s"]);
        }
        let (code, stderr, _, _) = herald(&args, &[], Duration::from_secs(5));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(&format!("invalid value '{value}' for '{flag}")), "{stderr}");
    }
}

#[test]
fn quiet_hours_and_time_zones_that_mean_nothing_are_refused() {
    for (flag, value) in [
        ("--sms-quiet-hours", "21:00"),
        ("--sms-quiet-hours", "25:00-08:00"),
        ("--push-quiet-hours", "08:00-08:00"),
        ("--default-time-zone", "Mars/Olympus_Mons"),
    ] {
        let (code, stderr, _, _) = herald(&[flag, value], &[], Duration::from_secs(5));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(&format!("invalid value '{value}' for '{flag}")), "{stderr}");
    }
}

#[test]
fn help_shows_no_environment_value() {
    let secrets = [
        ("HERALD_KAFKA_OPTIONS", "sasl.username=herald,sasl.password=hunter2"),
        ("SCHEMA_REGISTRY_URL", "https://herald:hunter3@registry.example.com"),
        ("TWILIO_AUTH_TOKEN", "hunter4"),
        ("SCYLLA_URI", "hunter5.example.com:9042"),
        ("VONAGE_API_SECRET", "hunter6"),
    ];
    let (code, _, stdout, _) = herald(&["--help"], &secrets, Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(stdout.contains("--kafka-option") && stdout.contains("HERALD_KAFKA_OPTIONS"), "the flags are listed");
    assert!(!stdout.contains("hunter"), "{stdout}");
}

#[test]
fn the_old_services_environment_names_configure_the_sender_and_the_first_provider() {
    let args = ["--brokers", "127.0.0.1:1", "--twilio-account-sid", "AC1", "--twilio-auth-token", "t", "--vonage-api-key", "k", "--vonage-api-secret", "s", "--vonage-from", "Herald"];
    let old = [("TWILIO_FROM_NUMBER", "+14155550100"), ("SMS_PROVIDER", "vonage"), ("RUST_LOG", "info")];
    let (code, stderr, _, _) = herald(&args, &old, Duration::from_secs(8));
    // Got as far as the broker: the sender was taken from TWILIO_FROM_NUMBER.
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--brokers 127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains(r#"providers=["vonage", "twilio"]"#), "Vonage first: {stderr}");
    let (code, stderr, _, _) = herald(&args, &[("TWILIO_FROM_NUMBER", "+14155550100"), ("TWILIO_FROM", "+14155550101")], Duration::from_secs(5));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("TWILIO_FROM_NUMBER and TWILIO_FROM are both set, and differ"), "{stderr}");
}
