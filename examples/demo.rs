//! herald end to end on one machine: a Kafka-protocol broker (tansu, or the
//! cluster in KAFKA_BROKERS), a CQL server for the rate limits (kassandra
//! in memory, or the cluster in SCYLLA_URI), fake Twilio, Vonage and FCM servers,
//! `herald migrate`, herald itself run through `herald::run`, and sample
//! requests that end in every status.
//! Then a bulk load measures events per second.
//!
//!     cargo run --release --example demo [-- --load 20000]
//!
//! It exits non-zero when an event's final status is not the expected one,
//! or when an offset was left uncommitted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use futures::StreamExt;
use herald::codec::{self, Bundled};
use herald::model::{AndroidOverrides, AndroidPriority, Channel, Content, Prefs, Priority, Request, Status, StatusEvent};
use herald::record::envelope::ERROR_CODE;
use herald::Config;
use herald_testkit::fake::Reply;
use herald_testkit::kafka::{self, Reader};
use herald_testkit::{Broker, Cql, Providers};
use rdkafka::message::Message;

/// Delays of the three retry topics; production uses 10m, 20m, 40m.
const RETRY_DELAYS: &str = "1s,2s,4s";
const QUIET_HOURS: &str = "21:00-08:00";
/// The templates shipped with herald, as an example.
const TEMPLATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");

/// Zones spread round the world: at any moment it is well into the day
/// in one of them, and well into the night in another.
const ZONES: [chrono_tz::Tz; 9] = [
    chrono_tz::Pacific::Kiritimati,
    chrono_tz::Pacific::Auckland,
    chrono_tz::Asia::Tokyo,
    chrono_tz::Asia::Kolkata,
    chrono_tz::Europe::Lisbon,
    chrono_tz::America::Sao_Paulo,
    chrono_tz::America::New_York,
    chrono_tz::America::Los_Angeles,
    chrono_tz::Pacific::Honolulu,
];

struct Zones {
    /// Between 10:00 and 18:00 now: far from the quiet hours either way.
    day: chrono_tz::Tz,
    /// Between 22:00 and 06:00 now: deep in them.
    night: chrono_tz::Tz,
}

impl Zones {
    fn now() -> Zones {
        let hour = |zone: &chrono_tz::Tz| chrono::Timelike::hour(&Utc::now().with_timezone(zone));
        let find = |ok: fn(u32) -> bool| *ZONES.iter().find(|z| ok(hour(z))).expect("the zones cover every hour");
        Zones { day: find(|h| (10..18).contains(&h)), night: find(|h| !(6..22).contains(&h)) }
    }
}

#[derive(Parser)]
struct Args {
    /// Bulk push requests sent after the samples, to measure throughput.
    #[arg(long, default_value_t = 20_000)]
    load: usize,
}

