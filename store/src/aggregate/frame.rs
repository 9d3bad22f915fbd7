//! Which instant falls in which bucket: the days of a range in a time zone, cut into days or
//! hours of the week. Computed once here from the time zone database (chrono-tz) as a list of
//! UTC offset segments; the in-memory rollup and the SQL compilers all use these segments,
//! so every engine cuts days and DST changes at the same instants.

use super::QueryError;
use chrono::{NaiveDate, Offset, TimeZone};
use chrono_tz::Tz;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// 1970-01-01 was a Thursday: hours to add so that Monday 00h is hour 0 of the week.
const EPOCH_HOUR_OF_WEEK: i64 = 3 * 24;

/// How a frame's range is cut into buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grain {
    /// The whole range as one bucket, 0.
    Total,
    /// Local days; the bucket is the local date's day number since 1970-01-01.
    Day,
    /// Local hours of the week, 0..168, Monday 00h first.
    HourOfWeek,
}

/// The local days `from..=to` in `tz`, cut by `grain`.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub tz: Tz,
    pub grain: Grain,
    /// First instant of `from` and of the day after `to`, in ms since the epoch (UTC).
    pub lo_ms: i64,
    pub hi_ms: i64,
    /// (start ms, UTC offset ms) from `lo_ms` on, in order: the offset holds until the next start.
    segments: Vec<(i64, i64)>,
}

impl Frame {
    pub fn new(from: NaiveDate, to: NaiveDate, tz: Tz, grain: Grain) -> Frame {
        let lo_ms = local_midnight_ms(tz, from);
        let hi_ms = local_midnight_ms(tz, to.succ_opt().unwrap_or(to));
        let mut frame = Frame { from, to, tz, grain, lo_ms, hi_ms, segments: vec![(lo_ms, 0)] };
        // Only a range that can be asked is worth its segments (a caller may send any dates).
        if frame.validate().is_ok() {
            frame.segments = segments(tz, lo_ms, hi_ms);
        }
        frame
    }

    pub fn validate(&self) -> Result<(), QueryError> {
        if self.from > self.to {
            return Err(QueryError::Reversed { from: self.from, to: self.to });
        }
        let days = (self.to - self.from).num_days() + 1;
        if days > super::MAX_RANGE_DAYS {
            return Err(QueryError::TooLong(days));
        }
        if self.lo_ms < 0 {
            return Err(QueryError::TooEarly);
        }
        // Every engine cuts 15-minute buckets: an offset that is not a whole quarter hour
        // (Pacific/Kiritimati before 1979, say) would put one bucket on both sides of a midnight.
        let quarter = |ms: i64| ms.rem_euclid(15 * MINUTE_MS) == 0;
        if !(quarter(self.lo_ms) && quarter(self.hi_ms) && self.segments.iter().all(|&(start, offset)| quarter(start) && quarter(offset))) {
            return Err(QueryError::OddOffset);
        }
        Ok(())
    }

    /// The days of the range, in order.
    pub fn days(&self) -> Vec<NaiveDate> {
        self.from.iter_days().take_while(|d| *d <= self.to).collect()
    }

    /// The bucket of a day (under `Grain::Day`).
    pub fn day_bucket(day: NaiveDate) -> i64 {
        (day - NaiveDate::default()).num_days()
    }

    fn offset_at(&self, ms: i64) -> i64 {
        let i = self.segments.partition_point(|&(start, _)| start <= ms).saturating_sub(1);
        self.segments.get(i).map_or(0, |s| s.1)
    }

    /// The bucket of an instant, `None` outside the range.
    pub fn bucket_of(&self, ms: i64) -> Option<i64> {
        if ms < self.lo_ms || ms >= self.hi_ms {
            return None;
        }
        Some(self.local_bucket(ms + self.offset_at(ms)))
    }

    fn local_bucket(&self, local_ms: i64) -> i64 {
        match self.grain {
            Grain::Total => 0,
            Grain::Day => local_ms.div_euclid(DAY_MS),
            Grain::HourOfWeek => (local_ms.div_euclid(HOUR_MS) + EPOCH_HOUR_OF_WEEK).rem_euclid(168),
        }
    }

    /// The same as `bucket_of`, as an SQL expression over an Int64 column of ms (the caller
    /// keeps rows to the range): a CASE over the offset segments. `int_div` writes integer
    /// division in the engine's dialect. Offsets are whole minutes, so the expression is exact
    /// for 15-minute buckets as well as for single instants.
    pub fn sql_bucket(&self, column: &str, int_div: &dyn Fn(String, i64) -> String) -> String {
        let local = |offset: i64| match offset {
            0 => column.to_string(),
            o if o > 0 => format!("({column} + {o})"),
            o => format!("({column} - {})", -o),
        };
        let bucket = |offset: i64| match self.grain {
            Grain::Total => "0".to_string(),
            Grain::Day => int_div(local(offset), DAY_MS),
            // h - (h / 168) * 168 rather than `%`, whose result type ClickHouse takes from the
            // divisor (a literal 168 makes it 8-bit).
            Grain::HourOfWeek => {
                let h = format!("({} + {EPOCH_HOUR_OF_WEEK})", int_div(local(offset), HOUR_MS));
                format!("({h} - {} * 168)", int_div(h.clone(), 168))
            }
        };
        if self.grain == Grain::Total || self.segments.len() <= 1 {
            return bucket(self.segments.first().map_or(0, |s| s.1));
        }
        let mut sql = String::from("CASE");
        for pair in self.segments.windows(2) {
            sql.push_str(&format!(" WHEN {column} < {} THEN {}", pair[1].0, bucket(pair[0].1)));
        }
        sql.push_str(&format!(" ELSE {} END", bucket(self.segments[self.segments.len() - 1].1)));
        sql
    }
}

