//! Each channel's happy path, with the fake provider checking the request.

use std::time::Duration;

use herald::model::{AndroidOverrides, AndroidPriority, ApnsOverrides, Channel, Status};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_goes_to_twilio_as_a_form_post_with_basic_auth() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    h.send(&sms("sms-1", "user-1", "+14155550100", "Your code is 123456")).await;

    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(30), &["sms-1".into()]).await;
    let sent = &terminal["sms-1"];
    assert_eq!(sent.status, Status::Sent);
    assert_eq!((sent.channel, sent.attempt, sent.user_id.as_str()), (Some(Channel::Sms), 1, "user-1"));
    assert_eq!(sent.provider.map(|p| p.name()), Some("twilio"));
    assert!(sent.provider_message_id.as_deref().is_some_and(|sid| sid.starts_with("SM")), "{sent:?}");

    let requests = h.twilio.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.path, format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"));
    assert_eq!(r.authorization.as_deref(), Some(h.twilio.expected_authorization().as_str()));
    assert_eq!(r.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    assert_eq!(
        r.form,
        [("To", "+14155550100"), ("From", FROM), ("Body", "Your code is 123456")].map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(r.header("user-agent"), Some(herald::USER_AGENT), "herald says who it is");
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_key_twilio_requests_authenticate_with_it() {
    use herald_testkit::providers::{API_KEY_SECRET, API_KEY_SID};
    let h = Harness::new().await;
    let herald = h.start(&["--twilio-api-key-sid", API_KEY_SID, "--twilio-api-key-secret", API_KEY_SECRET]);
    h.send(&sms("keyed", "user-1", "+14155550100", "hi")).await;
    let terminal = h.statuses().terminal(Duration::from_secs(30), &["keyed".into()]).await;
    herald.stop().await.unwrap();
    assert_eq!(terminal["keyed"].status, Status::Sent);
    let requests = h.twilio.requests();
    assert_eq!(requests[0].authorization, Some(herald_testkit::fake::basic(API_KEY_SID, API_KEY_SECRET)));
    assert_ne!(requests[0].authorization.as_deref(), Some(h.twilio.expected_authorization().as_str()), "not the auth token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_bodies_are_templated_and_truncated_before_twilio_sees_them() {
    let h = Harness::new().await;
    let herald = h.start(&["--sms-template", "{user_name}: {message}", "--sms-max-chars", "20", "--sms-over-length", "truncate"]);
    let mut fits = sms("fits", "user-1", "+14155550100", "Hi <3 & bye");
    fits.content.template_vars.insert("user_name".into(), "Ada".into());
    let mut long = sms("long", "user-1", "+14155550100", "Your parcel arrives on Thursday");
    long.content.template_vars.insert("user_name".into(), "Ada".into());
    let nameless = sms("nameless", "user-1", "+14155550100", "Hello");
    for r in [&fits, &long, &nameless] {
        h.send(r).await;
    }

    let ids = ["fits", "long", "nameless"].map(String::from);
    let terminal = h.statuses().terminal(Duration::from_secs(30), &ids).await;
    assert_eq!(terminal["fits"].status, Status::Sent);
    assert_eq!(terminal["long"].status, Status::Sent);
    assert_eq!(terminal["nameless"].status, Status::Invalid);
    assert_eq!(terminal["nameless"].error_code.as_deref(), Some("template-error"));
    let mut bodies: Vec<String> = h
        .twilio
        .requests()
        .iter()
        .filter_map(|r| r.form.iter().find(|(k, _)| k == "Body").map(|(_, v)| v.clone()))
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["Ada: Hi <3 & bye", "Ada: Your parcel..."]);
    herald.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_goes_to_fcm_v1_with_a_cached_oauth_token() {
    let h = Harness::new().await;
    let herald = h.start(&[]);
    let mut first = push("push-1", "user-2", "device-token-1", "Hello", "You have mail");
    first.content.data.insert("thread".into(), "42".into());
    h.send(&first).await;
    let mut second = push("push-2", "user-3", "device-token-2", "Again", "Second");
    second.content.android = Some(Box::new(AndroidOverrides {
        priority: Some(AndroidPriority::High),
        ttl_seconds: Some(600),
        collapse_key: Some("inbox".into()),
        ..AndroidOverrides::default()
    }));
    second.content.apns = Some(Box::new(ApnsOverrides {
        headers: [("apns-priority".to_owned(), "10".to_owned())].into(),
        sound: Some("default".into()),
        badge: Some(2),
        ..ApnsOverrides::default()
    }));
    h.send(&second).await;

    let mut statuses = h.statuses();
    let terminal = statuses.terminal(Duration::from_secs(30), &["push-1".into(), "push-2".into()]).await;
    for id in ["push-1", "push-2"] {
        let e = &terminal[id];
        assert_eq!((e.status, e.provider.map(|p| p.name())), (Status::Sent, Some("fcm")), "{e:?}");
        assert!(e.provider_message_id.as_deref().is_some_and(|m| m.starts_with("projects/herald-test/messages/")));
    }

    // The fake refuses an assertion without the key's id as `kid`.
    let exchanges = h.fcm.token_exchanges();
    assert_eq!(exchanges.len(), 1, "the access token is reused");
    assert_eq!(exchanges[0].header("user-agent"), Some(herald::USER_AGENT));
    assert_eq!(exchanges[0].field("grant_type"), Some("urn:ietf:params:oauth:grant-type:jwt-bearer"));

    let mut requests = h.fcm.requests();
    requests.sort_by_key(|r| r.json.as_ref().unwrap()["message"]["token"].as_str().unwrap().to_owned());
    assert_eq!(requests.len(), 2);
    let r = &requests[0];
    assert_eq!(r.path, format!("/v1/projects/{}/messages:send", h.fcm.project()));
    assert_eq!(r.authorization.as_deref(), Some("Bearer ya29.fake-1"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.header("user-agent"), Some(herald::USER_AGENT));
    assert_eq!(r.header("x-goog-api-format-version"), Some("2"), "as firebase-admin sends it");
    assert_eq!(
        r.json.as_ref().unwrap(),
        &serde_json::json!({"message": {
            "token": "device-token-1",
            "notification": {"title": "Hello", "body": "You have mail"},
            "data": {"thread": "42"}
        }})
    );
    // Platform overrides travel from the request to FCM's message.
    assert_eq!(
        requests[1].json.as_ref().unwrap(),
        &serde_json::json!({"message": {
            "token": "device-token-2",
            "notification": {"title": "Again", "body": "Second"},
            "android": {"priority": "HIGH", "ttl": "600s", "collapse_key": "inbox"},
            "apns": {"headers": {"apns-priority": "10"}, "payload": {"aps": {"sound": "default", "badge": 2}}}
        }})
    );
    herald.stop().await.unwrap();
}
