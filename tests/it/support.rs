//! The harness: a broker, fake providers, unique topics, and herald run
//! through its library entry point.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use apache_avro::Schema;
use chrono::{DateTime, Utc};
use clap::Parser;
use herald::codec::{self, Bundled};
use herald::model::{Channel, Content, Request, Status, StatusEvent};
use herald::Config;
use herald_testkit::fake::{FakeFcm, FakeTwilio, FakeVonage};
use herald_testkit::kafka::{self, Reader};
use herald_testkit::{Broker, Providers};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use herald_testkit::providers::{ACCOUNT_SID, FROM};

pub struct Harness {
    pub broker: &'static Broker,
    pub twilio: FakeTwilio,
    pub vonage: FakeVonage,
    pub fcm: FakeFcm,
    pub topics: TestTopics,
    pub group: String,
    pub producer: FutureProducer,
    pub bundled: Bundled,
    provider_args: Vec<String>,
    vonage_args: Vec<String>,
}

/// Unique topic names, so tests can share a real cluster.
pub struct TestTopics {
    pub requested: String,
    pub status: String,
    pub dead_letter: String,
    pub suppressions: String,
    pub cancellations: String,
    pub retries: [String; 3],
    /// The timing wheel's tiers (see [`WAIT_DELAYS`]).
    pub waits: [String; 3],
}

/// Short delays so the whole retry schedule runs in about 2 s.
pub const RETRY_DELAYS: [Duration; 3] = [Duration::from_millis(300), Duration::from_millis(600), Duration::from_millis(1200)];

/// The timing wheel's tiers in tests, and the hold window: a wait of a few
/// seconds takes a few copies, as days do in production.
pub const WAIT_DELAYS: &str = "500ms,1500ms,4s";
pub const HOLD_WINDOW: &str = "500ms";

