//! The SQL both SQL engines share: buckets, dimensions, filters and binds, the rows every
//! query returns and their fold into an answer; and an `Aggregate` over raw event rows (how
//! DataFusion answers). Each engine supplies its dialect: placeholders, integer division, and
//! for raw rows, where its columns are.

use super::{first_index, Accumulator, Aggregate, Dimension, Frame};
use mailpipe_schemas::EventType;

/// A value bound to a placeholder.
#[derive(Clone, Debug, PartialEq)]
pub enum Bind {
    Str(String),
    /// Milliseconds since the epoch, bound where the engine compares an event time.
    Ms(i64),
}

/// How one engine writes what the shared pieces need.
pub trait Dialect {
    /// Placeholder of the `n`th bind (from 1).
    fn placeholder(&self, n: usize) -> String;
    fn int_div(&self, a: String, b: i64) -> String;
    /// An expression as a 64-bit signed integer.
    fn int64(&self, e: &str) -> String;
}

/// An engine that answers from raw event rows (`raw_counts`, `raw_firsts`, `raw_distinct`).
pub trait RawEvents: Dialect {
    fn count_distinct(&self, e: &str) -> String;
    /// The raw events: the relation, its event time in ms, its bounce class ('' if none),
    /// its message key, and a condition on the event time.
    fn events_table(&self) -> &str;
    fn ms(&self) -> &str;
    fn bounce_class(&self) -> &str;
    fn message_key(&self) -> String;
    /// The first value of `column` by event time, within a group.
    fn first_by_time(&self, column: &str) -> String;
    fn time_at_least(&self, sql: &mut Sql, ms: i64) -> String;
    fn time_before(&self, sql: &mut Sql, ms: i64) -> String;
}

#[derive(Clone, Debug, Default)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
}

impl Sql {
    pub fn bind(&mut self, d: &dyn Dialect, value: Bind) -> String {
        self.binds.push(value);
        d.placeholder(self.binds.len())
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
}

/// Which part of an answer a query's rows feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Events per type and bounce class, with revenue and time span.
    Counts,
    /// Messages per type whose first such event falls in the bucket.
    Firsts,
    /// Distinct recipients per type.
    Distinct,
}

