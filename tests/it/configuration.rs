//! Bad configuration is reported at once, in one line that names the flag,
//! before herald connects to anything; and `--help` shows no secret.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the herald binary with `args` and `env`, with no KAFKA_BROKERS or
/// SCYLLA_URI from the test's environment; returns its exit code, its
/// stderr and stdout. One that runs past `within` is taken to hang, and
/// killed: no test here is about how fast herald answers, only what.
fn herald(args: &[&str], env: &[(&str, &str)], within: Duration) -> (Option<i32>, String, String) {
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
            return (status.code(), std::fs::read_to_string(&log).unwrap(), stdout);
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

/// The key every run here is given, so that it gets past that check.
const KEY: (&str, &str) = ("HERALD_ENVELOPE_KEY", herald_testkit::ENVELOPE_KEY);

/// A port that accepts connections and counts them: a broker that must
/// never be reached.
struct Untouched(std::net::TcpListener);

impl Untouched {
    fn new() -> Untouched {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Untouched(listener)
    }

    fn address(&self) -> String {
        self.0.local_addr().unwrap().to_string()
    }

    fn was_reached(&self) -> bool {
        self.0.accept().is_ok()
    }
}

#[test]
fn an_unreachable_broker_is_named_at_once() {
    for (args, env, address) in [
        (vec!["--brokers", "127.0.0.1:1"], vec![KEY], "127.0.0.1:1"),
        (vec![], vec![("KAFKA_BROKERS", "127.0.0.1:2"), KEY], "127.0.0.1:2"),
    ] {
        let (code, stderr, _) = herald(&args, &env, Duration::from_secs(60));
        assert_eq!(code, Some(1), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        // Named by herald's own check, before any Kafka client tried (and
        // retried, and logged) on its own.
        assert_eq!(errors.len(), 1, "one error line: {stderr}");
        assert!(errors[0].contains(&format!("--brokers {address}")) && errors[0].contains("refused"), "{}", errors[0]);
        assert!(!stderr.contains("Kafka client error"), "{stderr}");
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
        // A broker that listens: the local mistake must be reported before
        // anything connects to it.
        let broker = Untouched::new();
        let address = broker.address();
        args.extend(["--brokers", &address]);
        let (code, stderr, _) = herald(&args, &[KEY], Duration::from_secs(60));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(&expected), "expected {expected:?} in {stderr}");
        assert!(!broker.was_reached(), "{args:?}: connected before reporting {expected:?}");
    }
}

#[test]
fn senders_that_would_fail_every_sms_are_refused() {
    for (flag, value) in [("--twilio-from", "abc"), ("--twilio-from", "14155550100"), ("--twilio-from", "+1415"), ("--vonage-from", "")] {
        let mut args = vec![flag, value];
        if flag == "--vonage-from" {
            args.extend(["--vonage-api-key", "k", "--vonage-api-secret", "s"]);
        }
        let (code, stderr, _) = herald(&args, &[KEY], Duration::from_secs(60));
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
        let (code, stderr, _) = herald(&[flag, value], &[KEY], Duration::from_secs(60));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(&format!("invalid value '{value}' for '{flag}")), "{stderr}");
    }
}

/// Every subcommand, as the words that name it (`[]` is herald itself).
fn subcommands() -> Vec<Vec<String>> {
    fn walk(command: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, [path.clone(), vec![sub.get_name().to_owned()]].concat(), out);
        }
    }
    let mut out = Vec::new();
    walk(&herald::Config::command_from_env(), Vec::new(), &mut out);
    out
}

