//! Ledger lines as the coordinator reloads them from its store, an agent reads them from
//! `GetLedgerProof` answers and peers' enrolments, and an auditor reads an export:
//! `LedgerLine::parse` and `parse_jsonl`. Whatever parses is in canonical form, so it
//! re-encodes to the same text; its leaf hash is computable; an export that parses
//! rebuilds a ledger whenever its indices and leaf hashes are right.

#![no_main]

use harambee_privacy::ledger::{Ledger, LedgerLine, parse_jsonl, to_jsonl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(line) = LedgerLine::parse(1, text) {
        assert_eq!(line.to_json().expect("a parsed line re-encodes"), text);
        line.computed_leaf_hash()
            .expect("a parsed line has a leaf hash");
    }
    if let Ok(lines) = parse_jsonl(text) {
        let again = to_jsonl(&lines).expect("a parsed export re-encodes");
        assert_eq!(again.trim_end_matches('\n'), text.trim_end_matches('\n'));
        let _ = Ledger::from_lines(lines);
    }
});
