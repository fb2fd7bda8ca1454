//! Binary classification metrics, computed from probabilities and 0/1 labels (no burn).

/// Evaluation summary of a binary classifier on `n_samples` rows.
///
/// The default value is "nothing measured": no samples and every rate NaN.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Number of rows evaluated.
    pub n_samples: u64,
    /// Mean binary cross-entropy (natural log), probabilities clamped to `[1e-7, 1 - 1e-7]`.
    pub loss: f64,
    /// Fraction of rows whose thresholded prediction (`p >= threshold` means 1, the threshold is
    /// 0.5 unless stated) equals the label.
    pub accuracy: f64,
    /// Area under the ROC curve; NaN when only one class is present.
    pub auc: f64,
    /// Number of positive rows (label 1) among `n_samples`.
    #[serde(default)]
    pub n_positives: u64,
    /// Sensitivity (recall, true-positive rate) at the threshold: the fraction of positive rows
    /// predicted positive. NaN when there is no positive row.
    #[serde(default = "nan")]
    pub sensitivity: f64,
    /// Specificity (true-negative rate) at the threshold: the fraction of negative rows
    /// predicted negative. NaN when there is no negative row.
    #[serde(default = "nan")]
    pub specificity: f64,
    /// Expected calibration error over [`ECE_BINS`] equal-width probability bins:
    /// `sum_b (n_b / n) |mean label in b - mean probability in b|`.
    #[serde(default = "nan")]
    pub ece: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            n_samples: 0,
            loss: f64::NAN,
            accuracy: f64::NAN,
            auc: f64::NAN,
            n_positives: 0,
            sensitivity: f64::NAN,
            specificity: f64::NAN,
            ece: f64::NAN,
        }
    }
}

fn nan() -> f64 {
    f64::NAN
}

/// Decision threshold of [`compute`]: a row is predicted positive when `p >= 0.5`.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// Number of equal-width bins of the expected calibration error: `[0, 0.1), [0.1, 0.2), ...,
/// [0.9, 1]`.
pub const ECE_BINS: usize = 10;

/// Probabilities are clamped to `[PROB_EPS, 1 - PROB_EPS]` before taking logarithms.
const PROB_EPS: f64 = 1e-7;

/// [`compute_at`] with the [`DEFAULT_THRESHOLD`] of 0.5.
pub fn compute(probs: &[f32], labels: &[f32]) -> Metrics {
    compute_at(probs, labels, DEFAULT_THRESHOLD)
}

/// Computes [`Metrics`] for predicted probabilities `probs` against labels (`1.0` positive,
/// `0.0` negative; any label above 0.5 counts as positive), predicting positive when
/// `p >= threshold`.
///
/// - `loss`: mean binary cross-entropy, `-[y ln p + (1 - y) ln(1 - p)]`, with `p` clamped.
/// - `accuracy`, `sensitivity`, `specificity`: of the thresholded predictions.
/// - `auc`: ROC AUC by the rank-sum (Mann–Whitney U) formula, `(R+ - n+(n+ + 1)/2) / (n+ n-)`,
///   where `R+` is the sum of the (1-based, tie-averaged) ranks of the positives. A tie between a
///   positive and a negative therefore counts 1/2. The AUC is **NaN when one class is absent**,
///   since it is undefined there; [`weighted_mean`] skips such values.
/// - `ece`: bin `b` (of [`ECE_BINS`]) holds the rows with `floor(p * 10) == b` (`p == 1` falls
///   in the last bin); empty bins contribute nothing.
///
/// With no rows, `n_samples` is 0 and the rates are NaN ([`Metrics::default`]).
///
/// # Panics
///
/// If `probs` and `labels` differ in length.
pub fn compute_at(probs: &[f32], labels: &[f32], threshold: f64) -> Metrics {
    assert_eq!(probs.len(), labels.len(), "one probability per label");
    let n_samples = probs.len();
    if n_samples == 0 {
        return Metrics::default();
    }

    let mut loss_sum = 0.0;
    let mut n_positives = 0usize;
    let mut true_pos = 0usize;
    let mut true_neg = 0usize;
    // Per bin: rows, sum of probabilities, sum of labels.
    let mut bins = [(0usize, 0.0f64, 0.0f64); ECE_BINS];
    for (&prob, &label) in probs.iter().zip(labels) {
        let positive = label > 0.5;
        let raw = f64::from(prob);
        let predicted_positive = raw >= threshold;
        match (positive, predicted_positive) {
            (true, true) => true_pos += 1,
            (false, false) => true_neg += 1,
            _ => {}
        }
        n_positives += usize::from(positive);
        let clamped = raw.clamp(PROB_EPS, 1.0 - PROB_EPS);
        loss_sum -= if positive {
            clamped.ln()
        } else {
            (1.0 - clamped).ln()
        };
        let bin = &mut bins[ece_bin(raw)];
        bin.0 += 1;
        bin.1 += raw;
        bin.2 += if positive { 1.0 } else { 0.0 };
    }
    let n_negatives = n_samples - n_positives;
    let ratio = |num: usize, den: usize| {
        if den == 0 {
            f64::NAN
        } else {
            num as f64 / den as f64
        }
    };
    let ece = bins
        .iter()
        .filter(|bin| bin.0 > 0)
        .map(|&(_, prob_sum, label_sum)| (label_sum - prob_sum).abs() / n_samples as f64)
        .sum();

    Metrics {
        n_samples: n_samples as u64,
        loss: loss_sum / n_samples as f64,
        accuracy: ratio(true_pos + true_neg, n_samples),
        auc: roc_auc(probs, labels),
        n_positives: n_positives as u64,
        sensitivity: ratio(true_pos, n_positives),
        specificity: ratio(true_neg, n_negatives),
        ece,
    }
}

