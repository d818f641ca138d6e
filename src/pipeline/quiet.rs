//! Quiet hours: per channel, a daily window in the recipient's own time
//! zone in which a request that is not URGENT waits (DEFERRED) until the
//! window ends. The window is wall-clock time: `21:00-08:00` is quiet from
//! the moment the recipient's clock shows 21:00 to the first moment after
//! it shows 08:00, whatever daylight saving does to the hours between.
//!
//! Daylight-saving rule: a request is deferred to the first instant,
//! after now, at which the local clock shows the window's end. When the
//! clock skips the end (spring forward: 02:30 does not exist where clocks
//! jump from 02:00 to 03:00), that is the instant of the jump, when the
//! clock first shows a time past the end. When the clock shows the end
//! twice (fall back), it is the first of the two that is still to come.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::model::{Channel, InvalidReason, Priority, Request};

/// A channel's quiet hours, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quiet {
    #[default]
    Off,
    Window(Window),
}

/// From `start` (included) to `end` (excluded), local wall-clock time; it
/// crosses midnight when `end` is earlier than `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl FromStr for Quiet {
    type Err = String;

    fn from_str(s: &str) -> Result<Quiet, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Quiet::Off);
        }
        let bad = || format!("{s:?} is not \"off\" or a window such as 21:00-08:00");
        let (start, end) = s.split_once('-').ok_or_else(bad)?;
        let time = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| bad());
        let (start, end) = (time(start)?, time(end)?);
        if start == end {
            return Err(format!("{s:?} starts where it ends: say \"off\", or give a window"));
        }
        Ok(Quiet::Window(Window { start, end }))
    }
}

impl fmt::Display for Quiet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quiet::Off => f.write_str("off"),
            Quiet::Window(w) => write!(f, "{}-{}", w.start.format("%H:%M"), w.end.format("%H:%M")),
        }
    }
}

impl Window {
    /// Whether `t` is within the window.
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// The first instant after `now` at which the clock in `zone` shows
    /// the window's end, under the module's daylight-saving rule.
    pub fn next_end(&self, zone: Tz, now: DateTime<Utc>) -> DateTime<Utc> {
        let today = now.with_timezone(&zone).date_naive();
        // Today's end may be past; tomorrow's is not, unless a transition
        // moves the clock by a day, which no zone has done since 2011
        // (Samoa): the day after is there for that.
        today
            .iter_days()
            .take(3)
            .flat_map(|day| ends_on(zone, day.and_time(self.end)))
            .find(|t| *t > now)
            .expect("a wall-clock time comes round within three days")
    }
}

/// The instants at which the clock in `zone` shows `local`, earliest
/// first; for a time the clock skips, the instant it jumps past it.
fn ends_on(zone: Tz, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => vec![t.to_utc()],
        LocalResult::Ambiguous(first, second) => vec![first.to_utc(), second.to_utc()],
        LocalResult::None => {
            // Transitions fall on whole minutes: the first minute that
            // exists after the skipped one is the jump.
            (1..=24 * 60)
                .map(|m| local + chrono::Duration::minutes(m))
                .map(|t| t.with_second(0).unwrap_or(t))
                .find_map(|t| zone.from_local_datetime(&t).earliest())
                .map(|t| vec![t.to_utc()])
                .unwrap_or_default()
        }
    }
}

/// Each channel's quiet hours, and the zone of requests that name none.
#[derive(Debug, Clone)]
pub struct QuietHours {
    windows: [Quiet; Channel::ALL.len()],
    default_zone: Tz,
}

impl QuietHours {
    /// Each channel's window, in the time zone of requests that name none.
    pub fn new(windows: impl Fn(Channel) -> Quiet, default_zone: Tz) -> QuietHours {
        QuietHours { windows: Channel::ALL.map(windows), default_zone }
    }

    /// The request's time zone: its own, or the default. A name that is
    /// not in the IANA database (matched in any case) makes it invalid,
    /// whatever its priority, so a producer learns of it at once.
    pub fn zone(&self, request: &Request) -> Result<Tz, InvalidReason> {
        match &request.prefs.time_zone {
            None => Ok(self.default_zone),
            Some(name) => Tz::from_str_insensitive(name).map_err(|_| InvalidReason::UnknownTimeZone(name.clone())),
        }
    }

    /// When a request that comes up for an attempt at `now` may be sent,
    /// if not now: the end of its channel's quiet hours in its zone.
    /// URGENT requests are never held.
    pub fn until(&self, request: &Request, zone: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if request.prefs.priority == Priority::Urgent {
            return None;
        }
        let Quiet::Window(window) = self.windows[request.channel.index()] else { return None };
        window.contains(now.with_timezone(&zone).time()).then(|| window.next_end(zone, now))
    }
}

/// The flags of quiet hours.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Quiet hours")]
pub struct QuietArgs {
    /// SMS quiet hours in the recipient's time zone, e.g. 21:00-08:00 (may cross midnight), or off: requests not URGENT are DEFERRED until they end.
    #[arg(long, env = "HERALD_SMS_QUIET_HOURS", default_value = "off")]
    pub(crate) sms_quiet_hours: Quiet,

    /// Push quiet hours, as --sms-quiet-hours.
    #[arg(long, env = "HERALD_PUSH_QUIET_HOURS", default_value = "off")]
    pub(crate) push_quiet_hours: Quiet,

    /// The time zone of requests that name none (an IANA name).
    #[arg(long, env = "HERALD_DEFAULT_TIME_ZONE", default_value = "UTC", value_parser = parse_time_zone)]
    pub(crate) default_time_zone: chrono_tz::Tz,
}

