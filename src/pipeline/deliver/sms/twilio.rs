//! The Twilio Messages API.

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::callbacks::{CallbackIds, StatusCallbacks};
use super::Text;
use crate::model::ErrorCode;
use crate::pipeline::deliver::{http_is_transient, Answer, Call, Delivered, DeliveryError, Provider};
use crate::pipeline::suppression::Reason;

/// How requests to Twilio authenticate: HTTP Basic with the account SID
/// and auth token, or with an API key SID and its secret.
#[derive(Debug, Clone)]
pub(crate) enum TwilioAuth {
    AuthToken(SecretString),
    ApiKey { sid: String, secret: SecretString },
}

impl TwilioAuth {
    fn user<'a>(&'a self, account_sid: &'a str) -> &'a str {
        match self {
            TwilioAuth::AuthToken(_) => account_sid,
            TwilioAuth::ApiKey { sid, .. } => sid,
        }
    }

    fn password(&self) -> &str {
        match self {
            TwilioAuth::AuthToken(token) => token.expose_secret(),
            TwilioAuth::ApiKey { secret, .. } => secret.expose_secret(),
        }
    }
}

/// Who a message is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TwilioSender {
    /// A number of the account, in E.164.
    Number(String),
    /// A Messaging Service (`MG` and 32 hex digits), which picks the
    /// number, or an alphanumeric sender where the country allows one.
    Service(String),
}

impl std::str::FromStr for TwilioSender {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let service = s.len() == 34 && s.starts_with("MG") && s[2..].chars().all(|c| c.is_ascii_hexdigit());
        if service {
            Ok(TwilioSender::Service(s.to_owned()))
        } else if super::is_e164(s) {
            Ok(TwilioSender::Number(s.to_owned()))
        } else {
            Err(format!("{s:?} is neither an E.164 number (+14155550100) nor a Messaging Service SID (MG and 32 hex digits)"))
        }
    }
}

/// Twilio error codes that no retry can fix: bad or non-mobile numbers,
/// unsupported regions, a body too long, a recipient who opted out.
/// The recipient opted out (replied STOP) of messages from this sender.
const OPTED_OUT: u32 = 21610;

const PERMANENT_CODES: &[u32] = &[21211, 21408, 21610, 21612, 21614, 21617];

pub(crate) struct Twilio {
    http: reqwest::Client,
    /// `{base}/2010-04-01/Accounts/{sid}/Messages.json`, built once.
    messages_url: Url,
    account_sid: String,
    auth: TwilioAuth,
    from: TwilioSender,
    /// Where Twilio reports delivery, when receipts are on.
    callbacks: Option<StatusCallbacks>,
}

#[derive(Deserialize)]
struct Created {
    sid: String,
}

#[derive(Deserialize)]
struct TwilioError {
    code: Option<u32>,
}

impl Twilio {
    pub(crate) fn new(
        http: reqwest::Client,
        base: &Url,
        account_sid: String,
        auth: TwilioAuth,
        from: TwilioSender,
        callbacks: Option<StatusCallbacks>,
    ) -> Self {
        let messages_url = base
            .join(&format!("2010-04-01/Accounts/{account_sid}/Messages.json"))
            .expect("account SID forms a valid path");
        Twilio { http, messages_url, account_sid, auth, from, callbacks }
    }

    pub(crate) async fn send(&self, text: &Text, call: Call<'_>) -> Result<Delivered, DeliveryError> {
        let Call { request, attempt } = call;
        let from = match &self.from {
            TwilioSender::Number(number) => ("From", number.as_str()),
            TwilioSender::Service(sid) => ("MessagingServiceSid", sid.as_str()),
        };
        let callback = self.callbacks.as_ref().map(|r| {
            let ids = CallbackIds {
                event_id: request.event_id.clone(),
                user_id: request.user_id.clone(),
                attempt: attempt.number,
                partition: attempt.partition,
            };
            r.callback_url(&ids)
        });
        let mut form = vec![("To", request.recipient.as_str()), from, ("Body", text.body.as_str())];
        if let Some(callback) = &callback {
            form.push(("StatusCallback", callback.as_str()));
        }
        let request = self
            .http
            .post(self.messages_url.clone())
            .basic_auth(self.auth.user(&self.account_sid), Some(self.auth.password()))
            .form(&form);
        let answer = Answer::of(Provider::Twilio, request).await?;
        if answer.status.is_success() {
            let created: Created = answer.body().await?;
            return Ok(Delivered { provider: Provider::Twilio, message_id: Some(created.sid) });
        }
        let (status, retry_after) = (answer.status, answer.retry_after);
        let body: Option<TwilioError> = answer.error().await;
        Err(classify(status, body.and_then(|b| b.code), retry_after))
    }
}

