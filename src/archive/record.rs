//! One archived Kafka record, exactly as the broker returned it: bytes are kept as bytes, null stays
//! null (never empty), headers keep their order, duplicates and null values.

/// How the broker stamped a record's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// Set by the producer.
    Create,
    /// Set by the broker when it appended the record.
    LogAppend,
}

impl TimestampType {
    /// The value stored in the `timestamp_type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TimestampType::Create => "create",
            TimestampType::LogAppend => "log_append",
        }
    }

    pub fn parse(s: &str) -> Option<TimestampType> {
        match s {
            "create" => Some(TimestampType::Create),
            "log_append" => Some(TimestampType::LogAppend),
            _ => None,
        }
    }
}

/// A record header: Kafka header keys are strings, values are bytes or null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// One Kafka record of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    /// Milliseconds since the epoch; `None` when the broker returned none.
    pub timestamp: Option<i64>,
    pub timestamp_type: Option<TimestampType>,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

impl Record {
    /// Bytes of the key, the value and the headers' keys and values: what a restore counts as
    /// the bytes it sends, and what a data file's size statistics add up to.
    pub fn payload_len(&self) -> usize {
        let bytes = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
        bytes(&self.key)
            + bytes(&self.value)
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + bytes(&h.value))
                .sum::<usize>()
    }

    /// Bytes this record holds in memory, for buffer accounting: the record itself plus every heap
    /// allocation it owns, with the allocator's per-allocation overhead. For small records the
    /// overhead is most of it (a 100-byte value costs about 250 bytes), and counting it is what
    /// keeps the sink's memory within its budget.
    pub fn size(&self) -> u64 {
        const ALLOCATION: usize = 16;
        let bytes = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, |v| v.capacity() + ALLOCATION);
        let headers: usize = self
            .headers
            .iter()
            .map(|h| {
                std::mem::size_of::<Header>() + h.key.capacity() + ALLOCATION + bytes(&h.value)
            })
            .sum::<usize>()
            + if self.headers.is_empty() {
                0
            } else {
                ALLOCATION
            };
        (std::mem::size_of::<Record>() + bytes(&self.key) + bytes(&self.value) + headers) as u64
    }
}
