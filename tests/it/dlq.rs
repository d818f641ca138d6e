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

    // Without --yes, and no terminal to ask on: counts, nothing written,
    // and a failure, so that a script that forgot --yes hears of it.
    let declined = dlq(&h, &["replay", "--code", "twilio:20503"]);
    let said = String::from_utf8_lossy(&declined.stderr);
    assert_eq!(declined.status.code(), Some(1), "{said}");
    assert!(said.contains("40 to replay") && said.contains("nothing was replayed: 40 dead letters matched; pass --yes"), "{said}");
    assert!(replayed(&h).await.is_empty(), "a declined replay wrote");
    // A dry run only counts, and succeeds.
    let dry = dlq(&h, &["replay", "--code", "twilio:20503", "--dry-run"]);
    assert!(dry.status.success() && String::from_utf8_lossy(&dry.stderr).contains("40 to replay, 0 skipped"), "{}", String::from_utf8_lossy(&dry.stderr));
    // Invalid requests are skipped unless asked for, and said so.
    let invalid = dlq(&h, &["replay", "--code", "invalid-phone-number", "--dry-run"]);
    let said = String::from_utf8_lossy(&invalid.stderr);
    assert!(said.contains("0 to replay, 30 skipped: 30 invalid (--include-invalid replays them)"), "{said}");

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

