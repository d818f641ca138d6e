//! Personal data in logs: phone numbers and push tokens are shown only by
//! their last few characters, enough to correlate without identifying.

use std::fmt;

/// Formats a recipient address keeping only its last 4 characters
/// (`+*******0100`, `…a1b2`).
pub(crate) struct Masked<'a>(pub &'a str);

/// Stars are written in slices of this, not a character at a time.
const STARS: &str = "****************************************************************";

impl Masked<'_> {
    /// The masked form's pieces: a lead (`+` or `…`), how many stars, and
    /// the characters kept.
    fn parts(&self) -> (&'static str, usize, &str) {
        let value = self.0;
        // Numbers and tokens are ASCII: no need to walk characters.
        let (chars, keep, tail_at) = if value.is_ascii() {
            let keep = if value.len() > 8 { 4 } else { 0 };
            (value.len(), keep, value.len() - keep)
        } else {
            let chars = value.chars().count();
            let keep = if chars > 8 { 4 } else { 0 };
            (chars, keep, value.char_indices().nth(chars - keep).map_or(value.len(), |(at, _)| at))
        };
        let tail = &value[tail_at..];
        match value.starts_with('+') {
            true => ("+", chars.saturating_sub(keep + 1), tail),
            false => ("…", 0, tail),
        }
    }

    /// The masked form as a string of its own, allocated once: every
    /// status event carries one.
    pub(crate) fn into_string(self) -> String {
        let (lead, stars, tail) = self.parts();
        let mut out = String::with_capacity(lead.len() + stars + tail.len());
        out.push_str(lead);
        let mut stars = stars;
        while stars > 0 {
            let n = stars.min(STARS.len());
            out.push_str(&STARS[..n]);
            stars -= n;
        }
        out.push_str(tail);
        out
    }
}

impl fmt::Display for Masked<'_> {
    // Logs mask recipients too: written without allocating.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lead, mut stars, tail) = self.parts();
        f.write_str(lead)?;
        while stars > 0 {
            let n = stars.min(STARS.len());
            f.write_str(&STARS[..n])?;
            stars -= n;
        }
        f.write_str(tail)
    }
}

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Free text that people wrote and other people will read (a cancel's
/// reason): control characters become spaces, anything that looks like a
/// phone number (7 digits or more, maybe with `+`, spaces, `-`, `.` or
/// brackets between them) keeps only its last 4 digits, and the whole is
/// cut to `max` characters, ending in `…` when it was longer.
pub(crate) fn scrub(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut out: Vec<char> = Vec::with_capacity(chars.len().min(max + 1));
    let mut i = 0;
    while i < chars.len() {
        let (end, digits) = number_at(&chars, i);
        if digits >= 7 {
            let mut left = digits - 4;
            for &c in &chars[i..end] {
                let hidden = c.is_ascii_digit() && left > 0;
                left -= usize::from(hidden);
                out.push(if hidden { '*' } else { c });
            }
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    if out.len() > max {
        out.truncate(max.saturating_sub(1));
        out.push('…');
    }
    out.into_iter().collect()
}

/// Where a number starting at `start` ends, and how many digits it has.
fn number_at(chars: &[char], start: usize) -> (usize, usize) {
    if !(chars[start] == '+' || chars[start] == '(' || chars[start].is_ascii_digit()) {
        return (start, 0);
    }
    let (mut end, mut digits) = (start, 0);
    for (j, c) in chars.iter().enumerate().skip(start) {
        if c.is_ascii_digit() {
            digits += 1;
            end = j + 1;
        } else if !(matches!(c, ' ' | '-' | '.' | '(' | ')') || (j == start && *c == '+')) {
            break;
        }
    }
    (end, digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_loses_control_characters_and_numbers_and_is_clipped() {
        assert_eq!(scrub("wrong\nnumber\u{7}", 200), "wrong number ");
        assert_eq!(scrub("sent to +1 (415) 555-0100 by mistake", 200), "sent to +* (***) ***-0100 by mistake");
        assert_eq!(scrub("order 123456 and +14155550100", 200), "order 123456 and +*******0100");
        assert_eq!(scrub(&"x".repeat(300), 200), format!("{}…", "x".repeat(199)));
        assert_eq!(scrub("ünïcödé", 4), "ünï…");
        assert_eq!(scrub("", 200), "");
    }

    #[test]
    fn phone_numbers_keep_only_the_last_four_digits() {
        assert_eq!(Masked("+14155550100").to_string(), "+*******0100");
    }

    #[test]
    fn tokens_keep_only_the_last_four_characters() {
        assert_eq!(Masked("fcm-token-abcdef123456").to_string(), "…3456");
    }

    #[test]
    fn long_values_keep_their_length_in_stars() {
        let long = format!("+{}", "1".repeat(100));
        assert_eq!(Masked(&long).to_string(), format!("+{}1111", "*".repeat(96)));
        assert_eq!(Masked("tökén-with-ünïcode-ëñd").to_string(), "…-ëñd");
    }

    #[test]
    fn the_string_is_what_display_writes() {
        for value in ["+14155550100", "fcm-token-abcdef123456", "tökén-with-ünïcode-ëñd", "+1234", "abc", "", "+", "+ünï-1234567", "12345678", "123456789"] {
            assert_eq!(Masked(value).into_string(), Masked(value).to_string(), "{value:?}");
        }
    }

    #[test]
    fn short_values_are_masked_completely() {
        assert_eq!(Masked("+1234").to_string(), "+****");
        assert_eq!(Masked("abc").to_string(), "…");
    }
}