struct Sample {
    request: Request,
    expect: Status,
    story: &'static str,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // herald's log goes to a file, named at the end: the terminal is for
    // the demo's own story. kassandra has no system.peers, and the CQL
    // driver says so at every metadata refresh; that is expected here.
    let log = std::env::temp_dir().join(format!("herald-demo-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).expect("creating the demo's log file");
    herald::telemetry::init_file(herald::telemetry::LogFormat::Text, file, "info,scylla=off");
    let ok = run(args).await;
    println!("\nherald's log: {}", log.display());
    ok
}

async fn run(args: Args) -> std::process::ExitCode {

    let broker = Broker::start();
    let cql = Cql::start();
    let providers = Providers::start().await;
    script(&providers);
    let names = Names::new(&broker);
    let zones = Zones::now();
    let config = herald_config(&broker, &names, &providers, &cql, &zones);
    // The producers' topic exists before herald, with as many partitions as
    // the topics herald creates.
    kafka::create_topics(&broker.bootstrap, &[&names.requested], config.topics.topic_partitions).await;
    if let Err(e) = herald::migrate(&config).await {
        println!("herald migrate failed: {e}");
        return std::process::ExitCode::FAILURE;
    }
    describe(&broker, &cql, &providers);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the admin listener");
    let listeners = herald::Provided { admin: Some(admin_listener), ..Default::default() };
    let settings = config.pipeline().expect("the demo's configuration is valid");
    let app = match herald::App::build(settings, listeners).await {
        Ok(app) => app,
        Err(e) => {
            println!("herald did not start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let admin = format!("http://{}", app.admin_addr().expect("the admin listener is on"));
    let herald = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let bundled = Bundled::load();
    let sender = Sender { producer: kafka::producer(&broker.bootstrap), schema: bundled.request.clone(), topic: names.requested.clone() };
    let started = Instant::now();
    let mut statuses = StatusLog { reader: Reader::new(&broker.bootstrap, &names.status), schema: bundled.status.clone(), events: vec![], quiet: false };
    let (samples, followups) = run_samples(&sender, &mut statuses, started).await;
    let replayed = replay_the_outage(&config, &mut statuses, started).await;
    let asked = ask_herald(&config, &sender, &mut statuses, started).await;
    let local = quiet_hours_and_templates(&sender, &mut statuses, started, &providers, &zones).await;
    let load = bulk_load(&sender, &mut statuses, started, args.load).await;
    print_metrics(&admin).await;
    let _ = stop.send(());
    let stopped = herald.await.expect("herald task");

    let mut ok = stopped.is_ok() && replayed && asked && local;
    ok &= samples_verdict(&statuses, &samples, &followups, &providers, &broker, &names).await;
    ok &= load.verdict(&statuses);
    ok &= committed_verdict(&broker, &names).await;
    if let Err(e) = stopped {
        println!("herald stopped with an error: {e}");
    }
    println!("\n{}", if ok { "demo passed" } else { "demo FAILED" });
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// The provider is back: `herald dlq replay` sends the dead letter of the
/// outage again, from attempt 1.
async fn replay_the_outage(config: &Config, statuses: &mut StatusLog, started: Instant) -> bool {
    println!("\nherald dlq replay --code vonage:5 --yes   (the outage is over)");
    let filter = herald::dlq::Filter { code: Some("vonage:5".into()), ..Default::default() };
    let replay = herald::dlq::DlqCommand::Replay { filter, to: None, name: Some("demo-outage".into()), yes: true, dry_run: false, include_invalid: false, max_per_second: None };
    if let Err(e) = herald::dlq(config, replay).await {
        println!("replay failed: {e}");
        return false;
    }
    statuses.until_status("sms-down", Status::Sent, started, Duration::from_secs(60)).await
}

/// `herald api`, beside the pipeline: one notification's history, one
/// user's stats, and a cancellation, as curl would show them.
async fn ask_herald(config: &Config, sender: &Sender, statuses: &mut StatusLog, started: Instant) -> bool {
    const TOKEN: &str = herald_testkit::API_TOKEN;
    let parsed = Config::try_parse_from(["herald", "api", "--api-token", TOKEN, "--api-listen", "127.0.0.1:0"]).expect("the API's arguments parse");
    let Some(herald::config::Command::Api(api)) = parsed.command else { unreachable!("parsed as api") };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the API listener");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = config.clone();
    let task = tokio::spawn(async move {
        // Its admin endpoints on a port of their own, beside the pipeline's.
        let admin = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the API's admin listener");
        let provided = herald::Provided { api: Some(listener), admin: Some(admin), ..Default::default() };
        herald::api(&config, &api, provided, async {
            let _ = stopped.await;
        })
        .await
    });
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String| {
        let request = http.request(method.clone(), format!("{base}{path}")).bearer_auth(TOKEN);
        async move {
            let response = request.send().await.ok()?;
            let code = response.status().as_u16();
            Some((code, response.json::<serde_json::Value>().await.unwrap_or_default(), method))
        }
    };
    let show = |method: &reqwest::Method, path: &str, code: u16, body: &serde_json::Value| {
        println!("\n$ curl -X {method} -H 'Authorization: Bearer …' {base}{path}\nHTTP {code}");
        println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
    };
    // Until the store has caught up with the pipeline.
    let wait_for = |path: String, done: fn(&serde_json::Value) -> bool| {
        let call = &call;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Some((200, body, _)) = call(reqwest::Method::GET, path.clone()).await {
                    if done(&body) {
                        return Some(body);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None
        }
    };
    println!("\nherald api: the status store, and what it answers");
    let mut ok = true;
    let path = "/v1/notifications/push-flaky".to_owned();
    match wait_for(path.clone(), |b| b["status"] == "SENT").await {
        Some(body) => show(&reqwest::Method::GET, &path, 200, &body),
        None => ok = false,
    }
    let path = "/v1/users/bob/stats".to_owned();
    match wait_for(path.clone(), |b| b["channels"][0]["sent_last_hour"] == 10).await {
        Some(body) => show(&reqwest::Method::GET, &path, 200, &body["channels"][0]),
        None => ok = false,
    }
    // Cancelled while it waits for its time: never sent. The cancel goes
    // once the pipeline has said SCHEDULED, not once the store shows it: a
    // store a few seconds behind would show it SENT already.
    let mut reminder = sms("reminder", "kim", "+14155550106", "See you at 3");
    reminder.scheduled_at = Some(Utc::now() + chrono::Duration::seconds(6));
    sender.send(reminder).await;
    let path = "/v1/notifications/reminder/cancel".to_owned();
    ok &= statuses.until_status("reminder", Status::Scheduled, started, Duration::from_secs(30)).await;
    match call(reqwest::Method::POST, path.clone()).await {
        Some((code, body, method)) => {
            show(&method, &path, code, &body);
            ok &= code == 202;
        }
        None => ok = false,
    }
    ok &= statuses.until_status("reminder", Status::Cancelled, started, Duration::from_secs(30)).await;
    let path = "/v1/notifications/reminder".to_owned();
    match wait_for(path.clone(), |b| b["status"] == "CANCELLED").await {
        Some(body) => {
            let history: Vec<&str> = body["history"].as_array().map(|h| h.iter().filter_map(|s| s["status"].as_str()).collect()).unwrap_or_default();
            println!("\n$ curl -H 'Authorization: Bearer …' {base}{path}   →   status {}, history {history:?}", body["status"]);
        }
        None => ok = false,
    }
    let _ = stop.send(());
    ok &= matches!(task.await, Ok(Ok(())));
    if !ok {
        println!("herald api did not answer as expected");
    }
    ok
}

/// Quiet hours, in a zone where it is night now: a NORMAL SMS waits for
/// the morning there, an URGENT one goes at once. Then a push built from
/// `templates/` in the recipient's language.
async fn quiet_hours_and_templates(sender: &Sender, statuses: &mut StatusLog, started: Instant, providers: &Providers, zones: &Zones) -> bool {
    let night = zones.night;
    let local = Utc::now().with_timezone(&night);
    println!("
quiet hours ({QUIET_HOURS}, --sms-quiet-hours): it is {} in {night}", local.format("%H:%M"));
    let in_zone = |mut r: Request, priority: Priority| {
        r.prefs = Prefs { time_zone: Some(night.name().into()), priority, ..Prefs::default() };
        r
    };
    sender.send(in_zone(sms("night-owl", "lee", "+14155550107", "Your parcel arrives tomorrow"), Priority::Normal)).await;
    sender.send(in_zone(sms("login-code", "lee", "+14155550108", "Your code is 481516"), Priority::Urgent)).await;
    let mut ok = statuses.until_status("night-owl", Status::Deferred, started, Duration::from_secs(30)).await;
    ok &= statuses.until_terminal_is("login-code", Status::Sent, started).await;
    let deferred = statuses.events.iter().find(|e| e.event_id == "night-owl" && e.status == Status::Deferred);
    let expected = match QUIET_HOURS.parse::<herald::pipeline::quiet::Quiet>() {
        Ok(herald::pipeline::quiet::Quiet::Window(w)) => deferred.map(|d| w.next_end(night, d.occurred_at)),
        _ => None,
    };
    match deferred.and_then(|d| d.next_attempt_at) {
        Some(next) if Some(next) == expected => {
            println!("night-owl waits until {} in {night} ({next}); login-code, URGENT, went at once", next.with_timezone(&night).format("%H:%M %Z"))
        }
        other => {
            println!("night-owl should wait until {expected:?}, not {other:?}");
            ok = false;
        }
    }

    println!("
templates (--templates-dir templates): order_shipped for a pt-BR phone");
    let mut parcel = push("parcel-pt", "ana", "token-ana-pt", "", "");
    parcel.content.template_id = Some("order_shipped".into());
    parcel.content.template_vars = [("name", "Ana"), ("order", "#1042"), ("eta", "amanhã")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    parcel.prefs.locale = Some("pt-BR".into());
    sender.send(parcel).await;
    ok &= statuses.until_terminal_is("parcel-pt", Status::Sent, started).await;
    let locale = statuses.events.iter().rev().find(|e| e.event_id == "parcel-pt").and_then(|e| e.locale.clone());
    let sent = providers.fcm.requests().into_iter().filter_map(|r| r.json).find(|j| j["message"]["token"] == "token-ana-pt");
    match (locale.as_deref(), sent) {
        (Some("pt"), Some(json)) => {
            let n = &json["message"]["notification"];
            println!("locale pt-BR → pt (the files there); FCM got title {} body {}", n["title"], n["body"]);
        }
        (locale, sent) => {
            println!("parcel-pt: locale {locale:?}, FCM request {sent:?}");
            ok = false;
        }
    }
    ok
}

/// A few of the lines Prometheus scrapes from `/metrics`.
async fn print_metrics(admin: &str) {
    let Ok(body) = reqwest::get(format!("{admin}/metrics")).await.and_then(|r| r.error_for_status()) else {
        println!("\n/metrics did not answer");
        return;
    };
    let body = body.text().await.unwrap_or_default();
    println!("\n{admin}/metrics (some lines):");
    for line in body.lines().filter(|l| l.starts_with("herald_outcomes_total") || l.starts_with("herald_provider_calls_total") || l.starts_with("herald_consumer_lag")).take(14) {
        println!("  {line}");
    }
}

/// Provider behaviour per recipient; everything else is accepted.
fn script(providers: &Providers) {
    providers.twilio.script("+14155550199", vec![Reply::fail(503, "20503"); 4]);
    providers.vonage.script("+14155550199", vec![Reply::fail(200, "5"); 4]);
    providers.twilio.script("+14155550104", [Reply::fail(503, "20503")]);
    providers.twilio.script("+14155550123", [Reply::fail(400, "21614")]);
    providers.twilio.script("+14155550105", [Reply::fail(400, "21610")]);
    providers.fcm.script("flaky-token", [Reply::fail(503, "UNAVAILABLE"), Reply::fail(500, "INTERNAL")]);
    providers.fcm.script("dead-token", [Reply::fail(404, "UNREGISTERED")]);
}

/// The demo's topics and group.
struct Names {
    requested: String,
    status: String,
    dead_letter: String,
    suppressions: String,
    cancellations: String,
    retries: String,
    waits: String,
    group: String,
}

impl Names {
    fn new(broker: &Broker) -> Names {
        // On a shared cluster, fresh names keep earlier runs out of the way.
        let prefix = if broker.is_local() { String::new() } else { format!("demo-{}.", Utc::now().timestamp_millis()) };
        let topic = |name: &str| format!("{prefix}{name}");
        Names {
            requested: topic("notification.requested"),
            status: topic("notification.status"),
            dead_letter: topic("notification.dead-letter"),
            suppressions: topic("notification.suppressions"),
            cancellations: topic("notification.cancellations"),
            retries: ["retry-10m", "retry-20m", "retry-40m"].map(topic).join(","),
            waits: herald::topics::DEFAULT_WAIT_TOPICS.split(',').map(topic).collect::<Vec<_>>().join(","),
            group: topic("herald-demo"),
        }
    }
}

fn herald_config(broker: &Broker, names: &Names, providers: &Providers, cql: &Cql, zones: &Zones) -> Config {
    let mut argv: Vec<String> = [
        "herald",
        "--brokers",
        &broker.bootstrap,
        "--group-id",
        &names.group,
        "--topic-requested",
        &names.requested,
        "--topic-status",
        &names.status,
        "--topic-dead-letter",
        &names.dead_letter,
        "--topic-suppressions",
        &names.suppressions,
        "--topic-cancellations",
        &names.cancellations,
        "--retry-topics",
        &names.retries,
        "--wait-topics",
        &names.waits,
        "--retry-delays",
        RETRY_DELAYS,
        "--sms-quiet-hours",
        QUIET_HOURS,
        // The samples' recipients name no zone: one where it is day now.
        "--default-time-zone",
        zones.day.name(),
        "--templates-dir",
        TEMPLATES,
        "--envelope-key",
        herald_testkit::ENVELOPE_KEY,
    ]
    .map(str::to_owned)
    .into();
    argv.extend(providers.args());
    argv.extend(providers.vonage_args());
    argv.extend(cql.args());
    argv.extend(kafka::fast_group_args());
    Config::try_parse_from(argv).expect("demo arguments parse")
}

fn describe(broker: &Broker, cql: &Cql, providers: &Providers) {
    println!("broker      {} ({})", broker.bootstrap, if broker.is_local() { "tansu, in memory" } else { "KAFKA_BROKERS" });
    println!("rate limits ScyllaDB {} ({}), keyspace {}", cql.uri, if cql.is_local() { "kassandra, in memory" } else { "SCYLLA_URI" }, cql.keyspace);
    println!(
        "providers   twilio {}  vonage {} (failover)  fcm {}",
        providers.twilio.base_url(),
        providers.vonage.base_url(),
        providers.fcm.base_url()
    );
    println!("retries     {RETRY_DELAYS} (production: 10m,20m,40m)\n");
}

/// Produces requests as another team's service would.
struct Sender {
    producer: rdkafka::producer::FutureProducer,
    schema: apache_avro::Schema,
    topic: String,
}

impl Sender {
    async fn send(&self, r: Request) {
        let bytes = codec::encode_request(&self.schema, 1, &r).expect("sample encodes");
        kafka::produce(&self.producer, &self.topic, r.user_id.as_bytes(), &bytes, None).await;
    }
}

/// Sends the samples, then the follow-ups that depend on their outcomes,
/// printing each status as it comes.
async fn run_samples(sender: &Sender, statuses: &mut StatusLog, started: Instant) -> (Vec<Sample>, Vec<Sample>) {
    println!("{:>8}  {:<16} {:<5} {:<16} {:>3}  detail", "at", "event", "chan", "status", "try");
    // herald joins its group first; the samples' schedule is relative to now.
    sender.send(sms("welcome", "ada", "+14155550100", "Welcome to herald, Ada!")).await;
    statuses.until_terminal(&["welcome".to_owned()], started, Duration::from_secs(60)).await;
    let samples = samples();
    for s in &samples {
        sender.send(s.request.clone()).await;
    }
    kafka::produce(&sender.producer, &sender.topic, b"mallory", b"\x00\x00\x00\x00\x01not avro", None).await;
    let ids: Vec<String> = samples.iter().map(|s| s.request.event_id.clone()).collect();
    statuses.until_terminal(&ids, started, Duration::from_secs(60)).await;
    let followups = followups();
    for s in &followups {
        sender.send(s.request.clone()).await;
    }
    let ids: Vec<String> = followups.iter().map(|s| s.request.event_id.clone()).collect();
    statuses.until_terminal(&ids, started, Duration::from_secs(60)).await;
    (samples, followups)
}

struct Load {
    ids: Vec<String>,
    produced_in: Duration,
    took: Duration,
}

/// Push notifications to many users, timed from the first produce to the
/// last terminal status.
async fn bulk_load(sender: &Sender, statuses: &mut StatusLog, started: Instant, count: usize) -> Load {
    let ids: Vec<String> = (0..count).map(|i| format!("load-{i}")).collect();
    let load_started = Instant::now();
    futures::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| sender.send(push(id, &format!("user-{}", i % 5000), &format!("token-{i}"), "Load", "bulk notification")))
        .buffer_unordered(5000)
        .collect::<()>()
        .await;
    let produced_in = load_started.elapsed();
    statuses.quiet = true;
    statuses.until_terminal(&ids, started, Duration::from_secs(600)).await;
    Load { ids, produced_in, took: load_started.elapsed() }
}

impl Load {
    fn verdict(&self, statuses: &StatusLog) -> bool {
        let last = statuses.last_by_event();
        let sent = self.ids.iter().filter(|id| last.get(id.as_str()).map(|e| e.status) == Some(Status::Sent)).count();
        println!("\nload: {} push requests produced in {:.2?}, all terminal after {:.2?}", self.ids.len(), self.produced_in, self.took);
        println!("      {sent} sent, {:.0} events/s end to end (request produced → status read)", self.ids.len() as f64 / self.took.as_secs_f64());
        sent == self.ids.len()
    }
}

/// Each sample's last status, the suppressed recipients' calls, and the
/// dead letters.
async fn samples_verdict(statuses: &StatusLog, samples: &[Sample], followups: &[Sample], providers: &Providers, broker: &Broker, names: &Names) -> bool {
    println!("\nsamples:");
    let mut ok = true;
    let last = statuses.last_by_event();
    let welcome = Sample { request: sms("welcome", "ada", "", ""), expect: Status::Sent, story: "sent" };
    for s in std::iter::once(&welcome).chain(samples).chain(followups) {
        let got = last.get(s.request.event_id.as_str()).map(|e| e.status);
        let pass = got == Some(s.expect);
        ok &= pass;
        let got = got.map_or("none", Status::symbol);
        println!("  {} {:<16} {:<14} {}", if pass { "ok  " } else { "FAIL" }, s.request.event_id, got, s.story);
    }
    // Suppressed sends never reach the provider.
    let twilio_to_stopped = providers.twilio.requests().iter().filter(|r| r.field("To") == Some("+14155550105")).count();
    let fcm_to_dead = providers.fcm.requests().iter().filter(|r| r.json.as_ref().is_some_and(|j| j["message"]["token"] == "dead-token")).count();
    println!("  provider calls to the suppressed recipients: twilio {twilio_to_stopped}, fcm {fcm_to_dead} (one each, before suppression)");
    ok &= (twilio_to_stopped, fcm_to_dead) == (1, 1);
    let mut dead = Reader::new(&broker.bootstrap, &names.dead_letter);
    let codes: Vec<&str> = dead
        .read_to_end(Duration::from_secs(30))
        .await
        .iter()
        .map(|m| m.headers().and_then(|h| herald::record::envelope::header(h, ERROR_CODE)).unwrap_or("?"))
        .collect();
    println!("  dead-letter topic: {} records, by error code {codes:?}", codes.len());
    // The undecodable record, the two invalid requests and the one out of retries.
    ok && codes.len() == 4
}

/// Whether every request's offset was committed.
async fn committed_verdict(broker: &Broker, names: &Names) -> bool {
    let committed = kafka::committed(&broker.bootstrap, &names.group, &names.requested);
    let end = kafka::end_offsets(&broker.bootstrap, &names.requested).await;
    let all_committed = end.iter().all(|(p, end)| committed.get(p).copied().unwrap_or(0) == *end);
    let (committed, end): (BTreeMap<_, _>, BTreeMap<_, _>) = (committed.into_iter().collect(), end.into_iter().collect());
    let requested = &names.requested;
    println!("\noffsets of {requested} by partition:\n  committed {committed:?}\n  end       {end:?}\n  {}", if all_committed { "everything committed" } else { "NOT all committed" });
    all_committed
}

fn samples() -> Vec<Sample> {
    let mut v = vec![];
    // Twelve texts in an hour for one user: the 10/h limit holds the last two.
    for i in 1..=12 {
        let expect = if i <= 10 { Status::Sent } else { Status::RateLimited };
        let story = if i <= 10 { "within 10 SMS/hour" } else { "over 10 SMS/hour: rate-limited" };
        v.push(Sample { request: sms(&format!("chatty-{i:02}"), "bob", "+14155550101", "ping"), expect, story });
    }
    let mut later = sms("scheduled", "ada", "+14155550100", "Your appointment is in an hour");
    let mut android = push("push-android", "ada", "ada-android-token", "Order", "Shipped");
    android.content.android = Some(Box::new(AndroidOverrides { priority: Some(AndroidPriority::High), ttl_seconds: Some(3600), ..Default::default() }));
    later.scheduled_at = Some(Utc::now() + chrono::Duration::seconds(5));
    v.extend([
        Sample { request: push("push-hello", "ada", "ada-phone-token", "Hi", "Push works"), expect: Status::Sent, story: "push sent" },
        Sample {
            request: push("push-flaky", "cy", "flaky-token", "Hi", "Third time lucky"),
            expect: Status::Sent,
            story: "FCM failed twice: retry-10m, retry-20m, then sent",
        },
        Sample {
            request: sms("sms-down", "dee", "+14155550199", "Never arrives"),
            expect: Status::Sent,
            story: "Twilio 503 and Vonage 5, four times: dead-lettered; replayed once they recover, then sent",
        },
        Sample {
            request: sms("sms-failover", "gus", "+14155550104", "Twilio is down"),
            expect: Status::Sent,
            story: "Twilio 503: failed over, sent by Vonage",
        },
        Sample {
            request: sms("sms-stopped", "hal", "+14155550105", "Hello"),
            expect: Status::Failed,
            story: "Twilio 21610 (replied STOP): failed, number suppressed",
        },
        Sample {
            request: push("push-dead", "ida", "dead-token", "Hi", "Gone"),
            expect: Status::Failed,
            story: "FCM UNREGISTERED: failed, token suppressed",
        },
        Sample { request: android, expect: Status::Sent, story: "push with Android overrides sent" },
        Sample {
            request: sms("sms-landline", "eve", "+14155550123", "Not a mobile"),
            expect: Status::Failed,
            story: "Twilio 21614 (not a mobile number): failed, no retry",
        },
        Sample { request: sms("bad-phone", "fay", "0800-FLOWERS", "Hello"), expect: Status::Invalid, story: "not E.164: invalid" },
        Sample {
            request: sms("too-long", "fay", "+14155550102", &"x".repeat(481)),
            expect: Status::Invalid,
            story: "481 characters, over 480: invalid",
        },
        Sample { request: later, expect: Status::Sent, story: "scheduled 5 s ahead: held, then sent" },
    ]);
    v
}

/// Requests whose outcome depends on the samples before them.
fn followups() -> Vec<Sample> {
    vec![
        Sample {
            request: sms("sms-after-stop", "jo", "+14155550105", "Hello again"),
            expect: Status::Suppressed,
            story: "same number, another user: suppressed, Twilio not called",
        },
        Sample {
            request: push("push-after-dead", "ida", "dead-token", "Hi", "Still gone"),
            expect: Status::Suppressed,
            story: "same token: suppressed, FCM not called",
        },
    ]
}

fn request(event_id: &str, user: &str, channel: Channel, recipient: &str, title: Option<&str>, body: &str) -> Request {
    Request {
        prefs: Default::default(),
        event_id: event_id.into(),
        user_id: user.into(),
        channel,
        recipient: recipient.into(),
        content: Content { title: title.map(str::to_owned), body: body.into(), ..Content::default() },
        scheduled_at: None,
        created_at: Utc::now(),
    }
}

fn sms(event_id: &str, user: &str, phone: &str, body: &str) -> Request {
    request(event_id, user, Channel::Sms, phone, None, body)
}

fn push(event_id: &str, user: &str, token: &str, title: &str, body: &str) -> Request {
    request(event_id, user, Channel::Push, token, Some(title), body)
}

/// The status topic, read and printed as it arrives.
struct StatusLog {
    reader: Reader,
    schema: apache_avro::Schema,
    events: Vec<StatusEvent>,
    /// Stop printing each event (during the bulk load).
    quiet: bool,
}

impl StatusLog {
    async fn until_terminal(&mut self, ids: &[String], started: Instant, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waiting: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        waiting.retain(|id| !self.events.iter().any(|e| e.event_id == *id && e.status.is_terminal()));
        while !waiting.is_empty() {
            let Some(message) = self.reader.next(deadline).await else {
                panic!("timed out after {timeout:?}; {} events have no final status yet", waiting.len());
            };
            let event = codec::decode_status(&self.schema, message.payload().unwrap_or_default()).expect("status decodes");
            if event.status.is_terminal() {
                waiting.remove(event.event_id.as_str());
            }
            if !self.quiet {
                print(&event, started);
            }
            self.events.push(event);
        }
    }

    /// Waits for `id`'s final status; says whether it is `status`.
    async fn until_terminal_is(&mut self, id: &str, status: Status, started: Instant) -> bool {
        self.until_terminal(&[id.to_owned()], started, Duration::from_secs(30)).await;
        let last = self.events.iter().rev().find(|e| e.event_id == id && e.status.is_terminal()).map(|e| e.status);
        if last != Some(status) {
            println!("{id} ended {last:?}, not {}", status.symbol());
        }
        last == Some(status)
    }

    /// Waits for `id` to be sent, after the final status it already had;
    /// says whether it was.
    async fn until_status(&mut self, id: &str, status: Status, started: Instant, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while let Some(message) = self.reader.next(deadline).await {
            let event = codec::decode_status(&self.schema, message.payload().unwrap_or_default()).expect("status decodes");
            let done = event.event_id == id && event.status == status;
            print(&event, started);
            self.events.push(event);
            if done {
                return true;
            }
        }
        println!("{id} never became {}", status.symbol());
        false
    }

    fn last_by_event(&self) -> BTreeMap<&str, &StatusEvent> {
        self.events.iter().map(|e| (e.event_id.as_str(), e)).collect()
    }
}

fn print(e: &StatusEvent, started: Instant) {
    let channel = e.channel.map_or("?", Channel::symbol);
    let mut detail = String::new();
    if let Some(p) = &e.provider {
        detail += &format!("{p} {} ", e.provider_message_id.as_deref().unwrap_or(""));
    }
    if let Some(code) = &e.error_code {
        detail += &format!("{code} ");
    }
    if let Some(next) = e.next_attempt_at {
        detail += &format!("next attempt in {:.1}s", (next - e.occurred_at).num_milliseconds() as f64 / 1000.0);
    }
    let at = format!("{:.2}s", started.elapsed().as_secs_f64());
    println!("{at:>8}  {:<16} {:<5} {:<16} {:>3}  {detail}", e.event_id, channel, e.status.symbol(), e.attempt);
}
