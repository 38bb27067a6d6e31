//! Combining CRC32C values of consecutive pieces of data.
//!
//! A put checksums each chunk once; the whole shard's CRC32C is derived
//! from the chunk values. `crc(A ++ B) = crc(A) * x^(8|B|) + crc(B)` over
//! GF(2) modulo the CRC32C polynomial, so with the factor for the chunk
//! length computed once, combining costs 32 shift-and-xor steps per chunk
//! instead of a pass over the data or a generic combine per call.
//!
//! Polynomials are in the reflected representation CRC32C uses: bit 31 is
//! the coefficient of x^0.

/// The CRC32C (Castagnoli) polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b mod POLY`.
fn multiply(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = 1u32 << 31;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        bit >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    product
}

/// `x^(8 * len) mod POLY`: the factor that shifts a CRC past `len` bytes.
fn shift_factor(len: u64) -> u32 {
    let mut result = 1u32 << 31; // x^0
    let mut power = 1u32 << 30; // x^(2^0)
    let mut exponent = len.wrapping_mul(8);
    while exponent != 0 {
        if exponent & 1 != 0 {
            result = multiply(result, power);
        }
        power = multiply(power, power);
        exponent >>= 1;
    }
    result
}

/// Appends CRCs of pieces of one fixed length to a running CRC.
#[derive(Clone, Copy, Debug)]
pub struct CrcCombiner {
    factor: u32,
}

impl CrcCombiner {
    /// For pieces of `len` bytes.
    pub fn new(len: u64) -> CrcCombiner {
        CrcCombiner {
            factor: shift_factor(len),
        }
    }

    /// The CRC of `A ++ B` from `crc(A)` and `crc(B)`, `B` being `len` bytes.
    pub fn combine(&self, crc_a: u32, crc_b: u32) -> u32 {
        multiply(self.factor, crc_a) ^ crc_b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combining_equals_checksumming_the_concatenation() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for split in [0, 1, 7, 4096, 65_536, 199_999, 200_000] {
            let (a, b) = data.split_at(split);
            let combined = CrcCombiner::new(b.len() as u64).combine(crc32c::crc32c(a), crc32c::crc32c(b));
            assert_eq!(combined, crc32c::crc32c(&data), "split at {split}");
        }
    }

    #[test]
    fn chunk_by_chunk_like_a_put() {
        let data: Vec<u8> = (0..(5 << 16) + 77).map(|i: u32| (i % 253) as u8).collect();
        let full = CrcCombiner::new(1 << 16);
        let mut crc = 0;
        for chunk in data.chunks(1 << 16) {
            let combiner = if chunk.len() == 1 << 16 {
                full
            } else {
                CrcCombiner::new(chunk.len() as u64)
            };
            crc = combiner.combine(crc, crc32c::crc32c(chunk));
        }
        assert_eq!(crc, crc32c::crc32c(&data));
    }
}
