//! SecAgg+ messages as the coordinator and the agent decode them from the network
//! (`SubmitSecAgg` payloads, the task stream's routed lists, the streamed masked words).
//! The first byte picks the decoder, the rest is the message. Decoding is strict, so
//! whatever decodes must re-encode to the very same bytes.

#![no_main]

use harambee_secagg::messages::{Message, decode_list, encode_list};
use harambee_secagg::{
    ConsistencyProof, ConsistencySignature, EncryptedShare, MaskedInput, MaskedWords,
    SignedAdvertisement, UnmaskRequest, UnmaskShares, Word,
};
use libfuzzer_sys::fuzz_target;

fn one<T: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = T::decode(bytes) {
        assert_eq!(m.encode(), bytes, "decode is not canonical");
    }
}

fn list<T: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(items) = decode_list::<T>(bytes) {
        assert_eq!(encode_list(&items), bytes, "decode_list is not canonical");
    }
}

fn words(word: Word, bytes: &[u8]) {
    if let Ok(w) = MaskedWords::from_le_bytes(word, bytes) {
        assert_eq!(w.word(), word);
        assert_eq!(w.to_le_bytes(), bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 11 {
        0 => one::<SignedAdvertisement>(bytes),
        1 => one::<EncryptedShare>(bytes),
        2 => one::<MaskedInput>(bytes),
        3 => one::<UnmaskRequest>(bytes),
        4 => one::<UnmaskShares>(bytes),
        5 => one::<ConsistencySignature>(bytes),
        6 => one::<ConsistencyProof>(bytes),
        7 => list::<SignedAdvertisement>(bytes),
        8 => list::<EncryptedShare>(bytes),
        9 => words(Word::U32, bytes),
        _ => words(Word::U64, bytes),
    }
});