impl QuietArgs {
    pub(crate) fn settings(&self) -> QuietHours {
        QuietHours::new(
            |c| match c {
                Channel::Sms => self.sms_quiet_hours,
                Channel::Push => self.push_quiet_hours,
            },
            self.default_time_zone,
        )
    }
}

fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str_insensitive(name).map_err(|_| format!("{name:?} is not an IANA time zone name, such as Europe/Lisbon"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Offset;
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Lisbon;

    fn window(s: &str) -> Window {
        match s.parse::<Quiet>().unwrap() {
            Quiet::Window(w) => w,
            Quiet::Off => panic!("{s} is off"),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn windows_parse_and_print_and_bad_ones_are_refused() {
        assert_eq!("off".parse::<Quiet>(), Ok(Quiet::Off));
        assert_eq!("21:00-08:00".parse::<Quiet>().unwrap().to_string(), "21:00-08:00");
        for bad in ["", "21:00", "21-08", "25:00-08:00", "21:00-08:00-09:00", "08:00-08:00", "nine-five"] {
            assert!(bad.parse::<Quiet>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_window_may_cross_midnight() {
        let night = window("21:00-08:00");
        let t = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert!(night.contains(t(21, 0)) && night.contains(t(23, 59)) && night.contains(t(0, 0)) && night.contains(t(7, 59)));
        assert!(!night.contains(t(8, 0)) && !night.contains(t(12, 0)) && !night.contains(t(20, 59)));
        let lunch = window("12:00-13:30");
        assert!(lunch.contains(t(12, 0)) && lunch.contains(t(13, 29)) && !lunch.contains(t(13, 30)) && !lunch.contains(t(11, 59)));
    }

    #[test]
    fn eleven_at_night_in_new_york_waits_for_eight_in_the_morning_there() {
        // 23:00 EST on 1 December is 04:00 UTC on the 2nd; 08:00 EST is 13:00 UTC.
        let end = window("21:00-08:00").next_end(New_York, utc("2026-12-02T04:00:00Z"));
        assert_eq!(end, utc("2026-12-02T13:00:00Z"));
        // Just after midnight, the same morning's end.
        assert_eq!(window("21:00-08:00").next_end(New_York, utc("2026-12-02T05:30:00Z")), utc("2026-12-02T13:00:00Z"));
        // In summer (EDT, UTC-4) the same wall-clock end is an hour earlier in UTC.
        assert_eq!(window("21:00-08:00").next_end(New_York, utc("2026-07-02T03:00:00Z")), utc("2026-07-02T12:00:00Z"));
    }

    #[test]
    fn an_end_the_clock_skips_is_the_instant_of_the_jump() {
        // New York springs forward on 8 March 2026: 02:00 EST becomes 03:00 EDT,
        // so 02:30 never shows. chrono-tz agrees that it does not exist.
        let skipped = NaiveDate::from_ymd_opt(2026, 3, 8).unwrap().and_hms_opt(2, 30, 0).unwrap();
        assert_eq!(New_York.from_local_datetime(&skipped), LocalResult::None);
        let end = window("22:00-02:30").next_end(New_York, utc("2026-03-08T04:00:00Z"));
        let jump = New_York.with_ymd_and_hms(2026, 3, 8, 3, 0, 0).single().unwrap();
        assert_eq!(jump.offset().fix().local_minus_utc(), -4 * 3600, "03:00 is EDT");
        assert_eq!(end, jump.to_utc());
        assert_eq!(end, utc("2026-03-08T07:00:00Z"));
        // The instant before it is still EST, inside the window by the clock.
        let before = (end - chrono::Duration::seconds(1)).with_timezone(&New_York);
        assert_eq!((before.hour(), before.minute(), before.offset().fix().local_minus_utc()), (1, 59, -5 * 3600));
        // And the instant of the jump is outside it: nothing waits longer than the clock says.
        assert!(!window("22:00-02:30").contains(end.with_timezone(&New_York).time()));
    }

    #[test]
    fn an_end_the_clock_shows_twice_is_the_first_still_to_come() {
        // New York falls back on 1 November 2026: 01:30 shows in EDT, then in EST.
        let twice = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap().and_hms_opt(1, 30, 0).unwrap();
        let LocalResult::Ambiguous(edt, est) = New_York.from_local_datetime(&twice) else { panic!("01:30 shows twice") };
        assert_eq!((edt.offset().fix().local_minus_utc(), est.offset().fix().local_minus_utc()), (-4 * 3600, -5 * 3600));
        let w = window("22:00-01:30");
        // At 23:00 EDT the night before: the first 01:30 (EDT).
        assert_eq!(w.next_end(New_York, utc("2026-11-01T03:00:00Z")), edt.to_utc());
        assert_eq!(edt.to_utc(), utc("2026-11-01T05:30:00Z"));
        // At 01:10 EST, after the clock went back, the clock reads inside the
        // window again, and the next end is the second 01:30 (EST).
        let again = utc("2026-11-01T06:10:00Z");
        assert!(w.contains(again.with_timezone(&New_York).time()));
        assert_eq!(w.next_end(New_York, again), est.to_utc());
    }

    #[test]
    fn lisbon_changes_too_and_its_offsets_are_chrono_tz_s() {
        // Lisbon springs forward on 29 March 2026 at 01:00 WET to 02:00 WEST.
        let end = window("23:00-01:30").next_end(Lisbon, utc("2026-03-28T23:30:00Z"));
        let jump = Lisbon.with_ymd_and_hms(2026, 3, 29, 2, 0, 0).single().unwrap();
        assert_eq!(jump.offset().fix().local_minus_utc(), 3600);
        assert_eq!(end, jump.to_utc());
    }

    use chrono::NaiveDate;
}
