//! Load benchmark: herald against the bare Kafka limit, side by side in one run.
//!
//!     cargo bench --bench load [-- --records 500000 --latency-secs 10 --latency-rate N]
//!
//! One tansu broker and one backlog of requests (about 300 bytes each, half
//! SMS, half push, over 50,000 users) are shared by every phase; each phase
//! is its own consumer group reading the same partitions, in its own child
//! process, so CPU time (`wait4`) and peak RSS (`VmHWM`) are its alone.
//!
//! 1. passthrough: consume, produce the same bytes elsewhere with herald's
//!    producer settings, store the offset after the ack. The physical limit.
//! 2. herald with `--delivery dry-run`: the pipeline's own cost.
//! 3. herald delivering over HTTP to the local fake Twilio and FCM.
//! 4. The passthrough and herald (no-op sink) again, each fed live at a
//!    fixed load of half of (2)'s rate: latency from each request record's
//!    timestamp to its output record's.
//!
//! Rates are taken from the output records' timestamps, over the middle 90%
//! of them, so group joins, start-up and the tail are not counted.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use futures::FutureExt;
use herald::codec::{self, Bundled};
use herald::model::{Channel, Content, Request, Status};
use herald_testkit::kafka::{self, Reader};
use herald_testkit::{Broker, Providers};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 6;
const REQUESTED: &str = "bench.requested";
/// Records the passthrough keeps in flight, like herald's two lanes' queues.
const PASSTHROUGH_IN_FLIGHT: usize = 4096;

struct Args {
    records: usize,
    latency_secs: u64,
    /// Offered load for the latency phase; half the no-op rate by default.
    latency_rate: Option<f64>,
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if argv.first().map(String::as_str) == Some("passthrough") {
        runtime.block_on(passthrough(&argv[1], &argv[2], &argv[3], &argv[4]));
        return std::process::ExitCode::SUCCESS;
    }
    let mut args = Args { records: 500_000, latency_secs: 10, latency_rate: None };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--records" => args.records = value() as usize,
            "--latency-secs" => args.latency_secs = value(),
            "--latency-rate" => args.latency_rate = Some(value() as f64),
            // cargo bench passes --bench; filters do not apply here.
            _ => {}
        }
    }
    runtime.block_on(bench(args))
}

async fn bench(args: Args) -> std::process::ExitCode {
    let broker = Broker::start();
    let providers = Providers::start().await;
    let bootstrap = broker.bootstrap.clone();
    let run = format!("{}", std::process::id());
    let topic = |name: &str| if broker.is_local() { name.to_owned() } else { format!("{name}.{run}") };
    let requested = topic(REQUESTED);
    kafka::create_topics(&bootstrap, &[&requested, &topic("bench.passthrough")], PARTITIONS).await;

    let started = Instant::now();
    let bytes = backlog(&bootstrap, &requested, args.records).await;
    println!(
        "backlog: {} requests, {:.0} bytes each on average, produced in {:.2?}",
        args.records,
        bytes as f64 / args.records as f64,
        started.elapsed()
    );

    let mut rows = Vec::new();
    let (group, output) = (format!("bench-passthrough-{run}"), topic("bench.passthrough"));
    let passthrough = passthrough_command(&bootstrap, &requested, &output, &group);
    let label = "passthrough (rdkafka consume → produce → store offset)";
    rows.push(measure(label, &bootstrap, &group, &requested, &output, args.records, Check::Copies, passthrough).await);
    for (label, phase, provider_args) in [
        ("herald, no-op sink (--delivery dry-run)", "dry-run", vec!["--delivery".to_owned(), "dry-run".to_owned()]),
        ("herald, HTTP to local fake Twilio/FCM", "http", providers.args()),
    ] {
        let status = topic(&format!("bench.status.{phase}"));
        let group = format!("bench-{phase}-{run}");
        let command = herald(&bootstrap, &group, &requested, &status, &provider_args);
        rows.push(measure(label, &bootstrap, &group, &requested, &status, args.records, Check::AllSent, command).await);
    }

    // Both at half of herald's no-op rate, each on a topic of its own.
    let rate = args.latency_rate.unwrap_or(rows[1].rate / 2.0);
    let mut latencies = Vec::new();
    for (label, name, check) in [("passthrough", "passthrough", Check::Copies), ("herald, no-op sink", "herald", Check::AllSent)] {
        let requested = topic(&format!("bench.latency.{name}"));
        let output = format!("{requested}.out");
        kafka::create_topics(&bootstrap, &[&requested, &output], PARTITIONS).await;
        let group = format!("bench-latency-{name}-{run}");
        let command = match check {
            Check::Copies => passthrough_command(&bootstrap, &requested, &output, &group),
            Check::AllSent => herald(&bootstrap, &group, &requested, &output, &["--delivery".into(), "dry-run".into()]),
        };
        latencies.push((label, latency(&bootstrap, &requested, &output, check, command, rate, args.latency_secs).await));
    }

    println!("\n{:<56} {:>9} {:>10} {:>7} {:>11} {:>10}", "phase", "records", "msgs/s", "ratio", "CPU µs/msg", "peak RSS");
    for r in &rows {
        println!(
            "{:<56} {:>9} {:>10.0} {:>6.2}× {:>11.1} {:>7.0} MB",
            r.label,
            r.records,
            r.rate,
            r.rate / rows[0].rate,
            r.cpu.as_secs_f64() * 1e6 / r.records as f64,
            r.peak_rss_kb as f64 / 1024.0
        );
    }
    let why = if args.latency_rate.is_some() { "as asked" } else { "half of herald's no-op rate" };
    println!("\nrequest → output record latency at {rate:.0} msgs/s offered for {} s ({why}):", args.latency_secs);
    for (label, l) in &latencies {
        println!("{label:<56} p50 {:>4} ms   p99 {:>4} ms   max {:>4} ms   ({} records)", l.p50, l.p99, l.max, l.count);
    }
    drop(providers);
    std::process::ExitCode::SUCCESS
}

