//! Tests that need the crate's internals (shares, masks, quantization).

mod split_unmask;
