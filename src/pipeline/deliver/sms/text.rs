//! What an SMS body becomes on the wire: GSM-7 or UCS-2, and how many
//! segments a carrier bills for it.
//!
//! A body made only of GSM 03.38 characters is sent in GSM-7: 160 units in
//! one segment, or 153 per part when split. Extension characters (`^ { } \
//! [ ~ ] | €` and form feed) take two units each, an escape and the
//! character. Any other character makes the whole body UCS-2: 70 UTF-16
//! units in one segment, or 67 per part, and an emoji takes two. A part
//! never ends in the middle of an escape or a surrogate pair.

/// The GSM 03.38 default alphabet, in code order.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters of the extension table, sent as escape + character.
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{c}";

pub(crate) use crate::model::Encoding;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segments {
    pub encoding: Encoding,
    /// Code units: septets for GSM-7, UTF-16 units for UCS-2.
    pub units: usize,
    pub parts: usize,
}

/// GSM-7 units of each ASCII character, 0 where GSM-7 has none: built
/// from the alphabets above, at compile time. Every SMS body is looked up
/// character by character, so this is a table, not a search.
const ASCII_UNITS: [u8; 128] = {
    let mut table = [0u8; 128];
    let (basic, extension) = (GSM7_BASIC.as_bytes(), GSM7_EXTENSION.as_bytes());
    // A byte below 0x80 is a whole ASCII character in UTF-8; the bytes of
    // other characters are all 0x80 or above.
    let mut i = 0;
    while i < basic.len() {
        if basic[i] < 0x80 {
            table[basic[i] as usize] = 1;
        }
        i += 1;
    }
    let mut i = 0;
    while i < extension.len() {
        if extension[i] < 0x80 {
            table[extension[i] as usize] = 2;
        }
        i += 1;
    }
    table
};

/// The GSM-7 characters outside ASCII, sorted, for a binary search.
static NON_ASCII: std::sync::LazyLock<Vec<(char, usize)>> = std::sync::LazyLock::new(|| {
    let basic = GSM7_BASIC.chars().filter(|c| !c.is_ascii()).map(|c| (c, 1));
    let extension = GSM7_EXTENSION.chars().filter(|c| !c.is_ascii()).map(|c| (c, 2));
    let mut all: Vec<(char, usize)> = basic.chain(extension).collect();
    all.sort_unstable();
    all
});

/// GSM-7 units of `c`, or `None` when GSM-7 cannot carry it.
fn gsm7_units(c: char) -> Option<usize> {
    if c.is_ascii() {
        return match ASCII_UNITS[c as usize] {
            0 => None,
            units => Some(units as usize),
        };
    }
    NON_ASCII.binary_search_by_key(&c, |(k, _)| *k).ok().map(|i| NON_ASCII[i].1)
}

