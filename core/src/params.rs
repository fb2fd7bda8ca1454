//! Flat parameter vectors: their byte encoding on the wire and in the blob store, and the
//! checks every incoming update must pass.

use thiserror::Error;

/// Why an update (or a parameter blob) was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum UpdateError {
    #[error("update has {got} parameters, the model has {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("update value at index {index} is not finite ({value})")]
    NonFinite { index: usize, value: f32 },
    #[error("update claims {0} training samples; it must be at least 1")]
    NoSamples(u64),
    #[error("update claims {got} training samples, more than the limit of {limit}")]
    TooManySamples { got: u64, limit: u64 },
    #[error("payload of {0} bytes is not a whole number of f32 values")]
    RaggedBytes(usize),
    /// Refused by a federation rule checked outside the round (privacy parameters, clipping).
    #[error("{0}")]
    Refused(String),
}

/// Encodes parameters as little-endian `f32` values, the format of model blobs and updates.
pub fn to_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes little-endian `f32` values.
pub fn from_le_bytes(bytes: &[u8]) -> Result<Vec<f32>, UpdateError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(UpdateError::RaggedBytes(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Checks an update before it may touch the aggregate: right length, every value finite,
/// a plausible sample count.
pub fn validate_update(
    expected_len: usize,
    n_samples: u64,
    max_samples: u64,
    values: &[f32],
) -> Result<(), UpdateError> {
    if values.len() != expected_len {
        return Err(UpdateError::WrongLength {
            expected: expected_len,
            got: values.len(),
        });
    }
    if n_samples == 0 {
        return Err(UpdateError::NoSamples(n_samples));
    }
    if n_samples > max_samples {
        return Err(UpdateError::TooManySamples {
            got: n_samples,
            limit: max_samples,
        });
    }
    // Branch-free over the whole vector first (it vectorizes; a search stopping at the first
    // non-finite value does not), then find the first one only if there is one.
    const EXPONENT: u32 = 0x7f80_0000;
    let any_non_finite = values
        .iter()
        .fold(false, |acc, v| acc | (v.to_bits() & EXPONENT == EXPONENT));
    if any_non_finite
        && let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite())
    {
        return Err(UpdateError::NonFinite { index, value });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_exactly() {
        let values = [0.0, -0.0, 1.5, f32::MIN_POSITIVE, -3.25e7, f32::MAX];
        let bytes = to_le_bytes(&values);
        assert_eq!(bytes.len(), 24);
        let back = from_le_bytes(&bytes).unwrap();
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(from_le_bytes(&bytes[..5]), Err(UpdateError::RaggedBytes(5)));
    }

    #[test]
    fn validation_names_the_fault() {
        assert_eq!(
            validate_update(3, 10, 100, &[1.0, 2.0]),
            Err(UpdateError::WrongLength {
                expected: 3,
                got: 2
            })
        );
        assert!(matches!(
            validate_update(3, 10, 100, &[1.0, f32::NAN, 2.0]),
            Err(UpdateError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            validate_update(2, 10, 100, &[1.0, f32::INFINITY]),
            Err(UpdateError::NonFinite { index: 1, .. })
        ));
        assert_eq!(
            validate_update(1, 0, 100, &[1.0]),
            Err(UpdateError::NoSamples(0))
        );
        assert_eq!(
            validate_update(1, 101, 100, &[1.0]),
            Err(UpdateError::TooManySamples {
                got: 101,
                limit: 100
            })
        );
        assert_eq!(validate_update(2, 10, 100, &[1.0, -1.0]), Ok(()));
    }
}
