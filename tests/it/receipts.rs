//! Delivery receipts: Twilio's signed status callbacks become status events;
//! forged, shifted and unsigned ones are refused and emit nothing; and no
//! client can hold the public listener.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use herald::model::Status;
use herald::pipeline::receipts::{signature, SIGNATURE_HEADER};
use herald_testkit::providers::AUTH_TOKEN;

use crate::support::*;

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Posts a form to `url`, signed as Twilio would sign it for `signed_url`.
async fn post(url: &str, form: &[(String, String)], sig: Option<String>) -> u16 {
    let mut request = reqwest::Client::new().post(url).form(form);
    if let Some(sig) = sig {
        request = request.header(SIGNATURE_HEADER, sig);
    }
    request.send().await.expect("herald answers").status().as_u16()
}

/// The StatusCallback herald gave Twilio for the message to `to`.
fn callback_of(h: &Harness, to: &str) -> String {
    let requests = h.twilio.requests();
    let r = requests.iter().find(|r| r.field("To") == Some(to)).expect("sent to Twilio");
    r.field("StatusCallback").expect("a StatusCallback").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_callbacks_report_delivery_and_forged_ones_are_refused() {
    let h = Harness::new().await;
    let (herald, public) = h.start_with_receipts(&[]);
    h.send(&sms("rcpt-1", "user-r", "+14155550100", "one")).await;
    h.send(&sms("rcpt-2", "user-r", "+14155550101", "two")).await;
    let mut statuses = h.statuses();
    let sent = statuses.terminal(Duration::from_secs(30), &["rcpt-1".into(), "rcpt-2".into()]).await;

    // Twilio was told where to report, per event and attempt, signed by herald.
    let (url1, url2) = (callback_of(&h, "+14155550100"), callback_of(&h, "+14155550101"));
    let prefix = format!("{public}?event_id=rcpt-1&user_id=user-r&attempt=1&partition=");
    assert!(url1.starts_with(&prefix) && url1.contains("&sig="), "{url1}");
    let receipt = |sid: &str, status: &str, code: &str| {
        let mut p = vec![("MessageSid", sid), ("MessageStatus", status), ("AccountSid", ACCOUNT_SID)];
        if !code.is_empty() {
            p.push(("ErrorCode", code));
        }
        params(&p)
    };
    let sid1 = sent["rcpt-1"].provider_message_id.clone().unwrap();
    let sid2 = sent["rcpt-2"].provider_message_id.clone().unwrap();
    let delivered1 = receipt(&sid1, "delivered", "");

    // Forged: signed with another token, signed for another event, unsigned.
    assert_eq!(post(&url1, &delivered1, Some(signature("not-the-token", &url1, &delivered1))).await, 403);
    assert_eq!(post(&url1, &delivered1, Some(signature(AUTH_TOKEN, &url2, &delivered1))).await, 403);
    assert_eq!(post(&url1, &delivered1, None).await, 403);
    // Whatever Twilio signed, herald's ids must be as herald wrote them:
    // the attempt cannot move into a posted parameter's name (see
    // `receipts::tests::callback_ids_are_exactly_what_herald_wrote`).
    // A never-sent event, as someone with the auth token (but not herald's
    // key) could sign it.
    let never = url1.replace("rcpt-1", "never-sent");
    assert_eq!(post(&never, &delivered1, Some(signature(AUTH_TOKEN, &never, &delivered1))).await, 403);
    // Malformed ids, whoever signed them.
    let no_attempt = url1.replace("attempt=1", "attempt=");
    for (what, bad) in [("attempt", url1.replace("attempt=1", "attempt=x")), ("empty attempt", no_attempt), ("no sig", url1.split("&sig=").next().unwrap().to_owned())] {
        assert_eq!(post(&bad, &delivered1, Some(signature(AUTH_TOKEN, &bad, &delivered1))).await, 400, "{what}");
    }

    // Genuine: an intermediate step is acknowledged and ignored; outcomes
    // become status events. The second is signed as Twilio sometimes
    // does, over the URL without its port, with a pair posted twice.
    let sending = receipt(&sid1, "sending", "");
    assert_eq!(post(&url1, &sending, Some(signature(AUTH_TOKEN, &url1, &sending))).await, 204);
    assert_eq!(post(&url1, &delivered1, Some(signature(AUTH_TOKEN, &url1, &delivered1))).await, 200);
    let mut undelivered2 = receipt(&sid2, "undelivered", "30003");
    undelivered2.push(("ErrorCode".into(), "30003".into()));
    let port = url2.split("127.0.0.1:").nth(1).unwrap().split('/').next().unwrap();
    let without_port = url2.replace(&format!("127.0.0.1:{port}"), "127.0.0.1");
    assert_eq!(post(&url2, &undelivered2, Some(signature(AUTH_TOKEN, &without_port, &undelivered2))).await, 200);

    statuses
        .until(Duration::from_secs(30), |events| events.iter().filter(|e| matches!(e.status, Status::Delivered | Status::Undelivered)).count() >= 2)
        .await;
    statuses.caught_up().await;
    herald.stop().await.unwrap();

    assert_eq!(statuses_of(&statuses.events, "rcpt-1"), [(Status::Sent, 1), (Status::Delivered, 1)], "nothing from the forgeries");
    assert_eq!(statuses_of(&statuses.events, "rcpt-2"), [(Status::Sent, 1), (Status::Undelivered, 1)]);
    let undelivered = statuses.of("rcpt-2").pop().unwrap();
    assert_eq!(undelivered.error_code.as_deref(), Some("twilio:30003"));
    assert_eq!(undelivered.provider_message_id.as_deref(), Some(sid2.as_str()));
    let current = statuses.current();
    assert_eq!((current["rcpt-1"].status, current["rcpt-2"].status), (Status::Delivered, Status::Undelivered));
}

/// twilio-python's RequestValidator, the reference for what Twilio signs.
fn twilio_python(script: &str) -> String {
    ensure_python_package("twilio", "twilio==9.13.0");
    let out = std::process::Command::new("python3").args(["-c", script]).output().expect("running python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_accepts_what_twilio_python_signs_and_signs_what_it_accepts() {
    let h = Harness::new().await;
    let (herald, _) = h.start_with_receipts(&[]);
    h.send(&sms("py-1", "user-p", "+14155550100", "one")).await;
    let mut statuses = h.statuses();
    let sent = statuses.terminal(Duration::from_secs(30), &["py-1".into()]).await;
    let url = callback_of(&h, "+14155550100");
    let sid = sent["py-1"].provider_message_id.clone().unwrap();
    let form = params(&[("MessageSid", &sid), ("MessageStatus", "delivered"), ("AccountSid", ACCOUNT_SID), ("ApiVersion", "2010-04-01")]);
    let dict = form.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect::<Vec<_>>().join(", ");
    // Signed by twilio-python over the URL without its port: accepted.
    let port = url.split("127.0.0.1:").nth(1).unwrap().split('/').next().unwrap();
    let without_port = url.replace(&format!("127.0.0.1:{port}"), "127.0.0.1");
    let python_sig = twilio_python(&format!(
        "from twilio.request_validator import RequestValidator as V; print(V({AUTH_TOKEN:?}).compute_signature({without_port:?}, {{{dict}}}))"
    ));
    assert_eq!(python_sig, signature(AUTH_TOKEN, &without_port, &form), "the same signature");
    assert_eq!(post(&url, &form, Some(python_sig)).await, 200);
    // herald's own signature validates with twilio-python.
    let ok = twilio_python(&format!(
        "from twilio.request_validator import RequestValidator as V; print(V({AUTH_TOKEN:?}).validate({url:?}, {{{dict}}}, {:?}))",
        signature(AUTH_TOKEN, &url, &form)
    ));
    assert_eq!(ok, "True");
    statuses.until(Duration::from_secs(30), |e| e.iter().any(|e| e.status == Status::Delivered)).await;
    herald.stop().await.unwrap();
}

/// Resident memory of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_stalled_clients_cannot_hold_the_listener() {
    let h = Harness::new().await;
    let port = herald_testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let public = format!("http://{addr}/twilio/status");
    let log = std::env::temp_dir().join(format!("herald-receipts-{port}.log"));
    let mut herald = h.spawn_logging(&["--receipts-listen", &addr, "--receipts-public-url", &public, "--receipts-max-connections", "16"], &log);
    h.send(&sms("held", "user-s", "+14155550100", "one")).await;
    let mut statuses = h.statuses();
    let sent = statuses.terminal(Duration::from_secs(60), &["held".into()]).await;
    let pid = herald.0.id();
    let before = rss_kb(pid);

    // 150 clients announce 1.9 MB, send 64 KB of it, and stall. Each is
    // refused from its headers, before the body is read.
    let mut big = vec![];
    for _ in 0..150 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        let head = format!("POST /twilio/status HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1900000\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(&[b'a'; 64 * 1024]);
        big.push(s);
    }
    for s in &mut big {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut answer = [0u8; 12];
        let n = s.read(&mut answer).unwrap_or(0);
        assert_eq!(&answer[..n.min(12)], b"HTTP/1.1 413", "refused from its headers");
    }
    // 40 clients send half a request line and stall, more than the 16
    // connections herald serves at once.
    let mut stalled: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    for s in &mut stalled {
        s.write_all(b"POST /twilio/sta").unwrap();
    }
    // A genuine callback still gets its answer, once stalled clients time out.
    let url = callback_of(&h, "+14155550100");
    let form = params(&[("MessageSid", sent["held"].provider_message_id.as_deref().unwrap()), ("MessageStatus", "delivered")]);
    let asked = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(30), post(&url, &form, Some(signature(AUTH_TOKEN, &url, &form)))).await;
    assert_eq!(answered.ok(), Some(200), "answered within 30 s");
    println!("a genuine callback behind 40 stalled clients answered after {:?}", asked.elapsed());
    // Every stalled client was cut off: each read sees the connection close.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).is_ok(), "closed, not left hanging");
    }
    let after = rss_kb(pid);
    println!("herald's RSS: {before} kB before, {after} kB after");
    assert!(after < before + 50 * 1024, "RSS grew from {before} kB to {after} kB");
    herald.terminate();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("Connection limit reached"), "the cap is logged");
    assert!(!logged.contains('\u{1b}'), "no colour codes in a log file");
}