pub const PARTITIONS: i32 = 3;

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Harness {
    pub async fn new() -> Harness {
        Harness::on(Broker::shared()).await
    }

    /// A harness on a broker of its own, for a test that stops it.
    pub async fn with_own_broker() -> Harness {
        Harness::on(Box::leak(Box::new(Broker::start()))).await
    }

    async fn on(broker: &'static Broker) -> Harness {
        herald::telemetry::init(herald::telemetry::LogFormat::Text);
        let unique = format!("t{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), Utc::now().timestamp_millis());
        let topics = TestTopics {
            requested: format!("{unique}.requested"),
            status: format!("{unique}.status"),
            dead_letter: format!("{unique}.dead-letter"),
            suppressions: format!("{unique}.suppressions"),
            cancellations: format!("{unique}.cancellations"),
            retries: ["10m", "20m", "40m"].map(|d| format!("{unique}.retry-{d}")),
            waits: ["a", "b", "c"].map(|d| format!("{unique}.wait-{d}")),
        };
        let providers = Providers::start().await;
        // The requests topic belongs to the producers, as in production; it
        // exists before herald starts or a test sends, with as many
        // partitions as herald gives the topics it creates.
        kafka::create_topics(&broker.bootstrap, &[&topics.requested], PARTITIONS).await;
        Harness {
            producer: kafka::producer(&broker.bootstrap),
            provider_args: providers.args(),
            vonage_args: providers.vonage_args(),
            twilio: providers.twilio,
            vonage: providers.vonage,
            fcm: providers.fcm,
            topics,
            group: format!("{unique}.herald"),
            bundled: Bundled::load(),
            broker,
        }
    }

    /// herald's command line for this harness; a flag in `extra` replaces
    /// the harness's own.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let delays: Vec<String> = RETRY_DELAYS.iter().map(|d| format!("{}ms", d.as_millis())).collect();
        let partitions = PARTITIONS.to_string();
        let retries = self.topics.retries.join(",");
        let waits = self.topics.waits.join(",");
        let delays = delays.join(",");
        let defaults = [
            ("--brokers", self.broker.bootstrap.as_str()),
            ("--group-id", &self.group),
            ("--topic-requested", &self.topics.requested),
            ("--topic-status", &self.topics.status),
            ("--topic-dead-letter", &self.topics.dead_letter),
            ("--topic-suppressions", &self.topics.suppressions),
            ("--topic-cancellations", &self.topics.cancellations),
            ("--retry-topics", &retries),
            ("--wait-topics", &waits),
            ("--wait-delays", WAIT_DELAYS),
            ("--hold-window", HOLD_WINDOW),
            ("--retry-delays", &delays),
            ("--topic-partitions", &partitions),
            ("--http-timeout", "5s"),
            ("--shutdown-deadline", "10s"),
            ("--admin-listen", "127.0.0.1:0"),
            ("--envelope-key", herald_testkit::ENVELOPE_KEY),
        ];
        let mut args = vec!["herald".to_owned()];
        for (flag, value) in defaults.into_iter().filter(|(flag, _)| !extra.contains(flag)) {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
        args.extend(self.provider_args.iter().cloned());
        args.extend(kafka::fast_group_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// The flags that add the fake Vonage as Twilio's failover.
    pub fn vonage_args(&self) -> Vec<&str> {
        self.vonage_args.iter().map(String::as_str).collect()
    }

    pub fn config(&self, extra: &[&str]) -> Config {
        Config::try_parse_from(self.args(extra)).expect("test arguments parse")
    }

    /// Runs herald in this process until the returned handle is stopped.
    pub fn start(&self, extra: &[&str]) -> Running {
        self.start_with(extra, herald::Provided::default())
    }

    /// Runs herald in this process on `clock`, which the test moves.
    pub fn start_with_clock(&self, extra: &[&str], clock: herald::clock::Clock) -> Running {
        self.start_with(extra, herald::Provided { clock, ..Default::default() })
    }

    /// Runs herald with delivery receipts on, on a listener bound here, and
    /// returns the public URL of its status callbacks.
    pub fn start_with_receipts(&self, extra: &[&str]) -> (Running, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a receipts listener");
        let addr = listener.local_addr().unwrap().to_string();
        let public = format!("http://{addr}/twilio/status");
        let mut args = vec!["--receipts-listen", &addr, "--receipts-public-url", &public];
        args.extend(extra);
        (self.start_with(&args, herald::Provided { receipts: Some(listener), ..Default::default() }), public)
    }

    /// Runs herald with its admin endpoints on a listener bound here, and
    /// returns their base URL.
    pub fn start_with_admin(&self, extra: &[&str]) -> (Running, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an admin listener");
        let addr = listener.local_addr().unwrap().to_string();
        let mut args = vec!["--admin-listen", &addr];
        args.extend(extra);
        (self.start_with(&args, herald::Provided { admin: Some(listener), ..Default::default() }), format!("http://{addr}"))
    }

    fn start_with(&self, extra: &[&str], listeners: herald::Provided) -> Running {
        let config = self.config(extra);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let app = herald::App::build(config.pipeline()?, listeners).await?;
            let stopped = async {
                let _ = stopped.await;
            };
            Ok(app.run(stopped).await?)
        });
        Running { stop: Some(stop), task }
    }

    /// Runs the herald binary, for tests that kill it.
    pub fn spawn(&self, extra: &[&str]) -> Process {
        let args = self.args(extra);
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&args[1..])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the herald binary");
        Process(child)
    }

    /// Runs the herald binary with its log (at info) in `log`.
    pub fn spawn_logging(&self, extra: &[&str], log: &std::path::Path) -> Process {
        let args = self.args(extra);
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&args[1..])
            .env("RUST_LOG", "info,scylla=warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).expect("a log file"))
            .spawn()
            .expect("starting the herald binary");
        Process(child)
    }

    pub async fn send(&self, request: &Request) -> Vec<u8> {
        let bytes = codec::encode_request(&self.bundled.request, 1, request).unwrap();
        self.send_raw(request.user_id.as_bytes(), &bytes).await;
        bytes
    }

    /// Sends many requests at once, without waiting for each ack in turn.
    pub async fn send_many(&self, requests: &[Request]) {
        use futures::stream::{self, StreamExt};
        stream::iter(requests)
            .map(|r| async move {
                let bytes = codec::encode_request(&self.bundled.request, 1, r).unwrap();
                self.send_raw(r.user_id.as_bytes(), &bytes).await;
            })
            .buffer_unordered(1000)
            .collect::<()>()
            .await;
    }

    /// Produces a record to the requests topic; returns its partition and offset.
    /// Cancels `event_id` the way any producer may: a record on the
    /// cancellations topic, keyed by the event id.
    pub async fn cancel(&self, event_id: &str) {
        herald_testkit::kafka::produce(&self.producer, &self.topics.cancellations, event_id.as_bytes(), br#"{"requested_by":"test"}"#, None).await;
    }

    pub async fn send_raw(&self, key: &[u8], payload: &[u8]) -> (i32, i64) {
        kafka::produce(&self.producer, &self.topics.requested, key, payload, None).await
    }

    pub fn statuses(&self) -> Statuses {
        Statuses { reader: Reader::new(&self.broker.bootstrap, &self.topics.status), schema: self.bundled.status.clone(), events: vec![] }
    }

    pub fn reader(&self, topic: &str) -> Reader {
        Reader::new(&self.broker.bootstrap, topic)
    }
}

/// The herald binary, killed if the test ends early so it never outlives it.
pub struct Process(pub Child);

impl Process {
    /// SIGTERM, then waits; returns how long it took to exit, and how.
    pub fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let asked = std::time::Instant::now();
        Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().expect("kill");
        let status = self.0.wait().expect("waiting for herald");
        (asked.elapsed(), status)
    }
}