/// The one row shape every shared query returns: bucket, three dimension values ('' where
/// unused), type, bounce class, count, revenue, first and last event time.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row, serde::Deserialize))]
pub struct PartialRow {
    pub bucket: i64,
    pub d0: String,
    pub d1: String,
    pub d2: String,
    pub event_type: String,
    pub bounce_class: String,
    pub n: i64,
    pub revenue_micros: i64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Adds one engine row to the answer being built.
pub fn fold(acc: &mut Accumulator, q: &Aggregate, family: Family, row: PartialRow) {
    let Some(t) = EventType::parse(&row.event_type) else { return };
    let group: Vec<String> = [row.d0, row.d1, row.d2].into_iter().take(q.group_by.len()).collect();
    let n = row.n.max(0) as u64;
    match family {
        Family::Counts => acc.cell(row.bucket, group).add_events(t, row.bounce_class == "hard", n, row.revenue_micros, row.first_ms, row.last_ms),
        Family::Firsts => {
            if let Some(i) = first_index(t) {
                acc.cell(row.bucket, group).firsts[i] += n;
            }
        }
        Family::Distinct => acc.set_distinct(row.bucket, group, t, n),
    }
}

/// The bucket of an Int64 ms expression under the question's frame.
pub fn bucket_expr(d: &dyn Dialect, q: &Aggregate, ms: &str) -> String {
    match &q.frame {
        None => d.int64("0"),
        Some(f) => d.int64(&f.sql_bucket(ms, &|a, b| d.int_div(a, b))),
    }
}

/// `d0, d1, d2` for dimension columns named by `column`.
pub fn dims_select(q: &Aggregate, column: &dyn Fn(Dimension) -> String) -> String {
    (0..3)
        .map(|i| match q.group_by.get(i) {
            Some(&dim) => format!("{} AS d{i}", column(dim)),
            None => format!("'' AS d{i}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn dims_group(q: &Aggregate, column: &dyn Fn(Dimension) -> String) -> String {
    q.group_by.iter().map(|&dim| format!(", {}", column(dim))).collect()
}

/// ` AND <campaign> = ? AND <variant> = ?` for the filters that are set.
pub fn filters(d: &dyn Dialect, sql: &mut Sql, q: &Aggregate, column: &dyn Fn(Dimension) -> String) -> String {
    let mut out = String::new();
    for (dim, value) in [(Dimension::Campaign, &q.filters.campaign), (Dimension::Variant, &q.filters.variant)] {
        if let Some(v) = value {
            out.push_str(&format!(" AND {} = {}", column(dim), sql.bind(d, Bind::Str(v.clone()))));
        }
    }
    out
}

pub fn type_list(types: &[EventType]) -> String {
    types.iter().map(|t| format!("'{}'", t.as_str())).collect::<Vec<_>>().join(", ")
}

fn raw_column(dim: Dimension) -> String {
    match dim {
        Dimension::Campaign => "campaign".into(),
        Dimension::Variant => "variant".into(),
    }
}

fn time_range(d: &dyn RawEvents, sql: &mut Sql, frame: &Option<Frame>) -> String {
    match frame {
        None => String::new(),
        Some(f) => format!(" AND {} AND {}", d.time_at_least(sql, f.lo_ms), d.time_before(sql, f.hi_ms)),
    }
}

/// Events per bucket, group, type and bounce class, from raw rows.
pub fn raw_counts(d: &dyn RawEvents, q: &Aggregate, tenant: &str) -> Option<Sql> {
    if !q.wants_counts() {
        return None;
    }
    let mut sql = Sql::default();
    let ms = d.ms().to_string();
    let bucket = bucket_expr(d, q, &ms);
    let tenant = sql.bind(d, Bind::Str(tenant.into()));
    let range = time_range(d, &mut sql, &q.frame);
    let filters = filters(d, &mut sql, q, &raw_column);
    sql.push(&format!(
        "SELECT {bucket} AS b, {dims}, type AS t, {bc} AS bc, {n} AS n, {rev} AS rev, {fms} AS fms, {lms} AS lms \
         FROM {table} WHERE tenant = {tenant}{range}{filters} GROUP BY {bucket}{group}, type, {bc}",
        dims = dims_select(q, &raw_column),
        bc = d.bounce_class(),
        n = d.int64("count(*)"),
        rev = d.int64("coalesce(sum(revenue_micros), 0)"),
        fms = d.int64(&format!("min({ms})")),
        lms = d.int64(&format!("max({ms})")),
        table = d.events_table(),
        group = dims_group(q, &raw_column),
    ));
    Some(sql)
}

/// Messages per bucket, group and type whose first event of the type falls in the bucket,
/// from raw rows: the first is taken over all of the tenant's time, by message key, and the
/// filters apply to the first (its campaign and variant), never to the events before it.
pub fn raw_firsts(d: &dyn RawEvents, q: &Aggregate, tenant: &str) -> Option<Sql> {
    let kinds = q.first_types();
    if kinds.is_empty() {
        return None;
    }
    let mut sql = Sql::default();
    let first_column = |dim: Dimension| match dim {
        Dimension::Campaign => "c".to_string(),
        Dimension::Variant => "v".to_string(),
    };
    let bucket = bucket_expr(d, q, "fms");
    let tenant = sql.bind(d, Bind::Str(tenant.into()));
    let range = match &q.frame {
        None => String::new(),
        Some(f) => format!(" AND fms >= {} AND fms < {}", f.lo_ms, f.hi_ms),
    };
    let filters = filters(d, &mut sql, q, &first_column);
    sql.push(&format!(
        "SELECT {bucket} AS b, {dims}, t, '' AS bc, {n} AS n, {zero} AS rev, {zero} AS fms0, {zero} AS lms \
         FROM (SELECT type AS t, min({ms}) AS fms, {c} AS c, {v} AS v FROM {table} \
               WHERE tenant = {tenant} AND type IN ({kinds}) GROUP BY type, {key}) AS f \
         WHERE 1 = 1{range}{filters} GROUP BY {bucket}{group}, t",
        dims = dims_select(q, &first_column),
        n = d.int64("count(*)"),
        zero = d.int64("0"),
        ms = d.ms(),
        c = d.first_by_time("campaign"),
        v = d.first_by_time("variant"),
        table = d.events_table(),
        kinds = type_list(&kinds),
        key = d.message_key(),
        group = dims_group(q, &first_column),
    ));
    Some(sql)
}

/// Distinct recipients per bucket, group and type, from raw rows.
pub fn raw_distinct(d: &dyn RawEvents, q: &Aggregate, tenant: &str) -> Option<Sql> {
    let types = q.distinct_types();
    if types.is_empty() {
        return None;
    }
    let mut sql = Sql::default();
    let bucket = bucket_expr(d, q, d.ms());
    let tenant = sql.bind(d, Bind::Str(tenant.into()));
    let range = time_range(d, &mut sql, &q.frame);
    let filters = filters(d, &mut sql, q, &raw_column);
    sql.push(&format!(
        "SELECT {bucket} AS b, {dims}, type AS t, '' AS bc, {n} AS n, {zero} AS rev, {zero} AS fms, {zero} AS lms \
         FROM {table} WHERE tenant = {tenant}{range} AND type IN ({types}){filters} GROUP BY {bucket}{group}, type",
        dims = dims_select(q, &raw_column),
        n = d.int64(&d.count_distinct("lower(recipient)")),
        zero = d.int64("0"),
        table = d.events_table(),
        types = type_list(&types),
        group = dims_group(q, &raw_column),
    ));
    Some(sql)
}
