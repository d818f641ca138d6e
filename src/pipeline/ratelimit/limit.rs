//! What a channel's limit is, as configured: its windows, and what
//! happens to an event over it.

use std::time::Duration;

pub use crate::model::RateLimit;
use crate::model::Channel;

/// What happens to an event its user's window has no room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OverLimit {
    /// Not sent; status RATE_LIMITED.
    Reject,
    /// Held in the delay topics and checked again when the window has room; status DEFERRED.
    Defer,
}

/// Each channel's limit, and what happens over it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Settings {
    pub sms: ChannelLimit,
    pub push: ChannelLimit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelLimit {
    pub limit: RateLimit,
    pub over: OverLimit,
}

impl Default for ChannelLimit {
    fn default() -> Self {
        ChannelLimit { limit: RateLimit::default(), over: OverLimit::Reject }
    }
}

impl Settings {
    pub(crate) fn of(&self, channel: Channel) -> &ChannelLimit {
        match channel {
            Channel::Sms => &self.sms,
            Channel::Push => &self.push,
        }
    }

    /// The longest window of any channel: how long counts must be kept.
    pub(crate) fn longest(&self) -> Option<Duration> {
        Channel::ALL.iter().filter_map(|c| self.of(*c).limit.longest()).max()
    }
}

/// The flags of the rate limits.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Rate limits")]
pub struct RateLimitArgs {
    /// SMS rate limit per user: COUNT/WINDOW (10/1h), several comma-separated (10/1h,50/1d), or off.
    #[arg(long, env = "HERALD_SMS_RATE_LIMIT", default_value = "10/1h")]
    pub(crate) sms_rate_limit: RateLimit,

    /// Push rate limit per user: COUNT/WINDOW[,COUNT/WINDOW] or off.
    #[arg(long, env = "HERALD_PUSH_RATE_LIMIT", default_value = "off")]
    pub(crate) push_rate_limit: RateLimit,

    /// What happens to an SMS over its limit: reject (status RATE_LIMITED) or defer (DEFERRED, sent when the window allows).
    #[arg(long, env = "HERALD_SMS_OVER_LIMIT", value_enum, default_value_t = OverLimit::Reject)]
    pub(crate) sms_over_limit: OverLimit,

    /// What happens to a push over its limit: reject or defer.
    #[arg(long, env = "HERALD_PUSH_OVER_LIMIT", value_enum, default_value_t = OverLimit::Reject)]
    pub(crate) push_over_limit: OverLimit,
}

impl RateLimitArgs {
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            sms: ChannelLimit { limit: self.sms_rate_limit.clone(), over: self.sms_over_limit },
            push: ChannelLimit { limit: self.push_rate_limit.clone(), over: self.push_over_limit },
        }
    }
}
