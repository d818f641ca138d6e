//! Rate-limit decisions per second: the in-process limiter against the
//! ScyllaDB limiter (kassandra here, or the cluster in SCYLLA_URI), side
//! by side in one run, on the same sequence of events.
//!
//!     cargo bench --bench ratelimit [-- --users N --per-user K]
//!
//! Every user gets SMS events against a limit of 10 per hour, interleaved
//! across users as a partition delivers them. Each workload runs on both
//! limiters, one after the other, and the table gives their ratio:
//!
//! - half counted: `--per-user` (20) events per user, of which 9 fit; the
//!   ScyllaDB limiter writes each count through (at most
//!   --scylla-max-writes in flight) and its clock stops when the last
//!   write is acknowledged;
//! - all denied: every window full, so nothing is written: the decision
//!   alone, from the cache;
//! - first sight: `--cold-users` users never seen since their partition
//!   was assigned, so each one's first check reads their window, one at a
//!   time, as the consume loop does.

use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use herald::model::Channel;
use herald::pipeline::ratelimit::{self, Decision, Limiter, Pending, RateLimit, Store, Subject};
use herald_testkit::Cql;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    #[arg(long, default_value_t = 20)]
    per_user: usize,
    /// Users of the cold phase (each costs one read in turn).
    #[arg(long, default_value_t = 1_000)]
    cold_users: usize,
    /// Ignored: cargo bench passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Phase {
    decisions: usize,
    took: Duration,
    allowed: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    // Each phase has users of its own: the two ScyllaDB phases share a table.
    let users = |phase: &str| (0..args.users).map(|u| format!("{phase}-user-{u:06}")).collect::<Vec<_>>();
    // Events in the order a partition would deliver them: round-robin.
    let events: Vec<(usize, String)> =
        (0..args.per_user).flat_map(|k| (0..args.users).map(move |u| (u, format!("event-{u}-{k}")))).collect();
    let limit = RateLimit::per(10, Duration::from_secs(3600));

    let cql = Cql::start();
    let argv: Vec<String> = ["herald".to_owned()].into_iter().chain(cql.args()).collect();
    let config = herald::Config::try_parse_from(argv).expect("bench arguments parse");
    let (settings, max_writes) = config.scylla.settings().expect("ScyllaDB flags").expect("a CQL server");
    let session = herald::cql::connect(&settings).await.expect("connecting");
    herald::cql::migrate(&session, &cql.keyspace, &settings.replication).await.expect("migrating");
    let table = || async {
        let table = ratelimit::Table::open(session.clone(), &cql.keyspace, limit.longest(), max_writes);
        Store::ScyllaDb(table.await.expect("opening the table"))
    };

    let memory = Limiter::new(|_| limit.clone(), Store::Memory);
    let cached = Limiter::new(|_| limit.clone(), table().await);
    let (memory_users, cached_users) = (users("memory"), users("cached"));
    // The cached limiter meets each user once first (another event,
    // counted and written), so the timed runs never read; the in-memory
    // one gets the same warm-up.
    let warm: Vec<(usize, String)> = (0..args.users).map(|u| (u, format!("warm-{u}"))).collect();
    run(&memory, &memory_users, &warm).await;
    run(&cached, &cached_users, &warm).await;

    // Workload 1: each user's next events until the window is full, then
    // denials: half the events are counted (and written through).
    let counted = (run(&memory, &memory_users, &events).await, run(&cached, &cached_users, &events).await);
    // Workload 2: every window is full now, so every decision is a denial
    // and nothing is written: the decision alone. Five passes, for a
    // measurable time.
    let denied: Vec<(usize, String)> =
        (0..5).flat_map(|pass| events.iter().map(move |(u, id)| (*u, format!("{id}-again-{pass}")))).collect();
    let all_denied = (run(&memory, &memory_users, &denied).await, run(&cached, &cached_users, &denied).await);
    // Workload 3: users never seen since the partition was assigned: each
    // one's first check reads its window, in turn, in the consume loop.
    let cold = Limiter::new(|_| limit.clone(), table().await);
    let cold_memory = Limiter::new(|_| limit.clone(), Store::Memory);
    let cold_events: Vec<(usize, String)> = events.iter().filter(|(u, _)| *u < args.cold_users).cloned().collect();
    let first_sight = (run(&cold_memory, &users("cold-memory"), &cold_events).await, run(&cold, &users("cold"), &cold_events).await);

    println!(
        "\n{} users, limit 10/h, at most {} writes in flight; CQL server: {}",
        args.users,
        max_writes,
        if cql.is_local() { "kassandra (in process, one thread)" } else { "SCYLLA_URI" }
    );
    println!("| workload | decisions | in memory, decisions/s | ScyllaDB cached, decisions/s | ratio |");
    println!("|---|---|---|---|---|");
    let workloads = [
        ("half counted, written through", &counted),
        ("all denied, nothing written", &all_denied),
        ("first sight of each user (one read each)", &first_sight),
    ];
    for (name, (memory, scylla)) in workloads {
        assert_eq!(memory.allowed, scylla.allowed, "{name}: both limiters decide alike");
        let rate = |p: &Phase| p.decisions as f64 / p.took.as_secs_f64();
        println!("| {name} | {} | {:.0} | {:.0} | {:.3}× |", memory.decisions, rate(memory), rate(scylla), rate(scylla) / rate(memory));
    }
    // 10 per user: one taken by the warm-up, the rest by workload 1.
    assert_eq!(counted.0.allowed, args.users * args.per_user.min(9), "half counted");
    assert_eq!(all_denied.0.allowed, 0, "all denied");
    assert_eq!(first_sight.0.allowed, args.cold_users.min(args.users) * args.per_user.min(10), "first sight");
}

/// Checks every event in order, then waits for the writes in flight.
async fn run(limiter: &Limiter, users: &[String], events: &[(usize, String)]) -> Phase {
    let now = Utc::now();
    let started = Instant::now();
    let mut pending: Vec<Pending> = Vec::new();
    let mut allowed = 0;
    for (u, event_id) in events {
        let subject = Subject { user_id: &users[*u], channel: Channel::Sms, event_id, partition: 0 };
        let (decision, write) = limiter.check(subject, now).await.expect("the store answers");
        allowed += usize::from(decision == Decision::Allow);
        pending.extend(write);
    }
    futures::future::join_all(pending.into_iter().map(Pending::durable)).await;
    Phase { decisions: events.len(), took: started.elapsed(), allowed }
}
