//! API tokens with scopes: `--api-tokens-file`, read again on SIGHUP.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::Digest;

use crate::api::{migrated, refs, ApiRun};

const SHOP: &str = "shop-token-0123456789abcdef-0123456789";
const SUPPORT: &str = "support-token-0123456789abcdef-01234567";

fn line(name: &str, scopes: &str, token: &str) -> String {
    let digest: String = sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("{name} {scopes} sha256:{digest}\n")
}

fn sms() -> Value {
    json!({"user_id": "u", "channel": "SMS", "recipient": "+14155550100", "content": {"body": "hi"}})
}

/// What `token` gets from each endpoint: send, read, cancel.
async fn answers(http: &reqwest::Client, base: &str, token: &str) -> [u16; 3] {
    let code = |r: reqwest::Response| r.status().as_u16();
    let send = http.post(format!("{base}/v1/notifications")).bearer_auth(token).json(&sms()).send().await.unwrap();
    let read = http.get(format!("{base}/v1/users/u/stats")).bearer_auth(token).send().await.unwrap();
    let cancel = http.post(format!("{base}/v1/notifications/someone-else/cancel")).bearer_auth(token).send().await.unwrap();
    [code(send), code(read), code(cancel)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_gets_its_scopes_and_no_more() {
    let dir = std::env::temp_dir().join(format!("herald-it-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    std::fs::write(&file, format!("# who, what, which\n{}{}", line("shop", "send", SHOP), line("support", "read,cancel", SUPPORT))).unwrap();
    let (h, _cql, mut args) = migrated(&[]).await;
    args.extend(["--api-tokens-file".to_owned(), file.to_str().unwrap().to_owned()]);
    let api = ApiRun::start(&h, &args);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    assert_eq!(answers(&http, &api.base, SHOP).await, [202, 403, 403]);
    assert_eq!(answers(&http, &api.base, SUPPORT).await, [403, 200, 202]);
    // --api-token keeps every scope; an unknown token, and the digest
    // itself, get nothing.
    assert_eq!(answers(&http, &api.base, herald_testkit::API_TOKEN).await, [202, 200, 202]);
    let digest = line("x", "send", SHOP).split("sha256:").nth(1).unwrap().trim().to_owned();
    for wrong in ["nobody-0123456789abcdef-0123456789abcdef", &digest, &format!("sha256:{digest}")] {
        assert_eq!(answers(&http, &api.base, wrong).await, [401, 401, 401], "{wrong}");
    }
    let refused = http.post(format!("{}/v1/notifications", api.base)).bearer_auth(SUPPORT).json(&sms()).send().await.unwrap();
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
    assert!(body["message"].as_str().unwrap().contains("send scope"), "{body}");
    api.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_file_is_read_again_on_sighup_and_one_that_does_not_parse_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("herald-it-tokens-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    std::fs::write(&file, line("shop", "send", SHOP)).unwrap();
    let (h, _cql, args) = migrated(&[]).await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listen.local_addr().unwrap().to_string();
    drop(listen);
    let mut all = args.clone();
    // No --api-token: the file alone is enough.
    all.extend(["api", "--api-tokens-file", file.to_str().unwrap(), "--api-listen", &addr].map(str::to_owned));
    let log = dir.join("api.log");
    let mut api = h.spawn_logging(&refs(&all), &log);
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    // Polled until it answers; how long that takes is not the point.
    let up = |token: &'static str, want: [u16; 3]| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            for _ in 0..600 {
                if let Ok(r) = http.get(format!("{base}/v1/users/u/stats")).bearer_auth(token).send().await {
                    if r.status().as_u16() != 503 && answers(&http, &base, token).await == want {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{token} never got {want:?}");
        }
    };
    up(SHOP, [202, 403, 403]).await;
    assert_eq!(answers(&http, &base, SUPPORT).await, [401, 401, 401]);
    // Support added, shop given read too.
    std::fs::write(&file, format!("{}{}", line("shop", "send,read", SHOP), line("support", "read,cancel", SUPPORT))).unwrap();
    unsafe { libc::kill(api.0.id() as i32, libc::SIGHUP) };
    up(SUPPORT, [403, 200, 202]).await;
    assert_eq!(answers(&http, &base, SHOP).await, [202, 200, 403]);
    // A file that does not parse is refused, and both tokens keep working.
    std::fs::write(&file, "support reed sha256:00\n").unwrap();
    unsafe { libc::kill(api.0.id() as i32, libc::SIGHUP) };
    for _ in 0..600 {
        if std::fs::read_to_string(&log).unwrap_or_default().contains("The tokens file was refused") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("line 1: unknown scope"), "{logged}");
    assert_eq!(answers(&http, &base, SHOP).await, [202, 200, 403]);
    assert_eq!(answers(&http, &base, SUPPORT).await, [403, 200, 202]);
    let (_, status) = api.terminate();
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(dir).unwrap();
}
