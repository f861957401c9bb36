//! Offers: which instance types, in which regions and zones, spot or on-demand, at what price.
//!
//! An instance type qualifies when [`DescribeInstanceTypes`] says it satisfies the fleet's
//! `resources` (vCPUs and architecture, memory, GPU count, model, vendor and memory). Candidates
//! are the fleet's `instance_types`, else every type of the price table ([`super::prices`]);
//! `DescribeInstanceTypeOfferings` says in which zones each is offered. Offers are sorted by
//! price, cheapest first (unknown prices last, then by name), and filtered by `spot_policy`,
//! `max_price`, `regions` and `availability_zones`.
//!
//! [`DescribeInstanceTypes`]: super::ec2::Ec2Api::describe_instance_types

use std::collections::BTreeMap;

use super::ec2::InstanceTypeInfo;
use crate::model::fleet::FleetSpec;
use crate::model::profile::SpotPolicy;
use crate::model::resources::{CpuArch, CpuSpec, Resources};

/// One way to launch a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    pub region: String,
    pub instance: InstanceTypeInfo,
    pub spot: bool,
    /// Estimated USD per hour (see [`super::prices`]).
    pub price: Option<f64>,
    /// Zones of the region that offer the type (and that the fleet allows), in order.
    pub zones: Vec<String>,
}

impl Offer {
    /// `g5.xlarge (spot) in us-east-1`.
    pub fn describe(&self) -> String {
        format!(
            "{}{} in {}",
            self.instance.name,
            if self.spot { " (spot)" } else { "" },
            self.region
        )
    }

    /// The architecture of its machine image (`x86_64` or `arm64`).
    pub fn architecture(&self) -> &str {
        if self.instance.architectures.iter().any(|a| a == "x86_64") {
            "x86_64"
        } else {
            self.instance
                .architectures
                .first()
                .map_or("x86_64", String::as_str)
        }
    }
}

fn gib(mib: i64) -> f64 {
    mib as f64 / 1024.0
}

/// A GPU's memory in GB as its maker sells it: EC2 reports the usable memory of some models
/// (22888 MiB for an A10G, 15360 MiB for a T4), which would miss `gpu: 24GB` or `gpu: 16GB`.
pub fn gpu_memory_gb(gpu: &super::ec2::GpuInfo) -> f64 {
    match gpu.name.to_ascii_uppercase().as_str() {
        "A10G" | "A10" | "L4" => 24.0,
        "T4" | "T4G" => 16.0,
        "L40S" | "L40" => 48.0,
        _ => gib(gpu.memory_mib),
    }
}

/// Why an instance type does not satisfy `resources`, or `None` when it does.
pub fn mismatch(resources: &Resources, info: &InstanceTypeInfo) -> Option<String> {
    let cpu: CpuSpec = resources.cpu.unwrap_or_default();
    let arch = match cpu.arch.unwrap_or(CpuArch::X86) {
        CpuArch::X86 => "x86_64",
        CpuArch::Arm => "arm64",
    };
    if !info.architectures.iter().any(|a| a == arch) {
        return Some(format!("not {arch}"));
    }
    if !cpu.count().contains(info.vcpus) {
        return Some(format!("{} vCPUs", info.vcpus));
    }
    let memory = resources.memory.unwrap_or(Resources::DEFAULT_MEMORY);
    if !memory.contains(crate::model::quantity::Memory(gib(info.memory_mib))) {
        return Some(format!("{:.0}GB of memory", gib(info.memory_mib)));
    }
    let count = info.gpu_count();
    let Some(gpu) = &resources.gpu else {
        // dstack's default is `gpu: 0..`: any; the cheapest offer wins, which is rarely a GPU one.
        return None;
    };
    if !gpu.count().contains(count) {
        return Some(format!("{count} GPUs"));
    }
    if count == 0 {
        return None;
    }
    if let Some(vendor) = gpu.vendor
        && !info
            .gpus
            .iter()
            .all(|g| g.manufacturer.eq_ignore_ascii_case(&vendor.to_string()))
    {
        return Some(format!("not {vendor} GPUs"));
    }
    if !gpu.names.is_empty()
        && !info
            .gpus
            .iter()
            .all(|g| gpu.names.iter().any(|n| n.eq_ignore_ascii_case(&g.name)))
    {
        let names: Vec<&str> = info.gpus.iter().map(|g| g.name.as_str()).collect();
        return Some(format!("{} GPUs", names.join(",")));
    }
    if let Some(memory) = gpu.memory
        && !info
            .gpus
            .iter()
            .all(|g| memory.contains(crate::model::quantity::Memory(gpu_memory_gb(g))))
    {
        return Some("GPU memory".into());
    }
    if let Some(total) = gpu.total_memory {
        let sum: f64 = info
            .gpus
            .iter()
            .map(|g| gpu_memory_gb(g) * g.count as f64)
            .sum();
        if !total.contains(crate::model::quantity::Memory(sum)) {
            return Some("total GPU memory".into());
        }
    }
    None
}

