//! The delivery stages, built once at startup from their settings: each
//! channel's providers in failover order, each behind its guard.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;

use super::breaker::Breaker;
use super::push::{CredentialsError, Fcm, PushStage};
use super::sms::{SmsGateway, SmsRules, SmsStage, StatusCallbacks, Twilio, TwilioAuth, TwilioSender, Vonage};
use super::{Calls, Dispatch, Gateway, Guarded};
use crate::metrics::Metrics;
use crate::model::Channel;

/// Whether providers are called at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DeliveryMode {
    Providers,
    /// Checks every request, then reports SENT by provider dry-run.
    DryRun,
}

/// An SMS provider herald can send through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SmsProvider {
    Twilio,
    Vonage,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    /// Transient failures in a row that open a circuit.
    pub failures: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct TwilioSettings {
    pub base_url: Url,
    pub account_sid: String,
    pub auth: TwilioAuth,
    pub from: TwilioSender,
    /// Where Twilio reports delivery, when receipts are on.
    pub callbacks: Option<StatusCallbacks>,
    pub max_rps: Option<NonZeroU32>,
}

#[derive(Debug, Clone)]
pub(crate) struct VonageSettings {
    pub base_url: Url,
    pub api_key: String,
    pub api_secret: SecretString,
    pub from: String,
    pub max_rps: Option<NonZeroU32>,
}

#[derive(Debug, Clone)]
pub(crate) struct FcmSettings {
    pub base_url: Url,
    /// A Google service-account key file.
    pub credentials: PathBuf,
    /// Defaults to the key file's.
    pub project_id: Option<String>,
    pub max_rps: Option<NonZeroU32>,
}

/// Everything the delivery stages are built from.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub mode: DeliveryMode,
    pub breaker: BreakerSettings,
    pub sms: SmsRules,
    /// In failover order; those without settings are left out.
    pub sms_providers: Vec<SmsProvider>,
    pub twilio: Option<TwilioSettings>,
    pub vonage: Option<VonageSettings>,
    pub fcm: Option<FcmSettings>,
}

impl Settings {
    /// Reads and checks the FCM key file, if push is on: at startup, so a
    /// bad key stops herald before it connects to anything.
    pub(crate) fn load_fcm(&self) -> Result<Option<super::ServiceAccount>, CredentialsError> {
        match (&self.fcm, self.mode) {
            (Some(fcm), DeliveryMode::Providers) => {
                let account = Fcm::load_credentials(&fcm.credentials)?;
                Fcm::check_key(&account)?;
                Ok(Some(account))
            }
            _ => Ok(None),
        }
    }
}

/// The SMS and push stages. `account` is what [`Settings::load_fcm`] read.
pub(crate) fn stages(
    settings: Settings,
    account: Option<super::ServiceAccount>,
    http: &reqwest::Client,
    calls: &Calls,
    metrics: &Arc<Metrics>,
) -> Result<(SmsStage, PushStage), CredentialsError> {
    let Settings { mode, breaker, sms, sms_providers, twilio, vonage, fcm } = settings;
    let guarded = |gateway, max_rps| Guarded::new(gateway, max_rps, Breaker::new(breaker.failures, breaker.cooldown), calls.clone(), metrics.clone());
    let (sms_dispatch, push_dispatch) = match mode {
        DeliveryMode::DryRun => (Dispatch::DryRun, Dispatch::DryRun),
        DeliveryMode::Providers => {
            let sms_gateways = sms_providers
                .iter()
                .filter_map(|provider| match provider {
                    SmsProvider::Twilio => twilio.as_ref().map(|t| {
                        let client = Twilio::new(http.clone(), &t.base_url, t.account_sid.clone(), t.auth.clone(), t.from.clone(), t.callbacks.clone());
                        guarded(SmsGateway::Twilio(client), t.max_rps)
                    }),
                    SmsProvider::Vonage => vonage.as_ref().map(|v| {
                        let client = Vonage::new(http.clone(), &v.base_url, v.api_key.clone(), v.api_secret.clone(), &v.from);
                        guarded(SmsGateway::Vonage(client), v.max_rps)
                    }),
                })
                .collect();
            let push_gateways = match (fcm, account) {
                (Some(fcm), Some(account)) => {
                    let client = Fcm::new(http.clone(), &fcm.base_url, account, fcm.project_id)?;
                    vec![Guarded::new(client, fcm.max_rps, Breaker::new(breaker.failures, breaker.cooldown), calls.clone(), metrics.clone())]
                }
                _ => vec![],
            };
            (providers(sms_gateways), providers(push_gateways))
        }
    };
    announce(Channel::Sms, &sms_dispatch);
    announce(Channel::Push, &push_dispatch);
    Ok((SmsStage { rules: sms, dispatch: sms_dispatch }, PushStage { dispatch: push_dispatch }))
}

fn providers<G: Gateway>(gateways: Vec<Guarded<G>>) -> Dispatch<G> {
    match gateways.is_empty() {
        true => Dispatch::Disabled,
        false => Dispatch::Providers(gateways),
    }
}

fn announce<G: Gateway>(channel: Channel, dispatch: &Dispatch<G>) {
    match dispatch {
        Dispatch::Disabled => tracing::warn!(message = "No provider configured; requests for this channel are reported invalid.", %channel),
        Dispatch::Providers(_) => {
            let order: Vec<_> = dispatch.providers().iter().map(|p| p.name()).collect();
            tracing::info!(message = "Providers, in failover order.", %channel, providers = ?order);
        }
        Dispatch::DryRun => {}
    }
}
