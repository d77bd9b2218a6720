//! The checksums a data file carries inside it, so that its integrity survives any copy of the
//! archive (a download, `cp` without `-a`, a replication that drops the store's checksums).
//!
//! Three footer keys, each the CRC32C (Castagnoli) of a byte range, 8 lowercase hex digits:
//! `rewind.data_crc32c` covers every byte before the footer (`[0, F)`, where `F` is the file size
//! − 8 − the footer length), for readers of a whole file; `rewind.row_group_crc32c` one per row
//! group (comma-separated, over the row group's column chunks), and `rewind.index_crc32c` the bloom
//! filters and page index (`[end of the last row group, F)`), for readers that fetch only part of
//! a file.
//!
//! Invariant: a file the writer produced carries the checksums of exactly the bytes it wrote, and
//! a reader that checks a range against them either gets the bytes the writer wrote or an error.

use std::collections::HashMap;
use std::io::{self, Write};
use std::ops::Range;

use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};

use super::DataFileError;

pub const DATA_CRC_KEY: &str = "rewind.data_crc32c";
pub const INDEX_CRC_KEY: &str = "rewind.index_crc32c";
pub const ROW_GROUP_CRC_KEY: &str = "rewind.row_group_crc32c";

/// What the writer puts in the footer before it knows the two checksums that cover the bytes
/// written together with the footer; replaced in place (same length) once they are known.
const PLACEHOLDER: &[u8; 8] = b"????????";

/// A data file's own checksums, from its footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    /// Of `[0, F)`: everything before the footer.
    pub data: u32,
    /// Of `[end of the last row group, F)`: bloom filters and page index.
    pub index: u32,
    /// Of each row group's bytes, in order.
    pub row_groups: Vec<u32>,
}

fn hex(crc: u32) -> String {
    format!("{crc:08x}")
}

fn parse_hex(key: &str, v: &str) -> Result<u32, DataFileError> {
    if v.len() != 8 {
        return Err(DataFileError::Format(format!(
            "footer {key} is not 8 hex digits"
        )));
    }
    u32::from_str_radix(v, 16)
        .map_err(|_| DataFileError::Format(format!("footer {key} is not 8 hex digits")))
}

impl Checksums {
    /// The checksums a footer holds; `None` for a file written before Rewind kept them there.
    pub(super) fn from_key_values(
        kv: &HashMap<String, String>,
    ) -> Result<Option<Checksums>, DataFileError> {
        let Some(data) = kv.get(DATA_CRC_KEY) else {
            return Ok(None);
        };
        let get = |k: &str| {
            kv.get(k).ok_or_else(|| {
                DataFileError::Format(format!("footer has {DATA_CRC_KEY} but no {k}"))
            })
        };
        let row_groups = get(ROW_GROUP_CRC_KEY)?;
        Ok(Some(Checksums {
            data: parse_hex(DATA_CRC_KEY, data)?,
            index: parse_hex(INDEX_CRC_KEY, get(INDEX_CRC_KEY)?)?,
            row_groups: row_groups
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|v| parse_hex(ROW_GROUP_CRC_KEY, v))
                .collect::<Result<_, _>>()?,
        }))
    }

    /// Check the bytes of row group `i` (`bytes` being [`row_group_range`]).
    pub fn check_row_group(&self, i: usize, bytes: &[u8]) -> Result<(), DataFileError> {
        let expected = self.row_groups.get(i).copied().ok_or_else(|| {
            DataFileError::Format(format!(
                "footer has {} row-group checksums, none for row group {i}",
                self.row_groups.len()
            ))
        })?;
        check("row group", i.to_string().as_str(), bytes, expected)
    }

    /// Check the bytes between the last row group and the footer ([`index_range`]).
    pub fn check_index(&self, bytes: &[u8]) -> Result<(), DataFileError> {
        check("bloom filters and page index", "", bytes, self.index)
    }
}

fn check(what: &str, which: &str, bytes: &[u8], expected: u32) -> Result<(), DataFileError> {
    let actual = ::crc32c::crc32c(bytes);
    if actual == expected {
        return Ok(());
    }
    let which = if which.is_empty() {
        String::new()
    } else {
        format!(" {which}")
    };
    Err(DataFileError::Damaged(format!(
        "its {what}{which} have CRC32C {actual:08x}, but its footer says {expected:08x}"
    )))
}

/// Where the footer of a file of `file_size` bytes starts, from the file's last 8 bytes (footer
/// length, `PAR1`).
pub fn footer_start(last8: &[u8], file_size: u64) -> Result<u64, DataFileError> {
    let len: [u8; 4] = last8
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .filter(|_| last8.len() == 8 && &last8[4..] == b"PAR1")
        .ok_or_else(|| DataFileError::Format("it does not end with a Parquet footer".into()))?;
    file_size
        .checked_sub(8 + u64::from(u32::from_le_bytes(len)))
        .ok_or_else(|| {
            DataFileError::Format(format!(
                "its footer claims {} bytes, more than the file's {file_size}",
                u32::from_le_bytes(len)
            ))
        })
}

/// Where a column chunk starts and how long it is; `None` for a footer that says a negative
/// offset or size (the Parquet crate's own accessor panics on those).
pub fn chunk_range(column: &ColumnChunkMetaData) -> Option<(u64, u64)> {
    let start = column
        .dictionary_page_offset()
        .unwrap_or(column.data_page_offset());
    Some((
        u64::try_from(start).ok()?,
        u64::try_from(column.compressed_size()).ok()?,
    ))
}

