//! Summary statistics: mean, sample standard deviation, 95 % confidence intervals (Student t,
//! because trials are few), Jain's fairness index, and the gap between the busiest and the least
//! busy broker. Pure functions; empty or degenerate input gives `None`, never NaN.

/// Mean, spread and 95 % CI half-width of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1 denominator); `None` for a single value.
    pub sd: Option<f64>,
    /// Half-width of the 95 % confidence interval of the mean; `None` for a single value.
    pub ci95: Option<f64>,
}

impl Estimate {
    pub fn of(xs: &[f64]) -> Option<Self> {
        let mean = mean(xs)?;
        let sd = sample_sd(xs);
        let ci95 = sd.map(|sd| t_975(xs.len() as u32 - 1) * sd / (xs.len() as f64).sqrt());
        Some(Self {
            n: xs.len(),
            mean,
            sd,
            ci95,
        })
    }

    /// `mean ± ci` with `decimals` digits; a single value prints without the ±.
    pub fn display(&self, decimals: usize) -> String {
        match self.ci95 {
            Some(ci) => format!("{:.*} ± {:.*}", decimals, self.mean, decimals, ci),
            None => format!("{:.*}", decimals, self.mean),
        }
    }
}

pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation (Bessel-corrected); needs two values.
pub fn sample_sd(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    let ss: f64 = xs.iter().map(|x| (x - m).powi(2)).sum();
    Some((ss / (xs.len() - 1) as f64).sqrt())
}

/// Max − min: the inter-broker gap.
pub fn gap(xs: &[f64]) -> Option<f64> {
    let max = xs.iter().copied().reduce(f64::max)?;
    let min = xs.iter().copied().reduce(f64::min)?;
    Some(max - min)
}

/// Jain's fairness index (Σx)² / (n·Σx²): 1 when all equal, 1/n when one takes everything.
/// Undefined (`None`) when every value is zero.
pub fn jain(xs: &[f64]) -> Option<f64> {
    let sum: f64 = xs.iter().sum();
    let sum_sq: f64 = xs.iter().map(|x| x * x).sum();
    (!xs.is_empty() && sum_sq > 0.0).then(|| sum * sum / (xs.len() as f64 * sum_sq))
}

/// Mean absolute difference over all pairs: |a − b| for two values; needs two values.
pub fn mean_abs_pair_diff(xs: &[f64]) -> Option<f64> {
    let mut total = 0.0;
    let mut pairs = 0usize;
    for (i, a) in xs.iter().enumerate() {
        for b in &xs[i + 1..] {
            total += (a - b).abs();
            pairs += 1;
        }
    }
    (pairs > 0).then(|| total / pairs as f64)
}

/// The 97.5 % quantile of Student's t with `df` degrees of freedom (two-sided 95 %), found by
/// bisection on the t CDF so any df is exact, not only a table's rows. `df = 0` gives infinity.
pub fn t_975(df: u32) -> f64 {
    if df == 0 {
        return f64::INFINITY;
    }
    let (mut lo, mut hi) = (0.0_f64, 1000.0_f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df as f64) < 0.975 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// P(T ≤ t) for t ≥ 0: 1 − ½·I_{ν/(ν+t²)}(ν/2, ½).
fn t_cdf(t: f64, nu: f64) -> f64 {
    1.0 - 0.5 * reg_inc_beta(nu / (nu + t * t), nu / 2.0, 0.5)
}

/// Regularised incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes §6.4).
fn reg_inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return if x <= 0.0 { 0.0 } else { 1.0 };
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The fraction converges fast only below the mean; use the symmetry I_x(a,b) = 1 − I_{1−x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(x, a, b) / a
    } else {
        1.0 - front * beta_cf(1.0 - x, b, a) / b
    }
}

fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for aa in [
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ] {
            d = 1.0 + aa * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + aa / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms: ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        sum += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-sided 95 % critical values of Student's t from a printed table (df 1..=30).
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];

    #[test]
    fn t_quantiles_match_the_printed_table() {
        for (i, want) in TABLE.iter().enumerate() {
            let got = t_975(i as u32 + 1);
            assert!((got - want).abs() < 0.0006, "df {}: {got} vs {want}", i + 1);
        }
        for (df, want) in [(40, 2.021), (60, 2.000), (120, 1.980), (100_000, 1.960)] {
            let got = t_975(df);
            assert!((got - want).abs() < 0.0006, "df {df}: {got} vs {want}");
        }
        assert!(t_975(0).is_infinite());
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn estimate_of_a_known_sample() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sample sd = sqrt(32/7).
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let e = Estimate::of(&xs).expect("estimate");
        assert_eq!(e.n, 8);
        assert_eq!(e.mean, 5.0);
        let sd = (32.0_f64 / 7.0).sqrt();
        assert!((e.sd.expect("sd") - sd).abs() < 1e-12);
        // t(7) = 2.3646: half-width = 2.3646 · 2.1381 / √8 = 1.7875.
        assert!((e.ci95.expect("ci") - 1.7875).abs() < 5e-4, "{e:?}");
        assert_eq!(e.display(1), "5.0 ± 1.8");
    }

    #[test]
    fn a_single_value_has_no_spread_and_empty_has_nothing() {
        let e = Estimate::of(&[3.0]).expect("estimate");
        assert_eq!((e.sd, e.ci95), (None, None));
        assert_eq!(e.display(0), "3");
        assert_eq!(Estimate::of(&[]), None);
    }

    #[test]
    fn jain_index_bounds() {
        assert_eq!(jain(&[5.0, 5.0, 5.0]), Some(1.0));
        assert_eq!(jain(&[1.0, 0.0]), Some(0.5));
        assert_eq!(jain(&[1.0, 0.0, 0.0, 0.0]), Some(0.25));
        // The paper's DNS-RR split, 18000 vs 10000: 28000² / (2 · (18000² + 10000²)).
        let j = jain(&[18000.0, 10000.0]).expect("jain");
        assert!((j - 784.0 / 848.0).abs() < 1e-12);
        assert_eq!(jain(&[0.0, 0.0]), None);
        assert_eq!(jain(&[]), None);
    }

    #[test]
    fn gap_and_pair_differences() {
        assert_eq!(gap(&[18000.0, 10000.0]), Some(8000.0));
        assert_eq!(gap(&[3.0]), Some(0.0));
        assert_eq!(gap(&[]), None);
        assert_eq!(mean_abs_pair_diff(&[10.0, 4.0]), Some(6.0));
        // Pairs of (0, 3, 6): 3, 6, 3.
        assert_eq!(mean_abs_pair_diff(&[0.0, 3.0, 6.0]), Some(4.0));
        assert_eq!(mean_abs_pair_diff(&[1.0]), None);
    }
}