/// The ECE bin of a probability: `floor(p * ECE_BINS)`, clamped into range.
fn ece_bin(prob: f64) -> usize {
    if prob.is_nan() {
        return 0;
    }
    ((prob * ECE_BINS as f64).floor().max(0.0) as usize).min(ECE_BINS - 1)
}

/// Combines per-part metrics into one, weighting each part by its `n_samples`. Parts with no
/// samples are ignored, and a rate that is NaN in a part (AUC with one class, say) is averaged
/// over the parts where it is not (NaN if there is none). Sensitivity is weighted by each part's
/// positives and specificity by its negatives, which makes them exactly the pooled rates. A
/// weighted mean of AUCs is not the AUC of the pooled rows, and the weighted mean of ECEs is an
/// upper bound of the pooled rows' ECE (same bins, triangle inequality).
pub fn weighted_mean(parts: &[Metrics]) -> Metrics {
    let n_samples: u64 = parts.iter().map(|part| part.n_samples).sum();
    let n_positives: u64 = parts.iter().map(|part| part.n_positives).sum();
    let mean_of = |value: fn(&Metrics) -> f64, weight_of: fn(&Metrics) -> u64| {
        let (sum, weight) = parts
            .iter()
            .filter(|part| part.n_samples > 0 && !value(part).is_nan())
            .fold((0.0, 0.0), |(sum, weight), part| {
                let w = weight_of(part) as f64;
                (sum + w * value(part), weight + w)
            });
        if weight > 0.0 { sum / weight } else { f64::NAN }
    };
    let rows = |part: &Metrics| part.n_samples;
    Metrics {
        n_samples,
        loss: mean_of(|part| part.loss, rows),
        accuracy: mean_of(|part| part.accuracy, rows),
        auc: mean_of(|part| part.auc, rows),
        n_positives,
        sensitivity: mean_of(|part| part.sensitivity, |part| part.n_positives),
        specificity: mean_of(
            |part| part.specificity,
            |part| part.n_samples.saturating_sub(part.n_positives),
        ),
        ece: mean_of(|part| part.ece, rows),
    }
}

