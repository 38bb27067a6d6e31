//! Element types of tensor shards.

use serde::{Deserialize, Serialize};

/// The element type of a shard. `Raw` means untyped bytes; with any other
/// type, a shard that declares a shape must have `product(shape) * size` bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// Untyped bytes.
    #[default]
    Raw,
    /// Boolean, one byte each.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits.
    F8E4M3,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits.
    F8E5M2,
}

impl DType {
    /// Every dtype.
    pub const ALL: [DType; 16] = [
        DType::Raw,
        DType::Bool,
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::U32,
        DType::I32,
        DType::U64,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::F8E4M3,
        DType::F8E5M2,
    ];

    /// Bytes per element; `None` for `Raw`.
    pub const fn size(self) -> Option<u64> {
        match self {
            DType::Raw => None,
            DType::Bool | DType::U8 | DType::I8 | DType::F8E4M3 | DType::F8E5M2 => Some(1),
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => Some(2),
            DType::U32 | DType::I32 | DType::F32 => Some(4),
            DType::U64 | DType::I64 | DType::F64 => Some(8),
        }
    }

    /// The lowercase name used by `shardctl` and in JSON (`f32`, `bf16`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::Raw => "raw",
            DType::Bool => "bool",
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::U16 => "u16",
            DType::I16 => "i16",
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::U64 => "u64",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
        }
    }

    /// Checks that `shape` has at most [`crate::MAX_SHAPE_DIMS`] dimensions
    /// and that `len` bytes hold exactly its elements. An empty shape or a
    /// `Raw` dtype accepts any length.
    pub fn check_shape(self, shape: &[u64], len: u64) -> Result<(), String> {
        if shape.len() > crate::MAX_SHAPE_DIMS {
            return Err(format!(
                "shape has {} dimensions; at most {} are allowed",
                shape.len(),
                crate::MAX_SHAPE_DIMS
            ));
        }
        let Some(size) = self.size() else {
            return Ok(());
        };
        if shape.is_empty() {
            return Ok(());
        }
        let expected = shape
            .iter()
            .try_fold(size, |acc, &dim| acc.checked_mul(dim))
            .ok_or_else(|| format!("shape {shape:?} of {} overflows", self.name()))?;
        if expected != len {
            return Err(format!(
                "shape {shape:?} of {} needs {expected} bytes, the shard has {len}",
                self.name()
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<DType, String> {
        let lower = s.to_ascii_lowercase();
        DType::ALL.into_iter().find(|d| d.name() == lower).ok_or_else(|| {
            let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
            format!("unknown dtype {s:?}; known: {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>(), Ok(d));
        }
        assert!("float".parse::<DType>().is_err());
    }

    #[test]
    fn shape_checks() {
        assert_eq!(DType::F32.check_shape(&[2, 3], 24), Ok(()));
        assert!(DType::F32.check_shape(&[2, 3], 23).is_err());
        assert_eq!(DType::Raw.check_shape(&[2, 3], 5), Ok(()));
        assert_eq!(DType::BF16.check_shape(&[], 5), Ok(()));
        assert!(DType::F64.check_shape(&[u64::MAX, 2], 0).is_err());
        assert!(DType::Raw.check_shape(&[1; 33], 1).unwrap_err().contains("at most 32"));
        assert_eq!(DType::U8.check_shape(&[1; 32], 1), Ok(()));
    }
}
