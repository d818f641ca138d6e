//! `--timing`: does what waits leave when it is due, under a mixed load?
//!
//! One herald (a child process, production delays on the wheel and the
//! hold, a retry ladder of 20, 40 and 80 s) takes, on 6 partitions, at
//! once: 10,000 sends scheduled at random 0–120 s ahead, 2,000 SMS that
//! fail three times and climb the whole ladder, and 1,000 pushes deferred
//! by their user's window (1 a minute, deferring). Every wait announced by
//! a status (`next_attempt_at` of SCHEDULED, DEFERRED, RETRY_SCHEDULED) is
//! matched with the status that followed it; lateness is the time between
//! the announced time and the next status. Nothing may be early; the p99
//! and the worst are gated in `benches/floors.json` (`timing`). The copies
//! each request left on the delay topics are counted.
//!
//! `--timing-kill` SIGKILLs herald 60 s in and starts another at once:
//! nothing may be lost or early, and the lateness goal holds for every
//! wait announced for after the new instance had its partitions back.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use herald::codec::{self, Bundled};
use herald::model::{Channel, Content, Request, Status, StatusEvent};
use herald_testkit::fake::Reply;
use herald_testkit::kafka::{self, Reader};
use herald_testkit::{Broker, Providers};
use rdkafka::message::Message;

const PARTITIONS: i32 = 6;
const SCHEDULED: usize = 10_000;
const FAILING: usize = 2_000;
const DEFERRED_USERS: usize = 1_000;

/// What the phase measured.
pub struct Timing {
    /// Waits matched with the status after them.
    pub waits: usize,
    pub early: usize,
    /// Requests with no terminal status at the end.
    pub lost: usize,
    /// Lateness of every matched wait, in ms, sorted.
    pub lateness: Vec<i64>,
    /// Lateness of the waits under way at the kill (announced before it,
    /// due after it), sorted; left out of `lateness`.
    pub in_flight: Vec<i64>,
    /// Copies on the delay topics per request: how many requests had each count.
    pub copies: std::collections::BTreeMap<usize, usize>,
    /// Lateness by kind of wait (scheduled, retried, deferred), sorted.
    pub by_kind: std::collections::BTreeMap<&'static str, Vec<i64>>,
}

impl Timing {
    pub fn percentile(&self, p: f64) -> i64 {
        if self.lateness.is_empty() {
            return 0;
        }
        self.lateness[((self.lateness.len() - 1) as f64 * p).round() as usize]
    }
}

fn request(event_id: String, user_id: String, channel: Channel, recipient: String, body: &str) -> Request {
    Request {
        prefs: Default::default(),
        event_id,
        user_id,
        channel,
        recipient,
        content: Content { title: (channel == Channel::Push).then(|| "timing".to_owned()), body: body.into(), ..Content::default() },
        scheduled_at: None,
        created_at: Utc::now(),
    }
}