/// ROC AUC by the Mann–Whitney rank-sum formula with tie-averaged ranks.
fn roc_auc(probs: &[f32], labels: &[f32]) -> f64 {
    let n_pos = labels.iter().filter(|&&label| label > 0.5).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));

    let mut pos_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let prob = probs[order[start]];
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&idx| probs[idx] == prob)
                .count();
        // Positions start..end (0-based) share the average of the 1-based ranks start+1..=end.
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        let n_pos_tied = order[start..end]
            .iter()
            .filter(|&&idx| labels[idx] > 0.5)
            .count();
        pos_rank_sum += mean_rank * n_pos_tied as f64;
        start = end.max(start + 1);
    }
    let (n_pos, n_neg) = (n_pos as f64, n_neg as f64);
    (pos_rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn perfect_and_reversed_rankings() {
        let labels = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(compute(&[0.1, 0.2, 0.8, 0.9], &labels).auc, 1.0);
        assert_eq!(compute(&[0.9, 0.8, 0.2, 0.1], &labels).auc, 0.0);
    }

    #[test]
    fn hand_computed_example_with_ties() {
        // Sorted: 0.2(neg) 0.4(neg) 0.4(pos) 0.7(pos) 0.7(neg) 0.9(pos).
        // Pairs (pos, neg) with pos > neg count 1, ties 1/2:
        //   pos 0.4: beats 0.2, ties 0.4           -> 1.5
        //   pos 0.7: beats 0.2, 0.4, ties 0.7      -> 2.5
        //   pos 0.9: beats all three               -> 3
        // AUC = 7 / 9.
        let probs = [0.4, 0.2, 0.7, 0.9, 0.7, 0.4];
        let labels = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
        let metrics = compute(&probs, &labels);
        assert!(close(metrics.auc, 7.0 / 9.0), "{}", metrics.auc);
        // Correct at 0.5: 0.4(pos) wrong, 0.2(neg) right, 0.7(neg) wrong, 0.9 right, 0.7 right,
        // 0.4(neg) right -> 4/6.
        assert!(close(metrics.accuracy, 4.0 / 6.0));
        assert_eq!(metrics.n_samples, 6);
        let expected_loss =
            -(0.4f64.ln() + 0.8f64.ln() + 0.3f64.ln() + 0.9f64.ln() + 0.7f64.ln() + 0.6f64.ln())
                / 6.0;
        assert!(
            (metrics.loss - expected_loss).abs() < 1e-6,
            "{} vs {expected_loss}",
            metrics.loss
        );
    }

    #[test]
    fn all_tied_scores_give_one_half() {
        let metrics = compute(&[0.5; 4], &[0.0, 1.0, 1.0, 0.0]);
        assert_eq!(metrics.auc, 0.5);
        // p = 0.5 predicts the positive class.
        assert_eq!(metrics.accuracy, 0.5);
        assert!(close(metrics.loss, std::f64::consts::LN_2));
    }

    #[test]
    fn loss_clamps_certain_wrong_predictions() {
        let metrics = compute(&[0.0, 1.0], &[1.0, 0.0]);
        assert!(close(metrics.loss, -(1e-7f64).ln()), "{}", metrics.loss);
        assert_eq!(metrics.accuracy, 0.0);
    }

    #[test]
    fn auc_is_nan_with_one_class_and_empty_input_is_nan() {
        assert!(compute(&[0.3, 0.6], &[1.0, 1.0]).auc.is_nan());
        assert!(compute(&[0.3, 0.6], &[0.0, 0.0]).auc.is_nan());
        let empty = compute(&[], &[]);
        assert_eq!(empty.n_samples, 0);
        assert!(empty.loss.is_nan() && empty.accuracy.is_nan() && empty.auc.is_nan());
    }

    #[test]
    fn weighted_mean_weights_by_samples_and_skips_nan_auc() {
        let a = Metrics {
            n_samples: 1,
            loss: 1.0,
            accuracy: 1.0,
            auc: 0.5,
            ..Metrics::default()
        };
        let b = Metrics {
            n_samples: 3,
            loss: 3.0,
            accuracy: 0.0,
            auc: 0.9,
            ..Metrics::default()
        };
        let c = Metrics {
            n_samples: 4,
            loss: 0.0,
            accuracy: 0.5,
            auc: f64::NAN,
            ..Metrics::default()
        };
        let empty = Metrics {
            n_samples: 0,
            loss: f64::NAN,
            accuracy: f64::NAN,
            auc: f64::NAN,
            ..Metrics::default()
        };
        let mean = weighted_mean(&[a, b, c, empty]);
        assert_eq!(mean.n_samples, 8);
        assert!(close(mean.loss, 10.0 / 8.0));
        assert!(close(mean.accuracy, 3.0 / 8.0));
        assert!(close(mean.auc, (0.5 + 3.0 * 0.9) / 4.0));
        assert!(weighted_mean(&[c]).auc.is_nan());
        assert_eq!(weighted_mean(&[]).n_samples, 0);
    }

    #[test]
    fn sensitivity_specificity_and_ece_by_hand() {
        // Rows (p, y): (0.05, 0) (0.15, 0) (0.15, 1) (0.55, 0) (0.65, 1) (0.95, 1) (1.0, 1).
        let probs = [0.05, 0.15, 0.15, 0.55, 0.65, 0.95, 1.0];
        let labels = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let metrics = compute(&probs, &labels);
        assert_eq!(metrics.n_positives, 4);
        // At 0.5: positives 0.15 (missed), 0.65, 0.95, 1.0 (caught) -> 3/4; negatives 0.05,
        // 0.15 (right), 0.55 (wrong) -> 2/3.
        assert!(close(metrics.sensitivity, 3.0 / 4.0));
        assert!(close(metrics.specificity, 2.0 / 3.0));
        assert!(close(metrics.accuracy, 5.0 / 7.0));
        // Bins: [0, .1) {0.05: y 0}: |0 - 0.05| = 0.05; [.1, .2) {0.15, 0.15: y 0, 1}:
        // |1 - 0.3| = 0.7; [.5, .6) {0.55: 0}: 0.55; [.6, .7) {0.65: 1}: 0.35;
        // [.9, 1] {0.95, 1.0: 1, 1}: |2 - 1.95| = 0.05. ECE = (0.05 + 0.7 + 0.55 + 0.35 + 0.05) / 7.
        assert!(
            (metrics.ece - 1.7 / 7.0).abs() < 1e-6,
            "{} vs {}",
            metrics.ece,
            1.7 / 7.0
        );

        // At threshold 0.6: 0.55 becomes a true negative, 0.65 stays a true positive.
        let strict = compute_at(&probs, &labels, 0.6);
        assert!(close(strict.sensitivity, 3.0 / 4.0));
        assert!(close(strict.specificity, 1.0));
        assert!(close(strict.accuracy, 6.0 / 7.0));
        assert_eq!(
            strict.ece, metrics.ece,
            "calibration does not depend on the threshold"
        );
        // At 0.1 everything but 0.05 is predicted positive.
        let lax = compute_at(&probs, &labels, 0.1);
        assert!(close(lax.sensitivity, 1.0));
        assert!(close(lax.specificity, 1.0 / 3.0));
    }

    #[test]
    fn perfectly_calibrated_bins_have_zero_ece() {
        // Bin [.2, .3): four rows at 0.25, one positive. Bin [.7, .8): four at 0.75, three positive.
        let probs = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
        let labels = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0];
        assert!(compute(&probs, &labels).ece.abs() < 1e-12);
        // Always saying 1.0 for negatives is maximally miscalibrated.
        assert!(close(compute(&[1.0, 1.0], &[0.0, 0.0]).ece, 1.0));
    }

    #[test]
    fn rates_without_a_class_are_nan() {
        let only_pos = compute(&[0.3, 0.6], &[1.0, 1.0]);
        assert!(close(only_pos.sensitivity, 0.5));
        assert!(only_pos.specificity.is_nan());
        let only_neg = compute(&[0.3, 0.6], &[0.0, 0.0]);
        assert!(only_neg.sensitivity.is_nan());
        assert!(close(only_neg.specificity, 0.5));
        let empty = compute(&[], &[]);
        assert!(empty.sensitivity.is_nan() && empty.specificity.is_nan() && empty.ece.is_nan());
    }

    #[test]
    fn weighted_mean_pools_sensitivity_and_specificity_exactly() {
        let part_a = (vec![0.9, 0.2, 0.4], vec![1.0, 1.0, 0.0]);
        let part_b = (vec![0.7, 0.6, 0.1, 0.8, 0.3], vec![1.0, 0.0, 0.0, 1.0, 1.0]);
        let a = compute(&part_a.0, &part_a.1);
        let b = compute(&part_b.0, &part_b.1);
        let pooled = compute(
            &[part_a.0.clone(), part_b.0.clone()].concat(),
            &[part_a.1.clone(), part_b.1.clone()].concat(),
        );
        let mean = weighted_mean(&[a, b]);
        assert_eq!(mean.n_positives, 5);
        assert!(close(mean.sensitivity, pooled.sensitivity));
        assert!(close(mean.specificity, pooled.specificity));
        assert!(close(mean.accuracy, pooled.accuracy));
        assert!(mean.ece >= pooled.ece - 1e-12);
        // A part that has no negatives does not dilute the specificity.
        let all_pos = compute(&[0.9, 0.1], &[1.0, 1.0]);
        assert!(close(
            weighted_mean(&[a, all_pos]).specificity,
            a.specificity
        ));
    }
}
