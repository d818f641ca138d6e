//! `herald dlq`: listing, showing, and a replay killed halfway and run
//! again, which produces nothing twice.

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use herald::dlq::REPLAYED_FROM;
use herald::model::Status;
use herald_testkit::fake::Reply;

use crate::support::{header, sms, Harness};

const DOWN: &str = "+14155550177";

fn dlq(h: &Harness, args: &[&str]) -> Output {
    let mut all = h.args(&[]);
    all.push("dlq".into());
    all.extend(args.iter().map(|a| a.to_string()));
    Command::new(env!("CARGO_BIN_EXE_herald")).args(&all[1..]).env("RUST_LOG", "warn").stdin(Stdio::null()).output().expect("running herald dlq")
}

fn replay_args(h: &Harness, args: &[&str]) -> Vec<String> {
    let mut all = h.args(&[]);
    all.extend(["dlq", "replay"].map(str::to_owned));
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

fn spawn_replay(h: &Harness, args: &[&str]) -> std::process::Child {
    let all = replay_args(h, args);
    Command::new(env!("CARGO_BIN_EXE_herald")).args(&all[1..]).env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("running herald dlq replay")
}

/// Records on the requests topic that a replay wrote, by source.
async fn replayed(h: &Harness) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in h.reader(&h.topics.requested).read_to_end(Duration::from_secs(30)).await {
        if let Some(source) = header(m, REPLAYED_FROM) {
            *counts.entry(source.to_owned()).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_halfway_and_run_again_produces_each_record_once() {
    let h = Harness::new().await;
    // Every attempt of these 40 fails, until the script runs out.
    h.twilio.script(DOWN, vec![Reply::fail(503, "20503"); 160]);
    let herald = h.start(&["--breaker-failures", "1000", "--sms-rate-limit", "off"]);
    let mut requests = vec![];
    for i in 0..40 {
        requests.push(sms(&format!("down-{i}"), &format!("user-d{i}"), DOWN, "provider down"));
    }
    for i in 0..30 {
        requests.push(sms(&format!("phone-{i}"), &format!("user-p{i}"), "12345", "not E.164"));
    }
    for i in 0..30 {
        requests.push(sms(&format!("long-{i}"), &format!("user-l{i}"), "+14155550100", &"x".repeat(481)));
    }
    let ids: Vec<String> = requests.iter().map(|r| r.event_id.clone()).collect();
    h.send_many(&requests).await;
    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(90), &ids).await;
    assert_eq!(terminal.values().filter(|e| e.status == Status::DeadLettered).count(), 40);
    assert_eq!(terminal.values().filter(|e| e.status == Status::Invalid).count(), 60);

    let listed = dlq(&h, &["list", "--code", "twilio:20503", "--json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(listed.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 40);
    assert!(lines.iter().all(|l| l["attempts"] == 4 && l["channel"] == "SMS" && l["recipient"] == "+*******0177"), "{:?}", lines[0]);
    let table = String::from_utf8(dlq(&h, &["list", "--class", "invalid"]).stdout).unwrap();
    assert_eq!(table.lines().count(), 61, "a header and 60 rows:\n{table}");
    assert!(table.contains("invalid-phone-number") && table.contains("body-too-long") && !table.contains("twilio:20503"));
    let at = lines[0]["at"].as_str().unwrap();
    let shown = String::from_utf8(dlq(&h, &["show", at]).stdout).unwrap();
    assert!(shown.contains("herald-error-code") && shown.contains("+*******0177") && !shown.contains(DOWN), "{shown}");
    let revealed = String::from_utf8(dlq(&h, &["show", at, "--reveal"]).stdout).unwrap();
    assert!(revealed.contains(DOWN) && revealed.contains("provider down"), "{revealed}");

    // Without --yes, and no terminal to ask on: counts, and nothing written.
    let dry = dlq(&h, &["replay", "--code", "twilio:20503"]);
    assert!(dry.status.success() && String::from_utf8_lossy(&dry.stderr).contains("40 to replay"), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(replayed(&h).await.is_empty(), "a dry run wrote");
    // Invalid requests are skipped unless asked for.
    let invalid = dlq(&h, &["replay", "--code", "invalid-phone-number", "--dry-run"]);
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("0 to replay, 30 skipped"), "{}", String::from_utf8_lossy(&invalid.stderr));

    let replay = ["--code", "twilio:20503", "--yes", "--name", "outage-1"];
    let mut first = spawn_replay(&h, &[&replay[..], &["--max-per-second", "20"]].concat());
    let started = std::time::Instant::now();
    while replayed(&h).await.values().sum::<usize>() < 10 {
        assert!(started.elapsed() < Duration::from_secs(60), "the replay never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let halfway = replayed(&h).await.values().sum::<usize>();
    assert!(halfway < 40, "killed after all {halfway}");
    let second = spawn_replay(&h, &replay).wait_with_output().unwrap();
    assert!(second.status.success());
    let counts = replayed(&h).await;
    println!("killed after {halfway} of 40 were replayed; then {} in all", counts.len());
    assert_eq!(counts.len(), 40, "each dead letter replayed");
    assert!(counts.values().all(|n| *n == 1), "replayed twice: {counts:?}");

    // The provider works again: the replayed requests are sent; the invalid
    // ones were never replayed.
    let down: Vec<String> = (0..40).map(|i| format!("down-{i}")).collect();
    statuses.until(Duration::from_secs(60), |events| down.iter().all(|id| events.iter().any(|e| &e.event_id == id && e.status == Status::Sent))).await;
    statuses.caught_up().await;
    let current = statuses.current();
    assert!(ids.iter().filter(|id| !id.starts_with("down-")).all(|id| current[id].status == Status::Invalid));
    for id in &down {
        assert_eq!(statuses.of(id).iter().filter(|e| e.status == Status::Sent).count(), 1, "{id}");
    }
    herald.stop().await.unwrap();
}

/// Dead letters written directly, as herald would have: each names its
/// original topic and partition, with a transient error.
async fn dead_letters(h: &Harness, target: &str, count: usize) {
    herald_testkit::kafka::create_topics(&h.broker.bootstrap, &[&h.topics.dead_letter, target], 1).await;
    for i in 0..count {
        let offset = i.to_string();
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header { key: "trace", value: Some("t-1") })
            .insert(rdkafka::message::Header { key: herald::record::envelope::ORIGINAL_TOPIC, value: Some(target) })
            .insert(rdkafka::message::Header { key: herald::record::envelope::ORIGINAL_PARTITION, value: Some("0") })
            .insert(rdkafka::message::Header { key: herald::record::envelope::ORIGINAL_OFFSET, value: Some(offset.as_str()) })
            .insert(rdkafka::message::Header { key: herald::record::envelope::ERROR_CLASS, value: Some("TRANSIENT") })
            .insert(rdkafka::message::Header { key: herald::record::envelope::ERROR_CODE, value: Some("twilio:20503") });
        herald_testkit::kafka::produce(&h.producer, &h.topics.dead_letter, format!("user-{i}").as_bytes(), b"opaque", Some(headers)).await;
    }
}

/// Sources on `topic` that a replay wrote, in order.
async fn replayed_to(h: &Harness, topic: &str) -> Vec<String> {
    h.reader(topic).read_to_end(Duration::from_secs(30)).await.iter().filter_map(|m| header(m, REPLAYED_FROM).map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_interrupted_twice_in_a_row_still_writes_each_record_once() {
    let h = Harness::new().await;
    let target = format!("{}.replayed", h.topics.requested);
    dead_letters(&h, &target, 6).await;
    let args = ["--to", target.as_str(), "--code", "twilio:20503", "--yes", "--name", "twice", "--max-per-second", "1"];
    // Each run is killed right after its first record, before it commits:
    // at one a second, a batch is five records, a second apart.
    let mut watch = h.reader(&target);
    for run in 1..=2 {
        let mut replay = spawn_replay(&h, &args);
        watch.read_until(Duration::from_secs(30), |m| m.len() >= run).await;
        replay.kill().unwrap();
        replay.wait().unwrap();
    }
    // On a loaded machine a kill can land a record late; the runs were
    // still cut short, which is what matters.
    let before = replayed_to(&h, &target).await.len();
    assert!(before < 6, "the runs were killed before the end ({before} of 6 written)");
    let last = Command::new(env!("CARGO_BIN_EXE_herald")).args(&replay_args(&h, &args[..7])[1..]).env("RUST_LOG", "warn").stdin(Stdio::null()).output().unwrap();
    assert!(last.status.success(), "{}", String::from_utf8_lossy(&last.stderr));
    let written = replayed_to(&h, &target).await;
    let mut distinct = written.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((written.len(), distinct.len()), (6, 6), "{written:?}");
    // The producer's headers came along; herald's did not.
    let mut reader = h.reader(&target);
    let copy = &reader.read_to_end(Duration::from_secs(30)).await[0];
    assert_eq!(header(copy, "trace"), Some("t-1"));
    assert_eq!(header(copy, herald::record::envelope::ERROR_CODE), None);
}