/// Runs the phase on a broker of its own; `kill` SIGKILLs herald once, 60 s in.
pub async fn run(herald_bin: &Path, kill: bool, seed: u64) -> Timing {
    let broker = Broker::start();
    let providers = Providers::start().await;
    let run = format!("timing-{}", std::process::id());
    let (requested, status) = (format!("{run}.requested"), format!("{run}.status"));
    kafka::create_topics(&broker.bootstrap, &[&requested], PARTITIONS).await;
    let waits: Vec<String> = herald::topics::DEFAULT_WAIT_TOPICS.split(',').map(|t| format!("{run}.{t}")).collect();
    let retries: Vec<String> = ["retry-20s", "retry-40s", "retry-80s"].iter().map(|t| format!("{run}.{t}")).collect();
    let mut args: Vec<String> = [
        "--brokers", &broker.bootstrap, "--group-id", &format!("{run}.herald"), "--admin-listen", "off",
        "--topic-requested", &requested, "--topic-status", &status,
        "--topic-dead-letter", &format!("{run}.dead-letter"), "--topic-suppressions", &format!("{run}.suppressions"),
        "--topic-cancellations", &format!("{run}.cancellations"),
        "--retry-topics", &retries.join(","), "--retry-delays", "20s,40s,80s",
        "--wait-topics", &waits.join(","),
        "--topic-partitions", &PARTITIONS.to_string(),
        "--sms-rate-limit", "off", "--push-rate-limit", "1/60s", "--push-over-limit", "defer",
        // Failures are scripted: no circuit opens over them.
        "--breaker-failures", "100000",
        "--envelope-key", herald_testkit::ENVELOPE_KEY,
    ]
    .map(str::to_owned)
    .into();
    args.extend(providers.args());
    args.extend(herald_testkit::kafka::fast_group_args());
    let log = std::env::temp_dir().join(format!("{run}.log"));
    let start = |log: &Path| {
        std::process::Command::new(herald_bin)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).expect("a log file"))
            .spawn()
            .expect("starting herald")
    };
    let mut herald = start(&log);

    // Herald is in its group once a first request comes back.
    let producer = kafka::producer(&broker.bootstrap);
    let schema = Bundled::load().request;
    let produce = |r: Request| {
        let bytes = codec::encode_request(&schema, 1, &r).expect("a request encodes");
        let producer = producer.clone();
        let topic = requested.clone();
        async move { kafka::produce(&producer, &topic, r.user_id.as_bytes(), &bytes, None).await }
    };
    produce(request("warm-up".into(), "warm".into(), Channel::Push, "tok-warm".into(), "warm up")).await;
    let mut statuses = Reader::new(&broker.bootstrap, &status);
    let status_schema = Bundled::load().status;
    let decode = |m: &rdkafka::message::OwnedMessage| codec::decode_status(&status_schema, m.payload().unwrap()).expect("a status");
    statuses.read_until(Duration::from_secs(120), |m| !m.is_empty()).await;

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ids = Vec::new();
    let mut requests = Vec::new();
    for i in 0..SCHEDULED {
        let mut r = request(format!("s-{i}"), format!("user-s{i}"), Channel::Push, format!("tok-s{i}"), "scheduled");
        r.scheduled_at = Some(Utc::now() + chrono::Duration::milliseconds(rng.i64(0..120_000)));
        requests.push(r);
    }
    for i in 0..FAILING {
        let number = format!("+1415555{:04}", 1000 + i);
        // Each fails its first three attempts, and climbs the whole ladder.
        providers.twilio.script(&number, vec![Reply::fail(503, "20503"); 3]);
        requests.push(request(format!("f-{i}"), format!("user-f{i}"), Channel::Sms, number, "fails three times"));
    }
    for i in 0..DEFERRED_USERS {
        for j in 0..2 {
            requests.push(request(format!("d-{i}-{j}"), format!("user-d{i}"), Channel::Push, format!("tok-d{i}"), "deferred"));
        }
    }
    rng.shuffle(&mut requests);
    ids.extend(requests.iter().map(|r| r.event_id.clone()));
    let started = Utc::now();
    futures::future::join_all(requests.into_iter().map(produce)).await;

    let mut killed_at = None;
    if kill {
        tokio::time::sleep(Duration::from_secs(60).saturating_sub((Utc::now() - started).to_std().unwrap_or_default())).await;
        killed_at = Some(Utc::now());
        herald.kill().expect("SIGKILL");
        herald.wait().expect("reaped");
        herald = start(&std::env::temp_dir().join(format!("{run}.after-kill.log")));
    }

    // Until every request has a terminal status (at most a few minutes).
    let mut events: Vec<StatusEvent> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut terminal: HashMap<String, bool> = ids.iter().map(|id| (id.clone(), false)).collect();
    let mut open = terminal.len();
    while open > 0 && tokio::time::Instant::now() < deadline {
        let Some(m) = statuses.next(deadline).await else { break };
        let e = decode(&m);
        if e.status.is_terminal() && terminal.get(&e.event_id) == Some(&false) {
            terminal.insert(e.event_id.clone(), true);
            open -= 1;
        }
        events.push(e);
    }
    let _ = herald.kill();
    let _ = herald.wait();
    // A restart after the kill may report again what was sent: both kept.

    let mut by_event: HashMap<&str, Vec<&StatusEvent>> = HashMap::new();
    for e in &events {
        by_event.entry(e.event_id.as_str()).or_default().push(e);
    }
    let (mut lateness, mut early, mut in_flight) = (Vec::new(), 0, Vec::new());
    let mut by_kind: std::collections::BTreeMap<&'static str, Vec<i64>> = std::collections::BTreeMap::new();
    for history in by_event.values() {
        for (i, waiting) in history.iter().enumerate() {
            let Some(due) = waiting.next_attempt_at.filter(|_| matches!(waiting.status, Status::Scheduled | Status::Deferred | Status::RetryScheduled)) else { continue };
            // The outcome of the attempt it waited for: the first later
            // status of a later attempt, or a decision (a copy of the wait
            // itself, written again after a crash, is neither).
            let next = history
                .iter()
                .enumerate()
                .filter(|(j, e)| *j != i && e.occurred_at >= waiting.occurred_at)
                .filter(|(_, e)| e.attempt > waiting.attempt || !matches!(e.status, Status::Scheduled | Status::Deferred | Status::RetryScheduled))
                .map(|(_, e)| *e)
                .min_by_key(|e| e.occurred_at);
            let Some(next) = next else { continue };
            let late = (next.occurred_at - due).num_milliseconds();
            // Statuses carry milliseconds; a time rounded down is not early.
            if late < -1 {
                early += 1;
            }
            // Waiting when herald was killed: parked or held by the instance
            // that died, and found again by the next. Counted apart.
            if killed_at.is_some_and(|kill| waiting.occurred_at < kill && due >= kill) {
                in_flight.push(late);
                continue;
            }
            lateness.push(late);
            let kind = match waiting.event_id.as_bytes()[0] {
                b's' => "scheduled",
                b'f' => "retried",
                _ => "deferred",
            };
            by_kind.entry(kind).or_default().push(late);
        }
    }
    lateness.sort_unstable();
    in_flight.sort_unstable();
    by_kind.values_mut().for_each(|v| v.sort_unstable());

    // Every request but the deferred users' first has a user of its own:
    // copies are counted by key.
    let mut copies: HashMap<Vec<u8>, usize> = HashMap::new();
    for topic in waits.iter().chain(&retries) {
        for m in Reader::backlog(&broker.bootstrap, topic).read_to_end(Duration::from_secs(60)).await {
            *copies.entry(m.key().unwrap_or_default().to_vec()).or_default() += 1;
        }
    }
    let mut histogram = std::collections::BTreeMap::new();
    for id in ids.iter().filter(|id| !id.ends_with("-0") || !id.starts_with("d-")) {
        let user = match id.split_once('-') {
            Some(("d", rest)) => format!("user-d{}", rest.rsplit_once('-').map_or(rest, |(i, _)| i)),
            Some((kind, i)) => format!("user-{kind}{i}"),
            None => continue,
        };
        *histogram.entry(copies.get(user.as_bytes()).copied().unwrap_or(0)).or_default() += 1;
    }
    Timing { waits: lateness.len() + in_flight.len(), early, lost: open, lateness, in_flight, copies: histogram, by_kind }
}

/// The lateness distribution, as an SVG histogram.
pub fn chart(path: &Path, timing: &Timing) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    // 50 ms buckets up to the worst.
    let bucket = 50;
    let worst = timing.lateness.last().copied().unwrap_or(0).max(bucket);
    let mut counts = vec![0usize; (worst / bucket + 1) as usize];
    for l in &timing.lateness {
        counts[(l.max(&0) / bucket) as usize] += 1;
    }
    let tallest = counts.iter().max().copied().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("lateness of {} waits under a mixed load (p99 {} ms, worst {} ms)", timing.lateness.len(), timing.percentile(0.99), worst), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0i64..(worst + bucket), (1usize..tallest * 2).log_scale())?;
    chart.configure_mesh().x_desc("ms after the announced time (50 ms buckets)").y_desc("waits (log scale)").draw()?;
    chart.draw_series(counts.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| {
        let x = i as i64 * bucket;
        Rectangle::new([(x, 1), (x + bucket, *n)], RGBColor(31, 119, 180).filled())
    }))?;
    root.present()?;
    Ok(())
}
