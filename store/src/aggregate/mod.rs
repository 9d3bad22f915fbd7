//! The one way to ask an analytics question: an `Aggregate` (a time frame cut by a grain,
//! filters, group-by dimensions, measures) that each store compiles for its engine. Every
//! engine feeds the same `Accumulator`, so the answer's shape, and the fold from an engine's
//! rows into it, are written once here.
//!
//! The rules that are easy to get subtly wrong live in one place each:
//! - which instant falls in which bucket (days and hours in a time zone, DST): `frame.rs`;
//! - how a message id is normalised: `message_key` (and its SQL twin `MESSAGE_KEY_REGEX`);
//! - which event is a message's first, and where a filter applies to it: once per compiler
//!   (`rollup.rs`, `sql.rs`), always "the earliest event of the kind, in the campaign and
//!   variant of that event; filters select firsts, never the events before them".

mod frame;
pub(crate) mod sql;

pub use frame::{Frame, Grain};

use mailpipe_schemas::{BounceClass, EventType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest range one question covers, so a request cannot ask for centuries of days.
pub const MAX_RANGE_DAYS: i64 = 731;
/// Most group-by dimensions of one question.
pub const MAX_DIMENSIONS: usize = 3;

/// Strips what `message_key` strips, for `regexp_replace(.., 'g')`: ClickHouse's views use
/// `^\s*<*|>*\s*$`, whose `\s` (RE2) is this ASCII class, as `is_ascii_whitespace` is.
pub const MESSAGE_KEY_REGEX: &str = r"^[\t\n\f\r ]*<*|>*[\t\n\f\r ]*$";

/// The kinds counted once per message, at the message's earliest such event.
pub const FIRST_KINDS: [EventType; 4] = [EventType::Open, EventType::Click, EventType::Unsubscribe, EventType::Complaint];

#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The time covered and how it is cut; `None`: all time, as one bucket.
    pub frame: Option<Frame>,
    pub filters: Filters,
    pub group_by: Vec<Dimension>,
    pub measures: Vec<Measure>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub campaign: Option<String>,
    pub variant: Option<String>,
}

/// What a question can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Campaign,
    Variant,
}

impl Dimension {
    pub const ALL: [Dimension; 2] = [Dimension::Campaign, Dimension::Variant];
}

/// What a question counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "measure", content = "type")]
pub enum Measure {
    /// Every event of the type.
    Count(EventType),
    /// Bounces of one class.
    Bounces(BounceClass),
    /// Messages whose first event of the type (one of `FIRST_KINDS`) falls in the bucket.
    FirstPerMessage(EventType),
    /// Distinct recipients (compared case-insensitively) with an event of the type.
    DistinctRecipients(EventType),
    /// Sum of conversion revenue, in millionths.
    RevenueMicros,
    /// Earliest and latest event time, in ms since the epoch (0 where there is none).
    FirstEventMs,
    LastEventMs,
}

impl Measure {
    /// Every measure a store must answer (the generated parity test runs each).
    pub fn all() -> Vec<Measure> {
        let mut out: Vec<Measure> = EventType::ALL.iter().map(|&t| Measure::Count(t)).collect();
        out.extend([Measure::Bounces(BounceClass::Hard), Measure::Bounces(BounceClass::Soft)]);
        out.extend(FIRST_KINDS.iter().map(|&t| Measure::FirstPerMessage(t)));
        out.extend(EventType::ALL.iter().map(|&t| Measure::DistinctRecipients(t)));
        out.extend([Measure::RevenueMicros, Measure::FirstEventMs, Measure::LastEventMs]);
        out
    }

    /// Answered from raw rows only (it cannot be summed over pre-aggregated buckets).
    pub fn needs_raw_rows(self) -> bool {
        matches!(self, Measure::DistinctRecipients(_))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("`from` ({from}) is after `to` ({to})")]
    Reversed { from: chrono::NaiveDate, to: chrono::NaiveDate },
    #[error("the range is {0} days; at most {MAX_RANGE_DAYS} are allowed")]
    TooLong(i64),
    #[error("dates before 1970 are not stored")]
    TooEarly,
    #[error("the time zone's UTC offset in this range is not a whole quarter hour")]
    OddOffset,
    #[error("at most {MAX_DIMENSIONS} group-by dimensions, each once")]
    Dimensions,
    #[error("{0:?} is not counted once per message")]
    NotFirstKind(EventType),
    #[error("a question needs at least one measure")]
    NoMeasure,
}

impl Aggregate {
    pub fn validate(&self) -> Result<(), QueryError> {
        if let Some(frame) = &self.frame {
            frame.validate()?;
        }
        let mut dims = self.group_by.clone();
        dims.sort_by_key(|d| *d as u8);
        dims.dedup();
        if dims.len() != self.group_by.len() || dims.len() > MAX_DIMENSIONS {
            return Err(QueryError::Dimensions);
        }
        if self.measures.is_empty() {
            return Err(QueryError::NoMeasure);
        }
        for m in &self.measures {
            if let Measure::FirstPerMessage(t) = m {
                if !FIRST_KINDS.contains(t) {
                    return Err(QueryError::NotFirstKind(*t));
                }
            }
        }
        Ok(())
    }

