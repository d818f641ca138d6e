//! What a channel's limit is, as configured: its windows, and what
//! happens to an event over it.

use std::time::Duration;

pub use crate::model::{RateLimit, Window};
use crate::model::Channel;

/// What happens to an event its user's window has no room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OverLimit {
    /// Not sent; status RATE_LIMITED.
    Reject,
    /// Held in the delay topics and checked again when the window has room; status DEFERRED.
    Defer,
}

/// Each channel's limit, and what happens over it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub sms: ChannelLimit,
    pub push: ChannelLimit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelLimit {
    pub limit: RateLimit,
    pub over: OverLimit,
}

impl Default for ChannelLimit {
    fn default() -> Self {
        ChannelLimit { limit: RateLimit::default(), over: OverLimit::Reject }
    }
}

impl Settings {
    pub fn of(&self, channel: Channel) -> &ChannelLimit {
        match channel {
            Channel::Sms => &self.sms,
            Channel::Push => &self.push,
        }
    }

    /// The longest window of any channel: how long counts must be kept.
    pub fn longest(&self) -> Option<Duration> {
        Channel::ALL.iter().filter_map(|c| self.of(*c).limit.longest()).max()
    }
}