/// The size of a node's root volume, in GiB: the lower end of `resources.disk` (default 100GB).
pub fn root_disk_gib(resources: Option<&Resources>) -> i32 {
    let disk = resources
        .and_then(|r| r.disk)
        .map_or(Resources::DEFAULT_DISK, |d| d.size);
    let size = disk.min.or(disk.max).map_or(100.0, |m| m.0);
    size.ceil().clamp(8.0, 16_384.0) as i32
}

/// Whether to make spot offers, on-demand offers, or both.
pub fn markets(policy: Option<SpotPolicy>) -> &'static [bool] {
    match policy.unwrap_or(SpotPolicy::OnDemand) {
        SpotPolicy::Spot => &[true],
        SpotPolicy::OnDemand => &[false],
        SpotPolicy::Auto => &[true, false],
    }
}

/// The offers of a fleet from what one region reported: its instance types and the zones that
/// offer each. Pure, so that ordering and filtering are tested without AWS.
pub fn region_offers(
    spec: &FleetSpec,
    region: &str,
    types: &[InstanceTypeInfo],
    offerings: &[(String, String)],
) -> Vec<Offer> {
    let resources = spec.resources.clone().unwrap_or_default();
    let mut zones_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, zone) in offerings {
        if spec
            .availability_zones
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|z| z == zone))
        {
            zones_of.entry(name).or_default().push(zone.clone());
        }
    }
    let max_price = spec.max_price.map(|p| p.0);
    let mut offers = Vec::new();
    for info in types {
        if mismatch(&resources, info).is_some() {
            continue;
        }
        let Some(zones) = zones_of.get(info.name.as_str()) else {
            continue;
        };
        let mut zones = zones.clone();
        zones.sort();
        zones.dedup();
        for &spot in markets(spec.spot_policy) {
            if spot && !info.spot_supported {
                continue;
            }
            let price = super::prices::price(&info.name, spot);
            if let (Some(max), Some(price)) = (max_price, price)
                && price > max
            {
                continue;
            }
            offers.push(Offer {
                region: region.to_string(),
                instance: info.clone(),
                spot,
                price,
                zones: zones.clone(),
            });
        }
    }
    offers
}

