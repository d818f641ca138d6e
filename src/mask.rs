//! Personal data in logs: phone numbers and push tokens are shown only by
//! their last few characters, enough to correlate without identifying.

use std::fmt;

/// Formats a recipient address keeping only its last 4 characters
/// (`+*******0100`, `…a1b2`).
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    // Every status event carries a masked recipient: written without
    // allocating.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const STARS: &str = "****************************************************************";
        let chars = self.0.chars().count();
        let keep = if chars > 8 { 4 } else { 0 };
        let tail = self.0.char_indices().nth(chars - keep).map_or("", |(at, _)| &self.0[at..]);
        if self.0.starts_with('+') {
            f.write_str("+")?;
            let mut stars = chars.saturating_sub(keep + 1);
            while stars > 0 {
                let n = stars.min(STARS.len());
                f.write_str(&STARS[..n])?;
                stars -= n;
            }
            f.write_str(tail)
        } else {
            write!(f, "…{tail}")
        }
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
    fn short_values_are_masked_completely() {
        assert_eq!(Masked("+1234").to_string(), "+****");
        assert_eq!(Masked("abc").to_string(), "…");
    }
}
