//! SMS: the rules a body follows before it is sent (E.164 recipient,
//! optional template, length limit), and the providers that send it,
//! Twilio first and Vonage as failover by default.

mod callbacks;
mod text;
mod twilio;
mod vonage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) use self::text::segments;
pub(crate) use self::text::truncate;
pub(crate) use self::text::Encoding;
pub(crate) use self::text::Segments;
pub(crate) use self::callbacks::CallbackError;
pub(crate) use self::callbacks::CallbackIds;
pub(crate) use self::callbacks::StatusCallbacks;
pub(crate) use self::twilio::Twilio;
pub(crate) use self::twilio::TwilioAuth;
pub(crate) use self::twilio::TwilioSender;
pub(crate) use self::vonage::check_sender as check_vonage_sender;
pub(crate) use self::vonage::Vonage;
use super::breaker::CircuitState;
use super::{Call, Delivered, DeliveryError, Dispatch, Gateway, Provider};
use crate::model::{Channel, InvalidReason, Request, Tried};
use crate::templates::BraceTemplate;

/// The SMS stage: its rules, and its providers (or a dry run).
pub(crate) struct SmsStage {
    pub rules: SmsRules,
    pub dispatch: Dispatch<SmsGateway>,
}

impl SmsStage {
    /// The text to send for `request`, or why it can never be sent here.
    pub(crate) fn prepare(&self, request: &Request) -> Result<Text, InvalidReason> {
        if let Some(reason) = self.dispatch.refuses(Channel::Sms) {
            return Err(reason);
        }
        self.rules.prepare(request, None)
    }

    /// [`SmsStage::prepare`] with a body from `--templates-dir`.
    pub(crate) fn prepare_rendered(&self, request: &Request, body: String) -> Result<Text, InvalidReason> {
        if let Some(reason) = self.dispatch.refuses(Channel::Sms) {
            return Err(reason);
        }
        self.rules.prepare(request, Some(body))
    }

    /// What a stage that calls nobody answers; `None` when a provider must
    /// be called.
    pub(crate) fn answer_now(&self) -> Option<Delivered> {
        self.dispatch.answer_now()
    }

    /// Sends a text (see [`Dispatch::send`]).
    pub(crate) async fn send(&self, message: &Text, call: Call<'_>, tried: &mut Vec<Tried>) -> Result<Delivered, DeliveryError> {
        self.dispatch.send(message, call, tried).await
    }

    /// Each provider's circuit, now.
    pub(crate) fn circuits(&self) -> Vec<(Provider, CircuitState)> {
        self.dispatch.circuits()
    }

    /// The providers in failover order, for people.
    pub(crate) fn describe(&self) -> String {
        self.dispatch.describe()
    }
}

/// An SMS provider's client.
pub(crate) enum SmsGateway {
    Twilio(Twilio),
    Vonage(Vonage),
}

impl Gateway for SmsGateway {
    type Message = Text;

    fn provider(&self) -> Provider {
        match self {
            SmsGateway::Twilio(_) => Provider::Twilio,
            SmsGateway::Vonage(_) => Provider::Vonage,
        }
    }

    async fn send(&self, text: &Text, call: Call<'_>) -> Result<Delivered, DeliveryError> {
        match self {
            SmsGateway::Twilio(twilio) => twilio.send(text, call).await,
            SmsGateway::Vonage(vonage) => vonage.send(text, call).await,
        }
    }
}

/// What happens to an SMS body longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OverLength {
    /// Not sent; status INVALID (body-too-long).
    Reject,
    /// Cut at a character boundary, ending in "..." (or "…" when the body is not GSM-7 anyway).
    Truncate,
}

/// How SMS bodies are shaped, from configuration.
#[derive(Debug, Clone)]
pub(crate) struct SmsRules {
    /// The longest body sent, in characters.
    pub max_chars: usize,
    pub over_length: OverLength,
    /// Fills `{name}` from the request's template variables and `{message}`
    /// from its body. Parsed once, by [`SmsRules::new`].
    template: Option<Arc<BraceTemplate>>,
    numbers: Arc<Mutex<CheckedNumbers>>,
}

/// Numbers already checked, so that a recipient seen before is not parsed
/// again: libphonenumber's parser is most of what checking an SMS costs.
/// Two generations of at most [`CHECKED_PER_GENERATION`] numbers each: when
/// the newer is full the older is dropped, so memory is bounded and
/// numbers in use stay. Recipients come from producers, so the hasher is
/// seeded at random, not predictable.
#[derive(Debug)]
struct CheckedNumbers {
    newer: HashMap<String, bool, foldhash::fast::RandomState>,
    older: HashMap<String, bool, foldhash::fast::RandomState>,
    per_generation: usize,
}

const CHECKED_PER_GENERATION: usize = 50_000;

impl Default for CheckedNumbers {
    fn default() -> Self {
        CheckedNumbers::new(CHECKED_PER_GENERATION)
    }
}

