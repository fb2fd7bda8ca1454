//! An update or model as it arrives in chunks (`UploadUpdate`, `DownloadModel`, the
//! stored blobs): little-endian `f32` values, then the coordinator's checks before the
//! update may touch the aggregate. Decoding must round-trip bit for bit (NaN payloads
//! included).

#![no_main]

use harambee_core::params::{from_le_bytes, to_le_bytes, validate_update};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n_samples, bytes)) = data.split_first() else {
        return;
    };
    let Ok(values) = from_le_bytes(bytes) else {
        assert!(!bytes.len().is_multiple_of(4));
        return;
    };
    assert_eq!(to_le_bytes(&values), bytes);
    let checked = validate_update(values.len(), u64::from(n_samples), 100, &values);
    if checked.is_ok() {
        assert!(values.iter().all(|v| v.is_finite()));
    }
});
