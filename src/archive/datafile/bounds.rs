//! Limits on what a reader allocates because a file says so. The Parquet decoder sizes buffers from
//! what page headers claim (a page's uncompressed size, the lengths of the byte strings in its
//! statistics) before it can tell whether the claim is true; a crafted or damaged file could make
//! it reserve gigabytes. Before the decoder sees a column chunk, its page headers are walked here
//! without allocating, and every claim is checked against the bytes there are and a sane limit.
//!
//! Invariant: a reader hands the decoder only column chunks whose every page header fits in the
//! chunk and claims at most [`MAX_PAGE_BYTES`] uncompressed.

use parquet::file::metadata::ParquetMetaData;

use super::DataFileError;

/// The largest uncompressed page a reader accepts. Rewind writes pages of 128 KiB, larger only to
/// hold a single larger record, and a restore produces records of at most 64 MiB by default.
pub const MAX_PAGE_BYTES: u64 = 256 << 20;
/// The largest footer (with its length and magic) a reader accepts; Rewind's are a few KiB.
pub const MAX_FOOTER_BYTES: u64 = 16 << 20;

/// Check the page headers of row groups `groups` of a file: `bytes` holds the file's bytes from
/// offset `base` on (the whole file, or one row group read alone).
pub fn check_pages(
    metadata: &ParquetMetaData,
    groups: impl IntoIterator<Item = usize>,
    bytes: &[u8],
    base: u64,
) -> Result<(), DataFileError> {
    for g in groups {
        let group = metadata
            .row_groups()
            .get(g)
            .ok_or_else(|| DataFileError::Format(format!("it has no row group {g}")))?;
        // Only the raw columns are decoded by Rewind's readers (typed columns are the engines'):
        // a typed column's large page never makes a file unreadable to restores.
        let raw = group.columns().iter().enumerate().filter(|(_, column)| {
            column
                .column_path()
                .parts()
                .first()
                .is_some_and(|root| super::RAW_COLUMNS.contains(&root.as_str()))
        });
        for (c, column) in raw {
            let bad =
                |why: String| DataFileError::Format(format!("row group {g}, column {c}: {why}"));
            let (start, len) = super::integrity::chunk_range(column)
                .ok_or_else(|| bad("its footer says a negative offset or size".into()))?;
            let chunk = start
                .checked_sub(base)
                .and_then(|s| {
                    let s = usize::try_from(s).ok()?;
                    bytes.get(s..s.checked_add(usize::try_from(len).ok()?)?)
                })
                .ok_or_else(|| {
                    bad(format!(
                        "its column chunk [{start}, +{len}) lies outside the file"
                    ))
                })?;
            let mut at = 0;
            while at < chunk.len() {
                let mut cursor = Cursor {
                    bytes: &chunk[at..],
                    pos: 0,
                };
                let (uncompressed, compressed) = cursor.page_header().map_err(|e| {
                    bad(format!("the page header at byte {} {e}", start + at as u64))
                })?;
                if !(0..=MAX_PAGE_BYTES as i64).contains(&uncompressed) {
                    return Err(bad(format!(
                        "a page claims {uncompressed} uncompressed bytes, more than the {} MiB a reader accepts",
                        MAX_PAGE_BYTES >> 20
                    )));
                }
                let next = usize::try_from(compressed)
                    .ok()
                    .and_then(|c| (at + cursor.pos).checked_add(c))
                    .filter(|&n| n <= chunk.len())
                    .ok_or_else(|| {
                        bad(format!(
                            "a page claims {compressed} bytes, more than its column chunk holds"
                        ))
                    })?;
                at = next;
            }
        }
    }
    Ok(())
}

/// A Thrift compact-protocol reader that only walks: it never allocates, and every length it meets
/// must fit in the bytes that are left.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type Walk<T> = Result<T, String>;

const MAX_DEPTH: u32 = 16;

