//! Load benchmark: herald against the limits of this machine, side by side
//! in one run.
//!
//!     cargo bench --bench load [-- --records 500000 --latency-secs 5]
//!         [--check] [--smoke] [--charts DIR] [--rounds 3] [--phases ...]
//!         [--herald PATH] [--instructions]
//!
//! One tansu broker and one backlog of requests (about 300 bytes each, half
//! SMS, half push, over 50,000 users) are shared by every phase; each phase
//! is its own consumer group reading the same partitions, in its own child
//! process, so CPU time (`wait4`) and peak RSS (`VmHWM`) are its alone. The
//! fake providers run in a child of their own too, so their CPU is counted
//! apart from herald's.
//!
//! 1. passthrough: consume, produce the same bytes elsewhere with herald's
//!    producer settings, store the offset after the ack. The Kafka limit.
//! 2. herald with `--delivery dry-run`: the pipeline's own cost.
//! 3. the same with `--commit-interval 5s` (librdkafka's old default), to
//!    show what committing every 500 ms costs.
//! 4. bare HTTP: the passthrough, plus the provider's HTTP request for each
//!    record (Twilio's form for SMS, FCM's JSON for push) to the same fakes,
//!    with herald's concurrency (32 per channel) and HTTP client settings.
//!    A call's slot is free again when the provider answers. The HTTP limit.
//! 5. held bare HTTP: the same, but each call also takes one of 64 sends
//!    (over both channels) held until its output record is acknowledged,
//!    as herald does so that a crash repeats at most that many calls (see
//!    the README's "No double sends"). The limit of any pipeline with that
//!    guarantee, and what herald is checked on.
//! 6. herald delivering over HTTP to the same fakes.
//! 7. The passthrough and herald (no-op sink) again, each fed live at half
//!    of (2)'s rate, and at 1,000 msgs/s: latency from each request record's
//!    timestamp to its output record's.
//!
//! Rates are taken from the output records' timestamps, over the middle 90%
//! of them, so group joins, start-up and the tail are not counted. Phases
//! 1–6 run `--rounds` times (3 by default), interleaved, every other
//! round in reverse order, and each one's median round is its figure: on a
//! shared machine a round can be slowed by noise, or sped up by a broker
//! whose memory is still fresh, and the median is moved by neither. A
//! ratio is the median of the round-by-round ratios of a phase and its
//! limit, which ran next to each other. The table lists every round.
//!
//! `--phases noop,latency` runs some of them (names: passthrough, noop,
//! noop-5s, bare-http, bare-http-held, http, latency); the ratios need
//! their limit's phase. `--herald PATH` runs another build of herald, such
//! as an older commit's, against the same limits.
//!
//! `--check` compares herald's ratios (2 against 1, 6 against 5) with the
//! floors in `benches/floors.json` and exits non-zero below them.
//! `--smoke` is the small run CI makes (50,000 records, 2 s of latency), and
//! checks against the smoke floors. `--charts DIR` writes the throughput
//! over time of each phase and the latency distributions there, as SVG
//! (default `target/bench`).
//!
//! `--instructions` counts instead of timing: the passthrough and herald's
//! no-op phase each run under `valgrind --tool=callgrind` on a backlog of
//! `--records` (50,000 by default here) and on one three times as large.
//! The difference of their instruction totals, over the difference of
//! their records, is the cost of one record with start-up, group joins and
//! the first sight of each phone number left out. Instructions do not
//! depend on what else the machine is doing, so this ratio moves only when
//! the code does; with `--check` it is held to `instructions.noop` in
//! `benches/floors.json`.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
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
/// herald's provider calls per channel, by default.
const CONCURRENCY: usize = 32;
/// herald's `--unconfirmed-sends`, by default: over both channels.
const UNCONFIRMED: usize = 64;

struct Args {
    records: usize,
    latency_secs: u64,
    /// Offered load for the first latency phase; half the no-op rate by default.
    latency_rate: Option<f64>,
    check: bool,
    smoke: bool,
    /// Runs of each throughput phase; the median counts.
    rounds: usize,
    charts: PathBuf,
    phases: Vec<String>,
    instructions: bool,
    /// `--timing`: the mixed load of the timing wheel instead (see `timing`).
    timing: bool,
    /// `--timing-kill`: the same, with herald SIGKILLed once.
    timing_kill: bool,
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match argv.first().map(String::as_str) {
        Some("passthrough") => {
            runtime.block_on(passthrough(&argv[1], &argv[2], &argv[3], &argv[4], None));
            return std::process::ExitCode::SUCCESS;
        }
        Some(role @ ("http-loop" | "http-loop-held")) => {
            let fakes: FakeUrls = serde_json::from_str(&argv[5]).expect("fake provider addresses");
            let slot = if role == "http-loop" { Slot::UntilAnswer } else { Slot::UntilDurable };
            runtime.block_on(passthrough(&argv[1], &argv[2], &argv[3], &argv[4], Some((fakes, slot))));
            return std::process::ExitCode::SUCCESS;
        }
        Some("fakes") => {
            runtime.block_on(fakes());
            return std::process::ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mut args = Args {
        records: 500_000,
        latency_secs: 5,
        latency_rate: None,
        check: false,
        smoke: false,
        rounds: 3,
        charts: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
        phases: ["passthrough", "noop", "noop-5s", "bare-http", "bare-http-held", "http", "store", "latency"].map(str::to_owned).into(),
        instructions: false,
        timing: false,
        timing_kill: false,
    };
    let (mut records, mut latency_secs) = (None, None);
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--records" => records = Some(value().parse().expect("a count")),
            "--latency-secs" => latency_secs = Some(value().parse().expect("seconds")),
            "--latency-rate" => args.latency_rate = Some(value().parse().expect("msgs/s")),
            "--charts" => args.charts = PathBuf::from(value()),
            "--phases" => args.phases = value().split(',').map(str::to_owned).collect(),
            "--rounds" => args.rounds = value().parse::<usize>().expect("a count").max(1),
            "--herald" => HERALD.set(PathBuf::from(value())).expect("--herald given once"),
            "--check" => args.check = true,
            "--smoke" => args.smoke = true,
            "--instructions" => args.instructions = true,
            "--timing" => args.timing = true,
            "--timing-kill" => args.timing_kill = true,
            // cargo bench passes --bench; filters do not apply here.
            _ => {}
        }
    }
    args.records = records.unwrap_or(if args.smoke || args.instructions { 50_000 } else { 500_000 });
    // tansu lists every batch stored in a partition at each fetch, so its
    // fetches slow as a run writes: at 1,000 msgs/s the passthrough's p99
    // was 16 ms over a run's first 5 s and 214 ms over its sixth 5 s. A
    // Kafka broker's fetch costs the same however long its log is. Runs
    // are kept short enough to measure the phase rather than tansu's log,
    // and each 5 s slice's p99 is printed, so a growing one shows.
    args.latency_secs = latency_secs.unwrap_or(if args.smoke { 2 } else { 5 });
    if args.instructions {
        return runtime.block_on(instructions(args));
    }
    if args.timing || args.timing_kill {
        return runtime.block_on(timing_bench(args));
    }
    runtime.block_on(bench(args))
}