/// `dlq list`'s table: its rows, split at the columns the header starts.
fn columns(table: &str) -> Vec<Vec<String>> {
    let header = table.lines().next().unwrap();
    let starts: Vec<usize> = ["at", "time", "try", "code", "chan", "recipient", "message"].iter().map(|t| header.find(&format!("{t} ")).or_else(|| header.rfind(t)).unwrap()).collect();
    table
        .lines()
        .skip(1)
        .map(|line| {
            (0..starts.len())
                .map(|i| {
                    let end = starts.get(i + 1).copied().unwrap_or(line.len()).min(line.len());
                    line.get(starts[i]..end).unwrap_or("").trim().to_owned()
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_shows_every_field_lines_up_its_table_and_answers_at_once_past_the_end() {
    use herald::model::{AndroidOverrides, AndroidPriority, ApnsOverrides, Priority};
    let h = Harness::new().await;
    h.fcm.script("tok-down", vec![Reply::fail(503, "UNAVAILABLE"); 4]);
    let herald = h.start(&["--breaker-failures", "1000"]);
    let mut rich = crate::support::push("rich", "u-rich", "tok-down", "Title", "Body");
    rich.prefs.time_zone = Some("Europe/Lisbon".into());
    rich.prefs.locale = Some("pt-BR".into());
    rich.prefs.priority = Priority::Urgent;
    rich.content.android = Some(Box::new(AndroidOverrides { priority: Some(AndroidPriority::High), ttl_seconds: Some(600), collapse_key: Some("inbox".into()), ..Default::default() }));
    rich.content.apns = Some(Box::new(ApnsOverrides { headers: [("apns-priority".to_owned(), "10".to_owned())].into(), badge: Some(2), ..Default::default() }));
    h.send(&rich).await;
    // Its key is not its user id: invalid, and still readable.
    let mut mismatched = sms("mismatched", "u-real", "+14155550100", "keyed wrongly");
    mismatched.content.template_id = Some("order_shipped".into());
    let bytes = herald::codec::encode_request(&h.bundled.request, 1, &mismatched).unwrap();
    h.send_raw(b"u-other", &bytes).await;
    // Forty more, so the list is longer than a pipe reader wants.
    let invalid: Vec<_> = (0..40).map(|i| sms(&format!("bad-{i}"), &format!("u-bad-{i}"), "12345", "not E.164")).collect();
    h.send_many(&invalid).await;
    let mut ids: Vec<String> = invalid.iter().map(|r| r.event_id.clone()).collect();
    ids.extend(["rich".into(), "mismatched".into()]);
    h.statuses().terminal(Duration::from_secs(60), &ids).await;
    herald.stop().await.unwrap();

    let listed = dlq(&h, &["list", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(listed.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 42);
    let times: Vec<&str> = lines.iter().map(|l| l["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first, across partitions");
    let at = |event: &str| lines.iter().find(|l| l["event_id"] == event).unwrap()["at"].as_str().unwrap().to_owned();

    let table = String::from_utf8(dlq(&h, &["list"]).stdout).unwrap();
    let rows = columns(&table);
    assert_eq!(rows.len(), 42, "{table}");
    for row in &rows {
        assert!(row[0].contains(':') && row[1].contains('T') && row[2].parse::<u32>().is_ok(), "misaligned: {row:?}\n{table}");
        assert!(["invalid-phone-number", "fcm:UNAVAILABLE", "key-mismatch"].contains(&row[3].as_str()), "misaligned: {row:?}\n{table}");
        assert!(["SMS", "PUSH"].contains(&row[4].as_str()), "misaligned: {row:?}\n{table}");
    }

    // Every field of the request, the newer ones too; personal data masked.
    let shown: serde_json::Value = serde_json::from_slice(&dlq(&h, &["show", &at("rich")]).stdout).unwrap();
    let r = &shown["request"];
    assert_eq!((r["time_zone"].as_str(), r["locale"].as_str(), r["priority"].as_str()), (Some("Europe/Lisbon"), Some("pt-BR"), Some("URGENT")), "{shown}");
    assert_eq!((r["android"]["priority"].as_str(), r["android"]["ttl_seconds"].as_i64(), r["android"]["collapse_key"].as_str()), (Some("HIGH"), Some(600), Some("inbox")), "{shown}");
    assert_eq!((r["apns"]["headers"]["apns-priority"].as_str(), r["apns"]["badge"].as_i64()), (Some("10"), Some(2)), "{shown}");
    assert_eq!(r["body"], "<4 characters>", "{shown}");
    let revealed: serde_json::Value = serde_json::from_slice(&dlq(&h, &["show", &at("rich"), "--reveal"]).stdout).unwrap();
    assert_eq!((revealed["request"]["body"].as_str(), revealed["request"]["locale"].as_str()), (Some("Body"), Some("pt-BR")), "{revealed}");
    let keyed: serde_json::Value = serde_json::from_slice(&dlq(&h, &["show", &at("mismatched")]).stdout).unwrap();
    assert_eq!((keyed["key"].as_str(), keyed["request"]["user_id"].as_str(), keyed["request"]["channel"].as_str()), (Some("u-other"), Some("u-real"), Some("SMS")), "{keyed}");
    assert_eq!(keyed["request"]["template_id"].as_str(), Some("order_shipped"), "{keyed}");
    assert_eq!(lines.iter().find(|l| l["event_id"] == "mismatched").unwrap()["recipient"], "+*******0100");

    // Past a partition's end, or a partition that does not exist: said at
    // once, not after a poll gives up.
    let partition = at("rich").split(':').next().unwrap().to_owned();
    for past in [format!("{partition}:999999"), "99:0".to_owned()] {
        let answer = dlq(&h, &["show", &past]);
        let said = String::from_utf8_lossy(&answer.stderr);
        assert_eq!(answer.status.code(), Some(1), "{said}");
        assert!(said.contains(&format!("no dead letter at {past}")), "{said}");
    }

    // A reader that stops early is not an error.
    let mut all = h.args(&[]);
    all.extend(["dlq", "list", "--json"].map(str::to_owned));
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald")).args(&all[1..]).env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(first.starts_with('{') && output.status.success() && !stderr.contains("ERROR"), "{:?}: {stderr}", output.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_record_that_is_dead_lettered_again_still_says_where_it_came_from() {
    let h = Harness::new().await;
    h.twilio.script(DOWN, vec![Reply::fail(503, "20503"); 8]);
    let herald = h.start(&["--breaker-failures", "1000"]);
    h.send(&sms("twice", "u-twice", DOWN, "down, and down again")).await;
    let mut statuses = h.statuses();
    statuses.until(Duration::from_secs(60), |e| e.iter().any(|e| e.event_id == "twice" && e.status == Status::DeadLettered)).await;
    let replay = dlq(&h, &["replay", "--code", "twilio:20503", "--yes", "--name", "again"]);
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    statuses.until(Duration::from_secs(60), |e| e.iter().filter(|e| e.event_id == "twice" && e.status == Status::DeadLettered).count() == 2).await;
    let dead = h.reader(&h.topics.dead_letter).read_until(Duration::from_secs(30), |m| m.len() >= 2).await.to_vec();
    let first = format!("{}/{}/{}", h.topics.dead_letter, rdkafka::Message::partition(&dead[0]), rdkafka::Message::offset(&dead[0]));
    assert_eq!(header(&dead[0], REPLAYED_FROM), None);
    assert_eq!(header(&dead[1], REPLAYED_FROM), Some(first.as_str()), "the second dead letter names the first");
    herald.stop().await.unwrap();
}