/// Cheapest first; unknown prices last; then by name, region and market, for a stable order.
pub fn sort(offers: &mut [Offer]) {
    offers.sort_by(|a, b| {
        let price = |o: &Offer| o.price.unwrap_or(f64::INFINITY);
        price(a)
            .total_cmp(&price(b))
            .then_with(|| a.instance.name.cmp(&b.instance.name))
            .then_with(|| a.region.cmp(&b.region))
            .then_with(|| b.spot.cmp(&a.spot))
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::ec2::GpuInfo;
    use super::*;

    fn cpu(name: &str, vcpus: i64, gib: i64, arch: &str) -> InstanceTypeInfo {
        InstanceTypeInfo {
            name: name.into(),
            vcpus,
            memory_mib: gib * 1024,
            architectures: vec![arch.into()],
            gpus: Vec::new(),
            spot_supported: true,
        }
    }

    fn gpu(
        name: &str,
        vcpus: i64,
        gib: i64,
        model: &str,
        count: i64,
        gpu_gib: i64,
    ) -> InstanceTypeInfo {
        InstanceTypeInfo {
            gpus: vec![GpuInfo {
                name: model.into(),
                manufacturer: "NVIDIA".into(),
                count,
                memory_mib: gpu_gib * 1024,
            }],
            ..cpu(name, vcpus, gib, "x86_64")
        }
    }

    fn fleet(value: serde_json::Value) -> FleetSpec {
        serde_json::from_value(value).expect("fleet spec")
    }

    fn catalogue() -> Vec<InstanceTypeInfo> {
        vec![
            cpu("t3.large", 2, 8, "x86_64"),
            cpu("m5.large", 2, 8, "x86_64"),
            cpu("m6g.large", 2, 8, "arm64"),
            cpu("r5.large", 2, 16, "x86_64"),
            gpu("g4dn.xlarge", 4, 16, "T4", 1, 16),
            gpu("g5.xlarge", 4, 16, "A10G", 1, 24),
            gpu("p4d.24xlarge", 96, 1152, "A100", 8, 40),
        ]
    }

    fn everywhere(types: &[InstanceTypeInfo]) -> Vec<(String, String)> {
        types
            .iter()
            .flat_map(|t| {
                ["us-east-1b", "us-east-1a"]
                    .into_iter()
                    .map(|z| (t.name.clone(), z.to_string()))
            })
            .collect()
    }

    fn names(offers: &[Offer]) -> Vec<String> {
        offers.iter().map(Offer::describe).collect()
    }

    #[test]
    fn the_cheapest_type_that_fits_comes_first() {
        let types = catalogue();
        let spec = fleet(json!({"nodes": 1, "resources": {"memory": "16GB.."}}));
        let mut offers = region_offers(&spec, "us-east-1", &types, &everywhere(&types));
        sort(&mut offers);
        assert_eq!(
            names(&offers),
            vec![
                "r5.large in us-east-1",
                "g4dn.xlarge in us-east-1",
                "g5.xlarge in us-east-1",
                "p4d.24xlarge in us-east-1"
            ]
        );
        assert_eq!(offers[0].zones, vec!["us-east-1a", "us-east-1b"]);
    }

    #[test]
    fn gpus_by_name_memory_and_count() {
        let types = catalogue();
        let pick = |spec: serde_json::Value| {
            let mut offers = region_offers(&fleet(spec), "r", &types, &everywhere(&types));
            sort(&mut offers);
            offers
                .into_iter()
                .map(|o| o.instance.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pick(json!({"resources": {"gpu": "24GB"}})),
            vec!["g5.xlarge"]
        );
        assert_eq!(
            pick(json!({"resources": {"gpu": "A10G"}})),
            vec!["g5.xlarge"]
        );
        assert_eq!(
            pick(json!({"resources": {"gpu": "t4"}})),
            vec!["g4dn.xlarge"]
        );
        assert_eq!(
            pick(json!({"resources": {"gpu": 1}})),
            vec!["g4dn.xlarge", "g5.xlarge"]
        );
        assert_eq!(
            pick(json!({"resources": {"gpu": "A100:8"}})),
            vec!["p4d.24xlarge"]
        );
        assert_eq!(
            pick(json!({"resources": {"gpu": "amd:1"}})),
            Vec::<String>::new()
        );
        assert_eq!(
            pick(json!({"resources": {"cpu": "arm:2"}})),
            vec!["m6g.large"]
        );
    }

    #[test]
    fn spot_policy_max_price_and_zones_filter() {
        let types = catalogue();
        let offers = |spec: serde_json::Value| {
            let mut offers = region_offers(&fleet(spec), "r", &types, &everywhere(&types));
            sort(&mut offers);
            names(&offers)
        };
        assert_eq!(
            offers(json!({"resources": {"gpu": 1}, "spot_policy": "auto"}))[..3],
            [
                "g4dn.xlarge (spot) in r",
                "g5.xlarge (spot) in r",
                "g4dn.xlarge in r"
            ]
        );
        assert_eq!(
            offers(json!({"resources": {"gpu": 1}, "spot_policy": "spot", "max_price": 0.3})),
            vec!["g4dn.xlarge (spot) in r"]
        );
        let spec = fleet(json!({"availability_zones": ["us-east-1b"]}));
        let zoned = region_offers(&spec, "r", &types, &everywhere(&types));
        assert!(
            zoned
                .iter()
                .all(|o| o.zones == vec!["us-east-1b".to_string()])
        );
        let nowhere = fleet(json!({"availability_zones": ["us-east-1z"]}));
        assert!(region_offers(&nowhere, "r", &types, &everywhere(&types)).is_empty());
    }

    #[test]
    fn root_disk_follows_resources_disk() {
        assert_eq!(root_disk_gib(None), 100);
        let spec = fleet(json!({"resources": {"disk": "200GB.."}}));
        assert_eq!(root_disk_gib(spec.resources.as_ref()), 200);
    }
}