impl Cursor<'_> {
    fn byte(&mut self) -> Walk<u8> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or("is cut short by the end of its column chunk")?;
        self.pos += 1;
        Ok(b)
    }

    fn skip_bytes(&mut self, n: u64) -> Walk<()> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(format!(
                "claims a {n}-byte string, but only {left} bytes are left in its column chunk"
            ));
        }
        self.pos += n as usize;
        Ok(())
    }

    fn varint(&mut self) -> Walk<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift.min(63);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("holds a malformed number".into())
    }

    fn zigzag(&mut self) -> Walk<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A page header: its uncompressed and compressed page sizes (fields 2 and 3).
    fn page_header(&mut self) -> Walk<(i64, i64)> {
        let (mut uncompressed, mut compressed) = (None, None);
        self.walk_struct(0, &mut |field, ty, cursor| match (field, ty) {
            (2, 5) => {
                uncompressed = Some(cursor.zigzag()?);
                Ok(true)
            }
            (3, 5) => {
                compressed = Some(cursor.zigzag()?);
                Ok(true)
            }
            _ => Ok(false),
        })?;
        match (uncompressed, compressed) {
            (Some(u), Some(c)) => Ok((u, c)),
            _ => Err("has no page sizes".into()),
        }
    }

    /// Walk a struct's fields; `field` may read a field itself (returning true), otherwise it is
    /// skipped.
    fn walk_struct(
        &mut self,
        depth: u32,
        field: &mut dyn FnMut(i16, u8, &mut Self) -> Walk<bool>,
    ) -> Walk<()> {
        if depth > MAX_DEPTH {
            return Err("nests too deep".into());
        }
        let mut last = 0i16;
        loop {
            let header = self.byte()?;
            if header == 0 {
                return Ok(());
            }
            let ty = header & 0x0f;
            let delta = (header >> 4) as i16;
            let id = if delta == 0 {
                i16::try_from(self.zigzag()?).map_err(|_| "holds a bad field id")?
            } else {
                last.wrapping_add(delta)
            };
            last = id;
            if !field(id, ty, self)? {
                self.skip(ty, depth)?;
            }
        }
    }

    fn skip(&mut self, ty: u8, depth: u32) -> Walk<()> {
        match ty {
            1 | 2 => Ok(()),
            3 => self.byte().map(drop),
            4..=6 => self.varint().map(drop),
            7 => self.skip_bytes(8),
            8 => {
                let n = self.varint()?;
                self.skip_bytes(n)
            }
            9 | 10 => {
                let header = self.byte()?;
                let size = match header >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                self.elements(size, header & 0x0f, depth)
            }
            11 => {
                let size = self.varint()?;
                if size == 0 {
                    return Ok(());
                }
                let left = (self.bytes.len() - self.pos) as u64;
                if size > left {
                    return Err(format!(
                        "claims {size} map entries, but only {left} bytes are left in its column chunk"
                    ));
                }
                let types = self.byte()?;
                // Keys and values alternate.
                for _ in 0..size {
                    self.skip(types >> 4, depth + 1)?;
                    self.skip(types & 0x0f, depth + 1)?;
                }
                Ok(())
            }
            12 => self.walk_struct(depth + 1, &mut |_, _, _| Ok(false)),
            other => Err(format!("holds an unknown Thrift type {other}")),
        }
    }

    /// Skip `size` elements of type `ty` (in a list, booleans take a byte each).
    fn elements(&mut self, size: u64, ty: u8, depth: u32) -> Walk<()> {
        let left = (self.bytes.len() - self.pos) as u64;
        if size > left {
            return Err(format!(
                "claims {size} list elements, but only {left} bytes are left in its column chunk"
            ));
        }
        for _ in 0..size {
            match ty {
                1 | 2 => self.byte().map(drop)?,
                ty => self.skip(ty, depth + 1)?,
            }
        }
        Ok(())
    }
}