    /// The bucket an instant falls in under this question's grain (`None`: outside the frame).
    pub fn bucket_of(&self, ms: i64) -> Option<i64> {
        match &self.frame {
            None => Some(0),
            Some(f) => f.bucket_of(ms),
        }
    }

    pub fn wants_firsts(&self) -> bool {
        self.measures.iter().any(|m| matches!(m, Measure::FirstPerMessage(_)))
    }

    pub fn wants_counts(&self) -> bool {
        self.measures.iter().any(|m| !matches!(m, Measure::FirstPerMessage(_) | Measure::DistinctRecipients(_)))
    }

    pub fn first_types(&self) -> Vec<EventType> {
        self.measures.iter().filter_map(|m| if let Measure::FirstPerMessage(t) = m { Some(*t) } else { None }).collect()
    }

    pub fn distinct_types(&self) -> Vec<EventType> {
        self.measures.iter().filter_map(|m| if let Measure::DistinctRecipients(t) = m { Some(*t) } else { None }).collect()
    }
}

/// A Message-ID without its angle brackets and surrounding space: reports quote it either way.
/// The SQL twin is `MESSAGE_KEY_REGEX` (ClickHouse's views store keys made with it).
pub fn message_key(message_id: &str) -> &str {
    message_id.trim_matches(|c: char| c.is_ascii_whitespace()).trim_start_matches('<').trim_end_matches('>')
}

/// What every engine sums per bucket and group: events per type, bounces by class, first
/// events per message, revenue and the event time span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub counts: [u64; EventType::ALL.len()],
    pub hard_bounces: u64,
    pub firsts: [u64; FIRST_KINDS.len()],
    pub revenue_micros: i64,
    pub first_ms: i64,
    pub last_ms: i64,
}

impl Default for Cell {
    fn default() -> Self {
        Cell { counts: [0; EventType::ALL.len()], hard_bounces: 0, firsts: [0; FIRST_KINDS.len()], revenue_micros: 0, first_ms: i64::MAX, last_ms: i64::MIN }
    }
}

pub(crate) fn type_index(t: EventType) -> usize {
    t as usize
}

pub(crate) fn first_index(t: EventType) -> Option<usize> {
    FIRST_KINDS.iter().position(|&k| k == t)
}

impl Cell {
    /// Counts `n` events of a type (with their revenue and time span).
    pub fn add_events(&mut self, t: EventType, hard: bool, n: u64, revenue_micros: i64, first_ms: i64, last_ms: i64) {
        self.counts[type_index(t)] += n;
        if t == EventType::Bounced && hard {
            self.hard_bounces += n;
        }
        self.revenue_micros += revenue_micros;
        self.first_ms = self.first_ms.min(first_ms);
        self.last_ms = self.last_ms.max(last_ms);
    }

    /// Takes back one event counted by `add_events` (its time span stays: see the caller).
    pub fn remove_event(&mut self, t: EventType, hard: bool, revenue_micros: i64) {
        self.counts[type_index(t)] -= 1;
        if t == EventType::Bounced && hard {
            self.hard_bounces -= 1;
        }
        self.revenue_micros -= revenue_micros;
    }

    pub fn add(&mut self, o: &Cell) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        for (a, b) in self.firsts.iter_mut().zip(o.firsts) {
            *a += b;
        }
        self.hard_bounces += o.hard_bounces;
        self.revenue_micros += o.revenue_micros;
        self.first_ms = self.first_ms.min(o.first_ms);
        self.last_ms = self.last_ms.max(o.last_ms);
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&n| n == 0) && self.firsts.iter().all(|&n| n == 0)
    }
}

/// One bucket and group of an answer, with a value per measure of the question, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AggregateRow {
    /// 0 for a total; the day number since 1970-01-01 for days; 0..168 (Monday 00h first) for
    /// hours of the week.
    pub bucket: i64,
    /// The values of the group-by dimensions, in order.
    pub group: Vec<String>,
    pub values: Vec<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AggregateAnswer {
    /// Only buckets and groups that have data, ordered by bucket then group.
    pub rows: Vec<AggregateRow>,
}

impl AggregateAnswer {
    /// The value of measure `m` in a row (the question must have asked for it).
    pub fn value(q: &Aggregate, row: &AggregateRow, m: Measure) -> i64 {
        q.measures.iter().position(|&x| x == m).map_or(0, |i| row.values[i])
    }
}

type Key = (i64, Vec<String>);

/// Where every engine's rows are summed into an answer.
#[derive(Default)]
pub struct Accumulator {
    cells: BTreeMap<Key, Cell>,
    distinct: BTreeMap<Key, [u64; EventType::ALL.len()]>,
}