/// The byte range of row group `i`: from its first column chunk to the end of its last.
pub fn row_group_range(metadata: &ParquetMetaData, i: usize) -> Option<Range<u64>> {
    let group = metadata.row_groups().get(i)?;
    let mut range: Option<Range<u64>> = None;
    for column in group.columns() {
        let (start, len) = chunk_range(column)?;
        let end = start.checked_add(len)?;
        range = Some(match range {
            None => start..end,
            Some(r) => r.start.min(start)..r.end.max(end),
        });
    }
    range
}

/// The bytes between the last row group and the footer at `footer_start`: the bloom filters and
/// the page index.
pub fn index_range(metadata: &ParquetMetaData, footer_start: u64) -> Option<Range<u64>> {
    let groups = metadata.num_row_groups();
    let start = match groups {
        0 => 4,
        n => row_group_range(metadata, n - 1)?.end,
    };
    (start <= footer_start).then_some(start..footer_start)
}

/// Check a whole file against the checksum in its footer. Ok(false) when the footer has none (a
/// file written before Rewind kept it there): the caller decides what an unchecked file is worth.
pub fn check_file(bytes: &[u8], checksums: Option<&Checksums>) -> Result<bool, DataFileError> {
    let Some(checksums) = checksums else {
        return Ok(false);
    };
    let size = bytes.len() as u64;
    let f = footer_start(&bytes[bytes.len().saturating_sub(8)..], size)?;
    // `f` is at most the size, so the range is within the bytes.
    check(
        "bytes before the footer",
        "",
        &bytes[..f as usize],
        checksums.data,
    )?;
    Ok(true)
}

/// The writer's output wrapped: computes the CRC32C of everything written and of each segment
/// (row group) on the way through, and holds back what is written after [`capture`] (bloom
/// filters, page index, footer) until [`finish`] has written the checksums into the footer.
///
/// [`capture`]: ChecksumWriter::capture
/// [`finish`]: ChecksumWriter::finish
pub(super) struct ChecksumWriter<W> {
    inner: W,
    whole: u32,
    segment: u32,
    segments: Vec<u32>,
    tail: Option<Vec<u8>>,
}

impl<W: Write> ChecksumWriter<W> {
    pub fn new(inner: W) -> ChecksumWriter<W> {
        ChecksumWriter {
            inner,
            whole: 0,
            segment: 0,
            segments: Vec::new(),
            tail: None,
        }
    }

    /// Everything written so far is one segment; the next starts here.
    pub fn end_segment(&mut self) {
        self.segments.push(std::mem::replace(&mut self.segment, 0));
    }

    /// The segments ended so far.
    pub fn segments(&self) -> &[u32] {
        &self.segments
    }

    /// What follows is the end of the file: hold it back.
    pub fn capture(&mut self) {
        self.tail = Some(Vec::new());
    }

    /// The key-values that the end of the file must hold (with placeholders for the two checksums
    /// [`finish`](Self::finish) fills in).
    pub fn placeholders() -> [(&'static str, String); 2] {
        let p = String::from_utf8_lossy(PLACEHOLDER).into_owned();
        [(DATA_CRC_KEY, p.clone()), (INDEX_CRC_KEY, p)]
    }

    /// Fill the checksums of the held-back end of the file into its footer and write it out.
    pub fn finish(mut self) -> Result<W, DataFileError> {
        let mut tail = self.tail.take().ok_or_else(|| {
            DataFileError::Format("the writer finished without capturing the footer".into())
        })?;
        let len = tail.len();
        // Where the footer starts within what was held back.
        let f = footer_start(&tail[len.saturating_sub(8)..], len as u64)
            .map_err(|e| DataFileError::Format(format!("while writing: {e}")))?
            as usize;
        let index = ::crc32c::crc32c(&tail[..f]);
        let data = ::crc32c::crc32c_append(self.whole, &tail[..f]);
        for (key, crc) in [(DATA_CRC_KEY, data), (INDEX_CRC_KEY, index)] {
            // Thrift compact KeyValue: key (field 1, binary), then value (field 2, binary, 8 bytes).
            let mut pattern = key.as_bytes().to_vec();
            pattern.extend_from_slice(&[0x18, 0x08]);
            pattern.extend_from_slice(PLACEHOLDER);
            // The key-value list follows the row groups (whose statistics may hold any bytes) in
            // the footer: the last match is the key-value.
            let at = tail[f..len - 8]
                .windows(pattern.len())
                .rposition(|w| w == pattern.as_slice())
                .ok_or_else(|| {
                    DataFileError::Format(format!("the footer being written has no {key}"))
                })?;
            let value = f + at + pattern.len() - PLACEHOLDER.len();
            tail[value..value + 8].copy_from_slice(hex(crc).as_bytes());
        }
        self.inner.write_all(&tail)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// The row-group checksums as the footer holds them.
pub(super) fn row_group_value(segments: &[u32]) -> String {
    segments
        .iter()
        .map(|c| hex(*c))
        .collect::<Vec<_>>()
        .join(",")
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.tail {
            Some(tail) => tail.extend_from_slice(data),
            None => {
                self.inner.write_all(data)?;
                self.whole = ::crc32c::crc32c_append(self.whole, data);
                self.segment = ::crc32c::crc32c_append(self.segment, data);
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.tail {
            Some(_) => Ok(()),
            None => self.inner.flush(),
        }
    }
}