/// herald's sentence for a Twilio error. Twilio's own message is not kept:
/// it can quote the number or the text, and it ends up in status events
/// that many systems read.
fn describe(status: StatusCode, code: Option<u32>) -> String {
    let meaning = match code {
        Some(21211) => "the To number is not a valid phone number",
        Some(21408) => "the account may not send to this region",
        Some(21610) => "the recipient replied STOP to this sender",
        Some(21612) => "Twilio cannot route a message to this number",
        Some(21614) => "the To number is not a mobile number",
        Some(21617) => "the body is longer than Twilio accepts",
        Some(20003) => "authentication failed: check the account SID and credentials",
        Some(20429) => "too many requests",
        _ => "",
    };
    match (code, meaning) {
        (Some(code), "") => format!("Twilio answered HTTP {} with error {code}", status.as_u16()),
        (_, "") => format!("Twilio answered HTTP {}", status.as_u16()),
        (_, meaning) => format!("Twilio: {meaning}"),
    }
}

fn classify(status: StatusCode, code: Option<u32>, retry_after: Option<std::time::Duration>) -> DeliveryError {
    let message = describe(status, code);
    let transient = !code.is_some_and(|c| PERMANENT_CODES.contains(&c)) && http_is_transient(status);
    let (provider, reason) = (Provider::Twilio, code);
    let code = match code {
        Some(c) => ErrorCode::provider(provider, c),
        None => ErrorCode::http(status.as_u16()),
    };
    if reason == Some(OPTED_OUT) {
        return DeliveryError::RecipientGone { provider, code, message, reason: Reason::OptedOut };
    }
    if transient {
        DeliveryError::Unavailable { provider, code, message, retry_after }
    } else {
        DeliveryError::Rejected { provider, code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorClass;

    #[test]
    fn senders_are_numbers_or_messaging_services() {
        let service = format!("MG{}", "0123456789abcdef".repeat(2));
        assert_eq!(service.parse(), Ok(TwilioSender::Service(service.clone())));
        assert_eq!("+14155550100".parse(), Ok(TwilioSender::Number("+14155550100".into())));
        assert!("+15005550006".parse::<TwilioSender>().is_ok(), "Twilio's test number");
        for bad in ["abc", "14155550100", "+1415", "", "MG123", &format!("MG{}", "x".repeat(32))] {
            assert!(bad.parse::<TwilioSender>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_are_herald_s_own() {
        assert_eq!(describe(StatusCode::BAD_REQUEST, Some(21614)), "Twilio: the To number is not a mobile number");
        assert_eq!(describe(StatusCode::BAD_REQUEST, Some(21999)), "Twilio answered HTTP 400 with error 21999");
        assert_eq!(describe(StatusCode::BAD_GATEWAY, None), "Twilio answered HTTP 502");
    }

    #[test]
    fn classification_table() {
        use StatusCode as S;
        let rows: &[(S, Option<u32>, ErrorClass, &str)] = &[
            (S::BAD_REQUEST, Some(21211), ErrorClass::Permanent, "twilio:21211"),
            (S::BAD_REQUEST, Some(21610), ErrorClass::Permanent, "twilio:21610"),
            (S::BAD_REQUEST, Some(21408), ErrorClass::Permanent, "twilio:21408"),
            (S::BAD_REQUEST, Some(21612), ErrorClass::Permanent, "twilio:21612"),
            (S::BAD_REQUEST, Some(21614), ErrorClass::Permanent, "twilio:21614"),
            (S::BAD_REQUEST, Some(21617), ErrorClass::Permanent, "twilio:21617"),
            (S::BAD_REQUEST, None, ErrorClass::Permanent, "http:400"),
            (S::TOO_MANY_REQUESTS, Some(20429), ErrorClass::Transient, "twilio:20429"),
            (S::INTERNAL_SERVER_ERROR, None, ErrorClass::Transient, "http:500"),
            (S::SERVICE_UNAVAILABLE, Some(20503), ErrorClass::Transient, "twilio:20503"),
            (S::UNAUTHORIZED, Some(20003), ErrorClass::Transient, "twilio:20003"),
        ];
        for (status, code, class, code_str) in rows {
            let e = classify(*status, *code, None);
            assert_eq!(e.class(), *class, "{status} {code:?}");
            assert_eq!(e.code(), *code_str);
            let gone = matches!(e, DeliveryError::RecipientGone { reason: Reason::OptedOut, .. });
            assert_eq!(gone, *code == Some(21610), "only an opt-out suppresses the number: {e:?}");
        }
    }
}
