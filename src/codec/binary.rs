//! Avro binary primitives, for the two bundled schemas' hot paths.
//!
//! apache-avro rebuilds a resolved copy of the whole schema (every name,
//! cloned) on each datum it reads or writes; per record that was the
//! largest cost in herald's profile. Reading a request and writing a status
//! event by hand against the bundled schemas skips that. The tests in
//! `codec` check both against apache-avro itself, so a schema change that
//! this code does not follow fails them.

use std::collections::HashMap;

/// Why a hand-read Avro datum is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("datum ends early")]
    Eof,
    #[error("variable-length integer is too long")]
    Varint,
    #[error("negative or oversized length {0}")]
    Length(i64),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("index {0} is out of range")]
    Index(i64),
    #[error("{0} is out of range for an int")]
    Int(i64),
    #[error("byte {0} is not a boolean")]
    Boolean(u8),
}

pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Whether every byte has been read: a datum from an older writer
    /// ends before the fields added since.
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(super) fn long(&mut self) -> Result<i64, ReadError> {
        let mut value: u64 = 0;
        for (i, shift) in (0..64).step_by(7).enumerate() {
            let Some(&byte) = self.buf.get(i) else { return Err(ReadError::Eof) };
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(ReadError::Varint)
    }

    pub(super) fn int(&mut self) -> Result<i32, ReadError> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| ReadError::Int(n))
    }

    pub(super) fn boolean(&mut self) -> Result<bool, ReadError> {
        let (&byte, rest) = self.buf.split_first().ok_or(ReadError::Eof)?;
        self.buf = rest;
        match byte {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(ReadError::Boolean(other)),
        }
    }

    /// A union branch or enum symbol index below `count`.
    pub(super) fn index(&mut self, count: usize) -> Result<usize, ReadError> {
        let n = self.long()?;
        usize::try_from(n).ok().filter(|i| *i < count).ok_or(ReadError::Index(n))
    }

    /// An enum symbol's index, whatever the count: a writer may know
    /// symbols this reader does not (see `codec::read_request`).
    pub(super) fn enum_index(&mut self) -> Result<usize, ReadError> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| ReadError::Index(n))
    }

    pub(super) fn string(&mut self) -> Result<String, ReadError> {
        let n = self.long()?;
        let len = usize::try_from(n).ok().filter(|l| *l <= self.buf.len()).ok_or(ReadError::Length(n))?;
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        String::from_utf8(bytes.to_vec()).map_err(|_| ReadError::Utf8)
    }

    /// A `["null", T]` union.
    pub(super) fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, ReadError>) -> Result<Option<T>, ReadError> {
        match self.index(2)? {
            0 => Ok(None),
            _ => read(self).map(Some),
        }
    }

    /// A map of strings: blocks of entries, ending with an empty block. A
    /// negative count is followed by the block's size in bytes.
    pub(super) fn string_map(&mut self) -> Result<HashMap<String, String>, ReadError> {
        let mut map = HashMap::new();
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(map);
            }
            if count < 0 {
                count = count.checked_neg().ok_or(ReadError::Length(count))?;
                self.long()?;
            }
            for _ in 0..count {
                let key = self.string()?;
                map.insert(key, self.string()?);
            }
        }
    }
}

#[derive(Default)]
pub(super) struct Writer {
    pub buf: Vec<u8>,
}

// Inlined: a status is a dozen of these calls, and apart they cost a
// tenth of encoding it.
impl Writer {
    #[inline]
    pub(super) fn long(&mut self, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            self.buf.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.buf.push(z as u8);
    }

    #[inline]
    pub(super) fn index(&mut self, i: usize) {
        self.long(i as i64);
    }

    #[inline]
    pub(super) fn string(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A `["null", T]` union.
    #[inline]
    pub(super) fn optional<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.index(0),
            Some(v) => {
                self.index(1);
                write(self, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_round_trip_at_the_edges() {
        for n in [0, 1, -1, 63, -64, 64, i32::MAX as i64, i64::MAX, i64::MIN] {
            let mut w = Writer::default();
            w.long(n);
            assert_eq!(w.buf, apache_avro::to_avro_datum(&apache_avro::Schema::Long, n).unwrap(), "{n}");
            assert_eq!(Reader::new(&w.buf).long(), Ok(n));
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(Reader::new(&[]).long(), Err(ReadError::Eof));
        assert_eq!(Reader::new(&[0xff; 11]).long(), Err(ReadError::Varint));
        assert_eq!(Reader::new(&[10, b'a']).string(), Err(ReadError::Length(5)));
        assert_eq!(Reader::new(&[1]).string(), Err(ReadError::Length(-1)));
        assert_eq!(Reader::new(&[2, 0xff]).string(), Err(ReadError::Utf8));
        assert_eq!(Reader::new(&[4]).index(2), Err(ReadError::Index(2)));
    }

    #[test]
    fn maps_in_negative_count_blocks_are_read() {
        // One block of -1 entries (size 4 bytes), then the end.
        let bytes = [1, 8, 2, b'k', 2, b'v', 0];
        assert_eq!(Reader::new(&bytes).string_map(), Ok(HashMap::from([("k".into(), "v".into())])));
    }
}
