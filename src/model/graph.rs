//! The dependency graph between resources.
//!
//! A run depends on the volumes it mounts, the fleets it targets and the runs, tasks and tags in
//! its `deps`; a tag depends on its run until it is created. Creation follows the graph, deletion
//! reverses it. Order is deterministic: among resources that are ready at the same time, the
//! smallest `kind/name` comes first. Cycles are errors that name the cycle.

use std::collections::{BTreeMap, BTreeSet};

use super::mounts::MountPoint;
use super::run::Dep;
use super::{Kind, Resource, ResourceId, Spec};

/// A dependency cycle, in order, ending where it started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("dependency cycle: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(" -> "))]
pub struct Cycle(pub Vec<ResourceId>);

/// Resources and what each depends on.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    depends_on: BTreeMap<ResourceId, BTreeSet<ResourceId>>,
}

impl Graph {
    pub fn add_node(&mut self, id: ResourceId) {
        self.depends_on.entry(id).or_default();
    }

    /// `from` depends on `to`. Edges to nodes not in the graph are kept out: a dependency on
    /// something outside the plan is already in place.
    pub fn add_edge(&mut self, from: ResourceId, to: ResourceId) {
        self.depends_on.entry(from).or_default().insert(to);
    }

    pub fn dependencies(&self, id: &ResourceId) -> impl Iterator<Item = &ResourceId> {
        self.depends_on
            .get(id)
            .into_iter()
            .flatten()
            .filter(|d| self.depends_on.contains_key(*d))
    }

    /// Nodes grouped in waves: every node comes after all of its dependencies, and nodes of one
    /// wave are independent of each other.
    pub fn waves(&self) -> Result<Vec<Vec<ResourceId>>, Cycle> {
        let mut remaining: BTreeMap<&ResourceId, BTreeSet<&ResourceId>> = self
            .depends_on
            .iter()
            .map(|(id, deps)| {
                (
                    id,
                    deps.iter()
                        .filter(|d| self.depends_on.contains_key(*d) && *d != id)
                        .collect(),
                )
            })
            .collect();
        for (id, deps) in &self.depends_on {
            if deps.contains(id) {
                return Err(Cycle(vec![id.clone(), id.clone()]));
            }
        }
        let mut waves = Vec::new();
        while !remaining.is_empty() {
            let ready: Vec<ResourceId> = remaining
                .iter()
                .filter(|(_, deps)| deps.is_empty())
                .map(|(id, _)| (*id).clone())
                .collect();
            if ready.is_empty() {
                return Err(self.find_cycle(&remaining.keys().map(|id| (*id).clone()).collect()));
            }
            for id in &ready {
                remaining.remove(id);
            }
            for deps in remaining.values_mut() {
                for id in &ready {
                    deps.remove(id);
                }
            }
            waves.push(ready);
        }
        Ok(waves)
    }

    /// Topological order (dependencies first).
    pub fn order(&self) -> Result<Vec<ResourceId>, Cycle> {
        Ok(self.waves()?.into_iter().flatten().collect())
    }

    fn find_cycle(&self, stuck: &BTreeSet<ResourceId>) -> Cycle {
        // Every stuck node has a stuck dependency; walk until a node repeats.
        let Some(start) = stuck.iter().next() else {
            return Cycle(Vec::new());
        };
        let mut path = vec![start.clone()];
        let mut current = start.clone();
        loop {
            let next = self
                .depends_on
                .get(&current)
                .and_then(|deps| deps.iter().find(|d| stuck.contains(*d)));
            let Some(next) = next else {
                return Cycle(path);
            };
            if let Some(position) = path.iter().position(|p| p == next) {
                let mut cycle = path[position..].to_vec();
                cycle.push(next.clone());
                return Cycle(cycle);
            }
            path.push(next.clone());
            current = next.clone();
        }
    }
}

