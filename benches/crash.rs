//! Crash benchmark: what SIGKILLs during a drain cost, in lost events and
//! duplicate sends.
//!
//!     cargo bench --bench crash -- [--requests 10000] [--kills 5] [--runs 3]
//!         [--seed 1] [--latency-ms 100] [--takeover] [--herald PATH]
//!
//! Each run starts a broker and fake providers (each call takes
//! `--latency-ms`), produces the requests (SMS, so that builds before the
//! FCM contract fixes can be compared with the same fakes), and
//! starts the herald binary. `--kills` times, it waits for the running
//! instance's first provider call, then a random 0.5-4 s (seeded), SIGKILLs
//! it and starts another. The last one drains everything. With
//! `--takeover`, a second instance runs beside the first, and each kill
//! leaves the other to take over the dead one's partitions.
//!
//! Every provider call is recorded with its event id. Reported: events
//! never sent (lost), calls beyond one per event (duplicate sends), and
//! the most calls any one event got. (Which kill a duplicate is owed to
//! cannot be told from its time: a record in flight at a kill is sent
//! again whenever an instance next reaches its partition, which may be
//! several kills later.) `--herald` runs another build, such as
//! an older commit's, against the same harness.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::stream::{self, StreamExt};
use herald::codec::{self, Bundled};
use herald::model::{Channel, Content, Request, Status, StatusEvent};
use herald_testkit::kafka::{self, Reader};
use herald_testkit::{Broker, Providers};
use rdkafka::message::Message;

const PARTITIONS: i32 = 6;

struct Args {
    requests: usize,
    kills: usize,
    runs: usize,
    seed: u64,
    latency: Duration,
    takeover: bool,
    herald: PathBuf,
}

