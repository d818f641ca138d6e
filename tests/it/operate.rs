//! What an operator sees: the metrics, read by a real Prometheus; the
//! dashboard's queries against it; health and readiness while the broker
//! stops and comes back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::model::Status;
use herald_testkit::fake::Reply;
use herald_testkit::Cql;
use serde_json::Value;
use tokio::time::Instant;

use crate::support::{push, sms, Harness};

/// `prometheus` and `promtool`, installed from Debian if missing, as
/// `.ci/run` does: once for every test of this run, since two at once
/// would race for dpkg's lock (one did, and failed, in a newcomer's first
/// `cargo test` on a machine without Prometheus).
fn prometheus_binaries() -> (PathBuf, PathBuf) {
    static FOUND: std::sync::OnceLock<Option<(PathBuf, PathBuf)>> = std::sync::OnceLock::new();
    FOUND.get_or_init(install_prometheus).clone().expect(
        "Prometheus is not installed and `apt-get install prometheus` failed: install Debian's prometheus package (it brings promtool) to run this test",
    )
}

fn install_prometheus() -> Option<(PathBuf, PathBuf)> {
    let found = |name: &str| {
        let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
        let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    };
    if let (Some(p), Some(t)) = (found("prometheus"), found("promtool")) {
        return Some((p, t));
    }
    let installed = Command::new("sh")
        .args(["-c", "apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1)"])
        .status()
        .is_ok_and(|s| s.success());
    match (installed, found("prometheus"), found("promtool")) {
        (true, Some(p), Some(t)) => Some((p, t)),
        _ => None,
    }
}

