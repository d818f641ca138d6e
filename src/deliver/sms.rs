//! SMS through the Twilio Messages API.

use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::{retry_after, Delivered, DeliveryError, Provider};
use crate::mask::Secret;
use crate::model::{InvalidReason, Request};

/// Twilio error codes that no retry can fix: bad or non-mobile numbers,
/// unsupported regions, a body too long, a recipient who opted out.
const PERMANENT_CODES: &[u32] = &[21211, 21408, 21610, 21612, 21614, 21617];

pub struct Twilio {
    http: reqwest::Client,
    /// `{base}/2010-04-01/Accounts/{sid}/Messages.json`, built once.
    messages_url: Url,
    account_sid: String,
    auth_token: Secret,
    from: String,
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
    pub fn new(http: reqwest::Client, base: &Url, account_sid: String, auth_token: Secret, from: String) -> Self {
        let messages_url = base
            .join(&format!("2010-04-01/Accounts/{account_sid}/Messages.json"))
            .expect("account SID forms a valid path");
        Twilio { http, messages_url, account_sid, auth_token, from }
    }

    pub async fn send(&self, request: &Request) -> Result<Delivered, DeliveryError> {
        // A Messaging Service SID lets Twilio pick the sender number.
        let from_field = if self.from.starts_with("MG") { "MessagingServiceSid" } else { "From" };
        let form = [("To", request.recipient.as_str()), (from_field, self.from.as_str()), ("Body", request.content.body.as_str())];
        let response = self
            .http
            .post(self.messages_url.clone())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| DeliveryError::transport(Provider::Twilio, &e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if status.is_success() {
            let created: Created = response.json().await.map_err(|e| DeliveryError::transport(Provider::Twilio, &e))?;
            return Ok(Delivered { provider: Provider::Twilio, message_id: Some(created.sid) });
        }
        let body: Option<TwilioError> = response.json().await.ok();
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
    let transient = match status {
        _ if code.is_some_and(|c| PERMANENT_CODES.contains(&c)) => false,
        // Bad credentials affect every message; retrying keeps them until an
        // operator fixes the account, where failing would drop them all.
        StatusCode::TOO_MANY_REQUESTS | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => true,
        s => !s.is_client_error(),
    };
    if transient {
        DeliveryError::Unavailable { provider: Provider::Twilio, code: code_str, message, retry_after }
    } else {
        DeliveryError::Rejected { provider: Provider::Twilio, code: code_str, message }
    }
}

fn redact_digits(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect()
}

pub(super) fn validate(request: &Request, max_chars: usize) -> Result<(), InvalidReason> {
    if !is_e164(&request.recipient) {
        return Err(InvalidReason::InvalidPhoneNumber);
    }
    let body = &request.content.body;
    if body.trim().is_empty() {
        return Err(InvalidReason::EmptyBody);
    }
    let chars = body.chars().count();
    if chars > max_chars {
        return Err(InvalidReason::BodyTooLong { chars, max: max_chars });
    }
    Ok(())
}

/// `+`, a country code not starting with 0, 8 to 15 digits in all.
fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else { return false };
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorClass;

    #[test]
    fn e164_numbers() {
        for ok in ["+14155550100", "+447911123456", "+8613800138000"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in ["14155550100", "+0123456789", "+1415555", "+1415555010012345", "+1 415 555 0100", ""] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn classification_table() {
        use StatusCode as S;
        let rows: &[(S, Option<u32>, ErrorClass, &str)] = &[
            (S::BAD_REQUEST, Some(21211), ErrorClass::Permanent, "twilio:21211"),
            (S::BAD_REQUEST, Some(21610), ErrorClass::Permanent, "twilio:21610"),
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
        }
    }
}
