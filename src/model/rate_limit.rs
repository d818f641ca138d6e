//! A rate limit, as written on the command line (`10/1h,50/1d`) and as
//! the pipeline records it for `herald api`: rolling windows.

use std::str::FromStr;
use std::time::Duration;

/// Rolling-window limits on one channel: an event passes only if every
/// window has room. No windows: the channel is not limited.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimit {
    pub windows: Vec<Window>,
}

/// At most `max` events in any span of `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub max: u32,
    pub length: Duration,
}

impl RateLimit {
    /// One window: at most `max` in any `length`.
    pub fn per(max: u32, length: Duration) -> Self {
        RateLimit { windows: vec![Window { max, length }] }
    }

    /// The longest window, if any: how long counts must be kept.
    pub fn longest(&self) -> Option<Duration> {
        self.windows.iter().map(|w| w.length).max()
    }
}

/// As it is written on the command line: `10/1h,50/1d`, or `off`.
impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.windows.is_empty() {
            return f.write_str("off");
        }
        for (i, w) in self.windows.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            write!(f, "{comma}{}/{}", w.max, humantime::format_duration(w.length))?;
        }
        Ok(())
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(RateLimit::default());
        }
        let window = |w: &str| {
            let (max, length) = w
                .split_once('/')
                .ok_or_else(|| format!("expected COUNT/WINDOW such as 10/1h, or off; got {w:?}"))?;
            let max: u32 = max.trim().parse().map_err(|_| format!("{max:?} is not a count"))?;
            let length = humantime::parse_duration(length.trim()).map_err(|e| format!("window {length:?}: {e}"))?;
            if max == 0 || length.is_zero() {
                return Err("count and window must be above zero; use off for no limit".to_owned());
            }
            Ok(Window { max, length })
        };
        Ok(RateLimit { windows: s.split(',').map(window).collect::<Result<_, _>>()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_and_reject_nonsense() {
        assert_eq!("off".parse::<RateLimit>(), Ok(RateLimit::default()));
        assert_eq!("5/250ms".parse::<RateLimit>(), Ok(RateLimit::per(5, Duration::from_millis(250))));
        let daily_cap = Window { max: 50, length: Duration::from_secs(86_400) };
        assert_eq!(
            "10/1h, 50/1d".parse::<RateLimit>(),
            Ok(RateLimit { windows: vec![Window { max: 10, length: Duration::from_secs(3600) }, daily_cap] })
        );
        for limit in ["off", "10/1h", "10/1h,50/1day", "5/250ms"] {
            let parsed: RateLimit = limit.parse().unwrap();
            assert_eq!(parsed.to_string().parse::<RateLimit>(), Ok(parsed), "{limit} round-trips");
        }
        for bad in ["10", "0/1h", "10/0s", "x/1h", "10/soon", "10/1h,", "10/1h,off"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad} should be rejected");
        }
    }
}
