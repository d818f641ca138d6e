//! SMS through the Twilio Messages API, and the rules an SMS body follows
//! before it is sent: E.164 recipient, optional template, length limit.

mod text;

use std::collections::HashMap;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

pub use self::text::{segments, truncate, Encoding, Segments};
use super::{retry_after, Delivered, DeliveryError, Provider};
use crate::config::OverLength;
use crate::mask::Secret;
use crate::model::{InvalidReason, Request};
use crate::receipts::Endpoint;

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

/// How SMS bodies are shaped, from configuration.
#[derive(Debug, Clone)]
pub struct SmsRules {
    /// The longest body sent, in characters.
    pub max_chars: usize,
    pub over_length: OverLength,
    /// Fills `{name}` from the request's template variables and `{message}`
    /// from its body. Checked once by [`SmsRules::new`].
    template: Option<String>,
}

/// A body ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    pub body: String,
    pub segments: Segments,
}

impl SmsRules {
    /// Fails when `template` does not parse.
    pub fn new(max_chars: usize, over_length: OverLength, template: Option<String>) -> Result<SmsRules, String> {
        if let Some(t) = &template {
            tinytemplate::TinyTemplate::new().add_template("sms", t).map_err(|e| e.to_string())?;
        }
        // libphonenumber's metadata loads on first use, in about a second:
        // at startup, not on the first SMS.
        is_e164("+14155550100");
        Ok(SmsRules { max_chars, over_length, template })
    }

    /// The body to send for `request`, or why it cannot be sent.
    pub fn prepare(&self, request: &Request) -> Result<Text, InvalidReason> {
        if !is_e164(&request.recipient) {
            return Err(InvalidReason::InvalidPhoneNumber);
        }
        if request.content.body.trim().is_empty() {
            return Err(InvalidReason::EmptyBody);
        }
        let body = match &self.template {
            Some(template) => render(template, request)?,
            None => request.content.body.clone(),
        };
        let chars = body.chars().count();
        let body = match self.over_length {
            _ if chars <= self.max_chars => body,
            OverLength::Reject => return Err(InvalidReason::BodyTooLong { chars, max: self.max_chars }),
            OverLength::Truncate => truncate(&body, self.max_chars),
        };
        Ok(Text { segments: segments(&body), body })
    }
}

fn render(template: &str, request: &Request) -> Result<String, InvalidReason> {
    let mut tt = tinytemplate::TinyTemplate::new();
    // Values are text for a phone, not HTML.
    tt.set_default_formatter(&tinytemplate::format_unescaped);
    tt.add_template("sms", template).map_err(|e| InvalidReason::Template(e.to_string()))?;
    let mut context: HashMap<&str, &str> =
        request.content.template_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    context.insert("message", &request.content.body);
    // Its errors name template paths and variable names, never values.
    tt.render("sms", &context).map_err(|e| InvalidReason::Template(e.to_string()))
}

/// Twilio error codes that no retry can fix: bad or non-mobile numbers,
/// unsupported regions, a body too long, a recipient who opted out.
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
        let response = self
            .http
            .post(self.messages_url.clone())
            .basic_auth(self.auth.user(&self.account_sid), Some(self.auth.password()))
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

/// A number in E.164 form exactly (`+`, country code, subscriber number,
/// no spaces), and valid for its country by libphonenumber's metadata.
fn is_e164(number: &str) -> bool {
    let Ok(parsed) = phonenumber::parse(None, number) else { return false };
    phonenumber::is_valid(&parsed) && parsed.format().mode(phonenumber::Mode::E164).to_string() == number
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorClass;

    #[test]
    fn e164_numbers() {
        for ok in ["+14155550100", "+447911123456", "+8613800138000", "+4915112345678"] {
            assert!(is_e164(ok), "{ok}");
        }
        let bad = [
            "14155550100",       // no +
            "+0123456789",       // no country code 0
            "+1415555",          // too short for the US
            "+1415555010012345", // too long
            "+1 415 555 0100",   // not the E.164 form
            "+44791112345",      // one digit short for a UK mobile
            "+1415555010a",
            "",
        ];
        for bad in bad {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    fn request(body: &str, vars: &[(&str, &str)]) -> Request {
        Request {
            event_id: "e".into(),
            user_id: "u".into(),
            channel: crate::model::Channel::Sms,
            recipient: "+14155550100".into(),
            content: crate::model::Content {
                body: body.into(),
                template_vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            },
            scheduled_at: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn bodies_over_the_limit_are_rejected_or_truncated() {
        let reject = SmsRules::new(10, OverLength::Reject, None).unwrap();
        let truncate = SmsRules::new(10, OverLength::Truncate, None).unwrap();
        assert_eq!(reject.prepare(&request("0123456789", &[])).unwrap().body, "0123456789");
        assert_eq!(reject.prepare(&request("0123456789x", &[])), Err(InvalidReason::BodyTooLong { chars: 11, max: 10 }));
        let text = truncate.prepare(&request("0123456789x", &[])).unwrap();
        assert_eq!(text.body, "0123456...");
        assert_eq!(text.segments, Segments { encoding: Encoding::Gsm7, units: 10, parts: 1 });
    }

    #[test]
    fn templates_fill_variables_and_the_message() {
        let rules = SmsRules::new(480, OverLength::Reject, Some("{user_name}: {message}".into())).unwrap();
        let text = rules.prepare(&request("Your code is <1234> & more", &[("user_name", "Ada")])).unwrap();
        assert_eq!(text.body, "Ada: Your code is <1234> & more", "not HTML-escaped");
        match rules.prepare(&request("hi", &[])) {
            Err(InvalidReason::Template(e)) => assert!(e.contains("user_name"), "names the missing variable: {e}"),
            other => panic!("expected a template error, got {other:?}"),
        }
        // The template counts towards the limit.
        let tight = SmsRules::new(7, OverLength::Reject, Some("{user_name}: {message}".into())).unwrap();
        assert_eq!(tight.prepare(&request("hi", &[("user_name", "Ada")])).unwrap().body, "Ada: hi");
        assert!(tight.prepare(&request("hi!", &[("user_name", "Ada")])).is_err());
        assert!(SmsRules::new(480, OverLength::Reject, Some("{unclosed".into())).is_err());
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
