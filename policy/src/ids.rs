//! Identifiers that sort by when they were made.

use std::time::SystemTime;

/// 16 bytes: `now` in unix milliseconds (6 bytes, big-endian), then 80 random bits. Ids made
/// later sort later, so rows keyed by them are added at the end of their table rather than on
/// a random page each; uniqueness rests on the random bits within one millisecond. On `Err`
/// (the OS has no entropy source) the random part is zeros, which callers may still use.
pub fn time_ordered(now: SystemTime) -> Result<[u8; 16], ([u8; 16], ring::error::Unspecified)> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    match ring::rand::SystemRandom::new().fill(&mut b[6..]) {
        Ok(()) => Ok(b),
        Err(e) => Err((b, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn later_sorts_later_and_the_same_millisecond_differs() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        let a = time_ordered(t).unwrap();
        let b = time_ordered(t).unwrap();
        assert_ne!(a, b);
        assert_eq!(a[..6], b[..6]);
        assert_eq!(a[..6], 1_796_000_000_123u64.to_be_bytes()[2..]);
        let later = time_ordered(t + Duration::from_millis(1)).unwrap();
        assert!(later > a && later > b);
    }
}
