//! Personal data in logs: phone numbers and push tokens are shown only by
//! their last few characters, enough to correlate without identifying.

use std::fmt;

/// Formats a recipient address keeping only its last 4 characters
/// (`+*******0100`, `…a1b2`).
pub struct Masked<'a>(pub &'a str);

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
    pub fn into_string(self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
