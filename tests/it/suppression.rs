//! Opted-out numbers and dead push tokens: recorded on the suppression
//! topic, skipped with status SUPPRESSED, and lifted by an opt-in.

use std::time::Duration;

use herald::model::{ErrorClass, Status, StatusEvent};
use herald::pipeline::receipts::{signature, SIGNATURE_HEADER};
use herald_testkit::fake::Reply;
use herald_testkit::kafka;
use herald_testkit::providers::AUTH_TOKEN;
use rdkafka::message::Message;

use crate::support::*;

/// Sends `request` and returns its terminal status.
async fn judged(h: &Harness, statuses: &mut Statuses, request: &herald::model::Request) -> StatusEvent {
    h.send(request).await;
    statuses.terminal(Duration::from_secs(30), std::slice::from_ref(&request.event_id)).await.remove(&request.event_id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_number_is_skipped_until_it_replies_start() {
    let h = Harness::new().await;
    let (opted, stopper) = ("+14155550105", "+14155550106");
    h.twilio.script(opted, [Reply::fail(400, "21610")]);
    let port = herald_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--receipts-listen", &listen, "--receipts-public-url", &format!("http://{listen}/twilio/status")];
    let inbound = format!("http://{listen}/twilio/inbound");

    let herald = h.start(&args);
    let mut statuses = h.statuses();
    let refused = judged(&h, &mut statuses, &sms("o-1", "user-a", opted, "one")).await;
    assert_eq!((refused.status, refused.error_code.as_deref()), (Status::Failed, Some("twilio:21610")));
    // Another user, the same number: skipped without asking Twilio.
    let skipped = judged(&h, &mut statuses, &sms("o-2", "user-b", opted, "two")).await;
    assert_eq!(
        (skipped.status, skipped.error_code.as_deref(), skipped.error_class, skipped.provider.map(|p| p.name()), skipped.attempt),
        (Status::Suppressed, Some("opted-out"), Some(ErrorClass::Permanent), None, 0)
    );
    herald.stop().await.unwrap();

    // A new instance has the list, from the topic.
    let herald = h.start(&args);
    assert_eq!(judged(&h, &mut statuses, &sms("o-3", "user-c", opted, "three")).await.status, Status::Suppressed);

    let http = reqwest::Client::new();
    let reply = |from: &str, body: &str, opt_out_type: Option<&str>, token: &str| {
        let mut params = vec![("From", from), ("To", FROM), ("Body", body), ("AccountSid", ACCOUNT_SID)];
        params.extend(opt_out_type.map(|t| ("OptOutType", t)));
        let params: Vec<(String, String)> = params.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let request = http.post(&inbound).header(SIGNATURE_HEADER, signature(token, &inbound, &params)).form(&params);
        async move {
            let response = request.send().await.expect("herald answers");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // A forged START changes nothing.
    assert_eq!(reply(opted, "START", None, "not-the-token").await.0, 403);
    assert_eq!(judged(&h, &mut statuses, &sms("o-4", "user-c", opted, "four")).await.status, Status::Suppressed);
    // A genuine one opts the number back in; the answer is empty TwiML, so
    // Twilio adds nothing to its own confirmation.
    let (code, body) = reply(opted, "start", None, AUTH_TOKEN).await;
    assert_eq!((code, body.contains("<Response></Response>")), (200, true), "{body}");
    let sent = judged(&h, &mut statuses, &sms("o-5", "user-c", opted, "five")).await;
    assert_eq!((sent.status, sent.provider.map(|p| p.name())), (Status::Sent, Some("twilio")));
    // A STOP reply opts out before Twilio ever refuses a send.
    assert_eq!(reply(stopper, "Stop", Some("STOP"), AUTH_TOKEN).await.0, 200);
    assert_eq!(judged(&h, &mut statuses, &sms("o-6", "user-d", stopper, "six")).await.status, Status::Suppressed);
    herald.stop().await.unwrap();

    let to = |n: &str| h.twilio.requests().iter().filter(|r| r.field("To") == Some(n)).count();
    assert_eq!((to(opted), to(stopper)), (2, 0), "Twilio was asked for o-1 and o-5 only");
    // The topic holds each change, keyed by channel and number.
    let mut reader = h.reader(&h.topics.suppressions);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut changes = vec![];
    while changes.len() < 3 {
        let m = reader.next(deadline).await.expect("three changes on the suppression topic");
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
        changes.push((text(m.key()).unwrap(), text(m.payload())));
    }
    assert_eq!(
        changes,
        [
            (format!("SMS:{opted}"), Some(r#"{"reason":"opted-out","cause":"twilio:21610"}"#.to_owned())),
            (format!("SMS:{opted}"), None),
            (format!("SMS:{stopper}"), Some(r#"{"reason":"opted-out","cause":"sms:STOP"}"#.to_owned())),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_push_token_is_skipped_until_an_opt_in_event() {
    let h = Harness::new().await;
    h.fcm.script("dead-token", [Reply::fail(404, "UNREGISTERED")]);
    let herald = h.start(&[]);
    let mut statuses = h.statuses();
    let gone = judged(&h, &mut statuses, &push("p-1", "user-p", "dead-token", "t", "one")).await;
    assert_eq!((gone.status, gone.error_code.as_deref()), (Status::Failed, Some("fcm:UNREGISTERED")));
    let skipped = judged(&h, &mut statuses, &push("p-2", "user-p", "dead-token", "t", "two")).await;
    assert_eq!((skipped.status, skipped.error_code.as_deref()), (Status::Suppressed, Some("token-unregistered")));
    // Another token of the same user is not affected.
    assert_eq!(judged(&h, &mut statuses, &push("p-3", "user-p", "live-token", "t", "three")).await.status, Status::Sent);

    // Another system opts the token back in with a tombstone; herald,
    // following the topic, sends to it again.
    kafka::tombstone(&h.producer, &h.topics.suppressions, b"PUSH:dead-token").await;
    let mut last = None;
    for i in 0..50 {
        let event = judged(&h, &mut statuses, &push(&format!("p-again-{i}"), "user-p", "dead-token", "t", "again")).await;
        if event.status != Status::Suppressed {
            last = Some(event);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    herald.stop().await.unwrap();
    assert_eq!(last.map(|e| e.status), Some(Status::Sent), "the opt-in reached herald");
    let to_dead = h.fcm.requests().iter().filter(|r| r.json.as_ref().unwrap()["message"]["token"] == "dead-token").count();
    assert_eq!(to_dead, 2, "FCM was asked for p-1 and the send after the opt-in only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_reads_the_whole_list_before_it_returns() {
    use herald::model::Channel;
    use herald::pipeline::suppression::{Change, Entry, Reason, Suppressions};
    let h = Harness::new().await;
    let config = h.config(&[]);
    let topic = &h.topics.suppressions;
    kafka::create_topics(&h.broker.bootstrap, &[topic], 1).await;
    let empty = Suppressions::default();
    let _ = herald::pipeline::follow::load(herald::kafka::reader(&config.kafka.settings().unwrap()).unwrap(), topic, &empty).await.expect("an empty topic loads");
    assert!(empty.is_empty());

    let entry = |cause: &str| Some(Entry { reason: Reason::OptedOut, cause: cause.into() });
    let changes = [
        Change { channel: Channel::Sms, recipient: "+14155550107".into(), entry: entry("twilio:21610") },
        Change { channel: Channel::Sms, recipient: "+14155550108".into(), entry: entry("sms:STOP") },
        Change { channel: Channel::Sms, recipient: "+14155550107".into(), entry: None },
    ];
    for change in &changes {
        match change.value() {
            Some(value) => {
                kafka::produce(&h.producer, topic, &change.key(), &value, None).await;
            }
            None => kafka::tombstone(&h.producer, topic, &change.key()).await,
        }
    }
    kafka::produce(&h.producer, topic, b"not a key", b"{}", None).await;
    let list = Suppressions::default();
    let _ = herald::pipeline::follow::load(herald::kafka::reader(&config.kafka.settings().unwrap()).unwrap(), topic, &list).await.expect("the list loads");
    // Checked as soon as it returns: nothing follows the topic here.
    assert_eq!((list.check(Channel::Sms, "+14155550107"), list.check(Channel::Sms, "+14155550108")), (None, Some(Reason::OptedOut)));
    assert_eq!(list.len(), 1, "a bad record is skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_reads_a_batched_list_to_its_end_without_listoffsets() {
    use herald::model::Channel;
    use herald::pipeline::suppression::{Change, Entry, Reason, Suppressions};
    let h = Harness::new().await;
    let config = h.config(&[]);
    let topic = &h.topics.suppressions;
    kafka::create_topics(&h.broker.bootstrap, &[topic], 1).await;
    // Produced together, so the producer batches them: a broker may then
    // answer ListOffsets with less than the true end (tansu does).
    let numbers: Vec<String> = (0..200).map(|i| format!("+1415555{i:04}")).collect();
    let changes: Vec<Change> = numbers
        .iter()
        .map(|n| Change { channel: Channel::Sms, recipient: n.clone(), entry: Some(Entry { reason: Reason::OptedOut, cause: "sms:STOP".into() }) })
        .collect();
    let records: Vec<(Vec<u8>, Vec<u8>)> = changes.iter().map(|c| (c.key(), c.value().unwrap())).collect();
    futures::future::join_all(records.iter().map(|(k, v)| kafka::produce(&h.producer, topic, k, v, None))).await;
    let list = Suppressions::default();
    // Waiting for an end the broker misreports would never finish: the
    // bound only keeps that from hanging the suite.
    let load = herald::pipeline::follow::load(herald::kafka::reader(&config.kafka.settings().unwrap()).unwrap(), topic, &list);
    let _ = tokio::time::timeout(Duration::from_secs(60), load).await.expect("the load finishes").expect("the list loads");
    assert_eq!(list.len(), numbers.len(), "every change, the last included");
}
