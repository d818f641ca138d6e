//! Rate-limit decisions per second: the in-process limiter against the
//! ScyllaDB limiter (kassandra here, or the cluster in SCYLLA_URI), side
//! by side in one run, on the same sequence of events.
//!
//!     cargo bench --bench ratelimit [-- --users N --per-user K]
//!
//! Every user gets `per-user` SMS events against a limit of 10 per hour,
//! interleaved across users as a partition delivers them: with the default
//! 20, half are counted and half denied. Phases:
//!
//! - in memory: the in-process limiter;
//! - ScyllaDB, cached: every user already read once (the steady state);
//!   counted events are written through, bounded by --scylla-max-writes,
//!   and the clock stops when the last write is acknowledged;
//! - ScyllaDB, cached, all denied: the same users again, every window now
//!   full, so no writes: the decision alone;
//! - ScyllaDB, cold: `--cold-users` users seen for the first time after a
//!   partition assignment, so each user's first check reads their window.
//!   Reads wait in the consume loop, one at a time.

use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use herald::config::RateLimit;
use herald::model::Channel;
use herald::ratelimit::{self, Decision, Limiter, Pending, Store, Subject};
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
    name: &'static str,
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
    let session = ratelimit::connect(&config).await.expect("connecting");
    ratelimit::migrate(&session, &cql.keyspace, &config.scylla_replication).await.expect("migrating");
    let table = || async {
        let table = ratelimit::Table::open(session.clone(), &cql.keyspace, limit.longest(), config.scylla_max_writes);
        Store::ScyllaDb(table.await.expect("opening the table"))
    };

    let mut phases = vec![];
    let memory = Limiter::new(|_| limit.clone(), Store::Memory);
    phases.push(run("in memory", &memory, &users("memory"), &events).await);

    // Cached: one check per user first (another event, counted and
    // written), so the timed run never reads.
    let cached = Limiter::new(|_| limit.clone(), table().await);
    let cached_users = users("cached");
    let warm: Vec<(usize, String)> = (0..args.users).map(|u| (u, format!("warm-{u}"))).collect();
    run("warm-up", &cached, &cached_users, &warm).await;
    let mut phase = run("ScyllaDB, cached", &cached, &cached_users, &events).await;
    // The warm-up took one slot of each user's ten.
    phase.allowed += args.users;
    phases.push(phase);
    let denied: Vec<(usize, String)> = events.iter().map(|(u, id)| (*u, format!("{id}-again"))).collect();
    phases.push(run("ScyllaDB, cached, all denied", &cached, &cached_users, &denied).await);

    let cold = Limiter::new(|_| limit.clone(), table().await);
    let cold_events: Vec<(usize, String)> = events.iter().filter(|(u, _)| *u < args.cold_users).cloned().collect();
    phases.push(run("ScyllaDB, cold (reads)", &cold, &users("cold"), &cold_events).await);

    let base = phases[0].decisions as f64 / phases[0].took.as_secs_f64();
    println!(
        "\n{} users × {} SMS events, limit 10/h, at most {} writes in flight; CQL server: {}",
        args.users,
        args.per_user,
        config.scylla_max_writes,
        if cql.is_local() { "kassandra (in process, one thread)" } else { "SCYLLA_URI" }
    );
    println!("| limiter | decisions | allowed | seconds | decisions/s | vs in memory |");
    println!("|---|---|---|---|---|---|");
    for p in &phases {
        let rate = p.decisions as f64 / p.took.as_secs_f64();
        println!("| {} | {} | {} | {:.3} | {:.0} | {:.3}× |", p.name, p.decisions, p.allowed, p.took.as_secs_f64(), rate, rate / base);
    }
    // Same decisions from every limiter (the cached one counts its warm-up).
    let allowed = |users: usize| users * args.per_user.min(10);
    assert_eq!(phases[0].allowed, allowed(args.users), "in memory");
    assert_eq!(phases[1].allowed, args.users * (args.per_user + 1).min(10), "cached");
    if args.per_user >= 9 {
        assert_eq!(phases[2].allowed, 0, "cached, all denied");
    }
    assert_eq!(phases[3].allowed, allowed(args.cold_users.min(args.users)), "cold");
}

/// Checks every event in order, then waits for the writes in flight.
async fn run(name: &'static str, limiter: &Limiter, users: &[String], events: &[(usize, String)]) -> Phase {
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
    Phase { name, decisions: events.len(), took: started.elapsed(), allowed }
}