impl Accumulator {
    pub fn cell(&mut self, bucket: i64, group: Vec<String>) -> &mut Cell {
        self.cells.entry((bucket, group)).or_default()
    }

    pub fn set_distinct(&mut self, bucket: i64, group: Vec<String>, t: EventType, n: u64) {
        self.distinct.entry((bucket, group)).or_insert([0; EventType::ALL.len()])[type_index(t)] = n;
    }

    pub fn merge(&mut self, other: Accumulator) {
        for (k, c) in other.cells {
            self.cells.entry(k).or_default().add(&c);
        }
        for (k, d) in other.distinct {
            let mine = self.distinct.entry(k).or_insert([0; EventType::ALL.len()]);
            for (a, b) in mine.iter_mut().zip(d) {
                *a = (*a).max(b);
            }
        }
    }

    pub fn answer(mut self, q: &Aggregate) -> AggregateAnswer {
        let mut keys: Vec<Key> = self.cells.keys().cloned().collect();
        keys.extend(self.distinct.keys().filter(|k| !self.cells.contains_key(*k)).cloned());
        keys.sort();
        let rows = keys
            .into_iter()
            .filter_map(|key| {
                let cell = self.cells.remove(&key).unwrap_or_default();
                let distinct = self.distinct.remove(&key).unwrap_or([0; EventType::ALL.len()]);
                let values: Vec<i64> = q.measures.iter().map(|&m| value(&cell, &distinct, m)).collect();
                values.iter().any(|&v| v != 0).then_some(AggregateRow { bucket: key.0, group: key.1, values })
            })
            .collect();
        AggregateAnswer { rows }
    }
}

fn value(cell: &Cell, distinct: &[u64; EventType::ALL.len()], m: Measure) -> i64 {
    let n = match m {
        Measure::Count(t) => cell.counts[type_index(t)],
        Measure::Bounces(BounceClass::Hard) => cell.hard_bounces,
        Measure::Bounces(BounceClass::Soft) => cell.counts[type_index(EventType::Bounced)] - cell.hard_bounces,
        Measure::FirstPerMessage(t) => first_index(t).map_or(0, |i| cell.firsts[i]),
        Measure::DistinctRecipients(t) => distinct[type_index(t)],
        Measure::RevenueMicros => return cell.revenue_micros,
        Measure::FirstEventMs => return if cell.first_ms == i64::MAX { 0 } else { cell.first_ms },
        Measure::LastEventMs => return if cell.last_ms == i64::MIN { 0 } else { cell.last_ms },
    };
    n as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_ignore_brackets_and_space() {
        for id in ["m@x", "<m@x>", " <m@x> ", "<<m@x>>", "m@x>", "\t<m@x>\r\n"] {
            assert_eq!(message_key(id), "m@x", "{id:?}");
        }
        // Only ASCII space, as ClickHouse's regex strips it.
        assert_eq!(message_key("\u{a0}<m@x>"), "\u{a0}<m@x");
    }

    #[test]
    fn bad_questions_are_refused() {
        let q = |group_by: Vec<Dimension>, measures: Vec<Measure>| Aggregate { frame: None, filters: Filters::default(), group_by, measures };
        assert_eq!(q(vec![], vec![]).validate(), Err(QueryError::NoMeasure));
        assert_eq!(q(vec![Dimension::Campaign, Dimension::Campaign], vec![Measure::RevenueMicros]).validate(), Err(QueryError::Dimensions));
        assert_eq!(q(vec![], vec![Measure::FirstPerMessage(EventType::Sent)]).validate(), Err(QueryError::NotFirstKind(EventType::Sent)));
        assert!(q(Dimension::ALL.to_vec(), Measure::all()).validate().is_ok());
    }

    #[test]
    fn the_answer_orders_rows_and_drops_empty_ones() {
        let q = Aggregate { frame: None, filters: Filters::default(), group_by: vec![Dimension::Campaign], measures: vec![Measure::Count(EventType::Sent), Measure::Bounces(BounceClass::Soft)] };
        let mut acc = Accumulator::default();
        acc.cell(0, vec!["b".into()]).add_events(EventType::Sent, false, 2, 0, 5, 9);
        acc.cell(0, vec!["a".into()]).add_events(EventType::Bounced, false, 1, 0, 1, 1);
        acc.cell(0, vec!["a".into()]).add_events(EventType::Bounced, true, 1, 0, 1, 1);
        acc.cell(0, vec!["c".into()]).add_events(EventType::Open, false, 1, 0, 1, 1);
        let a = acc.answer(&q);
        let rows: Vec<(String, Vec<i64>)> = a.rows.iter().map(|r| (r.group[0].clone(), r.values.clone())).collect();
        assert_eq!(rows, vec![("a".into(), vec![0, 1]), ("b".into(), vec![2, 0])]);
    }
}
