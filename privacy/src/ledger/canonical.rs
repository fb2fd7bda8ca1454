//! The canonical JSON encoding that leaf hashes and receipt signatures cover: the JSON
//! Canonicalization Scheme of RFC 8785 (JCS), written here rather than left to `serde_json`, so
//! that a ledger written today verifies with any later build (and with any JCS library).
//!
//! A value is serialized with serde to a JSON tree, then written with:
//! - no whitespace;
//! - object members sorted by their keys' UTF-16 code units, recursively;
//! - strings with only `"` and `\` escaped, `\b \f \n \r \t` for those controls, `\u00xx`
//!   (lowercase hex) for the other controls below U+0020, everything else as raw UTF-8;
//! - floats as ECMAScript writes numbers: the shortest digits that read back to the same
//!   double, in plain notation for 1e-6 ≤ |x| < 1e21 (`0.00001`, `1.5`, `2`) and exponent
//!   notation otherwise (`1e-7`, `1.5e+21`); `-0` as `0`;
//! - integers (`u64`, `i64` fields) exactly, in decimal: identical to JCS below 2^53, which
//!   every index, size and timestamp here is.
//!
//! Non-finite floats have no JSON form: callers refuse them before encoding.

use serde::Serialize;
use serde_json::{Number, Value};

use super::LedgerError;

pub(crate) fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, LedgerError> {
    let tree = serde_json::to_value(value).map_err(|e| LedgerError::Encode(e.to_string()))?;
    let mut out = String::new();
    write(&tree, &mut out)?;
    Ok(out.into_bytes())
}

fn write(value: &Value, out: &mut String) -> Result<(), LedgerError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write(item, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_number(n: &Number, out: &mut String) -> Result<(), LedgerError> {
    if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else {
        let x = n
            .as_f64()
            .ok_or_else(|| LedgerError::Encode(format!("number {n} is not a double")))?;
        write_f64(x, out)?;
    }
    Ok(())
}

/// ECMAScript `Number::toString(x)` (ECMA-262 §6.1.6.1.20) for finite `x`.
fn write_f64(x: f64, out: &mut String) -> Result<(), LedgerError> {
    if !x.is_finite() {
        return Err(LedgerError::Encode(format!("{x} has no JSON form")));
    }
    if x == 0.0 {
        out.push('0');
        return Ok(());
    }
    if x < 0.0 {
        out.push('-');
    }
    let (digits, exp) = shortest_digits(x.abs());
    let k = digits.len() as i32;
    // x = 0.d₁d₂…d_k × 10^n
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n >= 1 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
    Ok(())
}

/// The digits `d₁d₂…d_k` and exponent `e` of `x = d₁.d₂…d_k × 10^e` (`x > 0`) that ECMAScript
/// chooses: the fewest digits that read back to `x` and, among those, the closest to `x`, ties
/// to an even last digit.
fn shortest_digits(x: f64) -> (String, i32) {
    let split = |sci: &str| {
        let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        (
            digits,
            exp.parse::<i32>().expect("`{:e}` exponent is an integer"),
        )
    };
    // Rust's `{:e}` gives the fewest digits that round-trip, but breaks an exact tie between
    // two such candidates upwards (815227081612558.25 → …558.3, where ECMAScript writes …558.2).
    let (digits, exp) = split(&format!("{x:e}"));
    // Rounding the exact value to that many digits (ties to even) gives the closest candidate;
    // keep it when it still reads back to `x`.
    let closest = format!("{x:.*e}", digits.len() - 1);
    if closest.parse::<f64>() == Ok(x) {
        split(&closest)
    } else {
        (digits, exp)
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text<T: Serialize>(v: &T) -> String {
        String::from_utf8(to_vec(v).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_recursively_and_writes_no_whitespace() {
        let v = json!({"b": 1, "a": {"z": [1.5, "x\"y\n\u{1}é", null], "é": true, "A": 1e-5}, "c": 2.0});
        assert_eq!(
            text(&v),
            "{\"a\":{\"A\":0.00001,\"z\":[1.5,\"x\\\"y\\n\\u0001é\",null],\"é\":true},\"b\":1,\"c\":2}"
        );
    }

    /// RFC 8785 §3.2.2.3 and Appendix B sample values.
    #[test]
    fn numbers_as_ecmascript_writes_them() {
        let cases: [(f64, &str); 17] = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (f64::from_bits(0x0000000000000001), "5e-324"),
            (
                f64::from_bits(0x7fefffffffffffff),
                "1.7976931348623157e+308",
            ),
            (333333333.3333332, "333333333.3333332"),
            (4.50, "4.5"),
            (2e-3, "0.002"),
            // -815227081612558.25: an exact tie between two shortest candidates goes to the even digit.
            (f64::from_bits(0xc3072b8ec4e2e872), "-815227081612558.2"),
        ];
        for (x, want) in cases {
            let mut out = String::new();
            write_f64(x, &mut out).unwrap();
            assert_eq!(out, want, "{x:e}");
        }
    }

    /// RFC 8785 §3.2.3: sorting by UTF-16 code units puts U+1F600 (a surrogate pair, 0xD83D…)
    /// before U+FB33 (0xFB33), unlike UTF-8 byte order.
    #[test]
    fn keys_sort_by_utf16_code_units() {
        let v = json!({"\u{FB33}": 1, "\u{1F600}": 2, "\r": 3, "1": 4});
        assert_eq!(
            text(&v),
            "{\"\\r\":3,\"1\":4,\"\u{1F600}\":2,\"\u{FB33}\":1}"
        );
    }

    #[test]
    fn floats_read_back_bit_identical() {
        for x in [
            0.1,
            1e-5,
            1.0 / 3.0,
            0.30000000000000004,
            123456.789e10,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            1e21,
            1e-7,
        ] {
            let text = to_vec(&x).unwrap();
            let back: f64 = serde_json::from_slice(&text).unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x}");
        }
    }
}
