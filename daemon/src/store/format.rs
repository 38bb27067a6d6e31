//! The shard file format (version 1).
//!
//! ```text
//! offset           size  field
//! 0                8     magic b"SHRDFILE"
//! 8                4     format version (1)
//! 12               4     meta_len: bytes of the encoded ShardMeta
//! 16               8     payload_offset: where the payload starts (ALIGNed)
//! 24               4     chunk_size: bytes covered by each chunk checksum
//! 28               4     chunk_count = ceil(len / chunk_size)
//! 32               m     ShardMeta, encoded as a control message
//! 32+m             4*n   CRC32C of each payload chunk
//! 32+m+4n          4     CRC32C of all header bytes before this field
//! ...                    zero padding up to payload_offset
//! payload_offset   len   the shard bytes, zero padded to ALIGN
//! ```
//!
//! All integers are little-endian. The header is written last, after the
//! payload, and the file only gets its final name once both are on stable
//! storage, so a file under `shards/` is always complete. Each payload chunk
//! has its own checksum, so a fetch verifies exactly the chunks it reads
//! before sending any of their bytes.

use shardd_protocol::{ShardMeta, codec};

use crate::io::{ALIGN, align_up};

/// First bytes of every shard file.
pub const MAGIC: [u8; 8] = *b"SHRDFILE";
/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the encoded metadata.
const FIXED_LEN: usize = 32;

/// Where things are in one shard file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardLayout {
    /// Offset of the payload; a multiple of [`ALIGN`].
    pub payload_offset: u64,
    /// Bytes covered by each chunk checksum; a multiple of [`ALIGN`].
    pub chunk_size: u32,
    /// CRC32C of each chunk of the payload.
    pub chunk_crcs: Vec<u32>,
}

impl ShardLayout {
    /// Number of chunks of a `len`-byte payload.
    pub fn chunk_count(len: u64, chunk_size: u32) -> u64 {
        len.div_ceil(chunk_size as u64)
    }

    /// Header size for metadata of `meta_len` bytes and `chunks` checksums.
    pub fn header_len(meta_len: usize, chunks: u64) -> u64 {
        align_up(FIXED_LEN as u64 + meta_len as u64 + 4 * chunks + 4)
    }

    /// Total file size for a payload of `len` bytes after a header of `header_len`.
    pub fn file_len(header_len: u64, len: u64) -> u64 {
        header_len + align_up(len)
    }

    /// Payload bytes of chunk `index` of a `len`-byte shard.
    pub fn chunk_len(&self, index: u64, len: u64) -> u64 {
        let start = index * self.chunk_size as u64;
        (len - start).min(self.chunk_size as u64)
    }
}

/// Why a header was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the header needs.
    #[error("header truncated: {have} of {need} bytes")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not a shard file.
    #[error("bad magic: not a shard file")]
    BadMagic,
    /// Written by an unknown format version.
    #[error("unknown shard format version {0}")]
    UnknownVersion(u32),
    /// Fields that contradict each other or the checksum.
    #[error("corrupt header: {0}")]
    Corrupt(String),
}

