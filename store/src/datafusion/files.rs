//! The Parquet layout: `events/day=YYYY-MM-DD/<first>-<last>.parquet`, where first..=last
//! are the flush sequence numbers a file holds. A flush writes `<n>-<n>`; compaction writes
//! `<min>-<max>` and then deletes its inputs, so after a crash in between, a file whose range
//! lies inside another's is a leftover and is deleted on open: no row is ever read twice.

use crate::StoreError;
use datafusion::arrow::array::{new_null_array, RecordBatch};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use mailpipe_schemas::arrow_schema;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFile {
    pub day: String,
    pub first: u64,
    pub last: u64,
    pub path: PathBuf,
}

pub fn io(what: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { what: what.display().to_string(), source }
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// Every data file under `root`, oldest first, after removing unfinished writes and
/// compaction leftovers.
pub fn open_files(root: &Path) -> Result<Vec<DataFile>, StoreError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let mut files = Vec::new();
    for day_dir in std::fs::read_dir(root).map_err(io(root))? {
        let day_dir = day_dir.map_err(io(root))?.path();
        let Some(day) = day_dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("day=")) else {
            continue;
        };
        let day = day.to_string();
        for entry in std::fs::read_dir(&day_dir).map_err(io(&day_dir))? {
            let path = entry.map_err(io(&day_dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let Some((first, last)) = name.strip_suffix(".parquet").and_then(|s| s.split_once('-')) else { continue };
            if let (Ok(first), Ok(last)) = (first.parse(), last.parse()) {
                files.push(DataFile { day: day.clone(), first, last, path });
            }
        }
    }
    let superseded: Vec<DataFile> = files
        .iter()
        .filter(|f| {
            files.iter().any(|g| g != *f && g.day == f.day && g.first <= f.first && f.last <= g.last)
        })
        .cloned()
        .collect();
    for f in &superseded {
        std::fs::remove_file(&f.path).map_err(io(&f.path))?;
    }
    files.retain(|f| !superseded.contains(f));
    files.sort_by_key(|f| (f.first, f.last));
    Ok(files)
}

/// Writes `batches` as one durable file: written beside its final name, synced, renamed,
/// and the directory synced, so the file either exists whole or not at all.
pub fn write(root: &Path, day: &str, first: u64, last: u64, batches: &[RecordBatch]) -> Result<DataFile, StoreError> {
    let dir = root.join(format!("day={day}"));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("{first:012}-{last:012}.parquet"));
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(engine)?))
        .set_max_row_group_row_count(Some(256 * 1024))
        .build();
    let mut writer = ArrowWriter::try_new(file, arrow_schema(), Some(props)).map_err(engine)?;
    for b in batches {
        writer.write(b).map_err(engine)?;
    }
    let file = writer.into_inner().map_err(engine)?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
    if let Some(root_dir) = dir.parent() {
        File::open(root_dir).and_then(|d| d.sync_all()).map_err(io(root_dir))?;
    }
    Ok(DataFile { day: day.to_string(), first, last, path })
}

pub fn read(path: &Path) -> Result<Vec<RecordBatch>, StoreError> {
    let file = File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(engine)?
        .with_batch_size(64 * 1024)
        .build()
        .map_err(engine)?;
    reader.map(|b| b.map_err(engine).and_then(current)).collect()
}

/// A stored batch in the current schema: files written before a column was added (all added
/// columns are nullable) get it as nulls, so they compact with newer files and load alike.
fn current(batch: RecordBatch) -> Result<RecordBatch, StoreError> {
    let schema = arrow_schema();
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => Ok(c.clone()),
            None if f.is_nullable() => Ok(new_null_array(f.data_type(), batch.num_rows())),
            None => Err(engine(format!("stored file has no column {}", f.name()))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns).map_err(engine)
}

/// Merges the files of one day into one new file; the caller deletes the inputs once no
/// reader can be using them.
pub fn compact(root: &Path, files: &[DataFile]) -> Result<DataFile, StoreError> {
    let day = files.first().map(|f| f.day.clone()).ok_or_else(|| engine("nothing to compact"))?;
    let mut batches = Vec::new();
    for f in files {
        batches.extend(read(&f.path)?);
    }
    let first = files.iter().map(|f| f.first).min().unwrap_or(0);
    let last = files.iter().map(|f| f.last).max().unwrap_or(0);
    write(root, &day, first, last, &batches)
}