fn main() {
    let mut args = Args {
        requests: 10_000,
        kills: 5,
        runs: 3,
        seed: 1,
        latency: Duration::from_millis(100),
        takeover: false,
        herald: PathBuf::from(env!("CARGO_BIN_EXE_herald")),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value")).clone();
        match flag.as_str() {
            "--requests" => args.requests = value().parse().expect("a count"),
            "--kills" => args.kills = value().parse().expect("a count"),
            "--runs" => args.runs = value().parse().expect("a count"),
            "--seed" => args.seed = value().parse().expect("a number"),
            "--latency-ms" => args.latency = Duration::from_millis(value().parse().expect("milliseconds")),
            "--takeover" => args.takeover = true,
            "--herald" => args.herald = PathBuf::from(value()),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    println!("herald: {}", args.herald.display());
    println!("{} requests, {} SIGKILLs per run, provider latency {:?}{}", args.requests, args.kills, args.latency, if args.takeover { ", two instances" } else { "" });
    println!("\n| run | seed | lost | duplicate sends | largest number of sends for one event |");
    println!("|---|---|---|---|---|");
    for run in 0..args.runs {
        let seed = args.seed + run as u64;
        let r = runtime.block_on(crash_run(&args, seed));
        println!("| {} | {seed} | {} | {} | {} |", run + 1, r.lost, r.duplicates, r.most);
    }
}

struct Result {
    lost: usize,
    duplicates: usize,
    most: usize,
}

async fn crash_run(args: &Args, seed: u64) -> Result {
    let mut rng = fastrand::Rng::with_seed(seed);
    let broker = Broker::start();
    let providers = Providers::start().await;
    providers.twilio.set_latency(args.latency);
    providers.fcm.set_latency(args.latency);
    let unique = format!("crash-{}-{seed}", std::process::id());
    let requested = format!("{unique}.requested");
    kafka::create_topics(&broker.bootstrap, &[&requested], PARTITIONS).await;
    let ids = produce(&broker.bootstrap, &requested, args.requests).await;

    let mut herald_args: Vec<String> = [
        "--brokers", &broker.bootstrap, "--group-id", &format!("{unique}.herald"), "--admin-listen", "127.0.0.1:0",
        "--topic-requested", &requested, "--topic-status", &format!("{unique}.status"),
        "--topic-dead-letter", &format!("{unique}.dead-letter"), "--topic-suppressions", &format!("{unique}.suppressions"),
        "--retry-topics", &format!("{unique}.retry-10m,{unique}.retry-20m,{unique}.retry-40m"),
        "--wait-topics", &herald::topics::DEFAULT_WAIT_TOPICS.split(',').map(|t| format!("{unique}.{t}")).collect::<Vec<_>>().join(","),
        "--topic-partitions", &PARTITIONS.to_string(), "--sms-rate-limit", "off",
        // Should anything fail, its retry comes in seconds, not minutes.
        "--retry-delays", "1s,2s,4s",
        "--envelope-key", herald_testkit::ENVELOPE_KEY,
    ]
    .map(str::to_owned)
    .into();
    herald_args.extend(providers.args());
    herald_args.extend(kafka::fast_group_args());
    let log = std::env::temp_dir().join(format!("{unique}.log"));
    let start = |n: usize| {
        Command::new(&args.herald)
            .args(&herald_args)
            .env("RUST_LOG", std::env::var("HERALD_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("a log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting herald #{n}: {e}"))
    };
    let calls = || providers.twilio.count() + providers.fcm.count();
    let mut running: Vec<Child> = vec![start(0)];
    if args.takeover {
        running.push(start(1));
    }
    for kill in 0..args.kills {
        // The newest instance's first call, then a random moment. Requests
        // a killed instance sent land at the fake for a few more moments:
        // they must not pass for the new instance's.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = calls();
        let waited = Instant::now();
        while calls() == before {
            assert!(waited.elapsed() < Duration::from_secs(120), "no provider call in 2 minutes; see {}", log.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500 + rng.u64(0..3500))).await;
        let victim = if args.takeover { kill % 2 } else { 0 };
        let _ = running[victim].kill();
        let _ = running[victim].wait();
        running[victim] = start(kill + 1);
    }
    let mut statuses = Reader::new(&broker.bootstrap, &format!("{unique}.status"));
    let schema = Bundled::load().status;
    let mut current: HashMap<String, StatusEvent> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while ids.iter().any(|id| current.get(id).is_none_or(|e| !e.status.is_terminal())) {
        let Some(m) = statuses.next(tokio::time::Instant::now() + Duration::from_secs(5)).await else {
            assert!(Instant::now() < deadline, "not every event finished; see {}", log.display());
            continue;
        };
        let e = codec::decode_status(&schema, m.payload().unwrap_or_default()).expect("a status");
        if current.get(&e.event_id).is_none_or(|c| e.supersedes(c)) {
            current.insert(e.event_id.clone(), e);
        }
    }
    for mut child in running {
        let _ = child.kill();
        let _ = child.wait();
    }
    let per_event = calls_per_event(&providers);
    let lost = ids.iter().filter(|id| current.get(*id).is_none_or(|e| e.status != Status::Sent)).count();
    let duplicates = per_event.values().map(|n| n - 1).sum();
    let most = per_event.values().copied().max().unwrap_or(0);
    Result { lost, duplicates, most }
}

/// Provider calls so far, by event id (each request's body is its id).
fn calls_per_event(providers: &Providers) -> HashMap<String, usize> {
    let mut per_event: HashMap<String, usize> = HashMap::new();
    let twilio = providers.twilio.requests().into_iter().filter_map(|r| r.field("Body").map(str::to_owned));
    let fcm = providers.fcm.requests().into_iter().filter_map(|r| r.json?["message"]["notification"]["body"].as_str().map(str::to_owned));
    for id in twilio.chain(fcm) {
        *per_event.entry(id).or_default() += 1;
    }
    per_event
}

async fn produce(bootstrap: &str, topic: &str, count: usize) -> Vec<String> {
    let producer = kafka::producer(bootstrap);
    let schema = Bundled::load().request;
    let requests: Vec<Request> = (0..count)
        .map(|i| {
            let id = format!("c-{i:06}");
            Request {
                prefs: Default::default(),
                event_id: id.clone(),
                user_id: format!("user-{}", i % 1000),
                channel: Channel::Sms,
                recipient: format!("+1415555{:04}", i % 10_000),
                content: Content { body: id, ..Content::default() },
                scheduled_at: None,
                created_at: Utc::now(),
            }
        })
        .collect();
    stream::iter(&requests)
        .map(|r| {
            let bytes = codec::encode_request(&schema, 1, r).expect("a request encodes");
            let producer = &producer;
            async move {
                kafka::produce(producer, topic, r.user_id.as_bytes(), &bytes, None).await;
            }
        })
        .buffer_unordered(2000)
        .collect::<()>()
        .await;
    requests.into_iter().map(|r| r.event_id).collect()
}