/// The run resource a run name refers to: `train-3` → `train` when `train` is a resource.
pub fn run_resource_of<'a>(run_name: &'a str, is_resource: &dyn Fn(&str) -> bool) -> &'a str {
    if is_resource(run_name) {
        return run_name;
    }
    match run_name.rsplit_once('-') {
        Some((resource, number))
            if number.bytes().all(|b| b.is_ascii_digit()) && !number.is_empty() =>
        {
            resource
        }
        _ => run_name,
    }
}

/// What `resource` depends on, by identity.
pub fn dependencies_of(
    resource: &Resource,
    is_run_resource: &dyn Fn(&str) -> bool,
) -> Vec<ResourceId> {
    let mut deps = Vec::new();
    match &resource.spec {
        Spec::Run(run) => {
            for mount in &run.common.volumes {
                if let MountPoint::Volume { names, .. } = mount {
                    deps.extend(
                        names
                            .iter()
                            .map(|n| ResourceId::new(Kind::Volume, n.clone())),
                    );
                }
            }
            for fleet in run.common.fleets.iter().flatten() {
                if fleet.project.is_none() {
                    deps.push(ResourceId::new(Kind::Fleet, fleet.name.clone()));
                }
            }
            for dep in &run.common.deps {
                match dep {
                    Dep::Run(name) => {
                        deps.push(ResourceId::new(
                            Kind::Run,
                            run_resource_of(name, is_run_resource),
                        ));
                    }
                    Dep::Task(name) => deps.push(ResourceId::new(Kind::Run, name.clone())),
                    Dep::Tag(name) => deps.push(ResourceId::new(Kind::Tag, name.clone())),
                }
            }
        }
        Spec::Tag(tag) => deps.push(ResourceId::new(
            Kind::Run,
            run_resource_of(&tag.run, is_run_resource),
        )),
        Spec::Volume(_) | Spec::Fleet(_) => {}
    }
    deps.sort();
    deps.dedup();
    deps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> ResourceId {
        ResourceId::parse(text).expect("valid id")
    }

    #[test]
    fn waves_follow_dependencies_in_a_stable_order() {
        let mut graph = Graph::default();
        for node in [
            "run/train",
            "volume/data",
            "run/eval",
            "fleet/gpus",
            "tag/best",
        ] {
            graph.add_node(id(node));
        }
        graph.add_edge(id("run/train"), id("volume/data"));
        graph.add_edge(id("run/train"), id("fleet/gpus"));
        graph.add_edge(id("run/eval"), id("run/train"));
        graph.add_edge(id("tag/best"), id("run/train"));
        graph.add_edge(id("run/eval"), id("volume/outside-the-plan"));
        let waves = graph.waves().expect("acyclic");
        let names: Vec<Vec<String>> = waves
            .iter()
            .map(|w| w.iter().map(ToString::to_string).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["volume/data", "fleet/gpus"],
                vec!["run/train"],
                vec!["run/eval", "tag/best"]
            ]
        );
    }

    #[test]
    fn cycles_are_named() {
        let mut graph = Graph::default();
        graph.add_edge(id("run/a"), id("run/b"));
        graph.add_edge(id("run/b"), id("run/c"));
        graph.add_edge(id("run/c"), id("run/a"));
        graph.add_node(id("volume/v"));
        let cycle = graph.waves().expect_err("cycle");
        assert_eq!(
            cycle.to_string(),
            "dependency cycle: run/a -> run/b -> run/c -> run/a"
        );
        let mut self_loop = Graph::default();
        self_loop.add_edge(id("run/a"), id("run/a"));
        assert!(self_loop.waves().is_err());
    }

    #[test]
    fn run_names_map_to_their_resource() {
        let is_resource = |name: &str| name == "train" || name == "job-2x";
        assert_eq!(run_resource_of("train-3", &is_resource), "train");
        assert_eq!(run_resource_of("train", &is_resource), "train");
        assert_eq!(run_resource_of("job-2x", &is_resource), "job-2x");
    }
}