/// What a phase writes, and what its output must show for its figures to
/// count.
#[derive(Clone, Copy)]
enum Check {
    /// One copy of the request per request.
    Copies,
    /// One SENT status per request, for distinct event ids.
    AllSent,
}

impl Check {
    fn event_id(self, schemas: &Bundled, payload: &[u8]) -> String {
        match self {
            Check::Copies => {
                let datum = codec::unframe(payload).expect("wire format").1;
                codec::read_request(datum).expect("a copied request").event_id
            }
            Check::AllSent => codec::decode_status(&schemas.status, payload).expect("a status event").event_id,
        }
    }
}

struct Row {
    label: &'static str,
    records: usize,
    rate: f64,
    cpu: Duration,
    peak_rss_kb: i64,
}

/// Runs one child until its group has committed the whole backlog, then
/// reads its output to time it.
#[allow(clippy::too_many_arguments)]
async fn measure(
    label: &'static str,
    bootstrap: &str,
    group: &str,
    input: &str,
    output: &str,
    records: usize,
    check: Check,
    mut command: Command,
) -> Row {
    println!("{label}: running");
    let log = std::env::temp_dir().join(format!("herald-bench-{}.log", output.replace('.', "-")));
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
    let child = command.spawn().expect("starting the phase");
    let pid = child.id() as i32;
    wait_committed(bootstrap, group, input, records, &log).await;
    // Read here, not from wait4: a child's ru_maxrss starts from its
    // parent's peak at fork, and this process holds whole topics.
    let peak_rss_kb = vm_hwm_kb(pid);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let usage = tokio::task::spawn_blocking(move || wait4(pid)).await.expect("waiting for the phase");
    assert!(usage.success, "{label} failed; see {}", log.display());
    let messages = read_all(bootstrap, output, records).await;
    let rate = rate_of(&messages, records, check);
    println!("{label}: {rate:.0} msgs/s");
    Row { label, records, rate, cpu: usage.cpu, peak_rss_kb }
}

fn vm_hwm_kb(pid: i32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading the phase's /proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc status");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).expect("VmHWM in kB")
}

/// Consumer settings for every phase, herald's and the passthrough's alike.
/// tansu answers a fetch only when `fetch.wait.max.ms` (500 by default)
/// runs out, even once records have arrived; Kafka answers as soon as
/// `fetch.min.bytes` are there. The short wait keeps tansu from adding
/// hundreds of milliseconds to every record's latency. And when its local
/// queue is over `queued.max.messages.kbytes` librdkafka pauses fetching
/// for `fetch.queue.backoff.ms` (1 s by default): longer than a fast
/// consumer takes to drain 64 MB, so it would stall.
fn consumer_args() -> Vec<String> {
    let options = ["auto.commit.interval.ms=500", "fetch.wait.max.ms=10", "fetch.queue.backoff.ms=20"];
    options.iter().flat_map(|o| ["--kafka-consumer-option".to_owned(), (*o).to_owned()]).chain(kafka::fast_group_args()).collect()
}

