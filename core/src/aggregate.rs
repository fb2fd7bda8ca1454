//! Aggregation strategies. The coordinator only ever needs the weighted sum of the updates,
//! which is also all that secure aggregation reveals, so strategies consume that sum.

use ndarray::{Array1, ArrayView1, Zip};

/// Federated averaging (McMahan et al. 2017): the new model is the base plus the
/// sample-weighted mean of the updates (each update is local parameters minus base).
///
/// Updates are folded into an `f64` running sum as they arrive, so memory stays O(d)
/// whatever the number of facilities, and the result does not depend on arrival order
/// beyond `f64` rounding.
#[derive(Debug, Clone)]
pub struct FedAvg {
    sum: Array1<f64>,
    total_weight: f64,
    n_updates: usize,
}

impl FedAvg {
    pub fn new(n_params: usize) -> FedAvg {
        FedAvg {
            sum: Array1::zeros(n_params),
            total_weight: 0.0,
            n_updates: 0,
        }
    }

    /// Adds one validated update with its weight (its number of training samples).
    ///
    /// # Panics
    /// If the length differs from `n_params`: callers validate updates first.
    pub fn add(&mut self, weight: u64, update: &[f32]) {
        assert_eq!(
            update.len(),
            self.sum.len(),
            "update length checked by validate_update"
        );
        let w = weight as f64;
        Zip::from(&mut self.sum)
            .and(ArrayView1::from(update))
            .for_each(|s, &u| *s += w * u as f64);
        self.total_weight += w;
        self.n_updates += 1;
    }

    pub fn n_updates(&self) -> usize {
        self.n_updates
    }

    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// The weighted sum of the updates, one `f64` per parameter.
    pub fn sum(&self) -> &[f64] {
        // A freshly allocated one-dimensional array is contiguous.
        self.sum.as_slice().unwrap_or(&[])
    }

    /// The sample-weighted mean update, `sum / total_weight`. `None` when no update was added.
    pub fn mean(&self) -> Option<Vec<f32>> {
        if self.n_updates == 0 {
            return None;
        }
        let inv = 1.0 / self.total_weight;
        Some(self.sum.iter().map(|&s| (s * inv) as f32).collect())
    }

    /// The new model: `base + sum / total_weight`. `None` when no update was added.
    pub fn finish(&self, base: &[f32]) -> Option<Vec<f32>> {
        if self.n_updates == 0 {
            return None;
        }
        assert_eq!(base.len(), self.sum.len(), "base model length");
        let inv = 1.0 / self.total_weight;
        Some(
            base.iter()
                .zip(self.sum.iter())
                .map(|(&b, &s)| (b as f64 + s * inv) as f32)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedavg_is_the_sample_weighted_mean() {
        let mut agg = FedAvg::new(2);
        agg.add(1, &[1.0, 0.0]);
        agg.add(3, &[-1.0, 4.0]);
        // (1*1 + 3*-1)/4 = -0.5, (0 + 12)/4 = 3
        assert_eq!(agg.finish(&[10.0, 10.0]).unwrap(), vec![9.5, 13.0]);
        assert_eq!(agg.n_updates(), 2);
        assert_eq!(agg.total_weight(), 4.0);
    }

    #[test]
    fn no_updates_no_model() {
        assert_eq!(FedAvg::new(3).finish(&[0.0; 3]), None);
    }
}
