//! The Vonage SMS API (`POST {base}/sms/json`), herald's failover for
//! Twilio. Vonage answers HTTP 200 even when it refuses a message: the
//! outcome is the `status` of each part in the body.

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{Encoding, Text};
use crate::model::ErrorCode;
use crate::pipeline::deliver::{http_is_transient, Answer, Call, Delivered, DeliveryError, Provider};

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

/// Checks a sender Vonage accepts: a number (E.164 with its `+`, or digits
/// alone, as short codes are), or an alphanumeric sender id of 1 to 11
/// letters, digits and spaces with at least one letter.
pub(crate) fn check_sender(from: &str) -> Result<(), String> {
    let digits = !from.is_empty() && from.len() <= 15 && from.chars().all(|c| c.is_ascii_digit());
    let alphanumeric = (1..=11).contains(&from.len())
        && from.trim() == from
        && from.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
        && from.chars().any(|c| c.is_ascii_alphabetic());
    if digits || alphanumeric || super::is_e164(from) {
        Ok(())
    } else {
        Err(format!("{from:?} is neither a phone number nor an alphanumeric sender id of 1 to 11 letters and digits"))
    }
}

pub(crate) struct Vonage {
    http: reqwest::Client,
    /// `{base}/sms/json`, built once.
    sms_url: Url,
    api_key: String,
    api_secret: SecretString,
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
}

impl Vonage {
    pub(crate) fn new(http: reqwest::Client, base: &Url, api_key: String, api_secret: SecretString, from: &str) -> Self {
        let sms_url = base.join("sms/json").expect("a constant path");
        Vonage { http, sms_url, api_key, api_secret, from: from.trim_start_matches('+').to_owned() }
    }

    pub(crate) async fn send(&self, text: &Text, Call { request, .. }: Call<'_>) -> Result<Delivered, DeliveryError> {
        // Vonage takes E.164 without the leading +.
        let to = request.recipient.trim_start_matches('+');
        // Without `unicode`, Vonage sends GSM-7 and mangles anything else.
        let kind = match text.segments.encoding {
            Encoding::Gsm7 => "text",
            Encoding::Ucs2 => "unicode",
        };
        let mut form = vec![
            ("api_key", self.api_key.as_str()),
            ("api_secret", self.api_secret.expose_secret()),
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
            let (code, message) = (ErrorCode::http(status.as_u16()), format!("Vonage answered HTTP {}", status.as_u16()));
            return Err(if http_is_transient(status) {
                DeliveryError::Unavailable { provider: Provider::Vonage, code, message, retry_after }
            } else {
                DeliveryError::Rejected { provider: Provider::Vonage, code, message }
            });
        }
        let parts: Parts = answer.body().await?;
        match parts.messages.iter().find(|p| p.status != "0") {
            Some(part) => Err(classify(&part.status, retry_after)),
            None => {
                let message_id = parts.messages.into_iter().find_map(|p| p.message_id);
                Ok(Delivered { provider: Provider::Vonage, message_id })
            }
        }
    }
}

/// herald's sentence for a refused part. Vonage's `error-text` is not
/// kept: it can quote the number, and status events are widely read.
fn describe(status: &str) -> String {
    let meaning = match status {
        "1" => "throttled",
        "2" | "3" => "a parameter is missing or invalid",
        "4" | "14" | "32" => "authentication failed: check the API key and secret",
        "5" | "13" => "Vonage failed internally",
        "6" => "the message is invalid",
        "7" => "the number is barred",
        "8" => "the account is barred",
        "9" => "the account is out of credit",
        "10" => "too many connections",
        "11" => "the account is not enabled for the HTTP API",
        "12" => "the message is too long",
        "15" => "the sender is not allowed",
        "22" => "the network code is invalid",
        "23" => "the callback URL is invalid",
        "29" => "the destination is not allowed for this account",
        "33" => "the number is de-activated",
        _ => return format!("Vonage refused the message with status {status}"),
    };
    format!("Vonage: {meaning}")
}

/// A refused part's status code: unknown codes are permanent, like any
/// refusal no retry is known to fix.
fn classify(status: &str, retry_after: Option<std::time::Duration>) -> DeliveryError {
    let code = ErrorCode::provider(Provider::Vonage, status);
    let message = describe(status);
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
    fn senders_are_numbers_or_short_alphanumeric_ids() {
        for ok in ["+447911123456", "447700900000", "12345", "herald", "Acme Ltd", "ABCDEFGHIJK"] {
            assert_eq!(check_sender(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", " ", "+1415", "ABCDEFGHIJKL", "he-rald", " herald", "1234567890123456", "+"] {
            assert!(check_sender(bad).is_err(), "{bad:?}");
        }
    }

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
            let e = classify(status, None);
            assert_eq!((e.class(), e.code().as_str()), (class, format!("vonage:{status}").as_str()), "status {status}");
        }
        assert_eq!(describe("29"), "Vonage: the destination is not allowed for this account");
        assert_eq!(describe("99"), "Vonage refused the message with status 99");
    }
}