impl CheckedNumbers {
    fn new(per_generation: usize) -> Self {
        CheckedNumbers { newer: HashMap::default(), older: HashMap::default(), per_generation }
    }

    fn is_e164(&mut self, number: &str) -> bool {
        if let Some(valid) = self.newer.get(number) {
            return *valid;
        }
        let valid = match self.older.remove(number) {
            Some(valid) => valid,
            None => is_e164(number),
        };
        if self.newer.len() >= self.per_generation {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(number.to_owned(), valid);
        valid
    }
}

/// A body ready to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Text {
    pub body: String,
    pub segments: Segments,
}

impl SmsRules {
    /// Fails when `template` does not parse.
    pub(crate) fn new(max_chars: usize, over_length: OverLength, template: Option<String>) -> Result<SmsRules, String> {
        let template = template.map(|t| BraceTemplate::parse(&t).map(Arc::new)).transpose()?;
        // libphonenumber's metadata loads on first use, in about a second:
        // at startup, not on the first SMS.
        is_e164("+14155550100");
        Ok(SmsRules { max_chars, over_length, template, numbers: Arc::default() })
    }

    /// The body to send for `request`, or why it cannot be sent. A body
    /// from `--templates-dir` (`rendered`) takes the place of the request's
    /// and of `--sms-template`.
    pub(crate) fn prepare(&self, request: &Request, rendered: Option<String>) -> Result<Text, InvalidReason> {
        let valid = self.numbers.lock().unwrap_or_else(|p| p.into_inner()).is_e164(&request.recipient);
        if !valid {
            return Err(InvalidReason::InvalidPhoneNumber);
        }
        let body = match (rendered, &self.template) {
            (Some(rendered), _) => rendered,
            (None, _) if request.content.body.trim().is_empty() => return Err(InvalidReason::EmptyBody),
            (None, Some(template)) => template.render(&request.content.template_vars, &request.content.body)?,
            (None, None) => request.content.body.clone(),
        };
        if body.trim().is_empty() {
            return Err(InvalidReason::EmptyBody);
        }
        let chars = body.chars().count();
        let body = match self.over_length {
            _ if chars <= self.max_chars => body,
            OverLength::Reject => return Err(InvalidReason::BodyTooLong { chars, max: self.max_chars }),
            OverLength::Truncate => truncate(&body, self.max_chars),
        };
        Ok(Text { segments: segments(&body), body })
    }
}


pub(crate) use crate::model::is_e164;

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn checked_numbers_are_remembered_within_bounds() {
        let mut checked = CheckedNumbers::new(10);
        assert!(checked.is_e164("+14155550100"));
        assert!(!checked.is_e164("+1415555"));
        assert_eq!((checked.newer.get("+14155550100"), checked.newer.get("+1415555")), (Some(&true), Some(&false)));
        for i in 0..20 {
            checked.is_e164(&format!("+1415{i:07}"));
        }
        assert!(checked.newer.len() <= 10 && checked.older.len() <= 10);
        assert!(!checked.newer.contains_key("+14155550100") && !checked.older.contains_key("+14155550100"), "the oldest went");
        assert!(checked.is_e164("+14155550100"), "and is checked again when it comes back");
    }

    fn request(body: &str, vars: &[(&str, &str)]) -> Request {
        Request {
            prefs: Default::default(),
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
        assert_eq!(reject.prepare(&request("0123456789", &[]), None).unwrap().body, "0123456789");
        assert_eq!(reject.prepare(&request("0123456789x", &[]), None), Err(InvalidReason::BodyTooLong { chars: 11, max: 10 }));
        let text = truncate.prepare(&request("0123456789x", &[]), None).unwrap();
        assert_eq!(text.body, "0123456...");
        assert_eq!(text.segments, Segments { encoding: Encoding::Gsm7, units: 10, parts: 1 });
    }

    #[test]
    fn templates_fill_variables_and_the_message() {
        let rules = SmsRules::new(480, OverLength::Reject, Some("{user_name}: {message}".into())).unwrap();
        let text = rules.prepare(&request("Your code is <1234> & more", &[("user_name", "Ada")]), None).unwrap();
        assert_eq!(text.body, "Ada: Your code is <1234> & more", "not HTML-escaped");
        match rules.prepare(&request("hi", &[]), None) {
            Err(InvalidReason::Template(e)) => assert!(e.contains("user_name"), "names the missing variable: {e}"),
            other => panic!("expected a template error, got {other:?}"),
        }
        // The template counts towards the limit.
        let tight = SmsRules::new(7, OverLength::Reject, Some("{user_name}: {message}".into())).unwrap();
        assert_eq!(tight.prepare(&request("hi", &[("user_name", "Ada")]), None).unwrap().body, "Ada: hi");
        assert!(tight.prepare(&request("hi!", &[("user_name", "Ada")]), None).is_err());
        assert!(SmsRules::new(480, OverLength::Reject, Some("{unclosed".into())).is_err());
    }
}
