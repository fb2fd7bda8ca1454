//! The accountant against Google's `dp-accounting` 0.6.0 on the table in
//! `fixtures/reference.csv` (made by `fixtures/generate_reference.py`): for every row, our ε is
//! at most 1% above the reference RDP accountant's and never below its PLD accountant's.

use harambee_privacy::accountant::epsilon;

const REFERENCE: &str = include_str!("fixtures/reference.csv");

struct Row {
    noise_multiplier: f64,
    sampling_rate: f64,
    steps: u64,
    delta: f64,
    rdp_epsilon: f64,
    pld_epsilon: f64,
}

fn rows() -> Vec<Row> {
    let mut lines = REFERENCE.lines();
    let header = lines.next().expect("header");
    assert_eq!(
        header,
        "noise_multiplier,sampling_rate,steps,delta,rdp_epsilon,rdp_order,pld_epsilon"
    );
    lines
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 7, "line {}: {line}", i + 2);
            let num = |k: usize| {
                f[k].parse::<f64>()
                    .unwrap_or_else(|e| panic!("line {}: field {k}: {e}", i + 2))
            };
            Row {
                noise_multiplier: num(0),
                sampling_rate: num(1),
                steps: f[2].parse().expect("steps"),
                delta: num(3),
                rdp_epsilon: num(4),
                pld_epsilon: num(6),
            }
        })
        .collect()
}

#[test]
fn within_one_percent_of_reference_rdp_and_never_below_reference_pld() {
    let rows = rows();
    assert!(rows.len() >= 40, "fixture has {} rows", rows.len());
    let mut table = String::from(
        "     z        q    steps    delta |       ours     ref RDP     ref PLD | ours/RDP ours/PLD\n",
    );
    let mut failures = Vec::new();
    let (mut max_over_rdp, mut min_over_pld) = (0.0f64, f64::INFINITY);
    for (i, r) in rows.iter().enumerate() {
        let ours = epsilon(r.noise_multiplier, r.sampling_rate, r.steps, r.delta)
            .expect("valid row")
            .epsilon;
        let over_rdp = if r.rdp_epsilon > 0.0 {
            ours / r.rdp_epsilon
        } else if ours == 0.0 {
            1.0
        } else {
            f64::INFINITY
        };
        let over_pld = if r.pld_epsilon > 0.0 {
            ours / r.pld_epsilon
        } else if ours == 0.0 {
            1.0
        } else {
            f64::INFINITY
        };
        max_over_rdp = max_over_rdp.max(over_rdp);
        if r.pld_epsilon > 0.0 {
            min_over_pld = min_over_pld.min(over_pld);
        }
        let too_high = ours > 1.01 * r.rdp_epsilon;
        let too_low = ours < r.pld_epsilon;
        let mark = match (too_high, too_low) {
            (true, _) => "  <-- above 1.01 × RDP",
            (_, true) => "  <-- below PLD",
            _ => "",
        };
        table.push_str(&format!(
            "{:>6} {:>8} {:>8} {:>8.0e} | {:>10.6} {:>10.6} {:>10.6} | {:>8.5} {:>8.4}{mark}\n",
            r.noise_multiplier,
            r.sampling_rate,
            r.steps,
            r.delta,
            ours,
            r.rdp_epsilon,
            r.pld_epsilon,
            over_rdp,
            over_pld
        ));
        if too_high || too_low {
            failures.push(i + 2);
        }
    }
    table.push_str(&format!(
        "max ours/RDP = {max_over_rdp:.9}, min ours/PLD = {min_over_pld:.6}\n"
    ));
    println!("{table}");
    assert!(
        failures.is_empty(),
        "rows at fixture lines {failures:?} are out of bounds:\n{table}"
    );
}
