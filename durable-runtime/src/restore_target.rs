//! [`RestoreTarget`]: a point in an object's history (a bookmark or a moment), as
//! code and the operator CLI name it.

/// Where to restore an object to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The state after every record up to and including this lsn (a bookmark).
    Bookmark(u64),
    /// The state as of this moment, milliseconds since the Unix epoch: every record
    /// before the first one written after it (a record stamped earlier but written
    /// after that one, once the wall clock stepped back, is not part of it).
    Time(u64),
}

impl RestoreTarget {
    /// Whether a log record at `lsn`, written at `time_ms`, is part of the target state.
    pub(crate) fn includes(&self, lsn: u64, time_ms: u64) -> bool {
        match *self {
            RestoreTarget::Bookmark(b) => lsn <= b,
            RestoreTarget::Time(ms) => time_ms <= ms,
        }
    }
}

impl std::str::FromStr for RestoreTarget {
    type Err = String;
    /// A bookmark is a number (`1234`); a time is RFC 3339 in UTC
    /// (`2026-11-23T14:00:00Z`, fractional seconds allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(lsn) = s.parse::<u64>() {
            return Ok(RestoreTarget::Bookmark(lsn));
        }
        parse_rfc3339_utc(s)
            .map(RestoreTarget::Time)
            .ok_or_else(|| format!("{s:?} is neither a bookmark (a number) nor a UTC time like 2026-11-23T14:00:00Z"))
    }
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':');
    let (hh, mm, ss): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let total = ((days * 24 + hh) * 60 + mm) * 60 + ss;
    u64::try_from(total * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "42".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Bookmark(42)
        );
        assert_eq!(
            "1970-01-01T00:00:01.5Z".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Time(1500)
        );
        assert_eq!(
            "2026-11-23T14:00:00Z".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Time(1_795_442_400_000)
        );
        assert!("yesterday".parse::<RestoreTarget>().is_err());
    }
}
