//! The Vonage SMS API (`POST {base}/sms/json`), herald's failover for
//! Twilio. Vonage answers HTTP 200 even when it refuses a message: the
//! outcome is the `status` of each part in the body.

use reqwest::Url;
use serde::Deserialize;

use super::{redact_digits, Encoding, Text};
use crate::deliver::{http_is_transient, Answer, Delivered, DeliveryError, Provider};
use crate::mask::Secret;
use crate::model::Request;

/// Status codes worth another attempt: throttled (1), internal error (5),
/// too many binds (10), communication failure (13).
const TRANSIENT: &[u32] = &[1, 5, 10, 13];
/// Status codes about the account, not the message: bad credentials (4),
/// account barred (8), out of credit (9), not enabled for HTTP (11), bad
/// signature (14), sender not allowed (15), bad callback URL (23),
/// signature and secret both given (32). Every message fails alike until an
/// operator acts, so they are retried (and fail over) rather than dropped.
const ACCOUNT: &[u32] = &[4, 8, 9, 11, 14, 15, 23, 32];

/// `client-ref`, which Vonage echoes in receipts, holds at most this.
const MAX_CLIENT_REF: usize = 100;

pub struct Vonage {
    http: reqwest::Client,
    /// `{base}/sms/json`, built once.
    sms_url: Url,
    api_key: String,
    api_secret: Secret,
    /// A number (E.164; the `+` is dropped) or an alphanumeric sender id.
    from: String,
}

#[derive(Deserialize)]
struct Parts {
    messages: Vec<Part>,
}

/// One part of the message: Vonage splits long bodies and reports each.
#[derive(Deserialize)]
struct Part {
    status: String,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

impl Vonage {
    pub fn new(http: reqwest::Client, base: &Url, api_key: String, api_secret: Secret, from: &str) -> Self {
        let sms_url = base.join("sms/json").expect("a constant path");
        Vonage { http, sms_url, api_key, api_secret, from: from.trim_start_matches('+').to_owned() }
    }

    pub async fn send(&self, request: &Request, text: &Text) -> Result<Delivered, DeliveryError> {
        // Vonage takes E.164 without the leading +.
        let to = request.recipient.trim_start_matches('+');
        // Without `unicode`, Vonage sends GSM-7 and mangles anything else.
        let kind = match text.segments.encoding {
            Encoding::Gsm7 => "text",
            Encoding::Ucs2 => "unicode",
        };
        let mut form = vec![
            ("api_key", self.api_key.as_str()),
            ("api_secret", self.api_secret.expose()),
            ("from", self.from.as_str()),
            ("to", to),
            ("text", text.body.as_str()),
            ("type", kind),
        ];
        if request.event_id.len() <= MAX_CLIENT_REF {
            form.push(("client-ref", request.event_id.as_str()));
        }
        let answer = Answer::of(Provider::Vonage, self.http.post(self.sms_url.clone()).form(&form)).await?;
        let (status, retry_after) = (answer.status, answer.retry_after);
        if !status.is_success() {
            let (code, message) = (format!("http:{}", status.as_u16()), status.to_string());
            return Err(if http_is_transient(status) {
                DeliveryError::Unavailable { provider: Provider::Vonage, code, message, retry_after }
            } else {
                DeliveryError::Rejected { provider: Provider::Vonage, code, message }
            });
        }
        let parts: Parts = answer.body().await?;
        match parts.messages.iter().find(|p| p.status != "0") {
            Some(part) => Err(classify(&part.status, part.error_text.as_deref(), retry_after)),
            None => {
                let message_id = parts.messages.into_iter().find_map(|p| p.message_id);
                Ok(Delivered { provider: Provider::Vonage, message_id })
            }
        }
    }
}

/// A refused part's status code: unknown codes are permanent, like any
/// refusal no retry is known to fix.
fn classify(status: &str, error_text: Option<&str>, retry_after: Option<std::time::Duration>) -> DeliveryError {
    let code = format!("vonage:{status}");
    let message = error_text.map(redact_digits).unwrap_or_else(|| "refused".to_owned());
    let number = status.parse::<u32>().ok();
    if number.is_some_and(|n| TRANSIENT.contains(&n) || ACCOUNT.contains(&n)) {
        DeliveryError::Unavailable { provider: Provider::Vonage, code, message, retry_after }
    } else {
        DeliveryError::Rejected { provider: Provider::Vonage, code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorClass;

    #[test]
    fn classification_table() {
        use ErrorClass::{Permanent, Transient};
        let rows = [
            ("1", Transient),  // throttled
            ("2", Permanent),  // missing parameters
            ("3", Permanent),  // invalid parameters
            ("4", Transient),  // invalid credentials: the account, not the message
            ("5", Transient),  // internal error
            ("6", Permanent),  // invalid message
            ("7", Permanent),  // number barred
            ("8", Transient),  // account barred
            ("9", Transient),  // out of credit
            ("10", Transient), // too many binds
            ("11", Transient), // account not enabled for HTTP
            ("12", Permanent), // message too long
            ("13", Transient), // communication failure
            ("14", Transient), // invalid signature
            ("15", Transient), // sender not allowed
            ("22", Permanent), // invalid network code
            ("23", Transient), // invalid callback URL
            ("29", Permanent), // non-whitelisted destination
            ("32", Transient), // signature and secret both given
            ("33", Permanent), // number de-activated
            ("99", Permanent), // unknown
        ];
        for (status, class) in rows {
            let e = classify(status, Some("Non White-listed Destination 447700900000"), None);
            assert_eq!((e.class(), e.code()), (class, format!("vonage:{status}")), "status {status}");
            assert!(!e.to_string().contains("447700900000"), "no number in {e}");
        }
    }
}