/// Encodes the header for `meta` and its chunk checksums. The result is
/// exactly `payload_offset` bytes, ready to be written at offset 0.
pub fn encode_header(meta: &ShardMeta, layout: &ShardLayout) -> Result<Vec<u8>, FormatError> {
    let meta_bytes = codec::encode(meta).map_err(|e| FormatError::Corrupt(e.to_string()))?;
    let chunks = layout.chunk_crcs.len() as u64;
    let header_len = ShardLayout::header_len(meta_bytes.len(), chunks);
    if header_len != layout.payload_offset {
        return Err(FormatError::Corrupt(format!(
            "header needs {header_len} bytes but the payload starts at {}",
            layout.payload_offset
        )));
    }
    let mut out = Vec::with_capacity(header_len as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&layout.payload_offset.to_le_bytes());
    out.extend_from_slice(&layout.chunk_size.to_le_bytes());
    out.extend_from_slice(&(chunks as u32).to_le_bytes());
    out.extend_from_slice(&meta_bytes);
    for crc in &layout.chunk_crcs {
        out.extend_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(header_len as usize, 0);
    Ok(out)
}

/// What the fixed part of a header says: how many bytes the whole header has.
pub fn header_len_from_prefix(prefix: &[u8]) -> Result<u64, FormatError> {
    if prefix.len() < FIXED_LEN {
        return Err(FormatError::Truncated {
            have: prefix.len(),
            need: FIXED_LEN,
        });
    }
    if prefix[0..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32_at(prefix, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnknownVersion(version));
    }
    let payload_offset = u64_at(prefix, 16);
    if !payload_offset.is_multiple_of(ALIGN as u64) || payload_offset == 0 || payload_offset > 1 << 30 {
        return Err(FormatError::Corrupt(format!("payload offset {payload_offset}")));
    }
    Ok(payload_offset)
}

/// Where a header's own checksum lies, as its fixed part says (after the
/// metadata and the chunk checksums, which it covers); `None` before the
/// fixed part is all there. Nothing else is checked.
pub fn checksum_offset(prefix: &[u8]) -> Option<usize> {
    if prefix.len() < FIXED_LEN {
        return None;
    }
    Some(FIXED_LEN + u32_at(prefix, 12) as usize + 4 * u32_at(prefix, 28) as usize)
}

/// Decodes a whole header (at least `payload_offset` bytes).
pub fn decode_header(bytes: &[u8]) -> Result<(ShardMeta, ShardLayout), FormatError> {
    let payload_offset = header_len_from_prefix(bytes)?;
    if (bytes.len() as u64) < payload_offset {
        return Err(FormatError::Truncated {
            have: bytes.len(),
            need: payload_offset as usize,
        });
    }
    let meta_len = u32_at(bytes, 12) as usize;
    let chunk_size = u32_at(bytes, 24);
    let chunks = u32_at(bytes, 28) as u64;
    if ShardLayout::header_len(meta_len, chunks) != payload_offset {
        return Err(FormatError::Corrupt(format!(
            "{meta_len} metadata bytes and {chunks} chunks do not fit a {payload_offset}-byte header"
        )));
    }
    let meta_end = FIXED_LEN + meta_len;
    let crcs_end = meta_end + 4 * chunks as usize;
    debug_assert_eq!(checksum_offset(bytes), Some(crcs_end));
    let stored_crc = u32_at(bytes, crcs_end);
    let actual_crc = crc32c::crc32c(&bytes[..crcs_end]);
    if stored_crc != actual_crc {
        return Err(FormatError::Corrupt(format!(
            "header checksum {actual_crc:#010x} does not match the stored {stored_crc:#010x}"
        )));
    }
    let meta: ShardMeta =
        codec::decode(&bytes[FIXED_LEN..meta_end]).map_err(|e| FormatError::Corrupt(e.to_string()))?;
    if chunk_size == 0 || !(chunk_size as usize).is_multiple_of(ALIGN) {
        return Err(FormatError::Corrupt(format!("chunk size {chunk_size}")));
    }
    if ShardLayout::chunk_count(meta.len, chunk_size) != chunks {
        return Err(FormatError::Corrupt(format!(
            "{chunks} chunk checksums for {} bytes in chunks of {chunk_size}",
            meta.len
        )));
    }
    let chunk_crcs = bytes[meta_end..crcs_end]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((
        meta,
        ShardLayout {
            payload_offset,
            chunk_size,
            chunk_crcs,
        },
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use shardd_protocol::{DType, Key, Namespace};

    use super::*;

    fn sample(len: u64, chunk_size: u32) -> (ShardMeta, ShardLayout) {
        let meta = ShardMeta {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new("layers.0.w#1/2").unwrap(),
            version: 9,
            dtype: DType::F32,
            shape: vec![len / 4],
            len,
            crc32c: 0x1234_5678,
            created_unix_ms: 1_700_000_000_000,
        };
        let chunks = ShardLayout::chunk_count(len, chunk_size);
        let meta_len = codec::encode(&meta).unwrap().len();
        let layout = ShardLayout {
            payload_offset: ShardLayout::header_len(meta_len, chunks),
            chunk_size,
            chunk_crcs: (0..chunks as u32).collect(),
        };
        (meta, layout)
    }

    #[test]
    fn header_round_trips_with_many_chunks() {
        for (len, chunk) in [(0, 4096), (1, 4096), (10 << 20, 4096), (3 << 20, 1 << 20)] {
            let (meta, layout) = sample(len, chunk);
            let bytes = encode_header(&meta, &layout).unwrap();
            assert_eq!(bytes.len() as u64, layout.payload_offset);
            assert_eq!(header_len_from_prefix(&bytes[..ALIGN]).unwrap(), layout.payload_offset);
            assert_eq!(decode_header(&bytes).unwrap(), (meta, layout));
        }
    }

    #[test]
    fn every_flipped_byte_in_the_header_is_detected() {
        let (meta, layout) = sample(5 << 20, 1 << 20);
        let bytes = encode_header(&meta, &layout).unwrap();
        let used = 32 + codec::encode(&meta).unwrap().len() + 4 * 5 + 4;
        for at in 0..used {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(decode_header(&bad).is_err(), "flip at byte {at} went unnoticed");
        }
    }

    /// Sets the checksum of a header made of arbitrary bytes right, where
    /// its lengths leave room for one, so that decoding goes past it.
    fn with_checksum_set(mut bytes: Vec<u8>) -> Vec<u8> {
        if let Some(at) = checksum_offset(&bytes).filter(|at| at + 4 <= bytes.len()) {
            let crc = crc32c::crc32c(&bytes[..at]);
            bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        }
        bytes
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// What recovery reads from a drive may be anything: it is refused,
        /// or it is a header that encodes back to the bytes read (up to
        /// its checksum; the padding after it is not read). No input panics.
        #[test]
        fn any_bytes_are_refused_or_a_header_that_encodes_back_to_them(
            len in 0u64..(256 << 20),
            chunk_size in proptest::sample::select(vec![1u32 << 20, 4 << 20]),
            changes in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 0..4),
            cut in proptest::prop_oneof![3 => proptest::strategy::Just(0usize), 1 => 1usize..64],
            set_checksum in proptest::prelude::any::<bool>(),
        ) {
            let (meta, layout) = sample(len, chunk_size);
            let mut bytes = encode_header(&meta, &layout).unwrap();
            for (at, byte) in changes {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            bytes.truncate(bytes.len().saturating_sub(cut));
            if set_checksum {
                bytes = with_checksum_set(bytes);
            }
            let _ = header_len_from_prefix(&bytes);
            if let Ok((meta, layout)) = decode_header(&bytes) {
                let again = encode_header(&meta, &layout).unwrap();
                let used = checksum_offset(&bytes).unwrap() + 4;
                proptest::prop_assert_eq!(&again[..used], &bytes[..used]);
                proptest::prop_assert_eq!(again.len() as u64, layout.payload_offset);
            }
        }

        /// Headers of any number of chunks and any length in the last one
        /// decode to what was encoded.
        #[test]
        fn headers_decode_to_what_was_encoded(
            chunks in 0u64..4096,
            chunk_size in proptest::sample::select(vec![4096u32, 64 << 10, 1 << 20, 16 << 20]),
            short in proptest::prelude::any::<u32>(),
        ) {
            let len = (chunks * chunk_size as u64).saturating_sub((short % chunk_size) as u64);
            let (meta, layout) = sample(len, chunk_size);
            proptest::prop_assert_eq!(layout.chunk_crcs.len() as u64, chunks);
            let bytes = encode_header(&meta, &layout).unwrap();
            proptest::prop_assert_eq!(decode_header(&bytes).unwrap(), (meta, layout));
        }
    }

    #[test]
    fn truncated_header_is_reported() {
        let (meta, layout) = sample(8, 4096);
        let bytes = encode_header(&meta, &layout).unwrap();
        assert!(matches!(
            decode_header(&bytes[..20]),
            Err(FormatError::Truncated { .. })
        ));
    }
}