#[path = "load/timing.rs"]
mod timing;

/// `--timing` (and `--timing-kill`): the timing wheel under a mixed load,
/// checked against `timing` in `benches/floors.json`.
async fn timing_bench(args: Args) -> std::process::ExitCode {
    let herald_bin = HERALD.get_or_init(|| PathBuf::from(env!("CARGO_BIN_EXE_herald"))).clone();
    let floors = floors();
    let floor = |name: &str| floors["timing"][name].as_i64().unwrap_or_else(|| panic!("timing.{name} in benches/floors.json"));
    let mut failed = false;
    for kill in [false, true].into_iter().filter(|k| if *k { args.timing_kill } else { args.timing }) {
        let label = if kill { "timing, SIGKILL 60 s in" } else { "timing" };
        println!("{label}: 10,000 scheduled 0-120 s ahead, 2,000 SMS up the 20/40/80 s ladder, 1,000 deferred pushes");
        let t = timing::run(&herald_bin, kill, 7).await;
        println!("\n| run | waits | early | lost | lateness p50 | p99 | max |\n|---|---|---|---|---|---|---|");
        println!(
            "| {label} | {} | {} | {} | {} ms | {} ms | {} ms |",
            t.waits,
            t.early,
            t.lost,
            t.percentile(0.5),
            t.percentile(0.99),
            t.lateness.last().copied().unwrap_or(0)
        );
        if kill {
            let at = |p: f64| t.in_flight.get(((t.in_flight.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0);
            println!(
                "under way at the kill (announced before it, due after): {} waits, p50 {} ms, p99 {} ms, max {} ms; checked for early and lost, not for lateness",
                t.in_flight.len(),
                at(0.5),
                at(0.99),
                t.in_flight.last().copied().unwrap_or(0)
            );
        }
        for (kind, late) in &t.by_kind {
            let at = |p: f64| late.get(((late.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0);
            println!("  {kind}: {} waits, p50 {} ms, p99 {} ms, max {} ms", late.len(), at(0.5), at(0.99), late.last().copied().unwrap_or(0));
        }
        let copies: Vec<String> = t.copies.iter().map(|(n, count)| format!("{count} with {n}")).collect();
        println!("copies on the delay topics per request: {}", copies.join(", "));
        let name = if kill { "timing-kill.svg" } else { "timing.svg" };
        std::fs::create_dir_all(&args.charts).ok();
        if let Err(error) = timing::chart(&args.charts.join(name), &t) {
            println!("chart not written: {error}");
        }
        if args.check {
            let checks = [
                ("early", t.early as i64, floor("early")),
                ("lost", t.lost as i64, floor("lost")),
                ("lateness p99 ms", t.percentile(0.99), floor("p99_ms")),
                ("lateness max ms", t.lateness.last().copied().unwrap_or(0), floor("max_ms")),
            ];
            for (what, measured, most) in checks {
                let ok = measured <= most;
                failed |= !ok;
                println!("  {} {what}: {measured} (at most {most})", if ok { "ok  " } else { "FAIL" });
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// The phases whose throughput is compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Passthrough,
    Noop,
    NoopSlowCommits,
    BareHttp,
    BareHttpHeld,
    Http,
    /// `herald api` reading the no-op phase's statuses into the store.
    Store,
}

/// The pause before each phase.
const SETTLE: Duration = Duration::from_secs(3);

/// What bounds the bare HTTP loop's calls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Each channel's slots only, free at the answer: the most calls a
    /// second.
    UntilAnswer,
    /// Those, and one of 64 sends held until the call's output record is
    /// acknowledged, as herald holds them so that a crash repeats at most
    /// that many calls.
    UntilDurable,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Passthrough => "passthrough (consume → produce → store offset)",
            Phase::Noop => "herald, no-op sink (--delivery dry-run)",
            Phase::NoopSlowCommits => "herald, no-op sink, --commit-interval 5s",
            Phase::BareHttp => "bare HTTP (consume → POST → produce → store)",
            Phase::BareHttpHeld => "bare HTTP, 64 sends held until the produce ack",
            Phase::Http => "herald, HTTP to the fake Twilio and FCM",
            Phase::Store => "status store (herald api → CQL)",
        }
    }

    /// Its name for `--phases`.
    fn name(self) -> &'static str {
        match self {
            Phase::Passthrough => "passthrough",
            Phase::Noop => "noop",
            Phase::NoopSlowCommits => "noop-5s",
            Phase::BareHttp => "bare-http",
            Phase::BareHttpHeld => "bare-http-held",
            Phase::Http => "http",
            Phase::Store => "store",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Phase::Passthrough => "passthrough",
            Phase::Noop => "herald no-op",
            Phase::NoopSlowCommits => "herald no-op, 5 s commits",
            Phase::BareHttp => "bare HTTP",
            Phase::BareHttpHeld => "bare HTTP, held",
            Phase::Http => "herald HTTP",
            Phase::Store => "status store",
        }
    }
}

/// Where the fake providers listen, as the child that runs them says.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct FakeUrls {
    twilio: String,
    fcm: String,
    credentials: PathBuf,
    /// herald's flags for these fakes.
    args: Vec<String>,
}

async fn bench(args: Args) -> std::process::ExitCode {
    let broker = Broker::start();
    let (mut fakes_child, fakes) = start_fakes();
    let fakes_pid = fakes_child.id() as i32;
    let bootstrap = broker.bootstrap.clone();
    let run = format!("{}", std::process::id());
    let local = broker.is_local();
    let topic = |name: &str| if local { name.to_owned() } else { format!("{name}.{run}") };
    let requested = topic(REQUESTED);
    kafka::create_topics(&bootstrap, &[&requested], PARTITIONS).await;

    let started = Instant::now();
    let bytes = backlog(&bootstrap, &requested, args.records).await;
    println!(
        "backlog: {} requests, {:.0} bytes each on average, produced in {:.2?}",
        args.records,
        bytes as f64 / args.records as f64,
        started.elapsed()
    );

    // Each phase runs `rounds` times, interleaved with the others, and its
    // median round stands for it. The broker keeps every phase's output in
    // memory and slows as it grows (the passthrough fell from 472,000 to
    // 362,000 a second over three rounds), so every other round runs in
    // the reverse order: a phase and its limit run next to each other, the
    // limit first and then second, and their ratio is taken round by round.
    let mut runs: Vec<Vec<Row>> = Vec::new();
    let phases = [Phase::Passthrough, Phase::Noop, Phase::NoopSlowCommits, Phase::BareHttp, Phase::BareHttpHeld, Phase::Http];
    for round in 1..=args.rounds {
        let mut order = phases.to_vec();
        if round % 2 == 0 {
            order.reverse();
        }
        for phase in order.into_iter().filter(|p| args.phases.iter().any(|n| n == p.name())) {
            let name = phase.name();
            let output = topic(&format!("bench.out.{name}.{round}"));
            let group = format!("bench-{name}-{run}-{round}");
            let (command, check) = match phase {
                Phase::Passthrough => (child("passthrough", &bootstrap, &requested, &output, &group, None), Check::Copies),
                Phase::BareHttp => (child("http-loop", &bootstrap, &requested, &output, &group, Some(&fakes)), Check::Copies),
                Phase::BareHttpHeld => (child("http-loop-held", &bootstrap, &requested, &output, &group, Some(&fakes)), Check::Copies),
                Phase::Noop => (herald(&bootstrap, &group, &requested, &output, &dry_run(&[])), Check::AllSent),
                Phase::NoopSlowCommits => (herald(&bootstrap, &group, &requested, &output, &dry_run(&["--commit-interval", "5s"])), Check::AllSent),
                Phase::Http => (herald(&bootstrap, &group, &requested, &output, &fakes.args), Check::AllSent),
                Phase::Store => unreachable!("not among the interleaved phases"),
            };
            let fakes_before = cpu_of(fakes_pid);
            let mut row = measure(phase, &bootstrap, &group, &requested, &output, args.records, check, command).await;
            if matches!(phase, Phase::BareHttp | Phase::BareHttpHeld | Phase::Http) {
                row.fakes_cpu = Some(cpu_of(fakes_pid) - fakes_before);
            }
            match runs.iter_mut().find(|r| r[0].phase == phase) {
                Some(rounds) => rounds.push(row),
                None => runs.push(vec![row]),
            }
        }
    }

    let mut rows: Vec<Row> = runs.into_iter().map(median).collect();
    // Once, on the statuses of the no-op phase's first round: can the
    // store keep up with what herald writes at full speed?
    if args.phases.iter().any(|n| n == "store") && args.phases.iter().any(|n| n == "noop") {
        rows.push(store_phase(&bootstrap, &requested, &topic("bench.out.noop.1"), args.records, &run).await);
    }

    let noop_rate = rows.iter().find(|r| r.phase == Phase::Noop).map(|r| r.rate);
    let half = args.latency_rate.or(noop_rate.map(|r| r / 2.0)).unwrap_or(1000.0);
    let mut latencies = Vec::new();
    let mut latency_phases = if args.phases.iter().any(|n| n == "latency") { vec![half, 1000.0] } else { vec![] };
    // Each rate once: two runs at one rate would share their topics.
    latency_phases.dedup();
    // The broker holds every phase's output in memory by now, and a latency
    // run on it measured that: at 1,000 msgs/s both p99s were 31-33 ms
    // after the phases, 14-18 ms on a fresh broker. Latency runs get a
    // broker of their own when the bench started it.
    let (_latency_broker, bootstrap) = if local && !latency_phases.is_empty() {
        drop(broker);
        let fresh = Broker::start();
        let bootstrap = fresh.bootstrap.clone();
        (Some(fresh), bootstrap)
    } else {
        (Some(broker), bootstrap)
    };
    for mut rate in latency_phases {
        // The generator, the broker and the phase share the machine's
        // cores. A rate the generator cannot offer measures the generator's
        // backlog, not the phase: step down until both runs keep up.
        loop {
            let mut pair = Vec::new();
            for name in ["passthrough", "herald"] {
                let measured = latency_phase(&bootstrap, &topic, &run, name, rate, args.latency_secs).await;
                if measured.offered < rate * KEEPS_UP && rate > 1000.0 {
                    println!("latency: the generator offered {:.0} msgs/s of {rate:.0} beside {name}; trying {:.0}", measured.offered, rate / 2.0);
                    break;
                }
                pair.push((name, rate, measured));
            }
            if pair.len() == 2 {
                latencies.extend(pair);
                break;
            }
            rate /= 2.0;
        }
    }
    let _ = fakes_child.kill();
    let _ = fakes_child.wait();

    print_tables(&rows, &latencies, args.latency_secs);
    if let Err(error) = charts(&args.charts, &rows, &latencies) {
        println!("charts not written: {error}");
    } else {
        println!("\ncharts: {}", args.charts.display());
    }
    if args.check {
        return check(&rows, args.smoke);
    }
    std::process::ExitCode::SUCCESS
}

/// The passthrough's and herald's no-op instructions per record (see the
/// module's doc), and their ratio against `instructions.noop`.
async fn instructions(args: Args) -> std::process::ExitCode {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap.clone();
    let run = format!("{}", std::process::id());
    let topic = |name: &str| if broker.is_local() { name.to_owned() } else { format!("{name}.{run}") };
    let sizes = [args.records, 3 * args.records];
    let mut inputs = Vec::new();
    for records in sizes {
        let requested = topic(&format!("{REQUESTED}.{records}"));
        kafka::create_topics(&bootstrap, &[&requested], PARTITIONS).await;
        backlog(&bootstrap, &requested, records).await;
        inputs.push((records, requested));
    }
    let dir = std::env::temp_dir().join(format!("herald-bench-callgrind-{run}"));
    std::fs::create_dir_all(&dir).expect("a directory for callgrind's output");
    let mut per_record = Vec::new();
    for phase in [Phase::Passthrough, Phase::Noop] {
        let mut totals = Vec::new();
        for (records, requested) in &inputs {
            let name = phase.name();
            let (output, group) = (topic(&format!("bench.out.{name}.{records}")), format!("bench-{name}-{run}-{records}"));
            let out = dir.join(format!("{name}-{records}.out"));
            *CALLGRIND_OUT.lock().unwrap() = Some(out.clone());
            let command = match phase {
                Phase::Passthrough => child("passthrough", &bootstrap, requested, &output, &group, None),
                _ => herald(&bootstrap, &group, requested, &output, &dry_run(&[])),
            };
            *CALLGRIND_OUT.lock().unwrap() = None;
            let check = if phase == Phase::Passthrough { Check::Copies } else { Check::AllSent };
            measure(phase, &bootstrap, &group, requested, &output, *records, check, command).await;
            totals.push(callgrind_total(&out));
        }
        let cost = (totals[1] as f64 - totals[0] as f64) / (sizes[1] - sizes[0]) as f64;
        per_record.push((phase, totals, cost));
    }
    println!("\n{:<48} {:>16} {:>16} {:>12} {:>8}", "phase (under callgrind)", format!("Ir, {}", sizes[0]), format!("Ir, {}", sizes[1]), "Ir/record", "ratio");
    let passthrough = per_record[0].2;
    for (phase, totals, cost) in &per_record {
        println!("{:<48} {:>16} {:>16} {:>12.0} {:>7.2}×", phase.label(), totals[0], totals[1], cost, passthrough / cost);
    }
    let ratio = passthrough / per_record[1].2;
    // Kept on request, for `callgrind_annotate` to say where they went.
    if std::env::var_os("HERALD_BENCH_KEEP_CALLGRIND").is_some() {
        println!("callgrind's output: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !args.check {
        return std::process::ExitCode::SUCCESS;
    }
    let floor = floors()["instructions"]["noop"].as_f64().expect("instructions.noop in benches/floors.json");
    let ok = ratio >= floor;
    println!("\ncheck against benches/floors.json:\n  {} herald no-op against the passthrough, in instructions a record: {ratio:.3}× (floor {floor:.3}×)", if ok { "ok  " } else { "FAIL" });
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// The instructions callgrind counted in a run, from its `totals:` line.
fn callgrind_total(out: &Path) -> u64 {
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let line = text.lines().find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")));
    line.and_then(|l| l.split_whitespace().next()?.parse().ok()).unwrap_or_else(|| panic!("no totals in {}", out.display()))
}

fn floors() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/floors.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("benches/floors.json")).expect("floors parse")
}

/// The round with the median rate, listing every round's rate.
fn median(mut rounds: Vec<Row>) -> Row {
    let rates: Vec<f64> = rounds.iter().map(|r| r.rate).collect();
    rounds.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mut row = rounds.swap_remove(rounds.len() / 2);
    row.rounds = rates;
    row
}

/// `of` against `to`: the median of their rates' ratios round by round,
/// since each round ran them next to each other.
fn paired_ratio(rows: &[Row], of: Phase, to: Phase) -> Option<f64> {
    let (of, to) = (rows.iter().find(|r| r.phase == of)?, rows.iter().find(|r| r.phase == to)?);
    let mut ratios: Vec<f64> = of.rounds.iter().zip(&to.rounds).map(|(a, b)| a / b).collect();
    if ratios.len() != of.rounds.len().max(to.rounds.len()) || ratios.is_empty() {
        // Phases measured a different number of times: their medians.
        return Some(of.rate / to.rate);
    }
    ratios.sort_by(f64::total_cmp);
    Some(ratios[ratios.len() / 2])
}

fn print_tables(rows: &[Row], latencies: &[(&str, f64, Latency)], latency_secs: u64) {
    println!(
        "\n{:<48} {:>9} {:>9} {:>14} {:>11} {:>9} {:>12}  every round, msgs/s",
        "phase", "records", "msgs/s", "ratio", "CPU µs/msg", "peak RSS", "fakes µs/msg"
    );
    for r in rows {
        let (limit, against) = match r.phase {
            Phase::BareHttp | Phase::BareHttpHeld => (Phase::BareHttp, "bare HTTP"),
            Phase::Http => (Phase::BareHttpHeld, "held bare HTTP"),
            Phase::Store => (Phase::Noop, "herald no-op"),
            _ => (Phase::Passthrough, "passthrough"),
        };
        // A limit left out with --phases leaves its ratio unmeasured, not NaN.
        let of = |limit| paired_ratio(rows, r.phase, limit).map_or("–".to_owned(), |x| format!("{x:.2}×"));
        let mut ratio = format!("{} {}", of(limit), if matches!(r.phase, Phase::Passthrough | Phase::BareHttp) { "" } else { against });
        if r.phase == Phase::Store {
            // herald over HTTP is the rate statuses come at in production.
            ratio += &format!(", {} herald HTTP", of(Phase::Http));
        }
        let fakes = r.fakes_cpu.map_or(String::new(), |c| format!("{:.1}", c.as_secs_f64() * 1e6 / r.records as f64));
        let rounds: Vec<String> = r.rounds.iter().map(|rate| format!("{rate:.0}")).collect();
        println!(
            "{:<48} {:>9} {:>9.0} {:>14} {:>11.1} {:>6.0} MB {:>12}  {}",
            r.phase.label(),
            r.records,
            r.rate,
            ratio.trim_end(),
            r.cpu.as_secs_f64() * 1e6 / r.records as f64,
            r.peak_rss_kb as f64 / 1024.0,
            fakes,
            rounds.join(" ")
        );
    }
    println!("\nrequest → output record latency, each offered for {latency_secs} s:");
    for (name, rate, l) in latencies {
        let slices = if l.slices.len() > 1 {
            let each: Vec<String> = l.slices.iter().map(|ms| ms.to_string()).collect();
            format!("; p99 by {} s: {} ms", SLICE_MS / 1000, each.join(", "))
        } else {
            String::new()
        };
        println!(
            "{:<12} at {:>7.0} msgs/s   p50 {:>4} ms   p99 {:>4} ms   max {:>4} ms   ({} records, offered at {:.0}/s{slices})",
            name, rate, l.p50, l.p99, l.max, l.count, l.offered
        );
    }
}

/// The ratios herald must keep, as `benches/floors.json` has them.
fn check(rows: &[Row], smoke: bool) -> std::process::ExitCode {
    let floors = floors();
    let set = if smoke { "smoke" } else { "full" };
    let floor = |name: &str| floors[set][name].as_f64().unwrap_or_else(|| panic!("{set}.{name} in benches/floors.json"));
    let ratio = |of: Phase, to: Phase| paired_ratio(rows, of, to);
    let measured = [
        ("noop", "herald no-op against the passthrough", ratio(Phase::Noop, Phase::Passthrough)),
        ("http", "herald HTTP against held bare HTTP", ratio(Phase::Http, Phase::BareHttpHeld)),
    ];
    let mut failed = false;
    println!("\ncheck against the {set} floors in benches/floors.json:");
    for (name, what, ratio) in measured {
        let Some(ratio) = ratio else {
            // Left out with --phases: said, so that it is never mistaken for a pass.
            println!("  not measured: {what} (its phases were not run)");
            continue;
        };
        let ok = ratio >= floor(name);
        failed |= !ok;
        println!("  {} {what}: {ratio:.2}× (floor {:.2}×)", if ok { "ok  " } else { "FAIL" }, floor(name));
    }
    if let Some(ratio) = ratio(Phase::Http, Phase::BareHttp) {
        // Not a floor: what holding a slot until the outcome is durable costs.
        println!("  (herald HTTP against bare HTTP, whose slots are free at the answer: {ratio:.2}×)");
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
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
    fn event_id(self, payload: &[u8]) -> String {
        match self {
            Check::Copies => {
                let datum = codec::unframe(payload).expect("wire format").1;
                codec::read_request(datum).expect("a copied request").event_id
            }
            Check::AllSent => codec::read_status(payload).expect("a status event").event_id,
        }
    }
}

struct Row {
    phase: Phase,
    records: usize,
    rate: f64,
    cpu: Duration,
    peak_rss_kb: i64,
    /// CPU the fake providers used during the phase.
    fakes_cpu: Option<Duration>,
    /// Output records per 100 ms, from the phase's first output record.
    timeline: Vec<u64>,
    /// The rate of every round, this one's among them.
    rounds: Vec<f64>,
}

/// Runs one child until its group has committed the whole backlog, then
/// reads its output to time it.
#[allow(clippy::too_many_arguments)]
async fn measure(
    phase: Phase,
    bootstrap: &str,
    group: &str,
    input: &str,
    output: &str,
    records: usize,
    check: Check,
    mut command: Command,
) -> Row {
    let label = phase.label();
    // What the last phase left behind (its output read back and dropped,
    // the broker's bookkeeping of its group) settles before this one starts.
    tokio::time::sleep(SETTLE).await;
    println!("{label}: running");
    let log = std::env::temp_dir().join(format!("herald-bench-{}.log", output.replace('.', "-")));
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = command.spawn().expect("starting the phase");
    let pid = child.id() as i32;
    wait_committed(bootstrap, group, input, records, &mut child, &log).await;
    // Read here, not from wait4: a child's ru_maxrss starts from its
    // parent's peak at fork, and this process holds whole topics.
    let peak_rss_kb = vm_hwm_kb(pid);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let usage = tokio::task::spawn_blocking(move || wait4(pid)).await.expect("waiting for the phase");
    // Reaped by wait4 above; this only tells std not to wait again.
    let _ = child.try_wait();
    assert!(usage.success, "{label} failed; see {}", log.display());
    let messages = read_all(bootstrap, output).await;
    let (rate, timeline) = rate_of(&messages, records, check);
    println!("{label}: {rate:.0} msgs/s");
    Row { phase, records, rate, cpu: usage.cpu, peak_rss_kb, fakes_cpu: None, timeline, rounds: vec![rate] }
}

/// `herald api` drains `statuses` into a fresh CQL keyspace (kassandra in
/// this process, or SCYLLA_URI). Its rate is taken from its group's
/// committed offsets, sampled, between 5% and 95% of the records.
async fn store_phase(bootstrap: &str, requested: &str, statuses: &str, records: usize, run: &str) -> Row {
    use clap::Parser;
    let label = Phase::Store.label();
    println!("{label}: running");
    let cql = herald_testkit::Cql::start();
    let group = format!("bench-store-{run}");
    let base: Vec<String> = ["herald", "--brokers", bootstrap, "--group-id", &group].map(str::to_owned).into_iter().chain(cql.args()).collect();
    herald::migrate(&herald::Config::try_parse_from(&base).expect("migrate arguments")).await.expect("herald migrate");
    let mut command = herald(bootstrap, &group, requested, statuses, &[]);
    command.args(cql.args()).args(["api", "--api-token", herald_testkit::API_TOKEN, "--api-listen", "127.0.0.1:0"]);
    let log = std::env::temp_dir().join("herald-bench-store.log");
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = command.spawn().expect("starting herald api");
    let pid = child.id() as i32;
    let store_group = format!("{group}.api");
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut samples: Vec<(Instant, usize)> = Vec::new();
    loop {
        let (b, g, t) = (bootstrap.to_owned(), store_group.clone(), statuses.to_owned());
        let committed: i64 = tokio::task::spawn_blocking(move || kafka::committed(&b, &g, &t)).await.expect("reading commits").values().sum();
        samples.push((Instant::now(), committed.max(0) as usize));
        if committed as usize >= records {
            break;
        }
        assert!(Instant::now() < deadline, "the store committed {committed} of {records}; see {}", log.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak_rss_kb = vm_hwm_kb(pid);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let usage = tokio::task::spawn_blocking(move || wait4(pid)).await.expect("waiting for herald api");
    let _ = child.try_wait();
    assert!(usage.success, "herald api failed; see {}", log.display());
    let at = |share: f64| samples.iter().find(|(_, n)| *n as f64 >= records as f64 * share).copied().expect("a sample past it");
    let ((t5, n5), (t95, n95)) = (at(0.05), at(0.95));
    let rate = (n95 - n5) as f64 / (t95 - t5).as_secs_f64().max(1e-3);
    println!("{label}: {rate:.0} msgs/s");
    Row { phase: Phase::Store, records, rate, cpu: usage.cpu, peak_rss_kb, fakes_cpu: None, timeline: vec![], rounds: vec![rate] }
}

fn vm_hwm_kb(pid: i32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading the phase's /proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc status");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).expect("VmHWM in kB")
}

/// CPU time (user and system) a running process has used so far.
fn cpu_of(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc stat");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// Consumer settings for every phase, herald's and the passthrough's alike.
/// tansu answers a fetch only when `fetch.wait.max.ms` (500 by default)
/// runs out, even once records have arrived; Kafka answers as soon as
/// `fetch.min.bytes` are there. The short wait keeps tansu from adding
/// hundreds of milliseconds to every record's latency. And when its local
/// queue is over `queued.max.messages.kbytes` librdkafka pauses fetching
/// for `fetch.queue.backoff.ms` (1 s by default): longer than a fast
/// consumer takes to drain 64 MB, so it would stall. Commits follow
/// herald's `--commit-interval` for herald, 500 ms for the others.
fn consumer_args() -> Vec<String> {
    let options = ["fetch.wait.max.ms=10", "fetch.queue.backoff.ms=20"];
    options.iter().flat_map(|o| ["--kafka-consumer-option".to_owned(), (*o).to_owned()]).chain(kafka::fast_group_args()).collect()
}

fn dry_run(extra: &[&str]) -> Vec<String> {
    ["--delivery", "dry-run"].iter().chain(extra).map(|s| s.to_string()).collect()
}

/// The herald binary the phases run: this build's, or `--herald PATH`.
static HERALD: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn herald(bootstrap: &str, group: &str, requested: &str, status: &str, extra: &[String]) -> Command {
    let mut c = program(HERALD.get_or_init(|| PathBuf::from(env!("CARGO_BIN_EXE_herald"))));
    c.args(["--brokers", bootstrap, "--group-id", group, "--admin-listen", "127.0.0.1:0", "--topic-requested", requested, "--topic-status", status])
        .args(["--topic-dead-letter", &format!("{status}.dead-letter"), "--topic-suppressions", &format!("{status}.suppressions")])
        .args(["--retry-topics", &format!("{status}.retry-10m,{status}.retry-20m,{status}.retry-40m")])
        .args(["--wait-topics", &wait_topics(status)])
        .args(["--envelope-key", herald_testkit::ENVELOPE_KEY])
        .args(consumer_args())
        .args(extra)
        .env("RUST_LOG", "warn");
    c
}

/// The timing wheel's tiers, named after `status` as the other topics are.
fn wait_topics(status: &str) -> String {
    herald::topics::DEFAULT_WAIT_TOPICS.split(',').map(|t| format!("{status}.{t}")).collect::<Vec<_>>().join(",")
}

/// Where the next phase's instruction counts go, with `--instructions`.
static CALLGRIND_OUT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// `path` to run as a phase: under callgrind while [`CALLGRIND_OUT`] is set.
fn program(path: &Path) -> Command {
    match CALLGRIND_OUT.lock().unwrap().as_ref() {
        None => Command::new(path),
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.args(["--tool=callgrind", "--trace-children=yes", "--dump-line=no", "--compress-strings=no"]).arg(format!("--callgrind-out-file={}", out.display())).arg(path);
            c
        }
    }
}

/// This bench's own binary in one of its child roles.
fn child(role: &str, bootstrap: &str, input: &str, output: &str, group: &str, fakes: Option<&FakeUrls>) -> Command {
    let mut c = program(&std::env::current_exe().expect("own path"));
    c.args([role, bootstrap, input, output, group]);
    if let Some(fakes) = fakes {
        c.arg(serde_json::to_string(fakes).unwrap());
    }
    c
}

/// Starts the fake providers in a child; returns it and their addresses.
fn start_fakes() -> (std::process::Child, FakeUrls) {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg("fakes")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the fake providers");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).expect("their addresses");
    (child, serde_json::from_str(&line).expect("fake provider addresses"))
}

/// The fake providers' child: prints where they listen, then serves until
/// killed.
async fn fakes() {
    let providers = Providers::start().await;
    // Millions of recorded requests would cost the fakes more than
    // answering them, and more with every phase.
    providers.twilio.count_only();
    providers.fcm.count_only();
    let urls = FakeUrls {
        twilio: providers.twilio.base_url(),
        fcm: providers.fcm.base_url(),
        credentials: providers.credentials.clone(),
        args: providers.args(),
    };
    println!("{}", serde_json::to_string(&urls).unwrap());
    std::future::pending::<()>().await;
}

async fn wait_committed(bootstrap: &str, group: &str, input: &str, records: usize, child: &mut std::process::Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        // A phase that exits early (a flag an older --herald build does not
        // know) would otherwise be waited on until the deadline.
        if let Some(status) = child.try_wait().expect("the phase's status") {
            panic!("the phase exited ({status}) before group {group} committed {records} records; see {}", log.display());
        }
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

/// Every record of a finished phase's output, to the end of each
/// partition: what the rate is taken from, and where a duplicate or a
/// missing record shows.
async fn read_all(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let mut reader = Reader::backlog(bootstrap, topic);
    reader.read_to_end(Duration::from_secs(300)).await.to_vec()
}

/// The rate over the middle 90% of the output, and the output per 100 ms.
fn rate_of(messages: &[OwnedMessage], records: usize, check: Check) -> (f64, Vec<u64>) {
    let mut timestamps: Vec<i64> = messages.iter().filter_map(|m| m.timestamp().to_millis()).collect();
    match check {
        Check::Copies => assert_eq!(messages.len(), records, "one copy per request"),
        Check::AllSent => {
            let mut sent = std::collections::HashSet::new();
            for m in messages {
                let event = codec::read_status(m.payload().unwrap_or_default()).expect("status decodes");
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
    let mut timeline = vec![0u64; ((timestamps[timestamps.len() - 1] - t0) / 100 + 1) as usize];
    for t in &timestamps {
        timeline[((t - t0) / 100) as usize] += 1;
    }
    ((last - first) as f64 / (span.max(1) as f64 / 1000.0), timeline)
}

/// Users the backlog spreads over: 50,000, or more for backlogs over
/// 500,000, so that no user has more SMS than the 10-per-hour limit.
static USERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(50_000);

fn request(i: usize) -> Request {
    let users = USERS.load(std::sync::atomic::Ordering::Relaxed);
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
        prefs: Default::default(),
        event_id: format!("bench-{i:09}"),
        user_id: format!("user-{:05}", i % users),
        channel,
        recipient,
        content: Content { title, body: body.to_owned(), ..Content::default() },
        scheduled_at: None,
        created_at: Utc::now(),
    }
}

/// Produces `records` requests; returns the bytes produced.
async fn backlog(bootstrap: &str, topic: &str, records: usize) -> usize {
    USERS.store((records / 10).max(50_000), std::sync::atomic::Ordering::Relaxed);
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

/// The limits, in a child process: herald's own client settings, no
/// pipeline, offsets stored once the copy is acknowledged. With `fakes`,
/// each record first makes its provider's HTTP request (bare HTTP). Runs
/// until SIGTERM, like herald.
async fn passthrough(bootstrap: &str, input: &str, output: &str, group: &str, fakes: Option<(FakeUrls, Slot)>) {
    use clap::Parser;
    let config = herald::Config::try_parse_from(
        ["herald", "--brokers", bootstrap, "--group-id", group, "--envelope-key", herald_testkit::ENVELOPE_KEY, "--kafka-consumer-option", "auto.commit.interval.ms=500"]
            .into_iter()
            .map(str::to_owned)
            .chain(consumer_args()),
    )
    .expect("passthrough config");
    let settings = config.pipeline().expect("passthrough settings");
    let producer = herald::kafka::producer(&settings.kafka).expect("producer");
    // herald's consumer context, with no status topic to keep paused.
    let context = herald::pipeline::ingest::IngestContext::new(String::new(), Default::default(), producer.clone(), Duration::from_secs(10), Default::default(), vec![]);
    let consumer = herald::kafka::consumer(&settings.kafka, context).expect("consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let http = match fakes {
        Some((urls, slot)) => Some((Arc::new(Http::new(urls, settings.http_timeout).await), slot)),
        None => None,
    };
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
                let (key, payload) = (m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec());
                let at = (m.partition(), m.offset());
                let done: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match http.clone() {
                    // The bare copy: nothing but the produce is awaited.
                    None => Box::pin(send(&producer, output, key, payload, None)),
                    // A task per provider call, as herald has.
                    Some((http, hold)) => {
                        let (producer, output) = (producer.clone(), output.to_owned());
                        let task = tokio::spawn(async move {
                            let unconfirmed = http.call(&payload, hold).await;
                            send(&producer, &output, key, payload, None).await;
                            drop(unconfirmed);
                        });
                        Box::pin(task.map(|joined| joined.expect("a record's task")))
                    }
                };
                in_flight.push_back(done.map(move |()| at));
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

/// The bare HTTP phase's provider requests: what herald sends, made with
/// reqwest as herald makes them, and nothing else.
struct Http {
    client: reqwest::Client,
    twilio: String,
    fcm: String,
    bearer: String,
    slots: [tokio::sync::Semaphore; 2],
    unconfirmed: tokio::sync::Semaphore,
}

impl Http {
    async fn new(urls: FakeUrls, timeout: Duration) -> Http {
        let client = reqwest::Client::builder().timeout(timeout).user_agent(herald::USER_AGENT).build().expect("an HTTP client");
        let key: serde_json::Value = serde_json::from_slice(&std::fs::read(&urls.credentials).expect("the key file")).expect("a key");
        let project = key["project_id"].as_str().expect("project_id");
        let now = Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": key["client_email"], "scope": herald_testkit::fake::FCM_SCOPE, "aud": key["token_uri"], "iat": now, "exp": now + 3600,
        });
        let header = jsonwebtoken::Header { kid: key["private_key_id"].as_str().map(str::to_owned), ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256) };
        let signer = jsonwebtoken::EncodingKey::from_rsa_pem(key["private_key"].as_str().expect("private_key").as_bytes()).expect("an RSA key");
        let assertion = jsonwebtoken::encode(&header, &claims, &signer).expect("a JWT");
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)];
        let token: serde_json::Value =
            client.post(key["token_uri"].as_str().unwrap()).form(&form).send().await.expect("token exchange").json().await.expect("a token");
        let twilio = format!("{}2010-04-01/Accounts/{}/Messages.json", urls.twilio, herald_testkit::providers::ACCOUNT_SID);
        let fcm = format!("{}v1/projects/{project}/messages:send", urls.fcm);
        let bearer = token["access_token"].as_str().expect("access_token").to_owned();
        let slots = [tokio::sync::Semaphore::new(CONCURRENCY), tokio::sync::Semaphore::new(CONCURRENCY)];
        Http { client, twilio, fcm, bearer, slots, unconfirmed: tokio::sync::Semaphore::new(UNCONFIRMED) }
    }

    /// Makes the call in a slot of its channel, given back at the answer.
    /// Held, it also takes one of the sends that wait for their output's
    /// acknowledgement, after the channel's slot as herald takes them, and
    /// returns it.
    async fn call(&self, payload: &[u8], hold: Slot) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let request = codec::read_request(codec::unframe(payload).expect("wire format").1).expect("a request");
        let slot = self.slots[request.channel.index()].acquire().await.expect("open");
        let unconfirmed = match hold {
            Slot::UntilAnswer => None,
            Slot::UntilDurable => Some(self.unconfirmed.acquire().await.expect("open")),
        };
        let sent = match request.channel {
            Channel::Sms => {
                let form = [("To", request.recipient.as_str()), ("From", herald_testkit::providers::FROM), ("Body", &request.content.body)];
                self.client
                    .post(&self.twilio)
                    .basic_auth(herald_testkit::providers::ACCOUNT_SID, Some(herald_testkit::providers::AUTH_TOKEN))
                    .form(&form)
                    .send()
                    .await
            }
            Channel::Push => {
                let body = serde_json::json!({"message": {"token": request.recipient, "notification": {"title": request.content.title, "body": request.content.body}}});
                self.client.post(&self.fcm).bearer_auth(&self.bearer).header("X-GOOG-API-FORMAT-VERSION", "2").json(&body).send().await
            }
        };
        let response = sent.expect("the fake answers");
        assert!(response.status().is_success(), "the fake refused: {}", response.status());
        let _ = response.bytes().await;
        drop(slot);
        unconfirmed
    }
}

struct Latency {
    count: usize,
    p50: i64,
    p99: i64,
    max: i64,
    /// The rate the generator really offered, in records/s.
    offered: f64,
    /// Every record's latency, sorted, for the distribution chart.
    sorted: Vec<i64>,
    /// The p99 of the records offered in each 5 s of the run, in turn.
    slices: Vec<i64>,
}

/// The length of the slices a latency run's p99 is also given for.
const SLICE_MS: i64 = 5_000;

/// A latency run counts when its records were offered at this share of
/// the rate asked for, at least.
const KEEPS_UP: f64 = 0.9;

async fn latency_phase(bootstrap: &str, topic: &dyn Fn(&str) -> String, run: &str, name: &str, rate: f64, secs: u64) -> Latency {
    let requested = topic(&format!("bench.latency.{name}.{}", rate as u64));
    let output = format!("{requested}.out");
    kafka::create_topics(bootstrap, &[&requested, &output], PARTITIONS).await;
    let group = format!("bench-latency-{name}-{}-{run}", rate as u64);
    let (check, command) = match name {
        "passthrough" => (Check::Copies, child("passthrough", bootstrap, &requested, &output, &group, None)),
        _ => (Check::AllSent, herald(bootstrap, &group, &requested, &output, &dry_run(&[]))),
    };
    latency(bootstrap, &group, &requested, &output, check, command, rate, secs).await
}

/// A phase fed at `rate` requests/s on its own fresh topic; latency is each
/// output record's timestamp minus its request record's.
#[allow(clippy::too_many_arguments)]
async fn latency(bootstrap: &str, group: &str, requested: &str, output: &str, check: Check, mut command: Command, rate: f64, secs: u64) -> Latency {
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
    // Warm up: the phase has joined once the first output appears. That one
    // waited for the join, so it is not counted.
    let warm_up = usize::MAX / 2;
    produce(warm_up).await;
    // The output is read after the load, so reading takes no CPU from it.
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
    let offered = total as f64 / started.elapsed().as_secs_f64();
    while acks.next().await.is_some() {}
    // Read only once the phase has finished: a reader fetching a million
    // records from the same broker would slow the last records it waits for.
    wait_committed(bootstrap, group, requested, total + 1, &mut child, Path::new("the phase's output")).await;
    let mut outputs = Reader::backlog(bootstrap, output);
    let messages = outputs.read_until(Duration::from_secs(120), |m| m.len() > total).await;
    let warm_up_id = format!("latency-{warm_up:09}");
    let first = sent_at.iter().filter(|(id, _)| **id != warm_up_id).map(|(_, at)| *at).min().unwrap_or_default();
    let last_slice = ((secs as i64 * 1000 / SLICE_MS) as usize).saturating_sub(1);
    let mut slices: Vec<Vec<i64>> = Vec::new();
    let mut latencies: Vec<i64> = messages
        .iter()
        .filter_map(|m| {
            let event_id = check.event_id(m.payload()?);
            let at = *(event_id != warm_up_id).then(|| sent_at.get(&event_id))??;
            let latency = m.timestamp().to_millis()? - at;
            // The generator's last records may fall just past the run's end.
            let slice = (((at - first) / SLICE_MS) as usize).min(last_slice);
            if slices.len() <= slice {
                slices.resize_with(slice + 1, Vec::new);
            }
            slices[slice].push(latency);
            Some(latency)
        })
        .collect();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let p99 = |sorted: &[i64]| sorted[((sorted.len() - 1) as f64 * 0.99) as usize];
    let slices = slices
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|mut s| {
            s.sort_unstable();
            p99(&s)
        })
        .collect();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Latency { count: latencies.len(), offered, p50: at(0.50), p99: p99(&latencies), max: *latencies.last().unwrap(), sorted: latencies, slices }
}

/// Throughput over time of each phase, and latency distributions, as SVG.
fn charts(dir: &Path, rows: &[Row], latencies: &[(&str, f64, Latency)]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    if rows.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let colours = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

    // The HTTP phases run at a twentieth of the others' rates: on one
    // scale their lines would lie flat along the axis.
    let (http, kafka): (Vec<&Row>, Vec<&Row>) =
        rows.iter().partition(|r| matches!(r.phase, Phase::BareHttp | Phase::BareHttpHeld | Phase::Http));
    for (name, rows) in [("throughput.svg", kafka), ("throughput-http.svg", http)] {
        if !rows.is_empty() {
            throughput_chart(&dir.join(name), &rows, &colours)?;
        }
    }

    let path = dir.join("latency.svg");
    let root = SVGBackend::new(&path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let slowest = latencies.iter().map(|(_, _, l)| l.max).max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("request → output latency, cumulative distribution", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..slowest * 1.2).log_scale(), 0f64..1.0)?;
    chart.configure_mesh().x_desc("ms (log scale)").y_desc("fraction of records").draw()?;
    for ((name, rate, l), colour) in latencies.iter().zip(colours) {
        let n = l.sorted.len().max(1) as f64;
        // One point per millisecond value (the last record at it), not
        // one per record: the same curve, in kilobytes instead of tens of
        // megabytes of SVG.
        let points = l
            .sorted
            .iter()
            .enumerate()
            .filter(|(i, ms)| l.sorted.get(i + 1) != Some(ms))
            .map(|(i, ms)| ((*ms).max(1) as f64, (i + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(format!("{name} at {rate:.0} msgs/s"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).position(SeriesLabelPosition::LowerRight).draw()?;
    root.present()?;
    Ok(())
}

/// Output records per 100 ms of each of `rows`, over time, as msgs/s.
fn throughput_chart(path: &Path, rows: &[&Row], colours: &[plotters::style::RGBColor]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let seconds = rows.iter().map(|r| r.timeline.len() as f64 / 10.0).fold(1.0, f64::max);
    let peak = rows.iter().flat_map(|r| r.timeline.iter()).copied().max().unwrap_or(1) as f64 * 10.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("throughput draining {} records (output records per 100 ms, as msgs/s)", rows[0].records), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..peak * 1.05)?;
    chart.configure_mesh().x_desc("seconds from the phase's first output").y_desc("msgs/s").draw()?;
    for (row, colour) in rows.iter().zip(colours.iter().copied()) {
        let points = row.timeline.iter().enumerate().map(|(i, n)| (i as f64 / 10.0, *n as f64 * 10.0));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(row.phase.short())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).position(SeriesLabelPosition::UpperRight).draw()?;
    root.present()?;
    Ok(())
}