fn herald(bootstrap: &str, group: &str, requested: &str, status: &str, extra: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.args(["--brokers", bootstrap, "--group-id", group, "--topic-requested", requested, "--topic-status", status])
        .args(consumer_args())
        .args(extra)
        .env("RUST_LOG", "warn");
    c
}

async fn wait_committed(bootstrap: &str, group: &str, input: &str, records: usize, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let (bootstrap, g, input) = (bootstrap.to_owned(), group.to_owned(), input.to_owned());
        let committed: i64 = tokio::task::spawn_blocking(move || kafka::committed(&bootstrap, &g, &input))
            .await
            .expect("reading commits")
            .values()
            .sum();
        if committed as usize >= records {
            return;
        }
        assert!(Instant::now() < deadline, "group {group} committed {committed} of {records}; see {}", log.display());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Usage {
    success: bool,
    cpu: Duration,
}

fn wait4(pid: i32) -> Usage {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
    }
}

async fn read_all(bootstrap: &str, topic: &str, records: usize) -> Vec<OwnedMessage> {
    let mut reader = Reader::new(bootstrap, topic);
    reader.read_until(Duration::from_secs(300), |m| m.len() >= records).await;
    reader.read_for(Duration::from_millis(500)).await.to_vec()
}

fn rate_of(messages: &[OwnedMessage], records: usize, check: Check) -> f64 {
    let mut timestamps: Vec<i64> = messages.iter().filter_map(|m| m.timestamp().to_millis()).collect();
    match check {
        Check::Copies => assert_eq!(messages.len(), records, "one copy per request"),
        Check::AllSent => {
            let schema = Bundled::load().status;
            let mut sent = std::collections::HashSet::new();
            for m in messages {
                let event = codec::decode_status(&schema, m.payload().unwrap_or_default()).expect("status decodes");
                assert_eq!(event.status, Status::Sent, "event {} was {:?}", event.event_id, event.status);
                sent.insert(event.event_id);
            }
            assert_eq!(sent.len(), records, "one SENT per request");
        }
    }
    // The middle 90%: how the first records trickle in while the group
    // settles says nothing about the steady rate.
    timestamps.sort_unstable();
    let (first, last) = (timestamps.len() / 20, timestamps.len() * 19 / 20);
    let span = timestamps[last] - timestamps[first];
    let t0 = timestamps[0];
    println!("  output timestamps at every 5% of records, ms from the first: {:?}", (0..=20).map(|i| timestamps[(timestamps.len() - 1) * i / 20] - t0).collect::<Vec<_>>());
    (last - first) as f64 / (span.max(1) as f64 / 1000.0)
}

fn request(i: usize) -> Request {
    let (channel, recipient, title) = if i % 2 == 0 {
        (Channel::Sms, format!("+1415555{:04}", i % 10_000), None)
    } else {
        // FCM registration tokens are about 150 characters.
        (Channel::Push, format!("{:0>152}", format!("token{i}")), Some("Your order has shipped".to_owned()))
    };
    let body = if channel == Channel::Sms {
        "Your order #4711 has shipped and will arrive on Thursday between 9:00 and 12:00. Track it in the app, change the delivery slot at example.com/t/4711, or reply STOP to opt out of updates. Thank you for shopping with us!"
    } else {
        "It will arrive on Thursday between 9:00 and 12:00. Tap to track it or to choose another delivery slot."
    };
    Request {
        event_id: format!("bench-{i:09}"),
        user_id: format!("user-{:05}", i % 50_000),
        channel,
        recipient,
        content: Content { title, body: body.to_owned(), ..Content::default() },
        scheduled_at: None,
        created_at: Utc::now(),
    }
}

/// Produces `records` requests; returns the bytes produced.
async fn backlog(bootstrap: &str, topic: &str, records: usize) -> usize {
    let producer = kafka::producer(bootstrap);
    let schema = Bundled::load().request;
    let mut acks = FuturesUnordered::new();
    let mut bytes = 0;
    for i in 0..records {
        let r = request(i);
        let payload = codec::encode_request(&schema, 1, &r).expect("request encodes");
        bytes += payload.len();
        acks.push(send(&producer, topic, r.user_id.into_bytes(), payload, None));
        while acks.len() >= 50_000 {
            acks.next().await;
        }
    }
    while acks.next().await.is_some() {}
    bytes
}

fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Vec<u8>,
    payload: Vec<u8>,
    timestamp: Option<i64>,
) -> impl std::future::Future<Output = ()> {
    let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
    record.timestamp = timestamp;
    let ack = producer.send_result(record).map_err(|(e, _)| e).expect("producer queue has room");
    async move {
        ack.await.expect("producer alive").map_err(|(e, _)| e).expect("record acknowledged");
    }
}

fn passthrough_command(bootstrap: &str, input: &str, output: &str, group: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("own path"));
    c.args(["passthrough", bootstrap, input, output, group]);
    c
}

/// The physical limit, in a child process: herald's own client settings,
/// no decoding, offsets stored once the copy is acknowledged. Runs until
/// SIGTERM, like herald.
async fn passthrough(bootstrap: &str, input: &str, output: &str, group: &str) {
    use clap::Parser;
    let config = herald::Config::try_parse_from(
        ["herald", "--brokers", bootstrap, "--group-id", group]
            .into_iter()
            .map(str::to_owned)
            .chain(consumer_args()),
    )
    .expect("passthrough config");
    let consumer = herald::kafka::consumer(&config).expect("consumer");
    let producer = herald::kafka::producer(&config).expect("producer");
    consumer.subscribe(&[input]).expect("subscribe");
    let mut in_flight = FuturesOrdered::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    loop {
        tokio::select! {
            biased;
            _ = term.recv() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                // Acks come in order, so the last per partition is the highest.
                let mut next = HashMap::new();
                let (partition, offset) = done;
                next.insert(partition, offset + 1);
                while let Some(Some((partition, offset))) = in_flight.next().now_or_never() {
                    next.insert(partition, offset + 1);
                }
                let mut list = TopicPartitionList::new();
                for (partition, offset) in next {
                    list.add_partition_offset(input, partition, Offset::Offset(offset)).expect("offset");
                }
                consumer.store_offsets(&list).expect("store offsets");
            }
            message = consumer.recv(), if in_flight.len() < PASSTHROUGH_IN_FLIGHT => {
                let m = message.expect("consume");
                let ack = send(&producer, output, m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec(), None);
                let at = (m.partition(), m.offset());
                in_flight.push_back(ack.map(move |()| at));
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    match consumer.commit_consumer_state(CommitMode::Sync) {
        // The background commit already took everything.
        Ok(()) | Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => panic!("commit: {e}"),
    }
}

struct Latency {
    count: usize,
    p50: i64,
    p99: i64,
    max: i64,
}

/// A phase fed at `rate` requests/s on its own fresh topic; latency is each
/// output record's timestamp minus its request record's.
async fn latency(bootstrap: &str, requested: &str, output: &str, check: Check, mut command: Command, rate: f64, secs: u64) -> Latency {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starting the phase");
    let schema = Bundled::load();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.metrics.push", "false")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let mut sent_at = HashMap::new();
    let mut produce = |i: usize| {
        let mut r = request(i);
        r.event_id = format!("latency-{i:09}");
        let at = Utc::now().timestamp_millis();
        sent_at.insert(r.event_id.clone(), at);
        let payload = codec::encode_request(&schema.request, 1, &r).expect("request encodes");
        send(&producer, requested, r.user_id.into_bytes(), payload, Some(at))
    };
    // Warm up: herald has joined once the first status appears. That one
    // waited for the join, so it is not counted.
    let warm_up = usize::MAX / 2;
    produce(warm_up).await;
    // The statuses are read after the load, so reading takes no CPU from it.
    Reader::new(bootstrap, output).read_until(Duration::from_secs(60), |m| !m.is_empty()).await;

    let total = (rate * secs as f64) as usize;
    let started = tokio::time::Instant::now();
    let mut acks = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut produced = 0;
    while produced < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        while produced < due {
            acks.push(produce(produced));
            produced += 1;
        }
        while let Some(Some(())) = acks.next().now_or_never() {}
    }
    while acks.next().await.is_some() {}
    let mut outputs = Reader::new(bootstrap, output);
    let messages = outputs.read_until(Duration::from_secs(120), |m| m.len() > total).await;
    let mut latencies: Vec<i64> = messages
        .iter()
        .filter_map(|m| {
            let event_id = check.event_id(&schema, m.payload()?);
            let at = (event_id != format!("latency-{warm_up:09}")).then(|| sent_at.get(&event_id))??;
            Some(m.timestamp().to_millis()? - at)
        })
        .collect();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Latency { count: latencies.len(), p50: at(0.50), p99: at(0.99), max: *latencies.last().unwrap() }
}