#[test]
fn no_help_of_any_subcommand_shows_an_environment_value() {
    // Every variable herald reads is given a value that must not show.
    let mut env: Vec<(String, String)> = Vec::new();
    for path in subcommands() {
        let mut command = herald::Config::command_from_env();
        for name in &path {
            command = command.find_subcommand(name).unwrap().clone();
        }
        for arg in command.get_arguments() {
            if let Some(name) = arg.get_env() {
                let name = name.to_string_lossy().into_owned();
                env.push((name.clone(), format!("hunter-{name}")));
            }
        }
    }
    env.sort();
    env.dedup();
    for secret in ["HERALD_API_TOKEN", "HERALD_ENVELOPE_KEY", "TWILIO_AUTH_TOKEN", "TWILIO_API_KEY_SECRET", "VONAGE_API_SECRET", "HERALD_RECEIPTS_KEY", "SCHEMA_REGISTRY_URL"] {
        assert!(env.iter().any(|(n, _)| n == secret), "{secret} is read by some subcommand");
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let paths = subcommands();
    assert!(paths.len() >= 8, "herald, migrate, dlq (list, show, replay), api, check (api): {paths:?}");
    for path in paths {
        let args: Vec<&str> = path.iter().map(String::as_str).chain(["--help"]).collect();
        let (code, stderr, stdout) = herald(&args, &env, Duration::from_secs(60));
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stdout.contains("hunter") && !stderr.contains("hunter"), "{args:?} shows a value: {stdout}");
    }
    let (_, _, api) = herald(&["api", "--help"], &env, Duration::from_secs(60));
    assert!(api.contains("--api-token") && api.contains("HERALD_API_TOKEN") && api.contains("--api-token-file"), "{api}");
}

#[test]
fn a_variable_set_to_the_empty_string_counts_as_unset() {
    // As Kubernetes and compose set what they leave blank.
    let blank = [KEY, ("VONAGE_API_KEY", ""), ("VONAGE_API_SECRET", ""), ("VONAGE_FROM", ""), ("TWILIO_ACCOUNT_SID", ""), ("TWILIO_AUTH_TOKEN", ""), ("TWILIO_FROM", ""), ("GOOGLE_APPLICATION_CREDENTIALS", ""), ("HERALD_TWILIO_MAX_RPS", ""), ("TWILIO_PHONE_NUMBER", "")];
    let (code, stderr, stdout) = herald(&["check"], &blank, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("the configuration is valid") && stdout.contains("SMS: off"), "{stdout}");
}

#[test]
fn check_reports_what_the_pipeline_and_the_api_would_refuse_without_connecting() {
    let broker = Untouched::new();
    let brokers = ("KAFKA_BROKERS", broker.address());
    let brokers = (brokers.0, brokers.1.as_str());
    let twilio = [("TWILIO_ACCOUNT_SID", "AC1"), ("TWILIO_AUTH_TOKEN", "t"), ("TWILIO_FROM", "+14155550100")];
    let (code, stderr, stdout) = herald(&["check"], &[&twilio[..], &[KEY, brokers]].concat(), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("SMS: twilio; push: off"), "{stdout}");
    // (arguments, environment, what stderr says)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let bad: Vec<Case> = vec![
        (vec!["check"], vec![], "--envelope-key (or --envelope-key-file) is required"),
        (vec!["check"], vec![("HERALD_ENVELOPE_KEY", "short")], "--envelope-key is 5 bytes; it must be at least 32"),
        (vec!["check"], vec![KEY, ("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")], "--fcm-credentials /nonexistent/key.json: cannot read it"),
        (vec!["check"], vec![KEY, ("HERALD_RETRY_DELAYS", "0s,0s,0s")], "--retry-delays has a delay of 0"),
        (vec!["check"], vec![KEY, ("VONAGE_API_KEY", "k")], "missing --vonage-api-secret"),
        (vec!["check", "api"], vec![("SCYLLA_URI", "127.0.0.1:9042"), ("HERALD_API_TOKEN", "a")], "--api-token is 1 bytes; it must be at least 32"),
        (vec!["check", "api"], vec![("HERALD_API_TOKEN", herald_testkit::API_TOKEN)], "`herald api` needs SCYLLA_URI"),
    ];
    for (args, env, expected) in bad {
        let env = [&env[..], &[brokers]].concat();
        let (code, stderr, _) = herald(&args, &env, Duration::from_secs(60));
        assert_eq!(code, Some(1), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: expected {expected:?} in {stderr}");
    }
    let api = [("SCYLLA_URI", "127.0.0.1:9042"), ("HERALD_API_TOKEN", herald_testkit::API_TOKEN), brokers];
    let (code, stderr, stdout) = herald(&["check", "api"], &api, Duration::from_secs(60));
    assert_eq!((code, stdout.trim()), (Some(0), "herald api: the configuration is valid"), "{stderr}");
    assert!(!broker.was_reached(), "check connected to the broker");
}

