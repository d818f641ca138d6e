//! Localized templates from `--templates-dir`: locale fallback, the locale
//! used on the status, their own INVALID codes, and reloads on SIGHUP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald::model::{ErrorClass, Request, Status};

use crate::support::*;

fn templates_dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("herald-it-templates-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (path, text) in files {
        write(&root, path, text);
    }
    root
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn templated(mut request: Request, template_id: &str, locale: Option<&str>, vars: &[(&str, &str)]) -> Request {
    request.content.body = String::new();
    request.content.title = None;
    request.content.template_id = Some(template_id.into());
    request.content.template_vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    request.prefs.locale = locale.map(str::to_owned);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_fall_back_by_locale_and_the_status_says_which_was_used() {
    let h = Harness::new().await;
    let dir = templates_dir("fallback", &[
        ("order_shipped/pt-BR.sms", "Olá {{ name }}, seu pedido {{ order }} foi enviado."),
        ("order_shipped/en.sms", "Hi {{ name }}, order {{ order }} has shipped."),
        ("order_shipped/pt.push.title", "Encomenda {{ order }}"),
        ("order_shipped/pt.push.body", "{{ name }}, a sua encomenda seguiu \"hoje\" <b>"),
        ("order_shipped/en.push.body", "{{ name }}, your order left today"),
        // 200 two-unit characters: 400 septets, three segments.
        ("long/en.sms", "{{ name }} {% for i in range(200) %}€{% endfor %}"),
    ]);
    let herald = h.start(&["--templates-dir", dir.to_str().unwrap(), "--sms-max-chars", "480"]);
    let vars = [("name", "Ana"), ("order", "#42")];
    let requests = [
        templated(sms("pt-br", "u1", "+14155550100", ""), "order_shipped", Some("pt-BR"), &vars),
        templated(sms("pt-pt", "u1", "+14155550101", ""), "order_shipped", Some("pt-PT"), &vars),
        templated(sms("none", "u1", "+14155550102", ""), "order_shipped", None, &vars),
        templated(push("push-br", "u2", "token-br", "", ""), "order_shipped", Some("pt-BR"), &vars),
        templated(push("push-de", "u2", "token-de", "", ""), "order_shipped", Some("de"), &vars),
        templated(sms("unknown-template", "u3", "+14155550103", ""), "password_reset", Some("pt-BR"), &vars),
        templated(sms("missing-var", "u3", "+14155550104", ""), "order_shipped", Some("en"), &[("name", "Ana")]),
        templated(sms("long", "u3", "+14155550105", ""), "long", Some("en"), &[("name", "Ana")]),
    ];
    for r in &requests {
        h.send(r).await;
    }
    let ids: Vec<String> = requests.iter().map(|r| r.event_id.clone()).collect();
    let t = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    let outcome = |id: &str| (t[id].status, t[id].locale.as_deref());
    assert_eq!(outcome("pt-br"), (Status::Sent, Some("pt-BR")));
    assert_eq!(outcome("pt-pt"), (Status::Sent, Some("en")), "no pt SMS file: pt-PT → pt → en");
    assert_eq!(outcome("none"), (Status::Sent, Some("en")));
    assert_eq!(outcome("push-br"), (Status::Sent, Some("pt")));
    assert_eq!(outcome("push-de"), (Status::Sent, Some("en")));
    for (id, code) in [("unknown-template", "template-missing"), ("missing-var", "template-variable-missing")] {
        assert_eq!((t[id].status, t[id].error_code.as_deref(), t[id].error_class), (Status::Invalid, Some(code), Some(ErrorClass::Invalid)), "{id}");
    }
    assert!(t["missing-var"].error_message.as_deref().unwrap().contains("order"), "{:?}", t["missing-var"]);
    // The length and segment rules apply to the rendered text.
    let long = t["long"].sms.expect("an SMS's cost");
    assert_eq!((long.segments, t["long"].status), (3, Status::Sent), "{:?}", t["long"]);

    let bodies: Vec<(String, String)> =
        h.twilio.requests().iter().map(|r| (r.field("To").unwrap().to_owned(), r.field("Body").unwrap().to_owned())).collect();
    assert!(bodies.contains(&("+14155550100".into(), "Olá Ana, seu pedido #42 foi enviado.".into())), "{bodies:?}");
    assert!(bodies.contains(&("+14155550101".into(), "Hi Ana, order #42 has shipped.".into())), "{bodies:?}");
    assert!(!bodies.iter().any(|(to, _)| to == "+14155550103" || to == "+14155550104"), "invalid ones are not sent");
    let push_br = h.fcm.requests().into_iter().find(|r| r.json.as_ref().unwrap()["message"]["token"] == "token-br").unwrap();
    let notification = &push_br.json.as_ref().unwrap()["message"]["notification"];
    assert_eq!(notification["title"], "Encomenda #42");
    assert_eq!(notification["body"], "Ana, a sua encomenda seguiu \"hoje\" <b>", "JSON-encoded by FCM's request, not HTML-escaped");
    herald.stop().await.unwrap();
}

fn logged(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches(text).count()
}

async fn wait_logged(log: &Path, text: &str, times: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while logged(log, text) < times {
        assert!(std::time::Instant::now() < deadline, "{text:?} not logged {times} times:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_templates_and_a_bad_file_leaves_the_old_set() {
    let h = Harness::new().await;
    let dir = templates_dir("reload", &[("greeting/en.sms", "v1 {{ name }}")]);
    let log = std::env::temp_dir().join(format!("herald-it-templates-{}-reload.log", std::process::id()));
    let mut herald = h.spawn_logging(&["--templates-dir", dir.to_str().unwrap()], &log);
    let hangup = |herald: &Process| {
        let pid = herald.0.id().to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    };
    let send_and_read = |id: &'static str| {
        let h = &h;
        async move {
            h.send(&templated(sms(id, "u1", "+14155550100", ""), "greeting", None, &[("name", "Ana")])).await;
            h.statuses().terminal(Duration::from_secs(60), &[id.to_owned()]).await;
            let requests = h.twilio.requests();
            requests.last().unwrap().field("Body").unwrap().to_owned()
        }
    };
    assert_eq!(send_and_read("first").await, "v1 Ana");

    write(&dir, "greeting/en.sms", "v2 {{ name }}");
    hangup(&herald);
    wait_logged(&log, "Templates reloaded.", 1).await;
    assert_eq!(send_and_read("second").await, "v2 Ana");

    // A file that does not parse: refused, named, and v2 stays whole.
    write(&dir, "greeting/en.sms", "v3 {{ name }}");
    write(&dir, "greeting/pt.sms", "{% if %}");
    hangup(&herald);
    wait_logged(&log, "Templates not reloaded", 1).await;
    assert!(std::fs::read_to_string(&log).unwrap().contains("greeting/pt.sms"), "names the file");
    assert_eq!(send_and_read("third").await, "v2 Ana");
    let (_, exit) = herald.terminate();
    assert!(exit.success(), "{exit:?}");

    // At startup, the same directory stops herald, naming the file.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(&h.args(&["--templates-dir", dir.to_str().unwrap()])[1..])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("greeting/pt.sms") && stderr.contains("--templates-dir"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_redelivered_after_a_crash_is_reported_sent_even_if_its_template_is_gone() {
    let h = Harness::new().await;
    let dir = templates_dir("gone", &[("greeting/en.sms", "Hello {{ name }}")]);
    let dir_flag = dir.to_str().unwrap().to_owned();
    // No commit before the kill: the record comes again after the restart.
    let flags = ["--templates-dir", dir_flag.as_str(), "--commit-interval", "60s"];
    let mut first = h.spawn(&flags);
    h.send(&templated(sms("greet", "u1", "+14155550100", ""), "greeting", None, &[("name", "Ana")])).await;
    let mut statuses = h.statuses();
    statuses.terminal(Duration::from_secs(60), &["greet".into()]).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // The template is removed before herald comes back.
    std::fs::remove_dir_all(dir.join("greeting")).unwrap();
    write(&dir, "other/en.sms", "unrelated");
    let _second = h.spawn(&flags);
    statuses.until(Duration::from_secs(60), |e| e.iter().filter(|e| e.event_id == "greet").count() >= 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    statuses.caught_up().await;
    let greet = statuses.of("greet");
    assert!(greet.iter().all(|e| e.status == Status::Sent && e.attempt == 1), "reported SENT again, never INVALID: {greet:?}");
    assert_eq!(greet[0].provider_message_id, greet[1].provider_message_id, "the recorded send");
    assert_eq!(h.twilio.count(), 1);
    let dead = h.reader(&h.topics.dead_letter).read_to_end(Duration::from_secs(10)).await.len();
    assert_eq!(dead, 0, "nothing dead-lettered");
}