/// Installs a PyPI package the tests use, as `.ci/run` does, when python3
/// cannot import `module`.
pub fn ensure_python_package(module: &str, spec: &str) {
    // One pip at a time: tests run in parallel, and two installs into one
    // site-packages can leave it half written.
    static PIP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PIP.lock().unwrap_or_else(|p| p.into_inner());
    let importable = |m: &str| Command::new("python3").args(["-c", &format!("import {m}")]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !importable(module) {
        let installed = Command::new("python3").args(["-m", "pip", "install", "--quiet", spec]).status().expect("running pip");
        assert!(installed.success() && importable(module), "pip install {spec} failed");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), herald::Error>>,
}

impl Running {
    /// Asks herald to shut down and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), herald::Error> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.task).await.expect("herald stops in time").expect("herald task")
    }
}

/// A test that fails before `stop` still stops herald while the broker is
/// up; otherwise the consumer's close waits on a broker that is gone.
impl Drop for Running {
    fn drop(&mut self) {
        let Some(stop) = self.stop.take() else { return };
        let _ = stop.send(());
        let task = &mut self.task;
        tokio::task::block_in_place(|| {
            let _ = tokio::runtime::Handle::current().block_on(tokio::time::timeout(Duration::from_secs(15), task));
        });
    }
}

/// Status events read from the status topic, decoded.
pub struct Statuses {
    reader: Reader,
    schema: Schema,
    pub events: Vec<StatusEvent>,
}

impl Statuses {
    /// The status topic `topic` of the cluster at `bootstrap`.
    pub fn on(bootstrap: &str, topic: &str, bundled: &Bundled) -> Statuses {
        Statuses { reader: Reader::new(bootstrap, topic), schema: bundled.status.clone(), events: vec![] }
    }

    /// Reads until `done` holds for every event read so far.
    pub async fn until(&mut self, timeout: Duration, done: impl Fn(&[StatusEvent]) -> bool) -> &[StatusEvent] {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.events) {
            let Some(message) = self.reader.next(deadline).await else {
                panic!("timed out after {timeout:?}; statuses so far: {:#?}", self.events);
            };
            self.events.push(codec::decode_status(&self.schema, message.payload().unwrap()).expect("status decodes"));
        }
        &self.events
    }

    /// Reads until each of `event_ids` has a terminal status; returns them.
    pub async fn terminal(&mut self, timeout: Duration, event_ids: &[String]) -> HashMap<String, StatusEvent> {
        self.until(timeout, |events| {
            event_ids.iter().all(|id| events.iter().any(|e| &e.event_id == id && e.status.is_terminal()))
        })
        .await;
        self.events.iter().filter(|e| e.status.is_terminal()).map(|e| (e.event_id.clone(), e.clone())).collect()
    }

    /// Each event's current status, by the rule subscribers follow
    /// (`StatusEvent::supersedes`), whatever order they arrived in.
    pub fn current(&self) -> HashMap<String, StatusEvent> {
        let mut current: HashMap<String, StatusEvent> = HashMap::new();
        for e in &self.events {
            if current.get(&e.event_id).is_none_or(|c| e.supersedes(c)) {
                current.insert(e.event_id.clone(), e.clone());
            }
        }
        current
    }

    /// All statuses of one event, in order.
    pub fn of(&self, event_id: &str) -> Vec<StatusEvent> {
        self.events.iter().filter(|e| e.event_id == event_id).cloned().collect()
    }

    /// Reads whatever else arrives within `window`.
    /// Every status on the topic now, read afresh to its end. An outcome's
    /// status is written with the rest of its records, so once a terminal
    /// status has been seen, what followed from it is there too: no quiet
    /// spell is waited for.
    pub async fn caught_up(&mut self) {
        let mut fresh = Reader::new(self.reader.bootstrap(), self.reader.topic());
        let all = fresh.read_to_end(Duration::from_secs(30)).await;
        self.events = all.iter().map(|m| codec::decode_status(&self.schema, m.payload().unwrap()).expect("status decodes")).collect();
    }
}

pub fn sms(event_id: &str, user: &str, phone: &str, body: &str) -> Request {
    Request {
        prefs: Default::default(),
        event_id: event_id.into(),
        user_id: user.into(),
        channel: Channel::Sms,
        recipient: phone.into(),
        content: Content { title: None, body: body.into(), ..Content::default() },
        scheduled_at: None,
        created_at: Utc::now(),
    }
}

pub fn push(event_id: &str, user: &str, token: &str, title: &str, body: &str) -> Request {
    Request {
        prefs: Default::default(),
        event_id: event_id.into(),
        user_id: user.into(),
        channel: Channel::Push,
        recipient: token.into(),
        content: Content { title: Some(title.into()), body: body.into(), ..Content::default() },
        scheduled_at: None,
        created_at: Utc::now(),
    }
}

pub fn statuses_of(events: &[StatusEvent], event_id: &str) -> Vec<(Status, u32)> {
    events.iter().filter(|e| e.event_id == event_id).map(|e| (e.status, e.attempt)).collect()
}

pub fn header<'a>(message: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    message.headers().and_then(|h| herald::record::envelope::header(h, key))
}

pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}