pub(super) fn encoding(body: &str) -> Encoding {
    if body.chars().all(|c| gsm7_units(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

pub(crate) fn segments(body: &str) -> Segments {
    let (gsm7, gsm7_doubles, utf16, chars) = match ascii_units(body.as_bytes()) {
        Some((units, doubles)) => (Some(units), doubles, body.len(), body.len()),
        None => units_by_char(body),
    };
    let (encoding, total, doubles, single, per_part) = match gsm7 {
        Some(units) => (Encoding::Gsm7, units, gsm7_doubles, 160, 153),
        None => (Encoding::Ucs2, utf16, utf16 != chars, 70, 67),
    };
    let parts = if total == 0 {
        0
    } else if total <= single {
        1
    } else if !doubles {
        total.div_ceil(per_part)
    } else {
        // A two-unit character never straddles parts: walk them.
        let units = |c: char| match encoding {
            Encoding::Gsm7 => gsm7_units(c).expect("GSM-7 body"),
            Encoding::Ucs2 => c.len_utf16(),
        };
        let (mut parts, mut used) = (1, 0);
        for u in body.chars().map(units) {
            if used + u > per_part {
                parts += 1;
                used = 0;
            }
            used += u;
        }
        parts
    };
    Segments { encoding, units: total, parts }
}

/// GSM-7 units of an all-GSM-7 ASCII body, and whether any takes two;
/// `None` for any other body. Most bodies are ASCII: a byte at a time,
/// without decoding characters.
fn ascii_units(body: &[u8]) -> Option<(usize, bool)> {
    // Printable ASCII but the backtick, the usual body: comparisons without
    // branches into byte counters, which the compiler turns into vector
    // code (a fifth of the instructions of the table walk below). Only the
    // extension characters among them take two units. A counter per chunk
    // of 255 bytes cannot overflow.
    let (mut bad, mut doubles) = (0u8, 0usize);
    for chunk in body.chunks(255) {
        let (mut chunk_bad, mut chunk_doubles) = (0u8, 0u8);
        for &b in chunk {
            chunk_bad |= ((b.wrapping_sub(b' ') >= 0x5f) | (b == b'`')) as u8;
            chunk_doubles += ((b.wrapping_sub(b'[') < 4) | (b.wrapping_sub(b'{') < 4)) as u8;
        }
        bad |= chunk_bad;
        doubles += chunk_doubles as usize;
    }
    if bad == 0 {
        return Some((body.len() + doubles, doubles > 0));
    }
    let (mut units, mut doubles) = (0usize, false);
    for &b in body {
        let u = *ASCII_UNITS.get(b as usize)?;
        if u == 0 {
            return None;
        }
        units += u as usize;
        doubles |= u == 2;
    }
    Some((units, doubles))
}

/// One pass for what other bodies need: GSM-7 units (`None` when GSM-7
/// cannot carry the body), whether any character takes two units (an
/// escape, a surrogate pair), UTF-16 units and characters.
fn units_by_char(body: &str) -> (Option<usize>, bool, usize, usize) {
    let (mut gsm7, mut gsm7_doubles) = (Some(0usize), false);
    let (mut utf16, mut chars) = (0usize, 0usize);
    for c in body.chars() {
        chars += 1;
        utf16 += c.len_utf16();
        if let Some(units) = gsm7 {
            gsm7 = gsm7_units(c).map(|u| {
                gsm7_doubles |= u == 2;
                units + u
            });
        }
    }
    (gsm7, gsm7_doubles, utf16, chars)
}

/// `body` cut to at most `max` characters, ending in an ellipsis, at a
/// character boundary (an emoji made of several characters, such as a
/// flag, can still be cut between them). A GSM-7 body gets "...", because "…" is not GSM-7
/// and would turn the whole message into UCS-2, halving what a segment
/// holds.
pub(crate) fn truncate(body: &str, max: usize) -> String {
    if body.chars().count() <= max {
        return body.to_owned();
    }
    let ellipsis = match encoding(body) {
        Encoding::Gsm7 => "...",
        Encoding::Ucs2 => "…",
    };
    let keep = max.saturating_sub(ellipsis.chars().count());
    let mut cut: String = body.chars().take(keep).collect();
    // "parcel ..." reads as a gap; "parcel..." does not.
    cut.truncate(cut.trim_end().len());
    cut.push_str(ellipsis);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_counts() {
        let gsm = |units, parts| Segments { encoding: Encoding::Gsm7, units, parts };
        let ucs = |units, parts| Segments { encoding: Encoding::Ucs2, units, parts };
        let rows: Vec<(String, Segments, &str)> = vec![
            ("".into(), gsm(0, 0), "empty"),
            ("Hello".into(), gsm(5, 1), "plain"),
            ("a".repeat(160), gsm(160, 1), "one full segment"),
            ("a".repeat(161), gsm(161, 2), "one over: split into 153-unit parts"),
            ("a".repeat(306), gsm(306, 2), "two full parts"),
            ("a".repeat(307), gsm(307, 3), "one over two parts"),
            ("a".repeat(459), gsm(459, 3), "three full parts: the old service's 480 characters fit in 4"),
            ("€".repeat(80), gsm(160, 1), "extension characters count twice"),
            ("€".repeat(81), gsm(162, 2), "81 euro signs: two parts"),
            // 306 units would fit two parts, but the escape pair cannot
            // straddle them.
            (format!("{}€{}", "a".repeat(152), "a".repeat(152)), gsm(306, 3), "an escape pair is not split across parts"),
            (format!("{}{{", "a".repeat(158)), gsm(160, 1), "brace at the end of a single segment"),
            ("Ça coûte 5 €".into(), ucs(12, 1), "û is not GSM-7: the whole body is UCS-2"),
            ("😀".into(), ucs(2, 1), "an emoji is two UTF-16 units"),
            ("😀".repeat(35), ucs(70, 1), "35 emoji fill one segment"),
            ("😀".repeat(36), ucs(72, 2), "36 need two parts"),
            (format!("{}😀", "a".repeat(66)), ucs(68, 1), "mixed ASCII and emoji"),
            (format!("{}😀", "a".repeat(69)), ucs(71, 2), "one over a single segment"),
            (format!("{}😀{}", "a".repeat(66), "a".repeat(66)), ucs(134, 3), "a surrogate pair is not split across parts"),
            ("Привет".into(), ucs(6, 1), "Cyrillic"),
            ("Grüße aus Köln".into(), gsm(14, 1), "ü, ß and ö are all GSM-7"),
            ("¿Qué tal?".into(), gsm(9, 1), "é is GSM-7"),
            ("¿Cómo estás?".into(), ucs(12, 1), "ó and á are not"),
            ("Åse & Øyvind: 100% ¿ok? ñ".into(), gsm(25, 1), "accented letters that GSM-7 has"),
        ];
        for (body, expected, why) in rows {
            assert_eq!(segments(&body), expected, "{why}: {body:?}");
        }
    }

    #[test]
    fn the_ascii_shortcut_agrees_with_the_character_walk() {
        // Every ASCII byte, alone and in bodies around the segment edges,
        // with and without extension characters and bytes GSM-7 lacks.
        let mut bodies: Vec<String> = (0u8..128).map(|b| (b as char).to_string()).collect();
        for len in [152, 153, 154, 159, 160, 161, 306, 307] {
            for extra in ["", "{", "`", "\u{7f}", "é", "\n", "\u{c}", "~\r"] {
                bodies.push(format!("{}{extra}", "a".repeat(len)));
                bodies.push(format!("{extra}{}", "b".repeat(len)));
            }
        }
        // Past the 255-byte counters: all doubles, and a double after them.
        bodies.extend(["{".repeat(300), "~".repeat(1000), format!("{}]", "a".repeat(510)), format!("{}`", "|".repeat(600))]);
        for body in bodies {
            let walked = units_by_char(&body);
            let ascii = ascii_units(body.as_bytes());
            match ascii {
                Some((units, doubles)) => assert_eq!((Some(units), doubles, body.len(), body.len()), walked, "{body:?}"),
                None => assert!(walked.0.is_none() || !body.is_ascii(), "{body:?} is GSM-7 ASCII but took the walk"),
            }
        }
    }

    #[test]
    fn the_lookup_agrees_with_the_alphabets_for_every_character() {
        // Every GSM-7 character is below U+2100 (€ is U+20AC); above, samples.
        let beyond = ['\u{FFFD}', '\u{4E2D}', '\u{1F600}', '\u{10FFFF}'];
        for c in (0..=0x24FF).filter_map(char::from_u32).chain(beyond) {
            let expected = if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            };
            assert_eq!(gsm7_units(c), expected, "{c:?} (U+{:04X})", c as u32);
        }
    }

    #[test]
    fn truncation_keeps_to_the_limit_at_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly ten", 11), "exactly ten");
        let cut = truncate(&"a".repeat(500), 480);
        assert_eq!(cut.chars().count(), 480);
        assert!(cut.ends_with("..."), "GSM-7 keeps GSM-7");
        assert_eq!(encoding(&cut), Encoding::Gsm7);
        let cut = truncate(&"😀".repeat(100), 50);
        assert_eq!(cut.chars().count(), 50);
        assert_eq!(cut, "😀".repeat(49) + "…", "no emoji is split");
        assert_eq!(truncate("coûter", 4), "coû…", "a UCS-2 body ends in one character, …");
        assert_eq!(truncate("one two three", 10), "one two...", "no space before the ellipsis");
    }
}
