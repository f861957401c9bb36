//! On-demand prices of common EC2 instance types, the basis for choosing the cheapest offer.
//!
//! Provenance: USD per hour for Linux on-demand instances in us-east-1, as AWS published them in
//! its public price list in 2024. They were written down from that list for this repository,
//! not fetched at build or run time (this tool makes no calls to the pricing API), and have not
//! been re-verified since: treat them as estimates. Known to be stale: AWS cut the on-demand
//! prices of P4 and P5 instances in June 2025, so those two rows overstate today's price. Other
//! regions usually cost a few percent more; the same figures are used there.
//!
//! Spot prices: this table has none. A spot offer is estimated at [`SPOT_PRICE_FRACTION`] of the
//! on-demand price. That fraction is not taken from a source; AWS spot prices move by hour and
//! zone (typical discounts are 60–90%). It only orders offers and checks `max_price`; AWS
//! charges the real spot price.
//!
//! Instance types absent from the table are only used when a fleet names them in
//! `instance_types`; their price shows as unknown and they sort after priced offers.

/// A spot offer's price, as a fraction of the on-demand price (an estimate, see above).
pub const SPOT_PRICE_FRACTION: f64 = 0.35;

/// `(instance type, USD per hour)`, on-demand, Linux, us-east-1, 2024.
pub const ON_DEMAND: &[(&str, f64)] = &[
    // General purpose, burstable.
    ("t3.medium", 0.0416),
    ("t3.large", 0.0832),
    ("t3.xlarge", 0.1664),
    ("t3.2xlarge", 0.3328),
    // General purpose.
    ("m5.large", 0.096),
    ("m5.xlarge", 0.192),
    ("m5.2xlarge", 0.384),
    ("m5.4xlarge", 0.768),
    ("m5.8xlarge", 1.536),
    ("m5.12xlarge", 2.304),
    ("m5.16xlarge", 3.072),
    ("m5.24xlarge", 4.608),
    ("m6i.large", 0.096),
    ("m6i.xlarge", 0.192),
    ("m6i.2xlarge", 0.384),
    ("m6i.4xlarge", 0.768),
    ("m6i.8xlarge", 1.536),
    ("m6i.12xlarge", 2.304),
    ("m6i.16xlarge", 3.072),
    ("m6i.24xlarge", 4.608),
    ("m6i.32xlarge", 6.144),
    ("m7i.large", 0.1008),
    ("m7i.xlarge", 0.2016),
    ("m7i.2xlarge", 0.4032),
    ("m7i.4xlarge", 0.8064),
    ("m7i.8xlarge", 1.6128),
    ("m7i.12xlarge", 2.4192),
    ("m7i.16xlarge", 3.2256),
    ("m7i.24xlarge", 4.8384),
    ("m7i.48xlarge", 9.6768),
    // General purpose, Graviton (arm).
    ("m6g.large", 0.077),
    ("m6g.xlarge", 0.154),
    ("m6g.2xlarge", 0.308),
    ("m6g.4xlarge", 0.616),
    ("m6g.8xlarge", 1.232),
    ("m6g.12xlarge", 1.848),
    ("m6g.16xlarge", 2.464),
    ("m7g.large", 0.0816),
    ("m7g.xlarge", 0.1632),
    ("m7g.2xlarge", 0.3264),
    ("m7g.4xlarge", 0.6528),
    ("m7g.8xlarge", 1.3056),
    ("m7g.12xlarge", 1.9584),
    ("m7g.16xlarge", 2.6112),
    // Compute optimized.
    ("c5.large", 0.085),
    ("c5.xlarge", 0.17),
    ("c5.2xlarge", 0.34),
    ("c5.4xlarge", 0.68),
    ("c5.9xlarge", 1.53),
    ("c5.12xlarge", 2.04),
    ("c5.18xlarge", 3.06),
    ("c5.24xlarge", 4.08),
    ("c6i.large", 0.085),
    ("c6i.xlarge", 0.17),
    ("c6i.2xlarge", 0.34),
    ("c6i.4xlarge", 0.68),
    ("c6i.8xlarge", 1.36),
    ("c6i.12xlarge", 2.04),
    ("c6i.16xlarge", 2.72),
    ("c6i.24xlarge", 4.08),
    ("c6i.32xlarge", 5.44),
    ("c7i.large", 0.08925),
    ("c7i.xlarge", 0.1785),
    ("c7i.2xlarge", 0.357),
    ("c7i.4xlarge", 0.714),
    ("c7i.8xlarge", 1.428),
    ("c7i.12xlarge", 2.142),
    ("c7i.16xlarge", 2.856),
    ("c7i.24xlarge", 4.284),
    ("c7i.48xlarge", 8.568),
    // Memory optimized.
    ("r5.large", 0.126),
    ("r5.xlarge", 0.252),
    ("r5.2xlarge", 0.504),
    ("r5.4xlarge", 1.008),
    ("r5.8xlarge", 2.016),
    ("r5.12xlarge", 3.024),
    ("r5.16xlarge", 4.032),
    ("r5.24xlarge", 6.048),
    ("r6i.large", 0.126),
    ("r6i.xlarge", 0.252),
    ("r6i.2xlarge", 0.504),
    ("r6i.4xlarge", 1.008),
    ("r6i.8xlarge", 2.016),
    ("r6i.12xlarge", 3.024),
    ("r6i.16xlarge", 4.032),
    ("r6i.24xlarge", 6.048),
    ("r6i.32xlarge", 8.064),
    // GPU: NVIDIA T4.
    ("g4dn.xlarge", 0.526),
    ("g4dn.2xlarge", 0.752),
    ("g4dn.4xlarge", 1.204),
    ("g4dn.8xlarge", 2.176),
    ("g4dn.12xlarge", 3.912),
    ("g4dn.16xlarge", 4.352),
    // GPU: NVIDIA A10G.
    ("g5.xlarge", 1.006),
    ("g5.2xlarge", 1.212),
    ("g5.4xlarge", 1.624),
    ("g5.8xlarge", 2.448),
    ("g5.12xlarge", 5.672),
    ("g5.16xlarge", 4.096),
    ("g5.24xlarge", 8.144),
    ("g5.48xlarge", 16.288),
    // GPU: NVIDIA L4.
    ("g6.xlarge", 0.8048),
    ("g6.2xlarge", 0.9776),
    ("g6.4xlarge", 1.3232),
    ("g6.8xlarge", 2.0144),
    ("g6.12xlarge", 4.6016),
    ("g6.16xlarge", 3.3968),
    ("g6.24xlarge", 6.6752),
    ("g6.48xlarge", 13.3504),
    // GPU: NVIDIA L40S.
    ("g6e.xlarge", 1.861),
    ("g6e.2xlarge", 2.24208),
    ("g6e.4xlarge", 3.00424),
    ("g6e.8xlarge", 4.52856),
    ("g6e.12xlarge", 10.49264),
    ("g6e.16xlarge", 7.57719),
    ("g6e.24xlarge", 15.06559),
    ("g6e.48xlarge", 30.13118),
    // GPU: NVIDIA V100, A100, H100 (P4 and P5: before the June 2025 price cut).
    ("p3.2xlarge", 3.06),
    ("p3.8xlarge", 12.24),
    ("p3.16xlarge", 24.48),
    ("p4d.24xlarge", 32.7726),
    ("p5.48xlarge", 98.32),
];

/// The on-demand price of an instance type, if the table has it.
pub fn on_demand(instance_type: &str) -> Option<f64> {
    ON_DEMAND
        .iter()
        .find(|(name, _)| *name == instance_type)
        .map(|(_, price)| *price)
}

/// The estimated price of an offer.
pub fn price(instance_type: &str, spot: bool) -> Option<f64> {
    on_demand(instance_type).map(|p| if spot { p * SPOT_PRICE_FRACTION } else { p })
}

/// Every instance type the table prices.
pub fn priced_types() -> Vec<String> {
    ON_DEMAND
        .iter()
        .map(|(name, _)| (*name).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_no_duplicates_and_sane_prices() {
        let mut names: Vec<&str> = ON_DEMAND.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate rows");
        assert!(ON_DEMAND.iter().all(|(_, p)| *p > 0.0 && *p < 200.0));
        assert_eq!(on_demand("g5.xlarge"), Some(1.006));
        assert_eq!(price("zz9.mega", false), None);
        assert!((price("t3.large", true).unwrap_or_default() - 0.0832 * 0.35).abs() < 1e-9);
    }
}