fn offset_ms(tz: Tz, ms: i64) -> i64 {
    let utc = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().naive_utc();
    tz.offset_from_utc_datetime(&utc).fix().local_minus_utc() as i64 * 1000
}

/// Offset segments over `lo..hi`: sampled hourly, each change located to the minute.
fn segments(tz: Tz, lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut out = vec![(lo, offset_ms(tz, lo))];
    let mut t = lo;
    while t < hi {
        let next = (t + HOUR_MS).min(hi);
        let current = out[out.len() - 1].1;
        if offset_ms(tz, next) != current {
            // The change lies in (t, next]: find its first minute.
            let (mut a, mut b) = (t, next);
            while b - a > MINUTE_MS {
                let mid = a + (b - a) / 2 / MINUTE_MS * MINUTE_MS;
                let mid = if mid == a { a + MINUTE_MS } else { mid };
                if offset_ms(tz, mid) == current {
                    a = mid;
                } else {
                    b = mid;
                }
            }
            out.push((b, offset_ms(tz, b)));
        }
        t = next;
    }
    out
}

/// Milliseconds since the epoch of the first instant of `day` in `tz` (days that start in a
/// DST gap start at the first instant that exists).
pub fn local_midnight_ms(tz: Tz, day: NaiveDate) -> i64 {
    let mut t = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..8 {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.timestamp_millis();
        }
        t += chrono::Duration::minutes(15);
    }
    t.and_utc().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, dd: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, dd).unwrap()
    }

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn days_follow_the_time_zone_and_dst() {
        let f = Frame::new(d(2026, 3, 28), d(2026, 3, 29), chrono_tz::Europe::Paris, Grain::Day);
        assert_eq!(f.lo_ms, ms("2026-03-27T23:00:00Z"));
        // 29 March (spring forward) is 23 h long in Paris.
        assert_eq!(f.hi_ms - f.lo_ms, (24 + 23) * HOUR_MS);
        assert_eq!(f.segments.len(), 2);
        assert_eq!(f.bucket_of(ms("2026-03-28T22:59:59Z")), Some(Frame::day_bucket(d(2026, 3, 28))));
        assert_eq!(f.bucket_of(ms("2026-03-28T23:00:00Z")), Some(Frame::day_bucket(d(2026, 3, 29))));
        assert_eq!(f.bucket_of(ms("2026-03-29T21:59:59Z")), Some(Frame::day_bucket(d(2026, 3, 29))));
        assert_eq!(f.bucket_of(ms("2026-03-29T22:00:00Z")), None);
        assert_eq!(f.bucket_of(ms("2026-03-27T22:59:59Z")), None);
    }

    #[test]
    fn offsets_that_are_not_quarter_hours_are_refused() {
        let f = Frame::new(d(1975, 1, 1), d(1975, 1, 2), chrono_tz::Pacific::Kiritimati, Grain::Day);
        assert_eq!(f.validate(), Err(QueryError::OddOffset));
        assert!(Frame::new(d(2026, 1, 1), d(2026, 1, 2), chrono_tz::Pacific::Kiritimati, Grain::Day).validate().is_ok());
    }

    #[test]
    fn kathmandu_cuts_at_a_quarter_hour() {
        let f = Frame::new(d(2026, 5, 1), d(2026, 5, 2), chrono_tz::Asia::Kathmandu, Grain::Day);
        assert_eq!(f.bucket_of(ms("2026-05-01T18:14:59Z")), Some(Frame::day_bucket(d(2026, 5, 1))));
        assert_eq!(f.bucket_of(ms("2026-05-01T18:15:00Z")), Some(Frame::day_bucket(d(2026, 5, 2))));
    }

    #[test]
    fn hours_of_the_week_start_on_monday_in_local_time() {
        let f = Frame::new(d(2026, 10, 20), d(2026, 11, 10), chrono_tz::America::New_York, Grain::HourOfWeek);
        // Monday 2 November 2026, 00:30 in New York (EST, after the 1 November change).
        assert_eq!(f.bucket_of(ms("2026-11-02T05:30:00Z")), Some(0));
        // Monday 26 October 2026, 09:10 EDT.
        assert_eq!(f.bucket_of(ms("2026-10-26T13:10:00Z")), Some(9));
        // Sunday 1 November 23:59 EST is the week's last hour.
        assert_eq!(f.bucket_of(ms("2026-11-02T04:59:00Z")), Some(167));
    }
}
