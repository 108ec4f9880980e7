//! A method's `rebalance:` block: parsed with locations, checked, durations scaled.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Checker;
use crate::InputError;
use crate::dispatcher::rebalance::{MoverKind, RebalanceConfig};

/// A method's `rebalance:` block; every key optional (defaults in [`RebalanceConfig`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRebalance {
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    hysteresis: Option<u32>,
    #[serde(default)]
    cooldown: Option<Spanned<String>>,
    #[serde(default)]
    max_moves_per_s: Option<f64>,
    #[serde(default)]
    hold: Option<Spanned<String>>,
    #[serde(default)]
    mover: Option<MoverKind>,
    /// Move publishers (default true).
    #[serde(default)]
    publishers: Option<bool>,
    /// Move shared-subscription members (default true).
    #[serde(default)]
    members: Option<bool>,
    #[serde(default)]
    member_threshold: Option<f64>,
}

impl Checker<'_> {
    pub(super) fn rebalance(
        &self,
        raw: &Spanned<RawRebalance>,
        scale: f64,
    ) -> Result<(RebalanceConfig, Option<MoverKind>), InputError> {
        let r = &raw.value;
        let mut cfg = RebalanceConfig::default();
        cfg.cooldown = cfg.cooldown.mul_f64(scale);
        cfg.hold = cfg.hold.mul_f64(scale);
        if let Some(t) = r.threshold {
            cfg.threshold = t;
        }
        if let Some(h) = r.hysteresis {
            cfg.hysteresis = h;
        }
        if let Some(c) = &r.cooldown {
            cfg.cooldown = self.duration(c, scale)?;
        }
        if let Some(m) = r.max_moves_per_s {
            cfg.max_moves_per_s = m;
        }
        if let Some(h) = &r.hold {
            cfg.hold = self.duration(h, scale)?;
        }
        if let Some(p) = r.publishers {
            cfg.publishers = p;
        }
        if let Some(m) = r.members {
            cfg.members = m;
        }
        if let Some(t) = r.member_threshold {
            cfg.member_threshold = t;
        }
        cfg.validate().map_err(|e| self.at(raw, e))?;
        Ok((cfg, r.mover))
    }
}