struct Prometheus {
    child: Child,
    url: String,
    _dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes each `(job, target)`.
    fn start(binary: &PathBuf, targets: &[(&str, &str)]) -> Prometheus {
        let port = herald_testkit::free_port();
        let dir = std::env::temp_dir().join(format!("herald-prometheus-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        let jobs: String = targets.iter().map(|(job, target)| format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n")).collect();
        std::fs::write(&config, format!("global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(format!("{}/-/ready", self.url)).await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "prometheus never became ready; see {}", self._dir.join("log").display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The result vector of an instant query; panics if it does not parse.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of `expr`, once Prometheus has it.
    async fn value(&self, expr: &str) -> f64 {
        let result = self.query(expr).await;
        assert_eq!(result.len(), 1, "{expr}: {result:?}");
        result[0]["value"][1].as_str().unwrap().parse().unwrap()
    }

    async fn until(&self, expr: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(expr).await;
            let value = result.first().and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok());
            if value == Some(expected) {
                return;
            }
            assert!(Instant::now() < deadline, "{expr} never reached {expected}: {result:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_a_known_workload_and_the_dashboard_s_queries_answer() {
    let (prometheus_bin, promtool) = prometheus_binaries();
    let h = Harness::new().await;
    let cql = Cql::start();
    herald::migrate(&h.config(&cql.args().iter().map(String::as_str).collect::<Vec<_>>())).await.expect("migrating");
    let mut extra: Vec<String> = cql.args();
    extra.extend(["--sms-rate-limit", "2/1h"].map(str::to_owned));
    let (herald, admin) = h.start_with_admin(&extra.iter().map(String::as_str).collect::<Vec<_>>());
    h.fcm.script("dead-token", [Reply::fail(404, "UNREGISTERED")]);
    let mut requests = vec![];
    for i in 0..5 {
        requests.push(sms(&format!("ok-{i}"), &format!("user-{i}"), "+14155550100", "hello"));
    }
    requests.push(sms("bad-1", "user-x", "12345", "not E.164"));
    requests.push(sms("bad-2", "user-x", "+1415", "not E.164"));
    for i in 0..3 {
        requests.push(push(&format!("push-{i}"), &format!("user-p{i}"), &format!("token-{i}"), "t", "b"));
    }
    requests.push(push("gone", "user-g", "dead-token", "t", "b"));
    // Three for one user at 2/h: one denial.
    for i in 0..3 {
        requests.push(sms(&format!("busy-{i}"), "user-busy", "+14155550100", "again"));
    }
    let ids: Vec<String> = requests.iter().map(|r| r.event_id.clone()).collect();
    h.send_many(&requests).await;
    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(60), &ids).await;
    assert_eq!(terminal.values().filter(|e| e.status == Status::RateLimited).count(), 1);

    let body = reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap();
    for secret in ["user-", "+1415", "token-", "ok-0", "dead-token"] {
        assert!(!body.contains(secret), "{secret:?} in a label:\n{body}");
    }
    let mut check = Command::new(&promtool).args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(checked.status.success(), "promtool check metrics: {}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));

    // herald api beside it, for the status store's panels.
    let api_admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_target = api_admin.local_addr().unwrap().to_string();
    let api_args: Vec<String> = [h.args(&extra.iter().map(String::as_str).collect::<Vec<_>>()), ["api", "--api-token", herald_testkit::API_TOKEN, "--api-listen", "127.0.0.1:0"].map(str::to_owned).to_vec()].concat();
    let api_config = <herald::Config as clap::Parser>::try_parse_from(api_args).unwrap();
    let Some(herald::config::Command::Api(api_flags)) = api_config.command.clone() else { unreachable!() };
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(async move {
        let provided = herald::Provided { admin: Some(api_admin), ..Default::default() };
        herald::api(&api_config, &api_flags, provided, async {
            let _ = api_stopped.await;
        })
        .await
    });
    let prometheus = Prometheus::start(&prometheus_bin, &[("herald", admin.trim_start_matches("http://")), ("herald-api", &api_target)]);
    prometheus.ready().await;
    let requested = &h.topics.requested;
    prometheus.until(&format!("herald_records_consumed_total{{topic=\"{requested}\"}}"), 14.0).await;
    prometheus.until(r#"sum(herald_outcomes_total{status="SENT",channel="SMS",provider="twilio"})"#, 7.0).await;
    assert_eq!(prometheus.value(r#"sum(herald_outcomes_total{status="INVALID",channel="SMS"})"#).await, 2.0);
    assert_eq!(prometheus.value(r#"sum(herald_outcomes_total{status="RATE_LIMITED"})"#).await, 1.0);
    assert_eq!(prometheus.value(r#"sum(herald_outcomes_total{status="SENT",channel="PUSH",provider="fcm"})"#).await, 3.0);
    assert_eq!(prometheus.value(r#"herald_provider_calls_total{provider="fcm",result="recipient_gone"}"#).await, 1.0);
    assert_eq!(prometheus.value(r#"herald_provider_calls_total{provider="twilio",result="sent"}"#).await, 7.0);
    assert_eq!(prometheus.value(r#"herald_provider_call_duration_seconds_count{provider="fcm"}"#).await, 4.0);
    assert_eq!(prometheus.value(r#"sum(herald_errors_total{code="invalid-phone-number"})"#).await, 2.0);
    assert_eq!(prometheus.value(r#"herald_rate_limit_denials_total{channel="SMS"}"#).await, 1.0);
    assert_eq!(prometheus.value("herald_suppression_list_size").await, 1.0, "the unregistered token");
    assert!(prometheus.value(r#"herald_scylla_request_duration_seconds_count{operation="write"}"#).await >= 7.0, "each counted SMS written");
    assert_eq!(prometheus.value(r#"herald_circuit_state{provider="twilio"}"#).await, 0.0);
    prometheus.until("herald_store_statuses_written_total", terminal.len() as f64).await;

    // Every panel's query parses and has data, once a few scrapes are in.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string("deploy/grafana/herald.json").unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"].as_array().unwrap().iter().flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned())).collect();
    assert!(exprs.len() >= 15, "{} panels", exprs.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    for expr in &exprs {
        while prometheus.query(expr).await.is_empty() {
            assert!(Instant::now() < deadline, "the dashboard's query returns nothing: {expr}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The alert rules load, and none fires on a healthy run.
    let rules = Command::new(&promtool).args(["check", "rules", "deploy/prometheus/alerts.yml"]).output().unwrap();
    assert!(rules.status.success(), "{}", String::from_utf8_lossy(&rules.stdout));
    let _ = stop_api.send(());
    api.await.unwrap().unwrap();
    herald.stop().await.unwrap();
}

async fn get(url: &str) -> (u16, Value) {
    let answer = reqwest::Client::new().get(url).timeout(Duration::from_secs(10)).send().await.expect("the admin endpoint answers");
    let status = answer.status().as_u16();
    (status, answer.json().await.expect("a JSON answer"))
}

async fn until_ready(url: &str, ready: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(url).await;
        if (status == 200) == ready {
            assert_eq!(body["ok"], ready, "{body}");
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz never became {ready}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_through_a_stall_without_a_restart() {
    let h = Harness::with_own_broker().await;
    let pid = h.broker.pid().expect("a broker of its own") as i32;
    let (herald, admin) = h.start_with_admin(&[]);
    let ready = until_ready(&format!("{admin}/readyz"), true).await;
    assert_eq!(ready["checks"]["partitions_assigned"]["ok"], true, "{ready}");
    assert_eq!(get(&format!("{admin}/healthz")).await.0, 200);

    // SAFETY: plain kill(2) on the broker this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stalled = until_ready(&format!("{admin}/readyz"), false).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(stalled["checks"]["broker"]["ok"], false, "{stalled}");
    assert_eq!(stalled["checks"]["suppression_list"]["ok"], true, "{stalled}");
    until_ready(&format!("{admin}/readyz"), true).await;
    let (status, health) = get(&format!("{admin}/healthz")).await;
    assert_eq!((status, &health["checks"]["consume_loop"]["ok"]), (200, &Value::Bool(true)), "{health}");

    // And it still delivers.
    h.send(&sms("after", "u1", "+14155550100", "back")).await;
    let mut statuses = h.statuses();
    assert_eq!(statuses.terminal(Duration::from_secs(60), &["after".into()]).await["after"].status, Status::Sent);
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_keep_a_probe_out() {
    use std::io::Write;
    let h = Harness::new().await;
    let (herald, admin) = h.start_with_admin(&[]);
    let addr = admin.trim_start_matches("http://").to_owned();
    // Far more connections than the listener serves at once, each with a
    // request's headers half sent, as a slowloris client holds them.
    let slow: Vec<_> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    for _ in 0..3 {
        let (status, _) = get(&format!("{admin}/healthz")).await;
        assert_eq!(status, 200);
    }
    // Answered while the listener still held its 64 slow connections: each
    // new one, a probe's too, took the place of the oldest. Had a probe
    // waited for room instead, the header timeout (5 s) would have closed
    // every slow one before it got in.
    let open = crate::api::still_open(&slow);
    assert!(open > 32, "{open} of {} slow connections open: the probes waited for them to time out", slow.len());
    drop(slow);
    herald.stop().await.unwrap();
}

#[test]
fn the_alert_rules_fire_when_they_should_and_not_before() {
    let (_, promtool) = prometheus_binaries();
    let tested = Command::new(&promtool).args(["test", "rules", "alerts.test.yml"]).current_dir("deploy/prometheus").output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&tested.stdout), String::from_utf8_lossy(&tested.stderr));
    assert!(tested.status.success() && said.contains("SUCCESS"), "{said}");
    // Every rule is exercised by the tests.
    let rules = std::fs::read_to_string("deploy/prometheus/alerts.yml").unwrap();
    let tests = std::fs::read_to_string("deploy/prometheus/alerts.test.yml").unwrap();
    for name in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {name}")), "{name} has no test");
    }
}
