//! An agent's privacy log as it reads it from disk at start-up and `audit verify --receipts`
//! reads it: `parse_log`, then the queries made of a parsed log. The hash chain stops
//! mutated logs at the first line, so the first byte also picks a mode that re-chains the
//! input's records (each line parsed as a `LogLine`, then linked with `LogLine::next`),
//! which must parse back to the same lines and reaches the queries.

#![no_main]

use harambee_privacy::log::{
    LogLine, accepted_receipts, check_ledger_keys, facility_keys, last_head, parse_log,
    unacknowledged_receipts,
};
use libfuzzer_sys::fuzz_target;

fn queries(lines: &[LogLine]) {
    let _ = accepted_receipts(lines);
    let _ = unacknowledged_receipts(lines);
    let _ = facility_keys(lines, "clinic-a");
    let _ = last_head(lines);
    let _ = check_ledger_keys(lines);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(lines) = parse_log(text) {
            queries(&lines);
        }
        return;
    }
    let mut chained: Vec<LogLine> = Vec::new();
    for raw in text.lines() {
        let Ok(line) = serde_json::from_str::<LogLine>(raw) else {
            continue;
        };
        let next = LogLine::next(chained.last(), line.unix_ms, line.record);
        chained.push(next);
    }
    let mut file = String::new();
    for line in &chained {
        file.push_str(&serde_json::to_string(line).expect("a log line serializes"));
        file.push('\n');
    }
    let parsed = parse_log(&file).expect("a chained log parses");
    assert_eq!(parsed, chained);
    queries(&parsed);
});