#[test]
fn secrets_are_read_from_files_as_kubernetes_mounts_them() {
    let dir = std::env::temp_dir().join(format!("herald-secret-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let twilio = [("TWILIO_ACCOUNT_SID", "AC1"), ("TWILIO_FROM", "+14155550100")];
    let receipts = [("HERALD_RECEIPTS_LISTEN", "127.0.0.1:0"), ("HERALD_RECEIPTS_PUBLIC_URL", "https://herald.example.com/twilio/status")];
    // Every secret that has a file flag: what else it needs to be read at
    // all, and what `check` says once it has been.
    type Case<'a> = (&'a str, &'a str, &'a [&'a str], Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 6] = [
        ("HERALD_ENVELOPE_KEY_FILE", "--envelope-key-file", &["check"], vec![], "SMS: off"),
        ("TWILIO_AUTH_TOKEN_FILE", "--twilio-auth-token-file", &["check"], [&twilio[..], &[KEY]].concat(), "SMS: twilio"),
        ("TWILIO_API_KEY_SECRET_FILE", "--twilio-api-key-secret-file", &["check"], [&twilio[..], &[("TWILIO_API_KEY_SID", "SK1"), KEY]].concat(), "SMS: twilio"),
        ("VONAGE_API_SECRET_FILE", "--vonage-api-secret-file", &["check"], vec![("VONAGE_API_KEY", "k"), ("VONAGE_FROM", "Herald"), KEY], "SMS: vonage"),
        ("HERALD_RECEIPTS_KEY_FILE", "--receipts-key-file", &["check"], [&twilio[..], &receipts[..], &[("TWILIO_AUTH_TOKEN", "t"), KEY]].concat(), "SMS: twilio"),
        ("HERALD_API_TOKEN_FILE", "--api-token-file", &["check", "api"], vec![("SCYLLA_URI", "127.0.0.1:9042")], "herald api"),
    ];
    for (variable, flag, args, others, says) in cases {
        let file = dir.join(variable);
        // As a Secret volume or `echo > file` leaves it: with a final line break.
        std::fs::write(&file, format!("{}\n", herald_testkit::ENVELOPE_KEY)).unwrap();
        let mut env = others.clone();
        env.push((variable, file.to_str().unwrap()));
        let (code, stderr, stdout) = herald(args, &env, Duration::from_secs(60));
        assert_eq!(code, Some(0), "{variable}: {stderr}");
        assert!(stdout.contains(says), "{variable}: {stdout}");
        // The flag is the one read: a file that is not there is its error.
        let mut env = others.clone();
        env.push((variable, "/nonexistent/secret"));
        let (code, stderr, _) = herald(args, &env, Duration::from_secs(60));
        assert_eq!(code, Some(1), "{variable}: {stderr}");
        assert!(stderr.contains(&format!("{flag} /nonexistent/secret: cannot read it")), "{variable}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_old_services_environment_names_configure_the_sender_and_the_first_provider() {
    let args = ["--brokers", "127.0.0.1:1", "--twilio-account-sid", "AC1", "--twilio-auth-token", "t", "--vonage-api-key", "k", "--vonage-api-secret", "s", "--vonage-from", "Herald"];
    for sender in ["TWILIO_FROM_NUMBER", "TWILIO_PHONE_NUMBER"] {
        let old = [(sender, "+14155550100"), ("SMS_PROVIDER", "vonage"), ("RUST_LOG", "info"), KEY];
        let (code, stderr, _) = herald(&args, &old, Duration::from_secs(60));
        // Got as far as the broker: the sender was taken from the old name.
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("--brokers 127.0.0.1:1"), "{stderr}");
        assert!(stderr.contains(r#"providers=["vonage", "twilio"]"#), "Vonage first: {stderr}");
    }
    let (code, stderr, _) = herald(&args, &[("TWILIO_FROM_NUMBER", "+14155550100"), ("TWILIO_FROM", "+14155550101"), KEY], Duration::from_secs(60));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("TWILIO_FROM and TWILIO_FROM_NUMBER are both set, and differ"), "{stderr}");
}
