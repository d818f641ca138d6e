//! The Twilio Messages API.

use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::{redact_digits, Text};
use crate::deliver::{http_is_transient, Answer, Delivered, DeliveryError, Provider};
use crate::mask::Secret;
use crate::model::Request;
use crate::receipts::Endpoint;
use crate::suppression::Reason;

/// How requests to Twilio authenticate: HTTP Basic with the account SID
/// and auth token, or with an API key SID and its secret.
#[derive(Debug, Clone)]
pub enum TwilioAuth {
    AuthToken(Secret),
    ApiKey { sid: String, secret: Secret },
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
            TwilioAuth::AuthToken(token) => token.expose(),
            TwilioAuth::ApiKey { secret, .. } => secret.expose(),
        }
    }
}

/// Twilio error codes that no retry can fix: bad or non-mobile numbers,
/// unsupported regions, a body too long, a recipient who opted out.
/// The recipient opted out (replied STOP) of messages from this sender.
const OPTED_OUT: u32 = 21610;

const PERMANENT_CODES: &[u32] = &[21211, 21408, 21610, 21612, 21614, 21617];

pub struct Twilio {
    http: reqwest::Client,
    /// `{base}/2010-04-01/Accounts/{sid}/Messages.json`, built once.
    messages_url: Url,
    account_sid: String,
    auth: TwilioAuth,
    from: String,
    /// Where Twilio reports delivery, when receipts are on.
    receipts: Option<Endpoint>,
}

#[derive(Deserialize)]
struct Created {
    sid: String,
}

#[derive(Deserialize)]
struct TwilioError {
    code: Option<u32>,
    message: Option<String>,
}

impl Twilio {
    pub fn new(
        http: reqwest::Client,
        base: &Url,
        account_sid: String,
        auth: TwilioAuth,
        from: String,
        receipts: Option<Endpoint>,
    ) -> Self {
        let messages_url = base
            .join(&format!("2010-04-01/Accounts/{account_sid}/Messages.json"))
            .expect("account SID forms a valid path");
        Twilio { http, messages_url, account_sid, auth, from, receipts }
    }

    pub async fn send(&self, request: &Request, text: &Text, attempt: u32) -> Result<Delivered, DeliveryError> {
        // A Messaging Service SID lets Twilio pick the sender number.
        let from_field = if self.from.starts_with("MG") { "MessagingServiceSid" } else { "From" };
        let callback = self.receipts.as_ref().map(|r| r.callback_url(&request.event_id, &request.user_id, attempt));
        let mut form = vec![("To", request.recipient.as_str()), (from_field, self.from.as_str()), ("Body", text.body.as_str())];
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
        Err(classify(status, body.as_ref().and_then(|b| b.code), body.and_then(|b| b.message), retry_after))
    }
}

fn classify(
    status: StatusCode,
    code: Option<u32>,
    message: Option<String>,
    retry_after: Option<std::time::Duration>,
) -> DeliveryError {
    let code_str = match code {
        Some(c) => format!("twilio:{c}"),
        None => format!("http:{}", status.as_u16()),
    };
    // Twilio's messages can quote the number; keep only the code's meaning.
    let message = message.map(|m| redact_digits(&m)).unwrap_or_else(|| status.to_string());
    let transient = !code.is_some_and(|c| PERMANENT_CODES.contains(&c)) && http_is_transient(status);
    if code == Some(OPTED_OUT) {
        return DeliveryError::RecipientGone { provider: Provider::Twilio, code: code_str, message, reason: Reason::OptedOut };
    }
    if transient {
        DeliveryError::Unavailable { provider: Provider::Twilio, code: code_str, message, retry_after }
    } else {
        DeliveryError::Rejected { provider: Provider::Twilio, code: code_str, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorClass;

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
            let e = classify(*status, *code, Some("To +14155550100 is bad".into()), None);
            assert_eq!(e.class(), *class, "{status} {code:?}");
            assert_eq!(e.code(), *code_str);
            assert!(!e.to_string().contains("4155550100"), "no number in {e}");
            let gone = matches!(e, DeliveryError::RecipientGone { reason: Reason::OptedOut, .. });
            assert_eq!(gone, *code == Some(21610), "only an opt-out suppresses the number: {e:?}");
        }
    }
}
